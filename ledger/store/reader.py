"""Reads of the log: records, checkpoints, proofs, and the stream ``verify`` consumes.

Proofs cost O(log n) node reads in one query at any size, and nothing is
cached in the process, so they are as fast right after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, inspect, select

from ledger.core import merkle, tiles
from ledger.core.cosignature import add_cosignatures
from ledger.core.errors import NotFoundError, NotInitializedError, PayloadError, RangeError
from ledger.core.record import Record
from ledger.core.sealing import SealError
from ledger.core.verify import RecordItem
from ledger.store.schema import (
    checkpoints,
    cosignatures,
    ledger_meta,
    log_head,
    merkle_nodes,
    payloads,
    projections,
    records,
)
from ledger.store.sequencer import Receipt, fetch_nodes
from ledger.store.vault import Vault

PAGE = 1000
#: the stored copies of record fields that :meth:`LedgerReader.iter_records` gives
#: as each item's ``columns``, in this order
RECORD_COLUMNS = ("seq", "record_hash", "actor", "nonce", "type", "received_at")
#: node and record indices are stored as signed 64-bit integers
_MAX_NODE_INDEX = 2**63 - 1


@dataclass(frozen=True)
class Head:
    size: int
    head_hash: bytes
    root_hash: bytes


class LedgerReader:
    """Read-only access to one log."""

    def __init__(self, engine: Engine, *, vault: Vault | None = None) -> None:
        """With ``vault``, :meth:`iter_records` and :meth:`payload` open the
        sealed payloads; without it they yield none (digests only)."""
        self.engine = engine
        self.vault = vault
        self._has_cosignatures = False

    def meta(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(ledger_meta.c.name, ledger_meta.c.value)).all()
        if not rows:
            raise NotInitializedError("the database holds no ledger: run `rxledger init` first")
        return {r.name: r.value for r in rows}

    def head(self, conn: Connection | None = None) -> Head:
        if conn is None:
            with self.engine.connect() as c:
                return self.head(c)
        row = conn.execute(select(log_head).where(log_head.c.id == 1)).first()
        if row is None:
            raise NotInitializedError("the database holds no ledger: run `rxledger init` first")
        return Head(int(row.size), bytes(row.head_hash), bytes(row.root_hash))

    def latest_checkpoint(self) -> str:
        with self.engine.connect() as conn:
            note = conn.execute(
                select(checkpoints.c.note).order_by(checkpoints.c.size.desc()).limit(1)
            ).scalar()
        if note is None:
            raise NotInitializedError("the ledger has no checkpoint yet: run `rxledger init` first")
        return str(note)

    def latest_checkpoint_cosigned(self) -> str:
        """The latest checkpoint with the witness cosignatures collected for it.

        The log's signed note with one more signature line per witness that has
        cosigned this very checkpoint (c2sp.org/tlog-cosignature), in a stable
        order. Witnesses are asked asynchronously, so the newest checkpoint may
        carry none yet. Check the lines with
        :func:`ledger.core.cosignature.verify_cosignatures`.
        """
        with self.engine.connect() as conn:
            row = conn.execute(
                select(checkpoints.c.size, checkpoints.c.note)
                .order_by(checkpoints.c.size.desc())
                .limit(1)
            ).first()
            if row is None:
                raise NotInitializedError(
                    "the ledger has no checkpoint yet: run `rxledger init` first"
                )
            lines = self._cosignature_lines(conn, int(row.size))
        return add_cosignatures(str(row.note), lines) if lines else str(row.note)

    def checkpoint_cosigned(self, size: int) -> str:
        """The checkpoint at tree size ``size`` with the cosignatures collected for it."""
        with self.engine.connect() as conn:
            note = conn.execute(
                select(checkpoints.c.note).where(checkpoints.c.size == size)
            ).scalar()
            if note is None:
                raise NotFoundError(f"no checkpoint at tree size {size}")
            lines = self._cosignature_lines(conn, size)
        return add_cosignatures(str(note), lines) if lines else str(note)

    def _cosignature_lines(self, conn: Connection, size: int) -> list[str]:
        # A database made before migration 0002 has no cosignatures table yet.
        if not self._has_cosignatures:
            self._has_cosignatures = inspect(conn).has_table("cosignatures")
            if not self._has_cosignatures:
                return []
        rows = conn.execute(
            select(cosignatures.c.line)
            .where(cosignatures.c.size == size)
            .order_by(cosignatures.c.witness_name, cosignatures.c.key_id)
        ).scalars()
        return [str(line) for line in rows]

    def checkpoint(self, size: int) -> str:
        with self.engine.connect() as conn:
            note = conn.execute(
                select(checkpoints.c.note).where(checkpoints.c.size == size)
            ).scalar()
        if note is None:
            raise NotFoundError(f"no checkpoint at tree size {size}")
        return str(note)

    def record(self, seq: int) -> Record:
        with self.engine.connect() as conn:
            data = conn.execute(select(records.c.record_bytes).where(records.c.seq == seq)).scalar()
        if data is None:
            raise NotFoundError(f"no record with seq {seq}")
        return Record.from_bytes(bytes(data), expected_seq=seq)

    def records(
        self,
        start: int,
        limit: int,
        *,
        types: Sequence[str] = (),
        before: int | None = None,
    ) -> list[Record]:
        """Up to ``limit`` records from ``start``; only of ``types`` and below
        ``before`` when given (an auditor's registry records)."""
        query = select(records.c.seq, records.c.record_bytes).where(records.c.seq >= start)
        if types:
            query = query.where(records.c.type.in_(list(types)))
        if before is not None:
            query = query.where(records.c.seq < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(records.c.seq).limit(limit)).all()
        return [Record.from_bytes(bytes(r.record_bytes), expected_seq=int(r.seq)) for r in rows]

    def payload(self, seq: int) -> bytes | None:
        """The opened payload of record ``seq``; ``None`` when it has none or it
        was shredded. The service's reads go through ``ledger.access``, which
        checks who asks and logs the read; this is for the operator's own tools."""
        if self.vault is None:
            raise NotFoundError("payloads are sealed: reading one needs the master key")
        found = self.vault.read(self.engine, seq)  # SealError: the store is damaged
        return None if found is None else found[1]

    # -- proofs ------------------------------------------------------------------

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        with self.engine.connect() as conn:
            size = self.head(conn).size
            if not 0 < tree_size <= size:
                raise RangeError(f"tree_size: {tree_size}, want 1..{size} (the log's size)")
            if not 0 <= leaf_index < tree_size:
                raise RangeError(f"leaf_index: {leaf_index}, want < tree_size {tree_size}")
            nodes = fetch_nodes(conn, merkle.inclusion_proof_nodes(leaf_index, tree_size))
        return merkle.inclusion_proof(leaf_index, tree_size, nodes)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self.engine.connect() as conn:
            size = self.head(conn).size
            if not 0 <= second <= size:
                raise RangeError(f"second: {second}, want 0..{size} (the log's size)")
            if not 1 <= first <= second:
                # RFC 9162 verifiers refuse every proof from the empty tree
                raise RangeError(f"first: {first}, want 1..second ({second})")
            nodes = fetch_nodes(conn, merkle.consistency_proof_nodes(first, second))
        return merkle.consistency_proof(first, second, nodes)

    def root(self, tree_size: int) -> bytes:
        with self.engine.connect() as conn:
            nodes = fetch_nodes(conn, merkle.frontier(tree_size))
        return merkle.root_from_nodes(tree_size, nodes)

    def receipt(self, seq: int, *, duplicate: bool = False) -> Receipt:
        """A receipt for a stored record against the latest checkpoint."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(records.c.record_bytes, records.c.received_at).where(records.c.seq == seq)
            ).first()
            if row is None:
                raise NotFoundError(f"no record with seq {seq}")
            cp = conn.execute(
                select(checkpoints.c.size, checkpoints.c.note)
                .order_by(checkpoints.c.size.desc())
                .limit(1)
            ).one()
            size = int(cp.size)
            nodes = fetch_nodes(conn, merkle.inclusion_proof_nodes(seq, size))
        record = Record.from_bytes(bytes(row.record_bytes), expected_seq=seq)
        return Receipt(
            seq=seq,
            prev=record.prev,
            record_hash=record.hash,
            received_at=row.received_at,
            checkpoint=str(cp.note),
            tree_size=size,
            inclusion_proof=tuple(merkle.inclusion_proof(seq, size, nodes)),
            duplicate=duplicate,
        )

    # -- streams for verification -------------------------------------------------

    def count_records(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(records)).scalar_one())

    def iter_records(self, *, start: int = 0, page: int = PAGE) -> Iterator[RecordItem]:
        """Every record from ``start`` with its stored columns and payload, in ``seq`` order.

        Keyset pages of ``page`` rows: flat memory, no long-lived cursor. An
        item's ``columns`` are the row's :data:`RECORD_COLUMNS`, in that order.
        A page's payload rows are read in a second query of the same
        transaction (a range of seqs: most records have none, and probing
        the payloads for each record costs more).
        """
        query = (
            select(
                records.c.seq,
                records.c.record_hash,
                records.c.actor,
                records.c.nonce,
                records.c.type,
                records.c.received_at,
                records.c.record_bytes,
            )
            .order_by(records.c.seq)
            .limit(page)
        )
        payload_query = select(
            payloads.c.seq,
            payloads.c.digest,
            payloads.c.content,
            payloads.c.owner,
            payloads.c.erased_seq,
        ).order_by(payloads.c.seq)
        after = start - 1
        with self.engine.connect() as conn:
            while True:
                rows = conn.execute(query.where(records.c.seq > after)).all()
                stored: dict[int, Any] = {}
                opened: dict[int, bytes | PayloadError | None] = {}
                if rows:
                    first, last = int(rows[0][0]), int(rows[-1][0])
                    for row in conn.execute(
                        payload_query.where(payloads.c.seq.between(first, last))
                    ):
                        seq = int(row.seq)
                        if seq in stored:  # the table's key forbids it: tampering
                            opened[seq] = PayloadError("payload: two rows for one record", seq=seq)
                            continue
                        stored[seq] = row
                        opened[seq] = self._opened(conn, row)
                conn.rollback()  # no read transaction held while the page is consumed
                yield from self._items(rows, stored, opened)
                if len(rows) < page:
                    return
                after = int(rows[-1][0])

    @staticmethod
    def _items(
        rows: Sequence[Any],
        stored: dict[int, Any],
        opened: dict[int, bytes | PayloadError | None],
    ) -> Iterator[RecordItem]:
        for row in rows:
            seq = row[0]
            columns = row[:6]  # RECORD_COLUMNS
            data = row[6]
            if type(data) is not bytes:
                data = bytes(data)
            payload = stored.get(seq)
            if payload is None:
                # the common case: positional, one is made per record verified
                yield RecordItem(data, None, None, False, True, columns)
                continue
            plain = opened[seq]
            if isinstance(plain, PayloadError):  # raised in order: earlier records first
                raise plain
            erased_seq = payload.erased_seq
            yield RecordItem(
                data,
                payload=plain,
                payload_digest=None if payload.digest is None else bytes(payload.digest),
                has_payload_row=True,
                payloads_complete=True,
                columns=columns,
                payload_erased=erased_seq is not None,
                payload_owner=payload.owner,
                payload_erased_seq=None if erased_seq is None else int(erased_seq),
            )

    def _opened(self, conn: Connection, row: Any) -> bytes | PayloadError | None:
        """The plaintext of a payload row, checked to be sealed or shredded as it says."""
        seq = int(row.seq)
        if row.erased_seq is not None:
            if row.content is not None:
                return PayloadError(
                    f"payload: shredded by record {row.erased_seq} but still stored", seq=seq
                )
            return None
        if row.content is None or row.owner is None:
            return PayloadError("payload: its content (or owner) is missing", seq=seq)
        if self.vault is None:
            return None
        try:
            return self.vault.open(conn, str(row.owner), seq, bytes(row.digest), bytes(row.content))
        except SealError as e:
            return PayloadError(f"payload: {e}", seq=seq)

    def iter_checkpoints(self, *, after: int = -1, page: int = PAGE) -> Iterator[tuple[int, str]]:
        """``(size column, note)`` in ascending size, from sizes above ``after``."""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(checkpoints.c.size, checkpoints.c.note)
                    .where(checkpoints.c.size > after)
                    .order_by(checkpoints.c.size)
                    .limit(page)
                ).all()
            for row in rows:
                yield int(row.size), str(row.note)
            if len(rows) < page:
                return
            after = int(rows[-1].size)

    def level_hashes(self, level: int, start: int, count: int) -> list[bytes]:
        """The stored hashes of nodes ``(level, start)`` to ``(level, start + count - 1)``,
        in ascending index; fewer than ``count`` when some are missing."""
        with self.engine.connect() as conn:
            hashes = conn.execute(
                select(merkle_nodes.c.hash)
                .where(
                    merkle_nodes.c.level == level,
                    merkle_nodes.c.idx >= start,
                    merkle_nodes.c.idx < start + count,
                )
                .order_by(merkle_nodes.c.idx)
            ).all()  # one fetch for the page (iterating fetches row by row)
        return [h if type(h) is bytes else bytes(h) for (h,) in hashes]

    def level_nodes(self, level: int, start: int, stop: int | None = None) -> dict[int, bytes]:
        """Stored nodes of ``level`` with ``start <= idx < stop`` (no bound: to the end),
        as ``{idx: hash}``."""
        query = select(merkle_nodes.c.idx, merkle_nodes.c.hash).where(
            merkle_nodes.c.level == level, merkle_nodes.c.idx >= start
        )
        if stop is not None:
            query = query.where(merkle_nodes.c.idx < stop)
        with self.engine.connect() as conn:
            return {int(idx): bytes(h) for idx, h in conn.execute(query)}

    def first_node_from(
        self, level: int, start: int, *, higher_levels: bool = False
    ) -> tuple[int, int] | None:
        """``(level, idx)`` of the first stored node of ``level`` with ``idx >= start``
        (with ``higher_levels``: the first of any level from ``level`` up), if any."""
        where = (
            merkle_nodes.c.level >= level
            if higher_levels
            else (merkle_nodes.c.level == level) & (merkle_nodes.c.idx >= start)
        )
        with self.engine.connect() as conn:
            row = conn.execute(
                select(merkle_nodes.c.level, merkle_nodes.c.idx)
                .where(where)
                .order_by(merkle_nodes.c.level, merkle_nodes.c.idx)
                .limit(1)
            ).first()
        return None if row is None else (int(row.level), int(row.idx))

    # -- C2SP tlog-tiles -----------------------------------------------------------

    def tile_hashes(self, level: int, index: int, width: int) -> bytes:
        """The hashes of tlog-tiles tile ``(level, index)`` of ``width``, concatenated.

        They are the stored nodes ``(8 * level, 256 * index + i)``, ``i < width``,
        read in one query of at most 256 rows. Every level of every completed
        perfect subtree is stored, so a tile exists exactly when all its hashes
        do: a partial tile of any width up to what the tree holds (a checkpoint
        of an earlier size needs it), never one past the tree's right edge.
        Raises :class:`NotFoundError` when the tree does not (yet) hold them all.
        """
        tile = tiles.TileId(level, index, width)
        start = tile.start
        if start + width > _MAX_NODE_INDEX:
            raise NotFoundError(f"no tile {tile.to_path()}: beyond any tree this log can hold")
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(merkle_nodes.c.hash)
                .where(
                    merkle_nodes.c.level == tile.node_level,
                    merkle_nodes.c.idx >= start,
                    merkle_nodes.c.idx < start + width,
                )
                .order_by(merkle_nodes.c.idx)
            ).all()
        if len(rows) != width:
            raise NotFoundError(
                f"no tile {tile.to_path()}: the tree holds {len(rows)} of its {width} hashes"
            )
        return b"".join(bytes(r.hash) for r in rows)

    def entry_bundle(self, index: int, width: int) -> bytes:
        """The tlog-tiles entry bundle ``index`` of ``width``: records' bytes, uint16-prefixed.

        Records ``[256 * index, 256 * index + width)`` in one query. Raises
        :class:`NotFoundError` when the log does not (yet) hold them all and
        :class:`~ledger.core.tiles.EntryTooLargeError` for a record over
        65,535 bytes (never truncated).
        """
        tile = tiles.TileId(0, index, width)
        start = tile.start
        if start + width > _MAX_NODE_INDEX:
            raise NotFoundError(
                f"no entry bundle {tile.to_entries_path()}: beyond any tree this log can hold"
            )
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(records.c.record_bytes)
                .where(records.c.seq >= start, records.c.seq < start + width)
                .order_by(records.c.seq)
            ).all()
        if len(rows) != width:
            raise NotFoundError(
                f"no entry bundle {tile.to_entries_path()}: "
                f"the log holds {len(rows)} of its {width} entries"
            )
        return tiles.encode_entry_bundle((bytes(r.record_bytes) for r in rows), first_index=start)


class ProjectionReader:
    """Queries over the projections (current state derived from the records)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(projections.c.value).where(
                    projections.c.kind == kind, projections.c.key == key
                )
            ).scalar()
        return None if value is None else dict(json.loads(value))

    def page(
        self,
        kind: str,
        *,
        patient: str | None = None,
        party: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Documents of ``kind`` matching the filters, newest first (by the seq that wrote them)."""
        query = select(projections.c.value, projections.c.seq).where(projections.c.kind == kind)
        if patient is not None:
            query = query.where(projections.c.patient == patient)
        if party is not None:
            query = query.where(projections.c.party == party)
        if status is not None:
            query = query.where(projections.c.status == status)
        if tag is not None:
            query = query.where(
                (" " + projections.c.tags + " ").contains(f" {tag} ", autoescape=True)
            )
        if before_seq is not None:
            query = query.where(projections.c.seq < before_seq)
        query = query.order_by(projections.c.seq.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [dict(json.loads(r.value), _seq=int(r.seq)) for r in rows]

    def all_rows(
        self,
    ) -> list[tuple[str, str, str, str | None, str | None, str | None, str | None, int]]:
        """Every projection row (kind, key, value, patient, party, status, tags, seq), sorted."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(projections).order_by(projections.c.kind, projections.c.key))
            return [
                (r.kind, r.key, r.value, r.patient, r.party, r.status, r.tags, int(r.seq))
                for r in rows
            ]

"""``verify --db``: every stored byte of the log checked against what it must be.

On top of the streaming verifier (chain, signatures, rules, times, payloads,
roots, checkpoints), this checks the database's own copies:

- each ``records`` column (seq, record_hash, actor, nonce, type, received_at)
  against the record bytes;
- each stored ``merkle_nodes`` hash against the tree recomputed from the
  records, level by level, with no node missing and none extra;
- each ``checkpoints`` row's size against its signed note;
- the ``log_head`` row against the end of the stream.

Memory stays flat: records and nodes are read in keyset pages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, delete, insert

from ledger.core.errors import (
    CheckpointError,
    MerkleNodeError,
    NotInitializedError,
    PayloadError,
    RecordError,
    VerificationError,
)
from ledger.core.note import Verifier
from ledger.core.payload import ERASED
from ledger.core.record import Record
from ledger.core.sealing import MasterKey, MasterKeyError
from ledger.core.verify import RecordItem, VerifyResult, verify_log
from ledger.domain.prescriptions import RX
from ledger.domain.privacy import LEDGER_OWNER
from ledger.domain.replay import Replayer, SignerReplayer
from ledger.domain.state import State
from ledger.store.db import WRITE, configured_master_key
from ledger.store.reader import RECORD_COLUMNS, LedgerReader, ProjectionReader
from ledger.store.schema import projections
from ledger.store.sequencer import lock_head
from ledger.store.state import encode
from ledger.store.vault import MASTER_KEY_META, Vault

Progress = Callable[[int], None]


class _NodeChecker:
    """Compares the nodes the verifier completes with the stored ones.

    The verifier adds each node's hash to :attr:`levels` (``levels[level]``);
    :meth:`check` compares them with the stored ones a page at a time (one
    query per level); when they differ, the first node that does is named, as
    missing or as holding another hash. :meth:`finish` compares what is left
    and refuses stored nodes that no record makes.
    """

    PAGE = 4096

    def __init__(self, reader: LedgerReader) -> None:
        self.reader = reader
        #: per level: the hashes computed and not yet compared
        self.levels: list[list[bytes]] = []
        #: per level: how many nodes were compared (the index of the first in ``levels``)
        self.checked: list[int] = []

    def check(self) -> None:
        """Compare the nodes of each level of which a page is waiting."""
        for level, computed in enumerate(self.levels):
            if len(computed) < self.PAGE:
                return  # a level fills half as fast as the one below it
            self._compare(level, len(computed))

    def _compare(self, level: int, count: int) -> None:
        """Compare the first ``count`` nodes computed at ``level`` and drop them."""
        computed = self.levels[level]
        while len(self.checked) <= level:
            self.checked.append(0)
        start = self.checked[level]
        if self.reader.level_hashes(level, start, count) != computed[:count]:
            self._name_difference(level, start, computed[:count])
        self.checked[level] += count
        del computed[:count]

    def _name_difference(self, level: int, start: int, computed: list[bytes]) -> None:
        stored = self.reader.level_nodes(level, start, start + len(computed))
        for idx, value in enumerate(computed, start):
            found = stored.get(idx)
            if found is None:
                raise MerkleNodeError(
                    f"merkle node (level {level}, index {idx}) covering records from "
                    f"{idx << level}: missing from storage",
                    level=level,
                    index=idx,
                )
            if found != value:
                raise MerkleNodeError(
                    f"merkle node (level {level}, index {idx}) covering records from "
                    f"{idx << level}: expected {value.hex()}, stored {found.hex()}",
                    level=level,
                    index=idx,
                )
        raise MerkleNodeError(  # a page differs, so some node does: not reached
            f"merkle nodes of level {level} from index {start}: stored differ from computed",
            level=level,
            index=start,
        )

    def flush(self, before: int | None = None) -> None:
        """Compare every node computed so far (with ``before``: only the nodes
        that cover records before that seq)."""
        for level, computed in enumerate(self.levels):
            count = len(computed)
            if before is not None:
                done = self.checked[level] if level < len(self.checked) else 0
                count = max(0, min(count, (before >> level) - done))
            if count:
                self._compare(level, count)

    def finish(self) -> None:
        self.flush()
        for level, made in [*enumerate(self.checked), (len(self.checked), None)]:
            # nodes past those the records made; above the top level made, any node
            extra = self.reader.first_node_from(level, made or 0, higher_levels=made is None)
            if extra is not None:
                raise MerkleNodeError(
                    f"merkle node (level {extra[0]}, index {extra[1]}) is stored but the "
                    "records do not make it",
                    level=extra[0],
                    index=extra[1],
                )


def _check_columns(record: Record, item: RecordItem) -> None:
    """The row's copies of the record's fields (:data:`RECORD_COLUMNS`) are the record's."""
    columns = item.columns
    if columns is None:
        return
    fields = record.fields
    expected = (
        record.seq,
        record.hash,
        fields.get("actor"),
        fields.get("nonce"),
        fields.get("type"),
        record.received_at,
    )
    if columns == expected:
        return
    for name, want, found in zip(RECORD_COLUMNS, expected, columns, strict=True):
        if found != want:
            raise RecordError(
                f"{name} column: expected {_shown(want)}, found {_shown(found)}", seq=record.seq
            )
    raise RecordError("record columns differ from the record", seq=record.seq)  # not reached


def _shown(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


class _PayloadOwners:
    """Each payload row's ``owner`` and ``erased_seq`` against what the records say.

    The owner of a prescription's or a dispense's payload is its patient (from
    the record, or the replayed prescription); of a use's cohort, the ledger.
    A shredded payload must name, as ``erased_seq``, a later record that
    shreds it: the erasure of its owner, or a retention run over its
    prescription. So nobody can drop a payload and call it erased.
    """

    def __init__(self, state: State | None, reader: LedgerReader) -> None:
        self.state = state  # the full replay's, to find a dispense's patient
        self.reader = reader  # without it: the prescription's issue record
        #: erased_seq -> [(seq, owner, rx_id)] still to be matched to their shredding
        self.pending: dict[int, list[tuple[int, str, str]]] = {}

    def __call__(self, record: Record, item: RecordItem) -> None:
        if not item.has_payload_row and record.seq not in self.pending:
            return  # most records: no payload, and shredding nothing waited for
        seq, fields = record.seq, record.fields
        body = fields["body"]
        if item.has_payload_row:
            owner = item.payload_owner
            expected = self._owner(fields["type"], body, shredded=item.payload_erased)
            if expected is not None and owner != expected:
                raise PayloadError(
                    f"payload owner: expected {expected!r}, found {owner!r}", seq=seq
                )
            if item.payload_erased:
                by = item.payload_erased_seq
                if by is None or by <= seq:
                    raise PayloadError(f"payload shredded by record {by}, not a later one", seq=seq)
                self.pending.setdefault(by, []).append((seq, str(owner), str(body.get("rx_id"))))
        for shredded, owner, rx_id in self.pending.pop(seq, []):
            kind = fields["type"]
            if kind == "erasure.execute" and body.get("patient") == owner:
                continue
            if kind == "retention.shred" and rx_id in body.get("rx_ids", []):
                continue
            raise PayloadError(
                f"payload shredded by record {seq}, a {kind} that does not shred it", seq=shredded
            )

    def _owner(self, kind: str, body: dict[str, Any], *, shredded: bool) -> str | None:
        if kind == "rx.issue":
            return str(body.get("patient"))
        if kind == "data.use":
            return LEDGER_OWNER
        if kind == "rx.dispense" and self.state is not None:
            rx = self.state.peek(RX, str(body.get("rx_id")))
            return None if rx is None else str(rx["patient"])
        if kind == "rx.dispense" and shredded:
            # Signers only: the patient is in the prescription's issue record, which
            # the projection points to and which the stream verifies (or verified).
            return self._issued_to(str(body.get("rx_id")))
        return None

    def _issued_to(self, rx_id: str) -> str:
        """The patient of ``rx_id``'s issue record; a name no owner has when the
        projections do not lead to it (so the check fails rather than passes)."""
        rx = ProjectionReader(self.reader.engine).get(RX, rx_id)
        if rx is not None:
            issued = self.reader.record(int(rx["issued_seq"])).fields
            if issued.get("type") == "rx.issue" and issued["body"].get("rx_id") == rx_id:
                return str(issued["body"].get("patient"))
        return f"<the patient of {rx_id}: its issue record is not found>"

    def finish(self) -> None:
        if self.pending:
            by = min(self.pending)
            seq = self.pending[by][0][0]
            raise PayloadError(f"payload shredded by record {by}, which does not exist", seq=seq)


def _checked_notes(reader: LedgerReader) -> Iterator[str]:
    for size, note in reader.iter_checkpoints():
        lines = note.split("\n", 2)
        if len(lines) < 2 or lines[1] != str(size):
            raise CheckpointError(
                f"checkpoint row size {size}: its note says {lines[1] if len(lines) > 1 else '?'}"
            )
        yield note


def verify_database(
    engine: Engine,
    *,
    log_key: str | None = None,
    registrar_key: str | None = None,
    on_progress: Progress | None = None,
    master_key: MasterKey | None = None,
    workers: int = 1,
) -> VerifyResult:
    """Verify the whole log in ``engine``. Trust anchors default to the stored ones.

    Pass ``log_key`` / ``registrar_key`` (vkey strings) to pin them: an
    auditor should, since whoever can write the database can write its
    metadata too.

    The flow rules read the sealed payloads, so they are replayed with the
    master key (``master_key``, else the configured one). Without any, every
    other check still runs and the replay checks signers only
    (``result.rules == "signers"``). Records whose payload was shredded are
    counted in ``result.shredded`` (``docs/privacy.md``).

    ``workers > 1`` checks signatures on that many threads (see ``verify_log``).
    """
    if master_key is None:
        try:
            master_key = configured_master_key()
        except MasterKeyError:
            master_key = None
    vault = Vault(master_key) if master_key is not None else None
    reader = LedgerReader(engine, vault=vault)
    meta = reader.meta()
    if vault is not None and meta.get(MASTER_KEY_META, vault.master.key_id) != vault.master.key_id:
        raise MasterKeyError(
            f"the master key (id {vault.master.key_id}) is not this ledger's "
            f"(id {meta[MASTER_KEY_META]})"
        )
    shredded = 0
    replayer = (Replayer if vault is not None else SignerReplayer)(
        registrar_key=registrar_key or meta["registrar_vkey"]
    )
    owners = _PayloadOwners(replayer.state if vault is not None else None, reader)
    verifier = Verifier.from_vkey(log_key or meta["log_vkey"])
    nodes = _NodeChecker(reader)

    computed = nodes.levels  # the verifier adds to it; level 0 fills first
    page = nodes.PAGE

    def on_record(record: Record, item: RecordItem) -> None:
        nonlocal shredded
        _check_columns(record, item)
        if item.has_payload_row or owners.pending:  # else there is nothing to check
            owners(record, item)
            shredded += item.payload_erased
        if computed and len(computed[0]) >= page:
            nodes.check()
        if on_progress is not None:
            on_progress(record.seq + 1)

    try:
        result = verify_log(
            reader.iter_records(),
            _checked_notes(reader),
            log_key=verifier,
            origin=meta["origin"],
            replay=replayer,
            on_record=on_record,
            nodes=nodes.levels,
            workers=workers,
        )
    except VerificationError as e:
        # a node made by the records before the one that failed is named first
        nodes.flush(before=e.seq if isinstance(e, RecordError) else None)
        raise
    nodes.finish()
    owners.finish()
    try:
        head = reader.head()
    except NotInitializedError as e:  # the metadata and records are there: tampering
        raise VerificationError(
            f"log_head row: missing, but the log holds {result.size} records"
        ) from e
    if (head.size, head.head_hash, head.root_hash) != (result.size, result.head, result.root):
        raise VerificationError(
            f"log_head row: expected size {result.size}, head {result.head.hex()}, root "
            f"{result.root.hex()}; found size {head.size}, head {head.head_hash.hex()}, "
            f"root {head.root_hash.hex()}"
        )
    return replace(result, rules="all" if vault is not None else "signers", shredded=shredded)


Row = tuple[str, str, str, str | None, str | None, str | None, str | None, int]


def replayed_projections(
    engine: Engine, *, registrar_key: str | None = None, master_key: MasterKey | None = None
) -> list[Row]:
    """The projection rows that replaying every record from scratch gives
    (with the master key: the configured one by default)."""
    reader = LedgerReader(engine, vault=Vault(master_key or configured_master_key()))
    replayer = Replayer(registrar_key=registrar_key, keep_puts=True)
    for item in reader.iter_records():
        record = Record.from_bytes(item.record_bytes)
        replayer(record.seq, record.statement(), ERASED if item.payload_erased else item.payload)
    rows = [
        (p.kind, p.key, encode(p.value), p.patient, p.party, p.status, p.tags, p.seq)
        for p in replayer.state.puts.values()
        if not p.delete
    ]
    return sorted(rows)


def rebuild_projections(engine: Engine) -> int:
    """Drop the projections and write them again from the records; returns the row count.

    Runs under the sequencer's lock, so no append interleaves.
    """
    rows = replayed_projections(engine)
    with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
        lock_head(conn)
        conn.execute(delete(projections))
        for start in range(0, len(rows), 1000):
            conn.execute(
                insert(projections),
                [dict(zip(_COLUMNS, row, strict=True)) for row in rows[start : start + 1000]],
            )
    return len(rows)


_COLUMNS = ("kind", "key", "value", "patient", "party", "status", "tags", "seq")

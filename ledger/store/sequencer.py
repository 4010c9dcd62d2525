"""The sequencer: one per log, appends batches of statements atomically.

An append (ARCHITECTURE §4) is one database transaction that

1. locks the log head (PostgreSQL: ``SELECT … FOR UPDATE`` on the one
   ``log_head`` row; SQLite: ``BEGIN IMMEDIATE``),
2. refuses replayed ``(actor, nonce)`` pairs — except that re-sending the
   identical signed statement returns the original receipt (idempotent retry),
3. runs the domain rules for each statement against the projected state,
   with the effects of earlier statements in the batch visible to later ones,
4. writes the records, their payloads, the new Merkle nodes, the projection
   changes, a new signed checkpoint and the new head,
5. commits — and only then are receipts handed out.

Work that needs no lock (JSON, canonical bytes, signature and payload
checks) is done before the lock is taken, so the lock is held briefly.

One bad statement in a batch is refused with its reason and the others go
on, unless the caller asks for ``atomic`` (all or nothing).

A signed checkpoint is produced for every committed batch, in the same
transaction: every acknowledged record is covered by a signed checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint
from ledger.core.errors import (
    NotInitializedError,
    RejectionError,
    StorageError,
)
from ledger.core.frozen import make_frozen
from ledger.core.note import Signer
from ledger.core.record import GENESIS_PREV, Record, build_record_bytes
from ledger.core.statement import (
    MAX_CLOCK_SKEW,
    SignedStatement,
    Statement,
    format_time,
    now,
    parse_time,
    verifier_for,
)
from ledger.core.verify import head_extension
from ledger.domain import privacy
from ledger.domain.rules import decide
from ledger.domain.state import Document, MemoryState, Put, State
from ledger.store.db import WRITE, is_sqlite
from ledger.store.pgarrays import ByteaArray, Int2Array, Int8Array, TextArray
from ledger.store.schema import checkpoints, log_head, merkle_nodes, payloads, records
from ledger.store.state import DbState, OverlayState, bulk_insert, pairs_in, project
from ledger.store.vault import Vault

log = logging.getLogger("rxledger.sequencer")
MAX_BATCH = 1000
#: a batch is prechecked on several threads when each gets at least this many statements
PARALLEL_PRECHECK_MIN = 32

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool, _pool_lock  # noqa: PLW0603
    _pool = None  # a forked child has none of its parent's threads
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


@functools.cache
def _precheck_threads() -> int:
    return os.cpu_count() or 1  # reads /sys each call: 30 µs here


def _precheck_pool() -> ThreadPoolExecutor:
    """The threads every sequencer of the process shares for signature checks."""
    global _pool  # noqa: PLW0603 - one pool per process, made when first needed
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=_precheck_threads(), thread_name_prefix="rxledger-precheck"
            )
        return _pool


MAX_CACHED_DOCS = 200_000
MAX_PAYLOAD = 256 * 1024
#: the largest statement (its signed bytes): with the record's own fields
#: (at most 266 bytes) every record stays under the 65,535 bytes a C2SP
#: tlog-tiles entry may hold. The API enforces the same limit on input.
MAX_STATEMENT = 60 * 1024


@dataclass(frozen=True)
class Submission:
    """A signed statement as submitted, with its payload if it commits to one."""

    signed: SignedStatement
    payload: bytes | None = None


@dataclass(frozen=True)
class Receipt:
    """Proof of acknowledgement: the record is committed and in the checkpoint."""

    seq: int
    prev: str
    record_hash: bytes
    received_at: str
    checkpoint: str
    tree_size: int
    inclusion_proof: tuple[bytes, ...]
    duplicate: bool = False

    @property
    def leaf_index(self) -> int:
        return self.seq

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "leaf_index": self.seq,
            "prev": self.prev,
            "record_hash": self.record_hash.hex(),
            "received_at": self.received_at,
            "duplicate": self.duplicate,
            "checkpoint": self.checkpoint,
            "inclusion_proof": {
                "leaf_index": self.seq,
                "tree_size": self.tree_size,
                "hashes": [h.hex() for h in self.inclusion_proof],
            },
        }


Outcome = Receipt | RejectionError

#: statements the service makes in answer to an accepted one, sequenced right
#: after it in the same transaction (a settlement decision for a claim)
Followup = Callable[[State, Statement, int], list[SignedStatement]]


@dataclass
class _Pending:
    index: int
    submission: Submission
    duplicate_of: int | None = None  # seq of the identical stored record
    in_batch_of: int | None = None  # index of the identical statement earlier in the batch


@dataclass
class _Head:
    size: int
    head_hash: bytes
    last_received_at: str
    nodes: dict[merkle.NodeId, bytes] = field(default_factory=dict)


class Sequencer:
    """Appends batches to the log in ``engine``, signing checkpoints with ``log_signer``."""

    def __init__(
        self,
        engine: Engine,
        *,
        log_signer: Signer,
        origin: str,
        vault: Vault,
        clock: Callable[[], datetime] = now,
        max_skew_seconds: float = MAX_CLOCK_SKEW.total_seconds(),
        followup: Followup | None = None,
    ) -> None:
        self.engine = engine
        self.vault = vault
        self.followup = followup
        # SQLite's busy handler polls with back-off, which starves some writers;
        # writers of this process queue on a lock before BEGIN IMMEDIATE instead.
        self._queue = threading.Lock() if is_sqlite(engine) else contextlib.nullcontext()
        # Documents read or written by this sequencer, valid while the log size
        # is the one this sequencer left it at (no other writer came between).
        self._docs: dict[tuple[str, str], Document | None] = {}
        self._docs_size = -1
        self._docs_lock = threading.Lock()
        # The tree's frontier after our last commit: (size, head hash, nodes, the
        # last record's received_at).
        self._frontier: tuple[int, bytes, dict[merkle.NodeId, bytes], str] | None = None
        self.log_signer = log_signer
        self.origin = origin
        self.clock = clock
        self.max_skew = max_skew_seconds

    # -- checks that need no lock ------------------------------------------------

    def precheck(self, submission: Submission) -> None:
        """Signature and payload checks, before the lock; raises :class:`RejectionError`.

        The clock window is checked under the lock, against the time the record
        will carry, and only for statements not already recorded (an identical
        retry, however late, gets its original receipt).
        """
        signed = submission.signed
        statement = signed.statement
        if len(signed.signed_bytes) > MAX_STATEMENT:
            raise RejectionError(
                "too-large",
                f"statement is {len(signed.signed_bytes)} bytes; at most {MAX_STATEMENT}",
            )
        if not verifier_for(statement.key).verify(signed.signed_bytes, signed.signature):
            raise RejectionError(
                "bad-signature", f"statement signature does not verify under key {statement.key}"
            )
        committed = statement.body.get("payload_digest")
        payload = submission.payload
        if committed is None:
            if payload is not None:
                raise RejectionError(
                    "payload-not-committed",
                    "a payload was sent but body.payload_digest does not commit to it",
                )
            return
        if payload is None:
            raise RejectionError(
                "payload-missing", "body.payload_digest is set but no payload was sent"
            )
        if len(payload) > MAX_PAYLOAD:
            raise RejectionError(
                "payload-too-large", f"payload is {len(payload)} bytes; at most {MAX_PAYLOAD}"
            )
        actual = hashlib.sha256(payload).hexdigest()
        if committed != actual:
            raise RejectionError(
                "payload-mismatch",
                f"body.payload_digest: expected {actual} (SHA-256 of the payload), "
                f"got {committed!r:.80}",
            )

    def _prechecks(self, batch: Sequence[Submission]) -> list[RejectionError | None]:
        """:meth:`precheck` of each submission: the refusal, or ``None``.

        A large batch is checked on several threads, a slice each: the
        Ed25519 checks are most of the work, and PyNaCl lets go of the GIL
        while it does them, so the cores share them (``docs/design/sequencing.md``).
        """
        threads = min(_precheck_threads(), len(batch) // PARALLEL_PRECHECK_MIN)
        if threads < 2:
            return self._precheck_slice(batch)
        step = -(-len(batch) // threads)
        slices = [batch[i : i + step] for i in range(0, len(batch), step)]
        return [r for part in _precheck_pool().map(self._precheck_slice, slices) for r in part]

    def _precheck_slice(self, batch: Sequence[Submission]) -> list[RejectionError | None]:
        results: list[RejectionError | None] = []
        for submission in batch:
            try:
                self.precheck(submission)
            except RejectionError as e:
                results.append(e)
            else:
                results.append(None)
        return results

    def check_skew(self, statement: Statement, at: datetime) -> None:
        """Refuse a statement issued more than ``max_skew`` from the ledger's time ``at``."""
        issued = parse_time(statement.issued_at, field="statement.issued_at")
        skew = (issued - at).total_seconds()
        if abs(skew) > self.max_skew:
            direction = "ahead of" if skew > 0 else "behind"
            raise RejectionError(
                "clock-skew",
                f"issued_at {statement.issued_at} is {abs(skew):.0f}s {direction} the ledger's "
                f"clock ({format_time(at)}); at most {self.max_skew:.0f}s allowed",
            )

    # -- the append ----------------------------------------------------------------

    def append(self, batch: Sequence[Submission], *, atomic: bool = False) -> list[Outcome]:
        """Append ``batch``; one outcome per submission, in order."""
        if not batch:
            return []
        if len(batch) > MAX_BATCH:
            raise RejectionError(
                "batch-too-large", f"a batch holds at most {MAX_BATCH} statements, got {len(batch)}"
            )
        outcomes: list[Outcome | None] = list(self._prechecks(batch))
        pending = [_Pending(i, s) for i, s in enumerate(batch) if outcomes[i] is None]
        fresh_keys: dict[str, bytes] = {}  # data keys used, cached once committed
        if atomic and any(outcomes):
            return _abort_all(outcomes)

        with (
            self._queue,
            self.engine.connect().execution_options(**{WRITE: True}) as conn,
            conn.begin(),
        ):
            head = self._lock_head(conn)
            self._find_replays(conn, pending, outcomes)
            # The ledger's time never goes back; statements are checked against
            # the time their records will carry, taken under the lock.
            received_at = max(format_time(self.clock()), head.last_received_at)
            received = parse_time(received_at)
            cache = self._cache_for(head.size)
            state = OverlayState(base=DbState(conn, head.size, cache), records=head.size)
            accepted: list[_Pending] = []
            for item in pending:
                if outcomes[item.index] is not None or item.duplicate_of is not None:
                    continue
                if item.in_batch_of is not None:
                    continue
                try:
                    self.check_skew(item.submission.signed.statement, received)
                    self._decide(state, item, head.size + len(accepted))
                except RejectionError as e:
                    outcomes[item.index] = e
                    if atomic:
                        break
                    continue
                accepted.append(item)
                accepted.extend(self._followups(state, item, head.size + len(accepted)))
            if atomic and any(outcomes):
                conn.rollback()
                return _abort_all(outcomes)
            if accepted:
                written = list(state.pending)
                new_head = self._write(
                    conn, head, accepted, received_at, state, fresh_keys=fresh_keys
                )
                for item, receipt in zip(accepted, new_head, strict=True):
                    if item.index >= 0:
                        outcomes[item.index] = receipt
        if accepted:  # committed: what this batch wrote is now the state
            self._cache_commit(cache, written, new_head[0].tree_size)
            self.vault.remember(fresh_keys)
        else:  # nothing written: the cache is as valid as before
            self._cache_commit(cache, [], head.size)

        duplicates = [p for p in pending if p.duplicate_of is not None]
        if duplicates:
            from ledger.store.reader import LedgerReader  # noqa: PLC0415 - avoid a cycle

            reader = LedgerReader(self.engine)
            for item in duplicates:
                assert item.duplicate_of is not None
                outcomes[item.index] = reader.receipt(item.duplicate_of, duplicate=True)
        for item in pending:
            if item.in_batch_of is not None:  # the same signed statement twice in one batch
                first = outcomes[item.in_batch_of]
                outcomes[item.index] = _as_duplicate(first) if isinstance(first, Receipt) else first
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None]

    def _cache_for(self, size: int) -> dict[tuple[str, str], Document | None]:
        """The document cache if no other writer appended since our last commit."""
        with self._docs_lock:
            if size != self._docs_size or len(self._docs) > MAX_CACHED_DOCS:
                self._docs = {}
            self._docs_size = -1  # invalid until this batch commits
            return self._docs

    def _cache_commit(
        self, cache: dict[tuple[str, str], Document | None], puts: list[Put], size: int
    ) -> None:
        with self._docs_lock:
            if cache is self._docs:
                for put in puts:
                    cache[(put.kind, put.key)] = None if put.delete else put.value
                self._docs_size = size

    @staticmethod
    def _decide(state: MemoryState, item: _Pending, seq: int) -> None:
        submission = item.submission
        effects = decide(state, submission.signed.statement, seq=seq, payload=submission.payload)
        state.apply(effects)

    def _followups(self, state: MemoryState, item: _Pending, next_seq: int) -> list[_Pending]:
        """Statements made in answer to ``item``, decided at the seqs right after it."""
        if self.followup is None:
            return []
        made: list[_Pending] = []
        answers = self.followup(state, item.submission.signed.statement, next_seq - 1)
        for signed in answers:
            extra = _Pending(index=-1, submission=Submission(signed))
            try:
                self._decide(state, extra, next_seq + len(made))
            except RejectionError:
                log.exception("a follow-up statement was refused; the original stands alone")
                continue
            made.append(extra)
        return made

    def _lock_head(self, conn: Connection) -> _Head:
        size, head_hash = lock_head(conn)
        known = self._frontier
        if known is not None and known[0] == size and known[1] == head_hash:
            # no other writer since our last commit: its frontier and time stand
            return _Head(size, head_hash, known[3], dict(known[2]))
        last = ""
        if size:
            last = conn.execute(
                select(records.c.received_at).where(records.c.seq == size - 1)
            ).scalar_one()
        head = _Head(size=size, head_hash=head_hash, last_received_at=last)
        wanted = merkle.frontier(size)
        if wanted:
            head.nodes = fetch_nodes(conn, wanted)
        return head

    def _find_replays(
        self, conn: Connection, pending: list[_Pending], outcomes: list[Outcome | None]
    ) -> None:
        seen: dict[tuple[str, str], _Pending] = {}
        for p in pending:
            statement = p.submission.signed.statement
            key = (statement.actor, statement.nonce)
            first = seen.get(key)
            if first is None:
                seen[key] = p
            elif _same(first.submission.signed, p.submission.signed):
                p.in_batch_of = first.index
            else:
                outcomes[p.index] = _replayed(statement.actor, statement.nonce)
        if not seen:
            return
        for seq, actor, nonce, data in _recorded_nonces(conn, seen):
            # The first statement of the batch with this (actor, nonce); later
            # identical copies follow it (in_batch_of), different ones are refused.
            waiting = seen.get((actor, nonce))
            if waiting is None:
                continue  # not one of the batch's pairs (never, as queried)
            stored = Record.from_bytes(bytes(data))
            if (stored.statement_bytes, stored.signature) == (
                waiting.submission.signed.signed_bytes,
                waiting.submission.signed.signature,
            ):
                waiting.duplicate_of = int(seq)
            else:
                outcomes[waiting.index] = _replayed(actor, nonce)

    def _write(
        self,
        conn: Connection,
        head: _Head,
        accepted: list[_Pending],
        received_at: str,
        state: MemoryState,
        *,
        fresh_keys: dict[str, bytes],
    ) -> list[Receipt]:
        tree = merkle.MerkleAccumulator.from_frontier(
            head.size, [head.nodes[n] for n in merkle.frontier(head.size)]
        )
        nodes: dict[merkle.NodeId, bytes] = dict(head.nodes)
        log_rows = _LogRows()
        payload_rows: list[dict[str, Any]] = []
        prev = head.head_hash.hex() if head.size else GENESIS_PREV
        hashes = log_rows.record_hash
        prevs: list[str] = []
        for offset, item in enumerate(accepted):
            seq = head.size + offset
            signed = item.submission.signed
            data = build_record_bytes(
                seq, prev, received_at, signed.signature_b64, signed.signed_bytes
            )
            digest = hashlib.sha256(data).digest()
            prevs.append(prev)
            statement = signed.statement
            log_rows.add_record(digest, statement.actor, statement.nonce, statement.type, data)
            if item.submission.payload is not None:
                owner = privacy.payload_owner(state, statement)
                payload_digest = hashlib.sha256(item.submission.payload).digest()
                payload_rows.append(
                    {
                        "seq": seq,
                        "digest": payload_digest,
                        "content": self.vault.seal(
                            conn,
                            owner,
                            seq,
                            payload_digest,
                            item.submission.payload,
                            fresh=fresh_keys,
                        ),
                        "owner": owner,
                        "erased_seq": None,
                    }
                )
            for node, value in tree.append(hashlib.sha256(b"\x00" + data).digest()):
                nodes[node] = value
                log_rows.add_node(node, value)
            prev = digest.hex()

        size = tree.size
        root = tree.root()
        head_hash = hashes[-1]
        # Checked against the head under the lock before use, so it is safe to
        # keep even if this transaction does not commit.
        self._frontier = (
            size,
            head_hash,
            {n: nodes[n] for n in merkle.frontier(size)},
            received_at,
        )
        note = Checkpoint(
            origin=self.origin, size=size, root_hash=root, extensions=(head_extension(head_hash),)
        ).sign([self.log_signer])

        if conn.dialect.name == "postgresql":
            _write_log_pg(conn, log_rows, head.size, received_at, note, head_hash, root)
        else:
            bulk_insert(conn, records, log_rows.record_dicts(head.size, received_at))
            bulk_insert(conn, merkle_nodes, log_rows.node_dicts())
            _advance_head(conn, note, size, head_hash, root)
        bulk_insert(conn, payloads, payload_rows)
        project(conn, state.take_pending())
        for offset, item in enumerate(accepted):
            shredding = item.submission.signed.statement
            if shredding.type in privacy.SHREDDING_TYPES:
                shredded_owner, seqs = privacy.shredded_records(state, shredding)
                if shredded_owner is not None:
                    self.vault.shred_owner(conn, shredded_owner, head.size + offset)
                    fresh_keys.pop(shredded_owner, None)
                self.vault.shred_records(conn, seqs, head.size + offset)
        proofs = merkle.inclusion_proofs(range(head.size, size), size, nodes)
        return [
            make_frozen(  # once per record appended: see ledger.core.frozen
                Receipt,
                {
                    "seq": head.size + offset,
                    "prev": prevs[offset],
                    "record_hash": hashes[offset],
                    "received_at": received_at,
                    "checkpoint": note,
                    "tree_size": size,
                    "inclusion_proof": proofs[offset],
                    "duplicate": False,
                },
            )
            for offset in range(len(accepted))
        ]


_BY_PAIRS_PG = (
    "SELECT r.seq, r.actor, r.nonce, r.record_bytes"
    " FROM unnest(%(actors)b::text[], %(nonces)b::text[]) AS u(actor, nonce)"
    " JOIN records r ON r.nonce = u.nonce AND r.actor = u.actor"
)


def _recorded_nonces(conn: Connection, pairs: Iterable[tuple[str, str]]) -> Iterator[Any]:
    """Rows ``(seq, actor, nonce, record_bytes)`` of the recorded statements with one
    of the ``(actor, nonce)`` pairs.

    PostgreSQL: the pairs as two array parameters (sent binary), joined on the
    unique (nonce, actor) index: a batch's thousand pairs as bind parameters
    cost more to render and parse than the lookups do, and the join on both
    columns is planned as index lookups even before the table has statistics
    (``nonce = ANY(...)`` alone is not, and scans it). SQLite: ``pairs_in``.
    """
    pairs = list(pairs)
    if conn.dialect.name == "postgresql":
        yield from conn.exec_driver_sql(
            _BY_PAIRS_PG,
            {
                "actors": TextArray([actor for actor, _ in pairs]),
                "nonces": TextArray([nonce for _, nonce in pairs]),
            },
        )
        return
    query = select(records.c.seq, records.c.actor, records.c.nonce, records.c.record_bytes)
    for condition in pairs_in(records.c.actor, records.c.nonce, pairs):
        yield from conn.execute(query.where(condition))


class _LogRows:
    """A batch's new records and Merkle nodes, a list per column."""

    __slots__ = ("actor", "hash", "idx", "level", "nonce", "record_bytes", "record_hash", "type")

    def __init__(self) -> None:
        self.record_hash: list[bytes] = []
        self.actor: list[str] = []
        self.nonce: list[str] = []
        self.type: list[str] = []
        self.record_bytes: list[bytes] = []
        self.level: list[int] = []
        self.idx: list[int] = []
        self.hash: list[bytes] = []

    def add_record(self, digest: bytes, actor: str, nonce: str, type_: str, data: bytes) -> None:
        self.record_hash.append(digest)
        self.actor.append(actor)
        self.nonce.append(nonce)
        self.type.append(type_)
        self.record_bytes.append(data)

    def add_node(self, node: merkle.NodeId, value: bytes) -> None:
        self.level.append(node[0])
        self.idx.append(node[1])
        self.hash.append(value)

    def record_dicts(self, first_seq: int, received_at: str) -> list[dict[str, Any]]:
        columns = (self.record_hash, self.actor, self.nonce, self.type, self.record_bytes)
        return [
            {
                "seq": first_seq + offset,
                "record_hash": digest,
                "actor": actor,
                "nonce": nonce,
                "type": type_,
                "received_at": received_at,
                "record_bytes": data,
            }
            for offset, (digest, actor, nonce, type_, data) in enumerate(zip(*columns, strict=True))
        ]

    def node_dicts(self) -> list[dict[str, Any]]:
        return [
            {"level": level, "idx": idx, "hash": value}
            for level, idx, value in zip(self.level, self.idx, self.hash, strict=True)
        ]


#: a batch's records, Merkle nodes, checkpoint and new head in one statement
#: (one round trip): each table's rows as arrays, one per column, sent binary
#: (``ledger.store.pgarrays``); a record's seq is the first seq plus its
#: position, and every record of a batch has the same ``received_at``
_WRITE_LOG_PG = (
    "WITH new_records AS ("
    " INSERT INTO records (seq, record_hash, actor, nonce, type, received_at, record_bytes)"
    " SELECT %(first_seq)s::int8 + u.o - 1, u.record_hash, u.actor, u.nonce, u.type,"
    " %(received_at)s::text, u.record_bytes"
    " FROM unnest(%(record_hash)b::bytea[], %(actor)b::text[], %(nonce)b::text[],"
    " %(type)b::text[], %(record_bytes)b::bytea[])"
    " WITH ORDINALITY AS u(record_hash, actor, nonce, type, record_bytes, o)"
    "), new_nodes AS ("
    " INSERT INTO merkle_nodes (level, idx, hash)"
    " SELECT * FROM unnest(%(level)b::int2[], %(idx)b::int8[], %(hash)b::bytea[])"
    "), new_checkpoint AS ("
    " INSERT INTO checkpoints (size, note) VALUES (%(size)s, %(note)s)"
    ") UPDATE log_head SET size = %(size)s, head_hash = %(head_hash)b, root_hash = %(root)b"
    " WHERE id = 1"
)


def _write_log_pg(  # noqa: PLR0917 - private
    conn: Connection,
    rows: _LogRows,
    first_seq: int,
    received_at: str,
    note: str,
    head_hash: bytes,
    root: bytes,
) -> None:
    """PostgreSQL: a batch's log rows and its new head in one statement.

    A COPY costs two round trips to the server and each insert or update
    one; at a hundred statements a batch those round trips were a large part
    of the append. Everything stays in the caller's transaction.
    """
    params: dict[str, Any] = {
        "first_seq": first_seq,
        "received_at": received_at,
        "record_hash": ByteaArray(rows.record_hash),
        "actor": TextArray(rows.actor),
        "nonce": TextArray(rows.nonce),
        "type": TextArray(rows.type),
        "record_bytes": ByteaArray(rows.record_bytes),
        "level": Int2Array(rows.level),
        "idx": Int8Array(rows.idx),
        "hash": ByteaArray(rows.hash),
        "size": first_seq + len(rows.record_hash),
        "note": note,
        "head_hash": head_hash,
        "root": root,
    }
    conn.exec_driver_sql(_WRITE_LOG_PG, params)


def _advance_head(conn: Connection, note: str, size: int, head_hash: bytes, root: bytes) -> None:
    """Store the batch's signed checkpoint and move the head to it."""
    conn.execute(insert(checkpoints).values(size=size, note=note))
    conn.execute(
        update(log_head)
        .where(log_head.c.id == 1)
        .values(size=size, head_hash=head_hash, root_hash=root)
    )


def lock_head(conn: Connection) -> tuple[int, bytes]:
    """Take the log's write lock in this transaction; return ``(size, head hash)``.

    PostgreSQL: a row lock on the one ``log_head`` row. SQLite: the
    transaction was begun with ``BEGIN IMMEDIATE`` (the ``WRITE`` option).
    """
    query = select(log_head.c.size, log_head.c.head_hash).where(log_head.c.id == 1)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotInitializedError("the database holds no ledger: run `rxledger init` first")
    return int(row.size), bytes(row.head_hash)


def fetch_nodes(conn: Connection, wanted: Sequence[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
    """Read the given Merkle nodes in one query."""
    if not wanted:
        return {}
    query = select(merkle_nodes.c.level, merkle_nodes.c.idx, merkle_nodes.c.hash)
    rows = [
        row
        for condition in pairs_in(merkle_nodes.c.level, merkle_nodes.c.idx, list(wanted))
        for row in conn.execute(query.where(condition))
    ]
    found = {(int(r.level), int(r.idx)): bytes(r.hash) for r in rows}
    missing = [n for n in wanted if n not in found]
    if missing:
        raise StorageError(f"merkle nodes missing from storage: {missing[:5]}")
    return found


def _same(a: SignedStatement, b: SignedStatement) -> bool:
    return a.signed_bytes == b.signed_bytes and a.signature == b.signature


def _replayed(actor: str, nonce: str) -> RejectionError:
    return RejectionError(
        "replayed-nonce",
        f"a different statement by {actor!r} with nonce {nonce!r} is already recorded",
    )


def _as_duplicate(receipt: Receipt) -> Receipt:
    return Receipt(
        seq=receipt.seq,
        prev=receipt.prev,
        record_hash=receipt.record_hash,
        received_at=receipt.received_at,
        checkpoint=receipt.checkpoint,
        tree_size=receipt.tree_size,
        inclusion_proof=receipt.inclusion_proof,
        duplicate=True,
    )


def _abort_all(outcomes: Sequence[Outcome | None]) -> list[Outcome]:
    """All-or-nothing: the refused keep their reason, the rest say the batch was aborted."""
    return [
        o
        if isinstance(o, RejectionError)
        else RejectionError(
            "batch-aborted",
            "not recorded: another statement in this all-or-nothing batch was refused",
        )
        for o in outcomes
    ]

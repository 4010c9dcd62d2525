"""Streaming verification of a log: records in order, checkpoints, keys.

:class:`StreamVerifier` takes records one at a time, from any source (a
database, an HTTP API, a bundle), and checks for each:

1. its bytes parse as a record and its ``seq`` is the next one;
2. ``prev`` is the hash of the record before (64 zeros for record 0);
3. ``received_at`` never goes back, and the statement's ``issued_at`` is within
   the clock-skew window of it (no back-dating);
4. the statement's Ed25519 signature verifies over the exact stored bytes;
5. the domain rules accept it given everything before it (``replay``: key
   registered and valid at the time, role allowed, flow rules) — plugged in
   by the caller, so the pure core does not import the domain;
6. a payload, when the statement commits to one and the source has it,
   matches its digest;

and folds its leaf into a Merkle accumulator (O(log n) memory), so that any
checkpoint met on the way is checked against the recomputed root. Memory stays
flat in the number of records. The first failure raises a
:class:`~ledger.core.errors.VerificationError` naming the record's ``seq``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint, note_size, open_checkpoint
from ledger.core.errors import (
    ChainError,
    CheckpointError,
    EncodingError,
    KeyFormatError,
    LedgerError,
    PayloadError,
    RecordError,
    RootMismatchError,
    SignatureError,
    TimeOrderError,
    VerificationError,
)
from ledger.core.note import Verifier
from ledger.core.payload import ERASED, Payload
from ledger.core.record import GENESIS_PREV, Record, leaf_hash
from ledger.core.statement import MAX_CLOCK_SKEW, Statement, parse_time, verifier_for

HEAD_EXTENSION = "rxledger-head "

#: called with (seq, statement, payload or None) for every record; raises
#: RecordError to refuse it
Replay = Callable[[int, Statement, Payload], None]


def head_extension(head_hash: bytes) -> str:
    """The checkpoint extension line that carries the chain head record hash."""
    return HEAD_EXTENSION + head_hash.hex()


def checkpoint_head(checkpoint: Checkpoint) -> bytes | None:
    for line in checkpoint.extensions:
        if line.startswith(HEAD_EXTENSION):
            try:
                return bytes.fromhex(line[len(HEAD_EXTENSION) :])
            except ValueError:
                return None
    return None


@dataclass(slots=True)
class RecordItem:
    """A record as a source yields it, with its payload when the source has one.

    Read-only by convention (not frozen: one is made per record verified, and
    a frozen dataclass costs twice as much to make).

    ``payload`` is ``None`` when the source holds no payload for the record;
    ``payload_digest`` is the digest the source stored beside it (if any).
    """

    record_bytes: bytes
    payload: bytes | None = None
    payload_digest: bytes | None = None
    has_payload_row: bool = False
    #: the source holds a payload row for every record that commits to one (a
    #: database does; a bundle without clinical data does not), so a missing
    #: row is an error
    payloads_complete: bool = False
    #: the source's own copies of record fields (e.g. database columns, in an
    #: order the source defines), checked by the source's ``on_record`` hook
    #: against the parsed record; the verifier does not read them
    columns: tuple[Any, ...] | None = None
    #: the source held this record's payload, but it was shredded (erasure or
    #: retention): the replay gets ``ERASED`` instead of bytes
    payload_erased: bool = False
    #: whose data key the source sealed the payload with (its payload row's owner)
    payload_owner: str | None = None
    #: the record the source says shredded the payload (with ``payload_erased``)
    payload_erased_seq: int | None = None


@dataclass(frozen=True)
class Position:
    """A point in a verified stream: the tree's frontier, the chain head, the clock.

    ``frontier`` holds the hashes of :func:`ledger.core.merkle.frontier`
    ``(size)``, left to right; ``head`` is the hash of record ``size - 1``
    (zeros for the empty log); ``last_received`` its ``received_at``.
    """

    size: int
    frontier: tuple[bytes, ...]
    head: bytes
    last_received: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "frontier": [h.hex() for h in self.frontier],
            "head": self.head.hex(),
            "last_received": self.last_received,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Position:
        try:
            size = data["size"]
            frontier = tuple(bytes.fromhex(h) for h in data["frontier"])
            head = bytes.fromhex(data["head"])
            last = data.get("last_received", "")
        except (KeyError, TypeError, ValueError) as e:
            raise EncodingError(f"stream position does not parse: {e}") from e
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise EncodingError(f"stream position size: expected a count, got {size!r}")
        if len(head) != merkle.HASH_SIZE or not isinstance(last, str):
            raise EncodingError("stream position: head must be 32 bytes, last_received a string")
        merkle.MerkleAccumulator.from_frontier(size, frontier)  # checks the frontier's shape
        return cls(size=size, frontier=frontier, head=head, last_received=last)


@dataclass(frozen=True)
class VerifyResult:
    size: int
    root: bytes
    head: bytes
    checkpoints_verified: int
    seconds: float
    #: which rules the replay ran: ``all``, or ``signers`` (payloads unreadable)
    rules: str = "all"
    #: records whose payload was shredded: their clinical checks were not re-run
    shredded: int = 0

    @property
    def rate(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else 0.0


#: (seq, verifier, signed bytes, signature) of one record whose signature waits
_SignatureCheck = tuple[int, Verifier, bytes, bytes]


def _first_bad(checks: list[_SignatureCheck]) -> int | None:
    """The seq of the first record in ``checks`` whose signature does not verify."""
    for seq, verifier, message, signature in checks:
        if not verifier.verify(message, signature):
            return seq
    return None


class _DeferredSignatures:
    """Statement signatures checked a chunk at a time, the chunk split over threads.

    PyNaCl lets go of the GIL during an Ed25519 check, so the threads check
    their slices of a chunk at once while the caller waits. (Overlapping the
    checks with the caller's own parsing gains little: each check needs the
    GIL back, which the busy caller holds.) :meth:`settle` checks what is
    waiting (for the records before a seq) and raises for the first bad one.
    """

    CHUNK = 512

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rxledger-verify")
        self.workers = workers
        self.chunk: list[_SignatureCheck] = []

    def add(self, check: _SignatureCheck) -> None:
        self.chunk.append(check)
        if len(self.chunk) >= self.CHUNK:
            self.settle()

    def settle(self, before: int | None = None) -> None:
        """Check every waiting signature (of the records before seq ``before``)."""
        mine = [c for c in self.chunk if before is None or c[0] < before]
        if not mine:
            return
        self.chunk = self.chunk[len(mine) :]
        step = -(-len(mine) // self.workers)
        slices = [mine[i : i + step] for i in range(0, len(mine), step)]
        for checks, bad in zip(slices, self.pool.map(_first_bad, slices), strict=True):
            if bad is not None:
                key = next(c[1].vkey for c in checks if c[0] == bad)
                raise RecordError(f"statement signature does not verify under key {key}", seq=bad)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class StreamVerifier:
    """Verifies records as they stream by. See the module docs for the checks."""

    def __init__(
        self,
        *,
        log_key: Verifier,
        origin: str,
        replay: Replay | None = None,
        max_skew_seconds: float = MAX_CLOCK_SKEW.total_seconds(),
        nodes: list[list[bytes]] | None = None,
        workers: int = 1,
    ) -> None:
        self.log_key = log_key
        self.origin = origin
        self.replay = replay
        self.max_skew = max_skew_seconds
        #: when given, the hash of every Merkle node the records complete is added
        #: to ``nodes[level]``, in index order (see MerkleAccumulator.append_into)
        self.nodes = nodes
        self._tree = merkle.MerkleAccumulator()
        self._head = bytes(32)
        self._last_received = ""
        self._last_received_time: datetime | None = None  # parsed _last_received
        self.checkpoints_verified = 0
        self.last_checkpoint_size = -1
        #: with ``workers > 1``, signatures are checked on that many threads and
        #: settled before any error after them is raised, before each checkpoint
        #: is accepted, and by :meth:`settle`; call :meth:`close` when done
        self._deferred = _DeferredSignatures(workers) if workers > 1 else None
        self._signed = -1  # the last seq whose signature check was deferred

    @classmethod
    def resume(
        cls,
        position: Position,
        *,
        log_key: Verifier,
        origin: str,
        replay: Replay | None = None,
        max_skew_seconds: float = MAX_CLOCK_SKEW.total_seconds(),
    ) -> StreamVerifier:
        """A verifier that continues after ``position`` (from :meth:`position`).

        The next record it accepts is ``position.size``; its ``prev`` must be
        ``position.head`` and its ``received_at`` not before
        ``position.last_received``.
        """
        verifier = cls(
            log_key=log_key, origin=origin, replay=replay, max_skew_seconds=max_skew_seconds
        )
        verifier._tree = merkle.MerkleAccumulator.from_frontier(position.size, position.frontier)
        verifier._head = position.head if position.size else bytes(32)
        verifier._last_received = position.last_received
        return verifier

    def position(self) -> Position:
        """Where the stream is: enough to :meth:`resume` it later, O(log n) in size."""
        return Position(
            size=self.size,
            frontier=tuple(self._tree.frontier_hashes()),
            head=self._head,
            last_received=self._last_received,
        )

    @property
    def size(self) -> int:
        return self._tree.size

    @property
    def head(self) -> bytes:
        return self._head

    def root(self) -> bytes:
        return self._tree.root()

    def add(self, item: RecordItem | bytes) -> Record:
        if isinstance(item, bytes):
            item = RecordItem(item)
        seq = self._tree.size
        if self._deferred is None:
            return self._add(item, seq)
        try:
            return self._add(item, seq)
        except VerificationError as e:
            # a bad signature of a record before it (of this one too, when the
            # error came after its signature check) is named first
            before = seq + 1 if self._signed == seq else seq
            if isinstance(e, RecordError) and e.seq is not None and e.seq < seq:
                before = e.seq  # a chunk's check failed just now: it is the first
            self._deferred.settle(before)
            raise

    def _add(self, item: RecordItem, seq: int) -> Record:
        record = Record.from_bytes(item.record_bytes, expected_seq=seq)
        expected_prev = self._head.hex() if seq else GENESIS_PREV
        if record.prev != expected_prev:
            raise ChainError(f"prev: expected {expected_prev}, found {record.prev}", seq=seq)
        statement = record.statement()
        self._check_times(record, statement)
        try:
            verifier = verifier_for(statement.key)
        except KeyFormatError as e:
            raise RecordError(f"statement.key: {e}", seq=seq) from e
        if self._deferred is not None:
            self._deferred.add((seq, verifier, record.statement_bytes, record.signature))
            self._signed = seq
        elif not verifier.verify(record.statement_bytes, record.signature):
            raise RecordError(
                f"statement signature does not verify under key {statement.key}", seq=seq
            )
        if item.has_payload_row or "payload_digest" in statement.body:
            self._check_payload(seq, statement, item)
        if self.replay is not None:
            self.replay(seq, statement, ERASED if item.payload_erased else item.payload)
        data = item.record_bytes
        if self.nodes is None:
            self._tree.append_fast(leaf_hash(data))
        else:
            self._tree.append_into(leaf_hash(data), self.nodes)
        self._head = record.hash
        return record

    def settle(self, before: int | None = None) -> None:
        """Wait for the signature checks still running (those of the records
        before seq ``before``); raise for the first that failed."""
        if self._deferred is not None:
            self._deferred.settle(before)

    def close(self) -> None:
        """Stop the signature threads (``workers > 1``)."""
        if self._deferred is not None:
            self._deferred.close()

    def _check_times(self, record: Record, statement: Statement) -> None:
        received = self._last_received_time
        if received is None or record.received_at != self._last_received:
            # (else the record before had the same time: a batch's records share it)
            try:
                received = parse_time(record.received_at, field="received_at")
            except EncodingError as e:
                raise TimeOrderError(str(e), seq=record.seq) from e
            if record.received_at < self._last_received:
                raise TimeOrderError(
                    f"received_at goes back in time: {record.received_at} after "
                    f"{self._last_received}",
                    seq=record.seq,
                )
            self._last_received = record.received_at
            self._last_received_time = received
        issued: datetime = parse_time(statement.issued_at, field="issued_at")
        skew = abs((received - issued).total_seconds())
        if skew > self.max_skew:
            raise TimeOrderError(
                f"issued_at {statement.issued_at} is {skew:.0f}s from received_at "
                f"{record.received_at}; at most {self.max_skew:.0f}s allowed",
                seq=record.seq,
            )

    @staticmethod
    def _check_payload(seq: int, statement: Statement, item: RecordItem) -> None:
        committed = statement.body.get("payload_digest")
        if committed is None:
            if item.has_payload_row:
                raise PayloadError("a payload is stored but the record commits to none", seq=seq)
            return
        if not isinstance(committed, str):
            raise PayloadError("body.payload_digest: expected hex", seq=seq)
        if item.payloads_complete and not item.has_payload_row:
            raise PayloadError(
                f"the record commits to payload {committed}, but none is stored", seq=seq
            )
        if item.payload_digest is not None and item.payload_digest.hex() != committed:
            raise PayloadError(
                f"stored payload digest: expected {committed}, found {item.payload_digest.hex()}",
                seq=seq,
            )
        if item.payload is not None:
            actual = hashlib.sha256(item.payload).hexdigest()
            if actual != committed:
                raise PayloadError(f"payload digest: expected {committed}, found {actual}", seq=seq)

    def check_checkpoint(self, note: str) -> Checkpoint:
        """Verify a signed checkpoint for the current size against the recomputed tree.

        Every record before it has its signature checked first.
        """
        self.settle()
        try:
            checkpoint, _ = open_checkpoint(note, origin=self.origin, verifier=self.log_key)
        except LedgerError as e:
            raise CheckpointError(f"checkpoint at size {self.size}: {e}") from e
        if checkpoint.size != self.size:
            raise CheckpointError(f"checkpoint size: expected {self.size}, found {checkpoint.size}")
        root = self.root()
        if checkpoint.root_hash != root:
            raise RootMismatchError(
                f"checkpoint at size {checkpoint.size}: root hash expected {root.hex()} "
                f"(recomputed from records), found {checkpoint.root_hash.hex()}"
            )
        head = checkpoint_head(checkpoint)
        if head is not None and head != self._head:
            raise CheckpointError(
                f"checkpoint at size {checkpoint.size}: chain head expected "
                f"{self._head.hex()}, found {head.hex()}"
            )
        self.checkpoints_verified += 1
        self.last_checkpoint_size = checkpoint.size
        return checkpoint


def verify_log(
    records: Iterable[RecordItem | bytes],
    checkpoints: Iterable[str],
    *,
    log_key: Verifier,
    origin: str,
    replay: Replay | None = None,
    on_record: Callable[[Record, RecordItem], None] | None = None,
    nodes: list[list[bytes]] | None = None,
    workers: int = 1,
) -> VerifyResult:
    """Verify a whole log from record 0.

    ``checkpoints`` are signed checkpoint notes in ascending size; each is
    checked when the stream reaches its size, and the last one must cover
    every record (an unsigned tail is a failure: nothing vouches for it).

    ``workers > 1`` checks the statement signatures on that many threads while
    this one parses and replays; the result, and the first error named, are
    the same as with one.
    """
    start = time.perf_counter()
    verifier = StreamVerifier(
        log_key=log_key, origin=origin, replay=replay, nodes=nodes, workers=workers
    )
    try:
        _stream(verifier, records, checkpoints, on_record)
    except VerificationError as e:
        if not isinstance(e, RecordError):
            verifier.settle()  # a bad signature before a checkpoint's problem comes first
        raise
    finally:
        verifier.close()
    return VerifyResult(
        size=verifier.size,
        root=verifier.root(),
        head=verifier.head,
        checkpoints_verified=verifier.checkpoints_verified,
        seconds=time.perf_counter() - start,
    )


def _stream(
    verifier: StreamVerifier,
    records: Iterable[RecordItem | bytes],
    checkpoints: Iterable[str],
    on_record: Callable[[Record, RecordItem], None] | None,
) -> None:
    pending = _sized(checkpoints)
    next_cp = next(pending, None)
    while next_cp is not None and next_cp[0] == 0:
        verifier.check_checkpoint(next_cp[1])
        next_cp = next(pending, None)
    for given in records:
        item = RecordItem(given) if isinstance(given, bytes) else given
        record = verifier.add(item)
        if on_record is not None:
            try:
                on_record(record, item)
            except VerificationError:
                verifier.settle(before=record.seq + 1)  # a bad signature up to it comes first
                raise
        while next_cp is not None and next_cp[0] == record.seq + 1:  # verifier.size
            verifier.check_checkpoint(next_cp[1])
            next_cp = next(pending, None)
    verifier.settle()
    if next_cp is not None:
        raise CheckpointError(
            f"checkpoint claims size {next_cp[0]}, but the log has only {verifier.size} records"
        )
    if verifier.last_checkpoint_size != verifier.size:
        raise CheckpointError(
            f"no signed checkpoint covers the last records: log has {verifier.size} records"
        )


def _sized(notes: Iterable[str]) -> Iterator[tuple[int, str]]:
    last = -1
    for note in notes:
        size = note_size(note)
        if size < last:
            raise CheckpointError(f"checkpoints out of order: size {size} after {last}")
        last = size
        yield size, note


__all__ = [
    "Position",
    "RecordItem",
    "SignatureError",
    "StreamVerifier",
    "VerificationError",
    "VerifyResult",
    "checkpoint_head",
    "head_extension",
    "verify_log",
]

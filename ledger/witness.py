"""A transparency-log witness: c2sp.org/tlog-witness ``add-checkpoint``, with its state.

For every log it is configured with (an origin and the log's verifier keys), the
witness keeps the last checkpoint it cosigned, in a SQLite file. It cosigns a new
checkpoint of that log only if

1. the log's signature verifies with one of the configured keys (else
   :class:`LogSignatureError`, HTTP 403; an origin it does not know is an
   :class:`UnknownLogError`, 404),
2. the request's old size is at most the checkpoint's size (else
   :class:`BadRequestError`, 400) and equals the size it holds, zero if none
   (else :class:`StaleSizeError` carrying that size, 409),
3. the consistency proof from the checkpoint it holds to the new one verifies
   (RFC 9162 §2.1.4; an old size of zero needs an empty proof, and an empty tree
   must have the empty root; else :class:`InconsistentCheckpointError`, 422), and
4. a checkpoint of the size it holds has the root it holds
   (:class:`ForkError`, 409): two different checkpoints of one size signed by the
   log key are a fork, never cosigned.

The check and the update of the stored checkpoint are one SQLite ``BEGIN
IMMEDIATE`` transaction, so two concurrent requests can never both advance from
the same state, and a slow request can never roll the witness back
(c2sp.org/tlog-witness: "checking the old size ... and persisting the new
checkpoint must be performed atomically"). The state is committed before the
cosignature is returned. Refused checkpoints that are signed by the log key and
contradict what the witness holds (forks, failed proofs) are kept as evidence.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint
from ledger.core.cosignature import (
    AddCheckpointRequest,
    WitnessVerifier,
    cosign,
    parse_add_checkpoint_request,
    witness_verifier,
)
from ledger.core.errors import (
    ConflictError,
    ConsistencyProofError,
    EncodingError,
    LedgerError,
    NoteFormatError,
    NotFoundError,
    ProofError,
    SignatureError,
    StorageError,
)
from ledger.core.note import Signer, UnverifiedNoteError, Verifier, open_note
from ledger.store.db import home_dir

__all__ = [
    "STATE_FILE",
    "BadRequestError",
    "Evidence",
    "ForkError",
    "InconsistentCheckpointError",
    "LogSignatureError",
    "StaleSizeError",
    "Witness",
    "WitnessStateError",
    "WitnessedCheckpoint",
    "default_state_file",
    "logs_from_verifiers",
]

STATE_FILE = "witness.db"
#: SQLite integers are signed 64-bit
_MAX_STORED_SIZE = 2**63 - 1
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,           -- the log-signed checkpoint as submitted
    log_vkey TEXT NOT NULL,       -- the log key that verified it
    cosigned_at INTEGER NOT NULL  -- the timestamp of the last cosignature
);
CREATE TABLE IF NOT EXISTS evidence (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    origin TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    reason TEXT NOT NULL,         -- 'fork' or 'inconsistent'
    detail TEXT NOT NULL,
    old_size INTEGER NOT NULL,
    proof TEXT NOT NULL,          -- base64 hashes, one per line
    note TEXT NOT NULL,           -- the refused, log-signed checkpoint
    held_note TEXT NOT NULL       -- the checkpoint the witness held
);
"""


def default_state_file() -> Path:
    """``RXLEDGER_WITNESS_STATE``, else ``RXLEDGER_HOME/witness/witness.db``."""
    configured = os.environ.get("RXLEDGER_WITNESS_STATE")
    return Path(configured) if configured else home_dir() / "witness" / STATE_FILE


# --- errors: each maps to one c2sp.org/tlog-witness status ----------------------


class UnknownLogError(NotFoundError):
    """The checkpoint's origin is not a log this witness is configured for (404)."""

    code = "unknown-log"


class LogSignatureError(SignatureError):
    """No signature by a configured key of the log verifies (403)."""

    code = "bad-log-signature"


class BadRequestError(EncodingError):
    """A malformed request, or an old size above the checkpoint's size (400)."""

    code = "malformed"


class StaleSizeError(ConflictError):
    """The old size is not the size the witness holds (409, body: that size)."""

    code = "stale-size"

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class ForkError(StaleSizeError):
    """A checkpoint of the size the witness holds, with another root: a fork (409)."""

    code = "fork"


class InconsistentCheckpointError(ProofError):
    """The consistency proof does not verify (422)."""

    code = "inconsistent-checkpoint"


class WitnessStateError(StorageError):
    """The state file cannot be opened or is not a witness state."""

    code = "witness-state"


# --- values ----------------------------------------------------------------------


@dataclass(frozen=True)
class WitnessedCheckpoint:
    """The last checkpoint the witness cosigned for one log."""

    origin: str
    size: int
    root_hash: bytes
    note: str
    log_vkey: str
    cosigned_at: int


@dataclass(frozen=True)
class Evidence:
    """A log-signed checkpoint the witness refused because it contradicts what it held."""

    origin: str
    received_at: int
    reason: str
    detail: str
    old_size: int
    proof: tuple[bytes, ...]
    note: str
    held_note: str


def logs_from_verifiers(keys: Iterable[Verifier]) -> dict[str, tuple[Verifier, ...]]:
    """Group log keys by origin, taking each key's name as its log's origin.

    rxledger names the log key after the origin (``rxledger init --origin``), as
    C2SP logs do.
    """
    logs: dict[str, list[Verifier]] = {}
    for key in keys:
        bucket = logs.setdefault(key.name, [])
        if key not in bucket:
            bucket.append(key)
    return {origin: tuple(keys) for origin, keys in logs.items()}


class Witness:
    """A witness that signs with ``signer`` for the ``logs`` it knows, state in ``state_file``.

    ``logs`` maps each origin to the log's verifier keys. ``clock`` gives POSIX
    seconds for the cosignatures' timestamps; timestamps never go backwards for
    one log, even if the clock does.
    """

    def __init__(
        self,
        signer: Signer,
        logs: Mapping[str, Sequence[Verifier]],
        state_file: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not logs:
            raise EncodingError("a witness needs at least one log key to witness")
        self.signer = signer
        self.verifier: WitnessVerifier = witness_verifier(signer)
        self.logs = {origin: tuple(keys) for origin, keys in logs.items()}
        for origin, keys in self.logs.items():
            if not keys:
                raise EncodingError(f"log {origin!r} has no key")
        self.state_file = Path(state_file)
        self.clock = clock
        self._init_state()

    @property
    def vkey(self) -> str:
        """The witness's cosignature/v1 verifier key (type 0x04)."""
        return self.verifier.vkey

    # -- state ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.state_file, timeout=30, isolation_level=None)
        except sqlite3.Error as e:
            raise WitnessStateError(f"cannot open witness state {self.state_file}: {e}") from e
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _init_state(self) -> None:
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WitnessStateError(
                f"cannot create the directory of witness state {self.state_file}: {e.strerror}"
            ) from e
        try:
            with closing(self._connect()) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version not in (0, _SCHEMA_VERSION):
                    raise WitnessStateError(
                        f"witness state {self.state_file} has schema version {version}, "
                        f"this rxledger reads version {_SCHEMA_VERSION}"
                    )
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise WitnessStateError(f"{self.state_file} is not a witness state file: {e}") from e

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE``: the write lock is taken before the state is read."""
        with closing(self._connect()) as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise WitnessStateError(f"cannot lock witness state: {e}") from e
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def latest(self, origin: str) -> WitnessedCheckpoint | None:
        """The last checkpoint cosigned for ``origin``, or ``None``."""
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT origin, size, root, note, log_vkey, cosigned_at FROM logs WHERE origin = ?",
                (origin,),
            ).fetchone()
        if row is None:
            return None
        return WitnessedCheckpoint(
            str(row[0]), int(row[1]), bytes(row[2]), str(row[3]), str(row[4]), int(row[5])
        )

    def evidence(self, origin: str | None = None) -> list[Evidence]:
        """The refused checkpoints kept as evidence, oldest first."""
        query = (
            "SELECT origin, received_at, reason, detail, old_size, proof, note, held_note "
            "FROM evidence"
        )
        args: tuple[str, ...] = ()
        if origin is not None:
            query += " WHERE origin = ?"
            args = (origin,)
        with closing(self._connect()) as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [
            Evidence(
                origin=str(r[0]),
                received_at=int(r[1]),
                reason=str(r[2]),
                detail=str(r[3]),
                old_size=int(r[4]),
                proof=tuple(base64.b64decode(h) for h in str(r[5]).split()),
                note=str(r[6]),
                held_note=str(r[7]),
            )
            for r in rows
        ]

    # -- add-checkpoint -------------------------------------------------------------

    def add_checkpoint_body(self, body: bytes) -> str:
        """Handle a raw ``add-checkpoint`` request body; see :meth:`add_checkpoint`."""
        try:
            request = parse_add_checkpoint_request(body)
        except NoteFormatError as e:
            raise BadRequestError(f"malformed add-checkpoint request: {e}") from e
        return self.add_checkpoint(request)

    def add_checkpoint(self, request: AddCheckpointRequest) -> str:
        """Check a checkpoint against the state, store it, and return the cosignature line.

        Raises the errors of this module (see the module docstring), each of which
        is one HTTP status of c2sp.org/tlog-witness.
        """
        origin = request.note.split("\n", 1)[0]
        keys = self.logs.get(origin)
        if keys is None:
            raise UnknownLogError(f"unknown log: this witness does not witness {origin!r}")
        checkpoint, log_vkey = self._open(request.note, origin, keys)
        if checkpoint.size > _MAX_STORED_SIZE:
            raise BadRequestError(
                f"tree size {checkpoint.size} is above 2^63-1, the largest this witness stores"
            )
        if request.old_size > checkpoint.size:
            raise BadRequestError(
                f"old size {request.old_size} is larger than the checkpoint size {checkpoint.size}"
            )
        timestamp = 0
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT size, root, note, cosigned_at FROM logs WHERE origin = ?", (origin,)
            ).fetchone()
            held_size, held_root, held_note, last_time = (
                (0, merkle.EMPTY_ROOT, "", 0)
                if row is None
                else (int(row[0]), bytes(row[1]), str(row[2]), int(row[3]))
            )
            if request.old_size != held_size:
                raise StaleSizeError(
                    f"old size {request.old_size} does not match the size this witness "
                    f"holds for {origin!r}: {held_size}",
                    size=held_size,
                )
            refusal = self._check(request, checkpoint, held_size, held_root)
            if refusal is not None:
                self._keep_evidence(conn, origin, request, refusal, held_note)
                # the evidence is committed, the state is unchanged
            else:
                timestamp = max(int(self.clock()), last_time)
                conn.execute(
                    "INSERT INTO logs (origin, size, root, note, log_vkey, cosigned_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET "
                    "size = excluded.size, root = excluded.root, note = excluded.note, "
                    "log_vkey = excluded.log_vkey, cosigned_at = excluded.cosigned_at",
                    (
                        origin,
                        checkpoint.size,
                        checkpoint.root_hash,
                        request.note,
                        log_vkey,
                        timestamp,
                    ),
                )
        if refusal is not None:
            raise refusal
        return cosign(checkpoint.to_text(), self.signer, timestamp)

    def _open(self, note: str, origin: str, keys: Sequence[Verifier]) -> tuple[Checkpoint, str]:
        try:
            opened = open_note(note, keys)
        except UnverifiedNoteError as e:
            raise LogSignatureError(
                f"the checkpoint is not signed by a key of log {origin!r}"
            ) from e
        except SignatureError as e:
            raise LogSignatureError(f"the log's signature does not verify: {e}") from e
        except NoteFormatError as e:
            raise BadRequestError(f"malformed checkpoint note: {e}") from e
        try:
            checkpoint = Checkpoint.from_text(opened.text, strict=True)
        except NoteFormatError as e:
            raise BadRequestError(f"malformed checkpoint: {e}") from e
        signer = opened.verified[0]
        vkey = next(k.vkey for k in keys if (k.name, k.key_id) == (signer.name, signer.key_id))
        return checkpoint, vkey

    @staticmethod
    def _check(
        request: AddCheckpointRequest, checkpoint: Checkpoint, held_size: int, held_root: bytes
    ) -> LedgerError | None:
        """The refusal for a request whose old size matches the state, or ``None``."""
        if request.old_size == 0:
            if request.proof:
                return InconsistentCheckpointError(
                    f"the consistency proof must be empty when old size is 0, "
                    f"got {len(request.proof)} hashes"
                )
            if checkpoint.size == 0 and checkpoint.root_hash != merkle.EMPTY_ROOT:
                return InconsistentCheckpointError(
                    "a checkpoint of the empty tree must have the empty root "
                    f"{merkle.EMPTY_ROOT.hex()}, got {checkpoint.root_hash.hex()}"
                )
            return None
        if checkpoint.size == held_size and checkpoint.root_hash != held_root:
            return ForkError(
                f"fork: this witness cosigned tree size {held_size} of "
                f"{checkpoint.origin!r} with root {base64.b64encode(held_root).decode()}, "
                f"this checkpoint of the same size has root "
                f"{base64.b64encode(checkpoint.root_hash).decode()}",
                size=held_size,
            )
        try:
            merkle.verify_consistency(
                held_size, checkpoint.size, request.proof, held_root, checkpoint.root_hash
            )
        except (ConsistencyProofError, ProofError) as e:
            return InconsistentCheckpointError(
                f"consistency proof from tree size {held_size} to {checkpoint.size} "
                f"does not verify: {e}"
            )
        return None

    def _keep_evidence(
        self,
        conn: sqlite3.Connection,
        origin: str,
        request: AddCheckpointRequest,
        refusal: LedgerError,
        held_note: str,
    ) -> None:
        if request.old_size == 0:
            return  # nothing held to contradict: a bad request, not evidence
        reason = "fork" if isinstance(refusal, ForkError) else "inconsistent"
        conn.execute(
            "INSERT INTO evidence (origin, received_at, reason, detail, old_size, proof, note, "
            "held_note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                origin,
                int(self.clock()),
                reason,
                str(refusal),
                request.old_size,
                "\n".join(base64.b64encode(h).decode("ascii") for h in request.proof),
                request.note,
                held_note,
            ),
        )

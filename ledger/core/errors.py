"""The one exception hierarchy of rxledger.

Every error the ledger raises on purpose is a :class:`LedgerError`. Adapters (the
API, the CLI) translate these to problem+json or a one-line message in one place,
and translate foreign exceptions into them at the boundary (``raise ... from e``).

Messages say what was checked, what was expected and what was found, e.g.
``"inclusion proof has wrong size: expected 3, got 4"``.
"""

from __future__ import annotations

from dataclasses import dataclass


class LedgerError(Exception):
    """Root of every error rxledger raises on purpose.

    ``code`` is a stable, machine-readable slug (it becomes the problem+json
    ``type`` and the CLI's ``--json`` error code); the message is for people.
    """

    code = "ledger-error"


# --- bad input --------------------------------------------------------------


class EncodingError(LedgerError):
    """Input that is not well-formed: bad JSON, wrong types, missing fields."""

    code = "malformed"


class RangeError(EncodingError):
    """An index or size outside what exists (``leaf_index: 9, want < tree_size 8``)."""

    code = "bad-range"


class KeyFormatError(EncodingError):
    """A key string (vkey/skey) that is not in the C2SP signed-note form."""

    code = "bad-key"


class NoteFormatError(EncodingError):
    """A signed note or checkpoint that does not parse."""

    code = "malformed-note"


# --- verification -----------------------------------------------------------


class VerificationError(LedgerError):
    """Something that was checked did not hold."""

    code = "verification-failed"


class SignatureError(VerificationError):
    """A signature is missing, unknown or does not verify."""

    code = "bad-signature"


class UnknownKeyError(SignatureError):
    """The signing key is not one the verifier trusts (not registered, revoked)."""

    code = "unknown-key"


class ProofError(VerificationError):
    """A Merkle proof is malformed or does not lead to the expected root."""

    code = "bad-proof"


class InclusionProofError(ProofError):
    code = "bad-inclusion-proof"


class ConsistencyProofError(ProofError):
    code = "bad-consistency-proof"


class RootMismatchError(ProofError):
    """A recomputed root differs from the one a checkpoint or proof states."""

    code = "root-mismatch"


class CheckpointError(VerificationError):
    """A checkpoint is invalid: wrong origin, bad signature, impossible size."""

    code = "bad-checkpoint"


class RecordError(VerificationError):
    """A record in a stream is wrong. ``seq`` names the first bad one."""

    code = "bad-record"

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message if seq is None else f"record {seq}: {message}")
        self.seq = seq


class ChainError(RecordError):
    """A record's ``prev`` does not match the hash of the record before it."""

    code = "chain-broken"


class TimeOrderError(RecordError):
    """A record's time is out of order or too far from its statement's time."""

    code = "time-order"


class PayloadError(RecordError):
    """A stored payload does not match the digest its record commits to."""

    code = "payload-mismatch"


class MerkleNodeError(VerificationError):
    """A stored Merkle node does not match the hash of what it covers."""

    code = "merkle-node-mismatch"

    def __init__(self, message: str, *, level: int, index: int) -> None:
        super().__init__(message)
        self.level = level
        self.index = index
        self.first_seq = index << level


@dataclass(frozen=True)
class InconsistencyEvidence:
    """What proves a log forked or shrank: both checkpoints and the proof."""

    old_checkpoint: str
    new_checkpoint: str
    proof: tuple[bytes, ...]


class InconsistencyError(VerificationError):
    """Two checkpoints of one log that cannot both be true (fork, rewrite, shrink)."""

    code = "inconsistent"

    def __init__(self, message: str, *, evidence: InconsistencyEvidence) -> None:
        super().__init__(message)
        self.evidence = evidence


# --- storage ----------------------------------------------------------------


class StorageError(LedgerError):
    code = "storage-error"


class NotFoundError(StorageError):
    code = "not-found"


class ConflictError(StorageError):
    code = "conflict"


class PushbackError(StorageError):
    """The ledger is busy; the caller should retry later."""

    code = "busy"


class NotInitializedError(StorageError):
    """The database has no ledger in it yet (run ``rxledger init``)."""

    code = "not-initialized"


# --- domain -----------------------------------------------------------------


class RejectionError(LedgerError):
    """A statement that is well-formed and signed, but that the rules refuse.

    ``code`` is per instance: a stable slug such as ``replayed-nonce`` or
    ``over-quantity``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

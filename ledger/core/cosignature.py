"""Witness cosignatures (c2sp.org/tlog-cosignature) and the tlog-witness request body.

A cosignature is one more signature line on a signed checkpoint, made by a
*witness* that has checked the checkpoint is consistent with every earlier one it
saw of the same log. rxledger implements the Ed25519 type ("cosignature/v1"):

* the witness key is an Ed25519 key whose key id is computed with signature type
  ``0x04``: ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``, and whose verifier
  key string is ``<name>+<hex key id>+base64(0x04 || public key)``;
* the signed message is ``"cosignature/v1\\n" "time <T>\\n"`` followed by the whole
  checkpoint text (extension lines included, signature lines excluded), where ``T``
  is a POSIX timestamp in decimal without leading zeros;
* the signature carried by the note line is ``u64 big-endian T || 64-byte Ed25519
  signature`` (after the 4-byte key id, as every note signature).

A witness signs with an ordinary :class:`~ledger.core.note.Signer` (an
``rxledger keygen`` / ``rxledger witness keygen`` key file): the same Ed25519 key
is named with type ``0x04`` as a witness, so its note key id (type ``0x01``) and
its cosignature key id differ and one can never be taken for the other
(transparency-dev/formats ``NewSignerForCosignatureV1`` reads such keys the same
way).

The request body of c2sp.org/tlog-witness ``add-checkpoint`` (an ``old <size>``
line, up to 63 base64 consistency-proof lines, an empty line, the signed
checkpoint) is a wire format too, so it lives here, pure, for both the witness
(:func:`parse_add_checkpoint_request`) and the log that submits to it
(:func:`format_add_checkpoint_request`).
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import nacl.exceptions
import nacl.signing

from ledger.core.checkpoint import Checkpoint
from ledger.core.errors import CheckpointError, NoteFormatError
from ledger.core.note import (
    MAX_SIGNATURES,
    SIGNATURE_PREFIX,
    Note,
    PublicKey,
    Signer,
    UnverifiedNoteError,
    b64decode_strict,
    is_valid_key_name,
    key_id,
    open_note,
)

__all__ = [
    "COSIGNATURE_V1_HEADER",
    "COSIGNATURE_V1_TYPE",
    "MAX_PROOF_LINES",
    "MAX_TIMESTAMP",
    "AddCheckpointRequest",
    "Cosignature",
    "WitnessVerifier",
    "add_cosignatures",
    "cosign",
    "cosignature_key_id",
    "cosignature_message",
    "format_add_checkpoint_request",
    "parse_add_checkpoint_request",
    "verify_cosignatures",
    "witness_verifier",
    "witness_vkey",
]

#: Signature type byte of Ed25519 cosignature/v1 keys (c2sp.org/tlog-cosignature).
COSIGNATURE_V1_TYPE = 0x04

#: The first line of every cosignature/v1 signed message (domain separation).
COSIGNATURE_V1_HEADER = "cosignature/v1"

#: Timestamps MUST NOT exceed 2^63 - 1 (c2sp.org/tlog-cosignature).
MAX_TIMESTAMP = 2**63 - 1

#: A client MUST NOT send more than 63 consistency proof lines (c2sp.org/tlog-witness).
MAX_PROOF_LINES = 63

_KEY_ID_SIZE = 4
_ED25519_SIGNATURE_SIZE = 64
_TIMESTAMP_SIZE = 8
#: key id || timestamp || Ed25519 signature
_LINE_PAYLOAD_SIZE = _KEY_ID_SIZE + _TIMESTAMP_SIZE + _ED25519_SIGNATURE_SIZE
_HASH_SIZE = 32

_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise CheckpointError(
            f"cosignature timestamp must be an int, got {type(timestamp).__name__}"
        )
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise CheckpointError(f"cosignature timestamp must be within 0..2^63-1, got {timestamp}")


def cosignature_key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte cosignature/v1 key id: ``SHA-256(name || 0x0A || 0x04 || key)[:4]``."""
    return key_id(name, public_key, COSIGNATURE_V1_TYPE)


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs: header line, ``time`` line, checkpoint text."""
    _check_timestamp(timestamp)
    header = f"{COSIGNATURE_V1_HEADER}\ntime {timestamp}\n"
    return header.encode("ascii") + checkpoint_text.encode("utf-8")


def _checkpoint_text(checkpoint_text: str) -> str:
    """Check that ``checkpoint_text`` is a strictly valid checkpoint body; return it."""
    try:
        Checkpoint.from_text(checkpoint_text, strict=True)
    except NoteFormatError as e:
        raise CheckpointError(f"refusing to cosign an invalid checkpoint: {e}") from e
    return checkpoint_text


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: who (name, key id), when (POSIX seconds), and the bytes.

    ``signature`` is the raw 64-byte Ed25519 signature; :meth:`to_line` gives the
    note signature line back.
    """

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    def to_line(self) -> str:
        """``"— <name> base64(key id || u64 timestamp || signature)\\n"``."""
        payload = self.key_id + struct.pack(">Q", self.timestamp) + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {_b64encode(payload)}\n"


class WitnessVerifier(PublicKey):
    """A witness's Ed25519 cosignature/v1 public key (signature type ``0x04``),
    ``<name>+<hex key id>+base64(0x04 || public key)``.

    A plain ``0x01`` signed-note key is refused with a hint: a witness is named
    by its cosignature key, which ``rxledger witness keygen`` prints.
    """

    __slots__ = ()

    SIGNATURE_TYPE: ClassVar[int] = COSIGNATURE_V1_TYPE
    WHAT: ClassVar[str] = "witness key"
    TYPE_HINT: ClassVar[str] = (
        " (a plain signed-note key is type 0x01; a witness key has type 0x04: "
        "`rxledger witness keygen` prints it)"
    )

    def verify(self, checkpoint_text: str, signature: bytes) -> int | None:
        """Check a cosignature's ``u64 timestamp || Ed25519 signature`` on a checkpoint text.

        Returns the timestamp when the signature is valid, ``None`` otherwise (wrong
        length, timestamp above 2^63-1, or a signature that does not verify).
        """
        if len(signature) != _TIMESTAMP_SIZE + _ED25519_SIGNATURE_SIZE:
            return None
        (timestamp,) = struct.unpack(">Q", signature[:_TIMESTAMP_SIZE])
        if timestamp > MAX_TIMESTAMP:
            return None
        message = cosignature_message(checkpoint_text, timestamp)
        try:
            self._verify_key.verify(message, signature[_TIMESTAMP_SIZE:])
        except nacl.exceptions.BadSignatureError:
            return None
        return int(timestamp)


def witness_verifier(signer: Signer) -> WitnessVerifier:
    """The cosignature/v1 verifier of a witness that signs with ``signer``."""
    return WitnessVerifier(signer.name, signer.public_key)


def witness_vkey(signer: Signer) -> str:
    """The witness verifier key string (type ``0x04``) for ``signer``'s Ed25519 key."""
    return witness_verifier(signer).vkey


def cosign(checkpoint_text: str, signer: Signer, timestamp: int) -> str:
    """Cosign a checkpoint text as a witness; return the note signature line.

    ``checkpoint_text`` is the checkpoint body (origin, size, root, extension lines,
    ending in a newline), without signature lines. Refuses
    (:class:`~ledger.core.errors.CheckpointError`) a text that is not a strictly
    valid checkpoint or a timestamp outside ``0..2^63-1``. Ed25519 is deterministic:
    the same inputs give the same line.
    """
    text = _checkpoint_text(checkpoint_text)
    signature = signer.sign(cosignature_message(text, timestamp))
    verifier = witness_verifier(signer)
    return Cosignature(verifier.name, verifier.key_id, timestamp, signature).to_line()


def _open_unverified(note: str | bytes) -> Note:
    """Parse a signed note without trusting any key: every signature is unverified.

    :func:`~ledger.core.note.open_note` with no verifiers does exactly the parsing
    and always ends in :class:`~ledger.core.note.UnverifiedNoteError`, which carries
    the parsed note.
    """
    try:
        open_note(note, ())
    except UnverifiedNoteError as e:
        return e.note
    raise AssertionError("open_note accepted a note with no trusted keys")  # pragma: no cover


def verify_cosignatures(
    note: str | bytes, witnesses: Sequence[WitnessVerifier]
) -> list[Cosignature]:
    """The valid cosignatures on a signed checkpoint by the given witnesses.

    Lines whose name and key id match none of ``witnesses`` are ignored (they are
    the log's own signature, or witnesses the caller does not trust), and so are
    lines by a trusted witness that do not verify: they do not count. Each witness
    counts once (its latest valid timestamp), in the order of ``witnesses``, so that
    ``len(result)`` can be compared with a quorum.

    This does **not** verify the log's signature: open the note with
    :func:`~ledger.core.checkpoint.open_checkpoint` for that. Raises
    :class:`~ledger.core.errors.NoteFormatError` if the note is malformed.
    """
    parsed = _open_unverified(note)
    by_slot: dict[tuple[str, bytes], WitnessVerifier] = {}
    for witness in witnesses:
        by_slot.setdefault((witness.name, witness.key_id), witness)
    best: dict[WitnessVerifier, Cosignature] = {}
    for sig in parsed.unverified:
        trusted = by_slot.get((sig.name, sig.key_id))
        if trusted is None:
            continue
        timestamp = trusted.verify(parsed.text, sig.signature)
        if timestamp is None:
            continue
        previous = best.get(trusted)
        if previous is None or timestamp > previous.timestamp:
            best[trusted] = Cosignature(
                trusted.name, trusted.key_id, timestamp, sig.signature[_TIMESTAMP_SIZE:]
            )
    ordered = dict.fromkeys(witnesses)
    return [best[w] for w in ordered if w in best]


def _parse_signature_lines(lines: str) -> list[str]:
    """Split a block of note signature lines (as a witness returns them)."""
    if not lines:
        return []
    if not lines.endswith("\n"):
        raise NoteFormatError("signature lines must end with a newline")
    out = []
    for number, line in enumerate(lines[:-1].split("\n"), start=1):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteFormatError(f"signature line {number} does not start with '— '")
        name, _, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not is_valid_key_name(name):
            raise NoteFormatError(f"signature line {number} has an invalid key name {name!r}")
        payload = b64decode_strict(b64)
        if payload is None or len(payload) <= _KEY_ID_SIZE:
            raise NoteFormatError(
                f"signature line {number} is not base64 of a key id and a signature"
            )
        out.append(line + "\n")
    return out


def add_cosignatures(note: str, lines: Iterable[str]) -> str:
    """Append cosignature lines to a signed note, keeping its existing lines as written.

    ``lines`` are note signature lines, each ending in a newline (or blocks of them,
    as a witness's ``add-checkpoint`` response). A line already on the note is not
    repeated. Nothing is verified here; :func:`verify_cosignatures` tells which
    lines count. Raises :class:`~ledger.core.errors.NoteFormatError` if the note or
    a line is malformed, or if the result would carry more than
    :data:`~ledger.core.note.MAX_SIGNATURES` signatures.
    """
    _open_unverified(note)  # a well-formed signed note, or NoteFormatError
    split = note.rfind("\n\n")
    text, block = note[: split + 1], note[split + 2 :]
    existing = [f"{line}\n" for line in block[:-1].split("\n")]
    seen = set(existing)
    added: list[str] = []
    for chunk in lines:
        for line in _parse_signature_lines(chunk):
            if line not in seen:
                seen.add(line)
                added.append(line)
    if len(existing) + len(added) > MAX_SIGNATURES:
        raise NoteFormatError(
            f"too many signatures: {len(existing) + len(added)}, at most {MAX_SIGNATURES} accepted"
        )
    return text + "\n" + "".join(existing) + "".join(added)


# --- c2sp.org/tlog-witness add-checkpoint request body -------------------------


@dataclass(frozen=True)
class AddCheckpointRequest:
    """An ``add-checkpoint`` request: the old size, the consistency proof, the signed note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def format_add_checkpoint_request(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The request body: ``old <size>\\n``, one base64 hash per line, ``\\n``, the note."""
    if isinstance(old_size, bool) or not isinstance(old_size, int) or old_size < 0:
        raise NoteFormatError(f"old size must be a non-negative int, got {old_size!r}")
    if len(proof) > MAX_PROOF_LINES:
        raise NoteFormatError(
            f"consistency proof has {len(proof)} hashes, at most {MAX_PROOF_LINES} may be sent"
        )
    head = f"old {old_size}\n" + "".join(f"{_b64encode(h)}\n" for h in proof)
    return (head + "\n" + note).encode("utf-8")


def parse_add_checkpoint_request(body: bytes) -> AddCheckpointRequest:
    """Parse an ``add-checkpoint`` request body (c2sp.org/tlog-witness).

    Strict: the old size in decimal without leading zeros, at most 63 proof lines,
    each the standard base64 of a 32-byte hash, then an empty line and a note that
    is valid UTF-8. Raises :class:`~ledger.core.errors.NoteFormatError` saying
    which line is wrong. The note itself is checked by whoever opens it.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteFormatError(f"request body is not valid UTF-8 at byte {e.start}") from e
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise NoteFormatError(
            "request body must be an old size line, proof lines, an empty line and a checkpoint"
        )
    old_line, *proof_lines = head.split("\n")
    if not old_line.startswith("old "):
        raise NoteFormatError(f"first line must be 'old <size>', got {old_line[:40]!r}")
    digits = old_line[len("old ") :]
    if _DECIMAL.fullmatch(digits) is None or len(digits) > 20:
        raise NoteFormatError(
            f"old size must be a decimal number without leading zeros, got {digits[:40]!r}"
        )
    old_size = int(digits)
    if old_size > 2**64 - 1:
        raise NoteFormatError(f"old size {digits} does not fit in 64 bits")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise NoteFormatError(
            f"too many consistency proof lines: {len(proof_lines)}, at most {MAX_PROOF_LINES}"
        )
    proof = []
    for number, line in enumerate(proof_lines, start=1):
        digest = b64decode_strict(line)
        if digest is None or len(digest) != _HASH_SIZE:
            raise NoteFormatError(
                f"consistency proof line {number} is not the base64 of a 32-byte hash"
            )
        proof.append(digest)
    if not note:
        raise NoteFormatError("request body has no checkpoint after the empty line")
    return AddCheckpointRequest(old_size=old_size, proof=tuple(proof), note=note)

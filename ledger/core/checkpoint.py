"""C2SP transparency-log checkpoints.

A checkpoint (c2sp.org/tlog-checkpoint) is a signed note (c2sp.org/signed-note,
see :mod:`ledger.core.note`) whose text is::

    <origin>\\n
    <tree size, decimal>\\n
    <root hash, base64>\\n
    [<extension line>\\n ...]

rxledger puts the chain head record hash in an extension line (ARCHITECTURE §3).
Witness cosignatures (c2sp.org/tlog-cosignature) are further signature lines on the
same note and are returned as unverified signatures by :func:`open_checkpoint`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.core.errors import CheckpointError, NoteFormatError
from ledger.core.note import Note, Signer, UnverifiedNoteError, Verifier, open_note, sign_note

__all__ = ["HASH_SIZE", "MAX_TREE_SIZE", "Checkpoint", "open_checkpoint"]

#: An RFC 6962 / RFC 9162 SHA-256 root hash is 32 bytes.
HASH_SIZE = 32

#: Tree sizes are unsigned 64-bit integers (``uint64`` in every implementation).
MAX_TREE_SIZE = 2**64 - 1

_STRICT_SIZE = re.compile(r"0|[1-9][0-9]*")
_LAX_SIZE = re.compile(r"[0-9]+")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
# Fields are single lines of UTF-8: no newline, control character or lone surrogate.
_CONTROL = re.compile(r"[\x00-\x1f\ud800-\udfff]")


def _decode_root(line: str, *, strict: bool) -> bytes:
    if _BASE64.fullmatch(line) is None:
        raise NoteFormatError(f"checkpoint root hash: expected base64, got {line!r}")
    root = base64.b64decode(line)
    if strict:
        if len(root) != HASH_SIZE:
            raise NoteFormatError(
                f"checkpoint root hash has wrong size: expected {HASH_SIZE} bytes, got {len(root)}"
            )
        if base64.b64encode(root).decode("ascii") != line:
            raise NoteFormatError(f"checkpoint root hash: base64 is not canonical: {line!r}")
    return root


def _decode_size(line: str, *, strict: bool) -> int:
    pattern = _STRICT_SIZE if strict else _LAX_SIZE
    if pattern.fullmatch(line) is None:
        want = "a decimal number without leading zeros" if strict else "a decimal number"
        raise NoteFormatError(f"checkpoint tree size: expected {want}, got {line!r}")
    # 20 digits hold any uint64; refuse longer strings before converting them.
    digits = line.lstrip("0") or "0"
    size = int(digits) if len(digits) <= 20 else MAX_TREE_SIZE + 1
    if size > MAX_TREE_SIZE:
        raise NoteFormatError(f"checkpoint tree size: {line} does not fit in 64 bits")
    return size


@dataclass(frozen=True)
class Checkpoint:
    """The body of a c2sp.org/tlog-checkpoint: origin, tree size, root hash, extensions.

    The fields are checked on construction so that :meth:`to_text` always writes a
    checkpoint that parses back to the same value. Full C2SP validity (a 32-byte
    root hash, non-empty extension lines) is checked by :meth:`from_text` with
    ``strict=True`` and before :meth:`sign`.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise CheckpointError("checkpoint origin must be a non-empty string")
        if _CONTROL.search(self.origin):
            raise CheckpointError(
                f"checkpoint origin must not contain newlines or control characters: "
                f"{self.origin!r}"
            )
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError(f"checkpoint size must be an int, got {type(self.size).__name__}")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint size {self.size} is not an unsigned 64-bit integer")
        if not isinstance(self.root_hash, bytes):
            raise CheckpointError(
                f"checkpoint root hash must be bytes, got {type(self.root_hash).__name__}"
            )
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("checkpoint extensions must be a tuple of strings")
        for line in self.extensions:
            if not isinstance(line, str) or _CONTROL.search(line):
                raise CheckpointError(
                    f"checkpoint extension line must be a string without newlines or control "
                    f"characters: {line!r}"
                )

    @classmethod
    def from_text(cls, text: str, *, strict: bool = True) -> Checkpoint:
        """Parse a checkpoint note text (the note body, not the signed note).

        ``strict=True`` is a full reading of c2sp.org/tlog-checkpoint: at least three
        lines, each ending in a newline; a non-empty origin; the tree size in
        decimal without sign or leading zeros (``0`` for the empty tree), below
        2^64; the root hash as canonical base64 of exactly 32 bytes; non-empty
        extension lines.

        ``strict=False`` accepts what ``transparency-dev/formats`` ``log.Checkpoint``
        accepts: leading zeros in the size, a root hash of any length, empty
        extension lines.

        Raises :class:`~ledger.core.errors.NoteFormatError` saying which line is wrong.
        """
        if not isinstance(text, str):
            raise NoteFormatError(f"checkpoint text must be str, got {type(text).__name__}")
        bad = re.search(r"[\x00-\x09\x0b-\x1f\ud800-\udfff]", text)
        if bad is not None:
            raise NoteFormatError(
                f"checkpoint contains a control character or lone surrogate "
                f"U+{ord(bad.group()):04X} at offset {bad.start()}"
            )
        if not text.endswith("\n"):
            raise NoteFormatError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteFormatError(
                f"checkpoint has too few lines: expected origin, tree size and root hash, "
                f"got {len(lines)} line(s)"
            )
        origin, size_line, root_line, *extensions = lines
        if not origin:
            raise NoteFormatError("checkpoint origin (first line) is empty")
        size = _decode_size(size_line, strict=strict)
        root = _decode_root(root_line, strict=strict)
        if strict:
            for number, line in enumerate(extensions, start=4):
                if not line:
                    raise NoteFormatError(f"checkpoint extension line (line {number}) is empty")
        return cls(origin=origin, size=size, root_hash=root, extensions=tuple(extensions))

    def to_text(self) -> str:
        """The checkpoint note text, ending in a newline (c2sp.org/tlog-checkpoint)."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        head = f"{self.origin}\n{self.size}\n{root}\n"
        return head + "".join(f"{line}\n" for line in self.extensions)

    def sign(self, signers: Sequence[Signer]) -> str:
        """The checkpoint as a signed note, signed by ``signers`` in order.

        Refuses (:class:`~ledger.core.errors.CheckpointError`) to sign a checkpoint
        that is not strictly C2SP-valid.
        """
        text = self.to_text()
        try:
            Checkpoint.from_text(text, strict=True)
        except NoteFormatError as e:
            raise CheckpointError(f"refusing to sign an invalid checkpoint: {e}") from e
        return sign_note(text, signers)


def open_checkpoint(
    message: str | bytes, *, origin: str, verifier: Verifier
) -> tuple[Checkpoint, Note]:
    """Verify a signed checkpoint from the log ``origin`` whose key is ``verifier``.

    The log's signature is verified before the text is read (c2sp.org/signed-note:
    the text must be ignored unless signed by a trusted key); other signatures
    (witness cosignatures) are left in ``Note.unverified``. Then the text is parsed
    strictly and its origin compared with ``origin``.

    Raises :class:`~ledger.core.errors.NoteFormatError` if the note or the
    checkpoint text is malformed, :class:`~ledger.core.errors.SignatureError` if the
    log's signature does not verify, :class:`~ledger.core.errors.UnknownKeyError`
    (an :class:`~ledger.core.note.UnverifiedNoteError`) if it is absent, and
    :class:`~ledger.core.errors.CheckpointError` if the origin differs.
    """
    try:
        note = open_note(message, [verifier])
    except UnverifiedNoteError as e:
        raise UnverifiedNoteError(
            f"checkpoint has no signature by the log key {verifier.name}+{verifier.key_id.hex()}",
            e.note,
        ) from e
    checkpoint = Checkpoint.from_text(note.text, strict=True)
    if checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint origin: expected {origin!r}, got {checkpoint.origin!r}")
    return checkpoint, note


def note_size(note: str) -> int:
    """The tree size a signed checkpoint states, read without verifying it.

    For ordering and lookups only: trust comes from :func:`open_checkpoint`.
    Raises :class:`CheckpointError` when the size line is not a decimal count.
    """
    lines = note.split("\n", 2)
    if len(lines) < 2 or not lines[1].isdigit():
        raise CheckpointError(f"checkpoint does not parse: {note[:80]!r}")
    return int(lines[1])

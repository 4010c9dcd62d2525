"""C2SP signed notes with Ed25519 keys.

Implements c2sp.org/signed-note (v1.0.0) with the parsing rules of its reference
implementation, ``golang.org/x/mod/sumdb/note`` (``note.go``), restricted to the one
signature type rxledger uses: Ed25519, signature type ``0x01``.

A signed note is a text ending in a newline, a blank line, and one or more signature
lines ``"— <key name> base64(key id || signature)\\n"`` (U+2014 EM DASH, space). The
text is split from the signatures at the *last* blank line. Keys travel as strings:

* verifier key: ``<name>+<hex key id>+base64(0x01 || 32-byte public key)``
* signer key:   ``PRIVATE+KEY+<name>+<hex key id>+base64(0x01 || 32-byte seed)``

and the key id is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``.

:func:`open_note` follows ``note.Open``: a malformed note is a
:class:`~ledger.core.errors.NoteFormatError`; a signature by a known key (same name
*and* key id) that does not verify rejects the whole note
(:class:`~ledger.core.errors.SignatureError`); signatures by unknown keys are kept
as unverified; a note without any verified signature is an
:class:`UnverifiedNoteError` (an :class:`~ledger.core.errors.UnknownKeyError`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

import nacl.exceptions
import nacl.signing

from ledger.core.errors import (
    KeyFormatError,
    NoteFormatError,
    SignatureError,
    UnknownKeyError,
)

__all__ = [
    "ED25519_SIGNATURE_TYPE",
    "MAX_SIGNATURES",
    "SIGNATURE_PREFIX",
    "Note",
    "NoteSignature",
    "Signer",
    "UnverifiedNoteError",
    "Verifier",
    "add_signatures",
    "is_valid_key_name",
    "key_id",
    "open_note",
    "sign_note",
]

#: Signature type identifier byte of plain Ed25519 signatures (c2sp.org/signed-note).
ED25519_SIGNATURE_TYPE = 0x01
#: the key types a verifier key string may have, for messages
_TYPE_NAMES = {0x01: "Ed25519", 0x04: "Ed25519 cosignature/v1"}

#: note.go rejects notes with more than 100 signature lines; C2SP requires at least 16.
MAX_SIGNATURES = 100

#: Every signature line starts with U+2014 EM DASH and a space.
SIGNATURE_PREFIX = "\u2014 "

_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
_KEY_ID_SIZE = 4
_PUBLIC_KEY_SIZE = 32
_SEED_SIZE = 32
_SIGNATURE_SIZE = 64

# Go's unicode.IsSpace (the Unicode White_Space property), which note.go's
# isValidName forbids in key names. Python's str.isspace() is a different set.
_WHITE_SPACE = frozenset(
    [
        *range(0x09, 0x0E),
        *(0x20, 0x85, 0xA0, 0x1680),
        *range(0x2000, 0x200B),
        *(0x2028, 0x2029, 0x202F, 0x205F, 0x3000),
    ]
)
# RFC 4648 §4 with padding, as Go's base64.StdEncoding accepts it.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_HEX_KEY_ID = re.compile(r"[0-9A-Fa-f]{8}")
# c2sp.org/signed-note: no ASCII control characters other than newline.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def b64decode_strict(text: str) -> bytes | None:
    """Standard padded base64 (RFC 4648 §4), or ``None`` if ``text`` is not that."""
    if _BASE64.fullmatch(text) is None:
        return None
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:  # pragma: no cover - the pattern already excludes these
        return None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def is_valid_key_name(name: str) -> bool:
    """Whether ``name`` is a valid signed-note key name.

    c2sp.org/signed-note and note.go ``isValidName``: non-empty, valid UTF-8, no
    Unicode white space and no ``+``. rxledger also refuses ASCII control
    characters, which could never appear in a signature line anyway.
    """
    if not name or "+" in name or _SURROGATE.search(name) or _CONTROL.search(name):
        return False
    return not any(ord(ch) in _WHITE_SPACE for ch in name)


def key_id(name: str, public_key: bytes, signature_type: int = ED25519_SIGNATURE_TYPE) -> bytes:
    """The 4-byte key id of an Ed25519 key: ``SHA-256(name || 0x0A || type || key)[:4]``.

    c2sp.org/signed-note, "Ed25519 signatures" (type ``0x01``); witness
    cosignature keys use the same derivation with type ``0x04``
    (c2sp.org/tlog-cosignature).
    """
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise KeyFormatError(
            f"Ed25519 public key has wrong size: expected {_PUBLIC_KEY_SIZE}, got {len(public_key)}"
        )
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_key
    ).digest()
    return digest[:_KEY_ID_SIZE]


def _check_name(name: str, what: str) -> None:
    if not is_valid_key_name(name):
        raise KeyFormatError(
            f"{what}: invalid key name {name!r} (must be non-empty, with no spaces, "
            "'+' or control characters)"
        )


def _parse_key_fields(
    name: str,
    hex_id: str,
    key64: str,
    what: str,
    *,
    signature_type: int = ED25519_SIGNATURE_TYPE,
    type_hint: str = "",
) -> tuple[bytes, bytes]:
    """Check the ``name+hexid+base64`` fields shared by vkeys and skeys.

    Returns ``(key id, raw key material after the type byte)``. The messages never
    echo ``key64``: for a signer key it is the secret.
    """
    _check_name(name, what)
    if _HEX_KEY_ID.fullmatch(hex_id) is None:
        raise KeyFormatError(f"{what}: key id must be 8 hex digits")
    key = b64decode_strict(key64)
    if not key:
        raise KeyFormatError(f"{what}: key data is not base64")
    if key[0] != signature_type:
        raise KeyFormatError(
            f"{what}: unsupported signature type: expected {signature_type:#04x} "
            f"({_TYPE_NAMES.get(signature_type, 'Ed25519')}), got {key[0]:#04x}{type_hint}"
        )
    if len(key) != 1 + _PUBLIC_KEY_SIZE:
        raise KeyFormatError(
            f"{what}: Ed25519 key has wrong size: expected {_PUBLIC_KEY_SIZE} bytes, "
            f"got {len(key) - 1}"
        )
    return bytes.fromhex(hex_id), key[1:]


class PublicKey:
    """An Ed25519 public key under a name, as a C2SP verifier key string
    ``<name>+<hex key id>+base64(type || public key)`` of one signature type.

    Equal and hashable by its (canonical) verifier key string. The PyNaCl
    ``VerifyKey`` is built once. Subclasses set :attr:`SIGNATURE_TYPE` and add
    what they verify: :class:`Verifier` (signed notes), and
    ``ledger.core.cosignature.WitnessVerifier`` (cosignatures).
    """

    __slots__ = ("_key_id", "_name", "_public_key", "_verify_key", "_vkey")

    SIGNATURE_TYPE: ClassVar[int] = ED25519_SIGNATURE_TYPE
    #: what the key is called in messages
    WHAT: ClassVar[str] = "verifier key"
    #: added to the message when a key of another type is given
    TYPE_HINT: ClassVar[str] = ""

    def __init__(self, name: str, public_key: bytes) -> None:
        if not isinstance(name, str):
            raise KeyFormatError(f"{self.WHAT}: invalid key name {name!r}")
        _check_name(name, self.WHAT)
        public_key = bytes(public_key)
        self._name = name
        self._public_key = public_key
        self._key_id = key_id(name, public_key, self.SIGNATURE_TYPE)
        self._verify_key = nacl.signing.VerifyKey(public_key)
        self._vkey = (
            f"{name}+{self._key_id.hex()}+{_b64encode(bytes([self.SIGNATURE_TYPE]) + public_key)}"
        )

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """Parse a verifier key ``<name>+<hex key id>+base64(type || public key)``.

        Raises :class:`~ledger.core.errors.KeyFormatError` for anything note.go's
        ``NewVerifier`` rejects: bad name, key id not 8 hex digits, bad base64, a
        type other than :attr:`SIGNATURE_TYPE`, a key that is not 32 bytes, or a
        key id that does not match the name and key.

        Stricter than note.go, it also rejects an upper-case key id, which note.go
        tolerates, so that a key has exactly one string and
        ``from_vkey(s).vkey == s``: the ledger compares keys as strings.
        """
        if not isinstance(vkey, str):
            raise KeyFormatError(f"{cls.WHAT} must be a string, got {type(vkey).__name__}")
        name, _, rest = vkey.partition("+")
        hex_id, _, key64 = rest.partition("+")
        claimed_id, public_key = _parse_key_fields(
            name,
            hex_id,
            key64,
            cls.WHAT,
            signature_type=cls.SIGNATURE_TYPE,
            type_hint=cls.TYPE_HINT,
        )
        verifier = cls(name, public_key)
        if verifier.key_id != claimed_id:
            raise KeyFormatError(
                f"{cls.WHAT}: key id does not match name and key: "
                f"expected {verifier.key_id.hex()}, got {hex_id.lower()}"
            )
        if verifier.vkey != vkey:
            raise KeyFormatError(
                f"{cls.WHAT} is not in canonical form (lower-case hex key id): "
                f"expected {verifier.vkey!r}"
            )
        return verifier

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> Self:
        """The key for a raw 32-byte Ed25519 public key under ``name``."""
        return cls(name, public_key)

    @property
    def name(self) -> str:
        """The key name."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id (see :func:`key_id`), of :attr:`SIGNATURE_TYPE`."""
        return self._key_id

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def vkey(self) -> str:
        """The verifier key string, in its one canonical spelling (lower-case key id)."""
        return self._vkey

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey) or type(other) is not type(self):
            return NotImplemented
        return self._vkey == other._vkey

    def __hash__(self) -> int:
        return hash(self._vkey)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._vkey!r})"


class Verifier(PublicKey):
    """An Ed25519 verifier key of c2sp.org/signed-note (note.go ``NewVerifier``):
    signature type ``0x01``; :meth:`verify` costs one Ed25519 check."""

    __slots__ = ()

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is a valid raw Ed25519 signature of ``message``.

        Never raises for a bad signature (wrong length included): returns ``False``.
        """
        if len(signature) != _SIGNATURE_SIZE:
            return False
        try:
            self._verify_key.verify(message, signature)
        except nacl.exceptions.BadSignatureError:
            return False
        return True


class Signer:
    """An Ed25519 signer key of c2sp.org/signed-note (note.go ``NewSigner``).

    Holds the secret: ``repr`` never shows it; only :attr:`skey` does.
    """

    __slots__ = ("_key_id", "_name", "_public_key", "_seed", "_signing_key")

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name, "signer key")
        if len(seed) != _SEED_SIZE:
            raise KeyFormatError(
                f"signer key: Ed25519 seed has wrong size: expected {_SEED_SIZE}, got {len(seed)}"
            )
        self._name = name
        self._seed = bytes(seed)
        self._signing_key = nacl.signing.SigningKey(self._seed)
        self._public_key = bytes(self._signing_key.verify_key)
        self._key_id = key_id(name, self._public_key)

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse a signer key ``PRIVATE+KEY+<name>+<hex key id>+base64(0x01 || seed)``.

        Raises :class:`~ledger.core.errors.KeyFormatError` for anything note.go's
        ``NewSigner`` rejects, including a key id that does not match the public
        key derived from the seed, and (like :meth:`Verifier.from_vkey`) any spelling
        other than the canonical one. Error messages never contain the secret.
        """
        if not isinstance(skey, str):
            raise KeyFormatError(f"signer key must be a string, got {type(skey).__name__}")
        if not skey.startswith(_PRIVATE_KEY_PREFIX):
            raise KeyFormatError("signer key: must start with 'PRIVATE+KEY+'")
        rest = skey[len(_PRIVATE_KEY_PREFIX) :]
        name, _, rest = rest.partition("+")
        hex_id, _, key64 = rest.partition("+")
        claimed_id, seed = _parse_key_fields(name, hex_id, key64, "signer key")
        signer = cls(name, seed)
        if signer.key_id != claimed_id:
            raise KeyFormatError(
                f"signer key: key id does not match name and key: "
                f"expected {signer.key_id.hex()}, got {hex_id.lower()}"
            )
        if signer.skey != skey:
            raise KeyFormatError("signer key is not in canonical form (lower-case hex key id)")
        return signer

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A fresh random Ed25519 key named ``name`` (note.go ``GenerateKey``)."""
        _check_name(name, "signer key")
        return cls(name, bytes(nacl.signing.SigningKey.generate()))

    @property
    def name(self) -> str:
        """The key name."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id (see :func:`key_id`)."""
        return self._key_id

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def skey(self) -> str:
        """The secret signer key string. Keep it secret."""
        key = _b64encode(bytes([ED25519_SIGNATURE_TYPE]) + self._seed)
        return f"{_PRIVATE_KEY_PREFIX}{self._name}+{self._key_id.hex()}+{key}"

    @property
    def vkey(self) -> str:
        """The matching verifier key string."""
        return self.verifier().vkey

    def verifier(self) -> Verifier:
        """The matching :class:`Verifier`."""
        return Verifier(self._name, self._public_key)

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature (RFC 8032, deterministic) of ``message``."""
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"Signer(name={self._name!r}, key_id={self._key_id.hex()!r})"


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note.

    ``signature`` is what follows the 4-byte key id: the raw 64-byte Ed25519
    signature for a verified signature; for an unverified one, whatever the line
    carried (for example a 72-byte c2sp.org/tlog-cosignature).
    """

    name: str
    key_id: bytes
    signature: bytes

    def to_line(self) -> str:
        """The signature line, with its final newline: ``"— name base64(id||sig)\\n"``.

        The base64 is canonical; :func:`add_signatures` keeps existing lines as written.
        """
        return f"{SIGNATURE_PREFIX}{self.name} {_b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """An opened note: its text and its verified and unverified signatures."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


class UnverifiedNoteError(UnknownKeyError):
    """A well-formed note with no signature by any trusted key (note.go ``UnverifiedNoteError``).

    ``note`` holds the text and the signatures that could not be checked.
    """

    def __init__(self, message: str, note: Note) -> None:
        super().__init__(message)
        self.note = note


@dataclass(frozen=True)
class _SignatureLine:
    line: str  # the line without the "— " prefix and newline, as written
    signature: NoteSignature


def _check_text_chars(text: str, what: str) -> None:
    """Signed notes are valid UTF-8 without ASCII control characters except newline."""
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise NoteFormatError(f"malformed note: {what} is not valid UTF-8 (lone surrogate)")
    bad = _CONTROL.search(text)
    if bad is not None:
        raise NoteFormatError(
            f"malformed note: {what} contains control character U+{ord(bad.group()):04X} "
            f"at offset {bad.start()}"
        )


def _decode_message(message: str | bytes) -> str:
    if isinstance(message, bytes | bytearray | memoryview):
        try:
            return bytes(message).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NoteFormatError(f"malformed note: not valid UTF-8 at byte {e.start}") from e
    if isinstance(message, str):
        return message
    raise NoteFormatError(f"note must be str or bytes, got {type(message).__name__}")


def _parse_note(message: str | bytes) -> tuple[str, list[_SignatureLine]]:
    """Split a signed note into its text and signature lines (note.go ``Open``)."""
    msg = _decode_message(message)
    _check_text_chars(msg, "note")
    split = msg.rfind("\n\n")
    if split < 0:
        raise NoteFormatError("malformed note: no blank line before the signature lines")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block:
        raise NoteFormatError("malformed note: no signature lines after the blank line")
    if not block.endswith("\n"):
        raise NoteFormatError("malformed note: last signature line does not end in newline")
    raw_lines = block[:-1].split("\n")
    if len(raw_lines) > MAX_SIGNATURES:
        raise NoteFormatError(
            f"malformed note: too many signatures: got {len(raw_lines)}, "
            f"at most {MAX_SIGNATURES} accepted"
        )
    lines = []
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.startswith(SIGNATURE_PREFIX):
            raise NoteFormatError(
                f"malformed note: signature line {number} does not start with '— '"
            )
        line = raw[len(SIGNATURE_PREFIX) :]
        name, _, b64 = line.partition(" ")
        if not is_valid_key_name(name):
            raise NoteFormatError(
                f"malformed note: signature line {number} has an invalid key name {name!r}"
            )
        sig = b64decode_strict(b64) if b64 else None
        if sig is None:
            raise NoteFormatError(f"malformed note: signature line {number} is not base64")
        if len(sig) <= _KEY_ID_SIZE:
            raise NoteFormatError(
                f"malformed note: signature line {number} is too short: "
                f"{len(sig)} bytes, need a 4-byte key id and a signature"
            )
        signature = NoteSignature(name, sig[:_KEY_ID_SIZE], sig[_KEY_ID_SIZE:])
        lines.append(_SignatureLine(line, signature))
    return text, lines


_AMBIGUOUS = object()


def open_note(message: str | bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse a signed note and verify its signatures (note.go ``Open``).

    For each signature line, the verifier with the same key name *and* key id is
    looked up. Signatures by unknown keys are returned as unverified (repeated
    identical lines once). A signature by a known key is verified; if it fails the
    whole note is rejected with :class:`~ledger.core.errors.SignatureError`
    ("invalid signature for key NAME+KEYID"). Repeated signatures by one known key
    after the first are ignored. If no signature verified, raises
    :class:`UnverifiedNoteError` (an :class:`~ledger.core.errors.UnknownKeyError`).

    Malformed notes raise :class:`~ledger.core.errors.NoteFormatError`: invalid
    UTF-8, ASCII control characters other than newline, no blank line, a last
    line without newline, a line that is not ``"— name base64"``, an invalid key
    name, a signature shorter than 5 bytes, more than :data:`MAX_SIGNATURES`.
    """
    known: dict[tuple[str, bytes], object] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        previous = known.get(slot)
        known[slot] = verifier if previous is None or previous == verifier else _AMBIGUOUS

    text, lines = _parse_note(message)
    text_bytes = text.encode("utf-8")
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen_known: set[tuple[str, bytes]] = set()
    seen_unknown: set[str] = set()
    for entry in lines:
        sig = entry.signature
        slot = (sig.name, sig.key_id)
        found = known.get(slot)
        if found is None:
            if entry.line not in seen_unknown:
                seen_unknown.add(entry.line)
                unverified.append(sig)
            continue
        if not isinstance(found, Verifier):
            raise SignatureError(
                f"ambiguous key {sig.name}+{sig.key_id.hex()}: "
                "two different trusted keys share this name and key id"
            )
        if slot in seen_known:
            continue
        seen_known.add(slot)
        if not found.verify(text_bytes, sig.signature):
            raise SignatureError(f"invalid signature for key {sig.name}+{sig.key_id.hex()}")
        verified.append(sig)

    note = Note(text=text, verified=tuple(verified), unverified=tuple(unverified))
    if not verified:
        signed_by = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in unverified)
        raise UnverifiedNoteError(
            f"note has no verifiable signatures (signed by: {signed_by})", note
        )
    return note


def _check_note_text(text: str) -> None:
    if not isinstance(text, str):
        raise NoteFormatError(f"note text must be str, got {type(text).__name__}")
    if not text.endswith("\n"):
        raise NoteFormatError("malformed note: text must end with a newline")
    _check_text_chars(text, "note text")


def _signature_lines(text: str, signers: Sequence[Signer]) -> list[str]:
    """The new signature lines, without the "— " prefix and the newline."""
    message = text.encode("utf-8")
    return [f"{s.name} {_b64encode(s.key_id + s.sign(message))}" for s in signers]


def _assemble(text: str, lines: Sequence[str]) -> str:
    if not lines:
        raise NoteFormatError("a signed note needs at least one signature")
    if len(lines) > MAX_SIGNATURES:
        raise NoteFormatError(
            f"too many signatures: {len(lines)}, at most {MAX_SIGNATURES} accepted"
        )
    return text + "\n" + "".join(f"{SIGNATURE_PREFIX}{line}\n" for line in lines)


def sign_note(text: str, signers: Sequence[Signer]) -> str:
    """Sign ``text`` with each signer, in order (note.go ``Sign`` of a new note).

    ``text`` must end in a newline and be a valid note text (no ASCII control
    characters other than newline). Ed25519 is deterministic, so the output is
    byte-for-byte reproducible.
    """
    _check_note_text(text)
    return _assemble(text, _signature_lines(text, signers))


def add_signatures(message: str, signers: Sequence[Signer]) -> str:
    """Add signatures to an already signed note (cosigning; note.go ``Sign`` of an opened note).

    The existing signature lines are kept as written and in order, except a line
    by the same key (name and key id) as one of ``signers``, which is replaced;
    the new lines follow. Repeated identical lines are written once. The existing
    signatures are **not** verified here: open the note with :func:`open_note`
    first if you only mean to cosign what a trusted key signed.
    """
    text, existing = _parse_note(message)
    replaced = {(s.name, s.key_id) for s in signers}
    kept: list[str] = []
    for entry in existing:
        slot = (entry.signature.name, entry.signature.key_id)
        if slot not in replaced and entry.line not in kept:
            kept.append(entry.line)
    return _assemble(text, kept + _signature_lines(text, signers))

"""Patients' secrets: the master key, pseudonyms, data keys and sealed payloads.

ARCHITECTURE §5 and ADR 0010. One 32-byte **master key**, held by the
operator in a file or an environment variable and never in the database,
gives three sub-keys (keyed BLAKE2b, one personalisation each):

- the **wrap key**, which seals each owner's random 32-byte **data key**
  (XChaCha20-Poly1305, the owner's id as associated data) for storage;
- the **pseudonym key**: a patient's pseudonym is ``P-`` and the first 32
  hex digits of HMAC-SHA-256 over their normalized real identifier, so the
  same patient always gets the same pseudonym and nobody without the key
  can test a guessed ID number against one;
- the **check key**, whose MAC of a fixed string is the master key's public
  id: a ledger records it, so opening a ledger with the wrong master key
  fails with a clear message instead of with undecryptable payloads.

A payload is sealed with its owner's data key (XChaCha20-Poly1305, a random
24-byte nonce) over ``seq`` and the payload digest as associated data, so a
sealed payload cannot be moved to another record. Destroying a data key
(crypto-shredding) makes every payload sealed with it unreadable.

Nothing here logs, and no error message carries key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b

from ledger.core.errors import LedgerError

KEY_BYTES = 32
NONCE_BYTES = 24
#: the first byte of a sealed payload: the format, so that it can change
SEALED_V1 = 0x01
#: the environment variables the master key is read from, in this order
MASTER_KEY_ENV = "RXLEDGER_MASTER_KEY"
MASTER_KEY_FILE_ENV = "RXLEDGER_MASTER_KEY_FILE"
MASTER_KEY_FILE = "master.key"


class MasterKeyError(LedgerError):
    """No master key, a malformed one, or not this ledger's. Never carries key bytes."""

    code = "master-key"


class SealError(LedgerError):
    """A sealed value does not open: wrong key, shredded key, or altered bytes."""

    code = "unsealable"


def _subkey(master: bytes, person: bytes) -> bytes:
    return blake2b(b"", digest_size=KEY_BYTES, key=master, person=person, encoder=RawEncoder)


@dataclass(frozen=True)
class MasterKey:
    """The operator's master key; ``repr`` never shows it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise MasterKeyError(f"a master key is {KEY_BYTES} bytes, got {len(self.secret)}")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def parse(cls, text: str, *, source: str) -> MasterKey:
        """From base64 text (a file's content or an environment variable)."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(f"{source}: not base64 (expected {KEY_BYTES} bytes)") from None
        if len(raw) != KEY_BYTES:
            raise MasterKeyError(f"{source}: expected {KEY_BYTES} bytes, found {len(raw)}")
        return cls(raw)

    def encoded(self) -> str:
        return base64.b64encode(self.secret).decode("ascii")

    @property
    def key_id(self) -> str:
        """A public fingerprint of this key (16 hex digits); reveals nothing of it."""
        check = _subkey(self.secret, b"rxl-check-v1")
        return hmac.new(check, b"rxledger master key", hashlib.sha256).hexdigest()[:16]

    def pseudonym(self, identifier: str) -> str:
        return pseudonym(_subkey(self.secret, b"rxl-pseudonym-v1"), identifier)

    def wrap(self, owner: str, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        wrapped = crypto_aead_xchacha20poly1305_ietf_encrypt(
            data_key, _owner_ad(owner), nonce, _subkey(self.secret, b"rxl-wrap-v1")
        )
        return nonce + wrapped

    def unwrap(self, owner: str, wrapped: bytes) -> bytes:
        try:
            return crypto_aead_xchacha20poly1305_ietf_decrypt(
                wrapped[NONCE_BYTES:],
                _owner_ad(owner),
                wrapped[:NONCE_BYTES],
                _subkey(self.secret, b"rxl-wrap-v1"),
            )
        except (CryptoError, ValueError):
            raise SealError(
                f"the data key of {owner!r} does not open with this master key"
            ) from None


def _owner_ad(owner: str) -> bytes:
    return b"rxledger data key v1\x00" + owner.encode()


def normalize_identifier(identifier: str) -> str:
    """An ID number as typed: surrounding space and case do not matter."""
    return "".join(identifier.split()).upper()


def pseudonym(key: bytes, identifier: str) -> str:
    """``P-`` and 32 hex digits (128 bits) of HMAC-SHA-256(key, normalized identifier)."""
    normalized = normalize_identifier(identifier)
    if not normalized:
        raise ValueError("an empty identifier has no pseudonym")
    return "P-" + hmac.new(key, normalized.encode(), hashlib.sha256).hexdigest()[:32]


def _payload_ad(seq: int, digest: bytes) -> bytes:
    return b"rxledger payload v1\x00" + seq.to_bytes(8, "big") + digest


def seal_payload(data_key: bytes, seq: int, digest: bytes, plaintext: bytes) -> bytes:
    """``0x01 || nonce || XChaCha20-Poly1305(plaintext)`` bound to ``seq`` and ``digest``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, _payload_ad(seq, digest), nonce, data_key
    )
    return bytes([SEALED_V1]) + nonce + sealed


def open_payload(data_key: bytes, seq: int, digest: bytes, sealed: bytes) -> bytes:
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[0] != SEALED_V1:
        raise SealError(f"payload of record {seq}: not a sealed payload")
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[1 + NONCE_BYTES :],
            _payload_ad(seq, digest),
            sealed[1 : 1 + NONCE_BYTES],
            data_key,
        )
    except (CryptoError, ValueError):
        raise SealError(
            f"payload of record {seq} does not open with its owner's data key"
        ) from None


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def load_master_key(default_file: Path) -> MasterKey:
    """``RXLEDGER_MASTER_KEY`` (base64), else the file ``RXLEDGER_MASTER_KEY_FILE``,
    else ``default_file``; raise :class:`MasterKeyError` saying how to provide one."""
    text = os.environ.get(MASTER_KEY_ENV)
    if text is not None and text.strip():
        return MasterKey.parse(text, source=MASTER_KEY_ENV)
    configured = os.environ.get(MASTER_KEY_FILE_ENV)
    path = Path(configured) if configured else default_file
    try:
        content = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise MasterKeyError(
            f"no master key: {path} does not exist and {MASTER_KEY_ENV} is not set "
            "(`rxledger init` creates the file; or set "
            f"{MASTER_KEY_ENV} / {MASTER_KEY_FILE_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise MasterKeyError(
            f"cannot read the master key file {path}: {e.__class__.__name__}"
        ) from None
    return MasterKey.parse(content, source=str(path))

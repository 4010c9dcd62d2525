"""Payloads: what a record commits to but does not hold (ARCHITECTURE §5).

A clinical payload is a JSON object with a random ``salt`` field, in its
RFC 8785 canonical bytes. The statement's ``body.payload_digest`` is the hex
SHA-256 of those bytes: because of the salt, the digest reveals nothing about
a low-entropy plaintext (a drug code and a quantity cannot be guessed and
checked against it).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

from ledger.core.canonical import canonicalize


class _Erased:
    """A record's payload was shredded (erasure or retention): what a replay gets
    instead of its bytes (``ledger.domain.privacy``)."""

    _instance: _Erased | None = None

    def __new__(cls) -> _Erased:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ERASED"


ERASED = _Erased()
#: what the rules and the replay get for a record's payload
Payload = bytes | None | _Erased


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def seal(content: Mapping[str, Any]) -> tuple[bytes, str]:
    """Salt and canonicalize ``content``; return ``(payload bytes, hex digest)``."""
    salted = {**content, "salt": secrets.token_hex(16)}
    data = canonicalize(salted)
    return data, payload_digest(data)

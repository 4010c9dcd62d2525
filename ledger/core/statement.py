"""Statements: facts signed by the actor who makes them (ARCHITECTURE §3).

A statement is the JSON object ``{type, actor, key, issued_at, nonce, body}``;
its signature is Ed25519 over the RFC 8785 (JCS) bytes of that object. We keep
those exact bytes (:attr:`SignedStatement.signed_bytes`) so that everything
downstream hashes and verifies stored bytes and never re-canonicalizes.

Field rules (checked by :meth:`Statement.from_mapping`):

- ``type``: dotted lower-case name, e.g. ``rx.dispense``.
- ``actor``: the actor id, 1-128 of ``[A-Za-z0-9._:-]``.
- ``key``: the signing key as a C2SP verifier key string ``name+hash+base64``;
  its name must be the actor id.
- ``issued_at``: RFC 3339 UTC, ``YYYY-MM-DDTHH:MM:SS[.fraction]Z``.
- ``nonce``: 16-64 characters of ``[A-Za-z0-9_-]`` (e.g. 128 random bits, hex).
- ``body``: a JSON object; numbers in it are integers (never floats).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.core.canonical import canonicalize
from ledger.core.errors import EncodingError, KeyFormatError, SignatureError
from ledger.core.frozen import make_frozen
from ledger.core.note import Signer, Verifier

STATEMENT_FIELDS = ("type", "actor", "key", "issued_at", "nonce", "body")
SIGNATURE_SIZE = 64

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}")
_ACTOR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_B64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@functools.lru_cache(maxsize=65536)
def verifier_for(vkey: str) -> Verifier:
    """Verifiers by key string, cached: building one decodes and hashes the key."""
    return Verifier.from_vkey(vkey)


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with millisecond precision: ``2026-11-23T08:15:00.123Z``.

    Fixed width, so that times compare correctly as strings.
    """
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str, *, field: str = "time") -> datetime:
    """Parse an RFC 3339 UTC timestamp as written in statements and records."""
    moment = _parsed_time(text) if isinstance(text, str) else None
    if moment is None:
        raise EncodingError(
            f"{field}: expected RFC 3339 UTC time like 2026-11-23T08:15:00Z, got {text!r:.60}"
        )
    if moment is _INVALID_DATE:
        raise EncodingError(f"{field}: not a valid date and time: {text!r}")
    return moment


#: what :func:`_parsed_time` gives for text of the right shape that is no date
_INVALID_DATE = datetime.min.replace(tzinfo=UTC)


@functools.lru_cache(maxsize=8192)
def _parsed_time(text: str) -> datetime | None:
    """Cached: a record's times are parsed several times over as it is checked.

    ``None`` when the text is not of the form; :data:`_INVALID_DATE` when it
    is but names no date (``2026-02-30T...``).
    """
    if not _TIME_RE.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return _INVALID_DATE


def instant(text: str) -> str:
    """A time in one fixed-width form (microseconds), so that times compare as strings.

    ``2026-11-23T08:00:00Z`` and ``2026-11-23T08:00:00.000Z`` are the same
    instant; the domain compares only such normalized strings.
    """
    parse_time(text)  # validates (raises with the message); the rest is string work
    if len(text) == 24:  # milliseconds, as format_time writes: the usual case
        return text[:23] + "000Z"
    base, _, fraction = text[:-1].partition(".")
    return f"{base}.{fraction.ljust(6, '0')}Z"


def now() -> datetime:
    return datetime.now(UTC)


def new_nonce() -> str:
    """128 random bits, hex."""
    return secrets.token_hex(16)


def _b64decode(text: str, *, field: str, size: int) -> bytes:
    if not isinstance(text, str) or not _B64_RE.fullmatch(text):
        raise EncodingError(f"{field}: expected standard base64, got {text!r:.40}")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise EncodingError(f"{field}: not valid base64: {e}") from e
    if len(raw) != size:
        raise EncodingError(f"{field}: expected {size} bytes, got {len(raw)}")
    return raw


_STATEMENT_KEYS = frozenset(STATEMENT_FIELDS)
#: (type, actor, key) triples that passed every check of :func:`_check_signer_fields`
#: and :func:`_check_key`; bounded, cleared when full
_CHECKED_SIGNERS: set[tuple[str, str, str]] = set()
_CHECKED_SIGNERS_MAX = 65536


def _check_signer_fields(obj: dict[str, Any]) -> None:
    """The string fields are strings; ``type`` and ``actor`` have their form."""
    for name in ("type", "actor", "key", "issued_at", "nonce"):
        if not isinstance(obj[name], str):
            raise EncodingError(
                f"statement.{name}: expected a string, got {type(obj[name]).__name__}"
            )
    if not _TYPE_RE.fullmatch(obj["type"]):
        raise EncodingError(
            f"statement.type: expected a dotted name like rx.issue, got {obj['type']!r:.60}"
        )
    if not _ACTOR_RE.fullmatch(obj["actor"]):
        raise EncodingError(
            f"statement.actor: expected 1-128 of [A-Za-z0-9._:-], got {obj['actor']!r:.60}"
        )


def _check_key(actor: str, key: str) -> None:
    """``key`` is a verifier key string named for ``actor``."""
    try:
        verifier = verifier_for(key)
    except KeyFormatError as e:
        raise EncodingError(f"statement.key: {e}") from e
    if verifier.name != actor:
        raise EncodingError(
            f"statement.key: key name must be the actor: expected {actor!r}, got {verifier.name!r}"
        )


@dataclass(frozen=True)
class Statement:
    """The signed part of a statement; see the module docs for the field rules."""

    type: str
    actor: str
    key: str
    issued_at: str
    nonce: str
    body: Mapping[str, Any]

    @classmethod
    def from_mapping(cls, obj: object) -> Statement:
        """Validate an already-parsed JSON object; raises :class:`EncodingError`."""
        if not isinstance(obj, dict):
            raise EncodingError(f"statement: expected a JSON object, got {type(obj).__name__}")
        if obj.keys() != _STATEMENT_KEYS:
            missing = [f for f in STATEMENT_FIELDS if f not in obj]
            if missing:
                raise EncodingError(f"statement: missing field(s) {', '.join(missing)}")
            extra = sorted(set(obj) - _STATEMENT_KEYS)
            raise EncodingError(f"statement: unknown field(s) {', '.join(extra)}")
        type_, actor, key = obj["type"], obj["actor"], obj["key"]
        issued_at, nonce, body = obj["issued_at"], obj["nonce"], obj["body"]
        # The signer's fields repeat from statement to statement: once a
        # (type, actor, key) has passed every check, only the rest is checked.
        signer = (type_, actor, key)
        known = (
            type(type_) is str
            and type(actor) is str
            and type(key) is str
            and signer in _CHECKED_SIGNERS
        )
        if not known or not isinstance(issued_at, str) or not isinstance(nonce, str):
            _check_signer_fields(obj)
        if not _NONCE_RE.fullmatch(nonce):
            raise EncodingError(
                f"statement.nonce: expected 16-64 characters of [A-Za-z0-9_-], got {nonce!r:.70}"
            )
        parse_time(issued_at, field="statement.issued_at")
        if not known:
            _check_key(actor, key)
            if len(_CHECKED_SIGNERS) >= _CHECKED_SIGNERS_MAX:
                _CHECKED_SIGNERS.clear()
            _CHECKED_SIGNERS.add(signer)
        if not isinstance(body, dict):
            raise EncodingError(
                f"statement.body: expected a JSON object, got {type(body).__name__}"
            )
        return make_frozen(  # once per record verified: see ledger.core.frozen
            cls,
            {
                "type": type_,
                "actor": actor,
                "key": key,
                "issued_at": issued_at,
                "nonce": nonce,
                "body": body,
            },
        )

    def to_mapping(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "actor": self.actor,
            "key": self.key,
            "issued_at": self.issued_at,
            "nonce": self.nonce,
            "body": dict(self.body),
        }

    def to_bytes(self) -> bytes:
        """The JCS bytes that the signature covers."""
        return canonicalize(self.to_mapping())

    def sign(self, signer: Signer) -> SignedStatement:
        if signer.vkey != self.key:
            raise KeyFormatError(
                f"signer does not match statement.key: expected {self.key}, got {signer.vkey}"
            )
        data = self.to_bytes()
        return SignedStatement(statement=self, signed_bytes=data, signature=signer.sign(data))


@dataclass(frozen=True)
class SignedStatement:
    """A statement, the exact bytes that were signed, and the Ed25519 signature."""

    statement: Statement
    signed_bytes: bytes
    signature: bytes

    @classmethod
    def from_json(cls, obj: object) -> SignedStatement:
        """Parse the wire form ``{"statement": {...}, "signature": "<base64>"}``.

        The signature is not checked here (see :meth:`verify_signature`): the
        key must first be found trustworthy, which depends on ledger state.
        """
        if not isinstance(obj, dict):
            raise EncodingError(f"expected a JSON object, got {type(obj).__name__}")
        if "statement" not in obj or "signature" not in obj:
            raise EncodingError("expected fields 'statement' and 'signature'")
        statement = Statement.from_mapping(obj["statement"])
        signature = _b64decode(obj["signature"], field="signature", size=SIGNATURE_SIZE)
        return cls(statement=statement, signed_bytes=statement.to_bytes(), signature=signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "statement": self.statement.to_mapping(),
            "signature": self.signature_b64,
        }

    @property
    def signature_b64(self) -> str:
        return base64.b64encode(self.signature).decode("ascii")

    def verify_signature(self, verifier: Verifier | None = None) -> None:
        """Check the signature against ``verifier`` (default: the statement's own key)."""
        verifier = verifier or verifier_for(self.statement.key)
        if not verifier.verify(self.signed_bytes, self.signature):
            raise SignatureError(
                f"statement signature does not verify under key {self.statement.key}"
            )


def make_statement(
    signer: Signer,
    type: str,
    body: Mapping[str, Any],
    *,
    issued_at: datetime | str | None = None,
    nonce: str | None = None,
) -> SignedStatement:
    """Build and sign a statement: the one way rxledger's own code makes one."""
    when = issued_at if isinstance(issued_at, str) else format_time(issued_at or now())
    statement = Statement.from_mapping(
        {
            "type": type,
            "actor": signer.name,
            "key": signer.vkey,
            "issued_at": when,
            "nonce": nonce or new_nonce(),
            "body": dict(body),
        }
    )
    return statement.sign(signer)


MAX_CLOCK_SKEW = timedelta(minutes=5)

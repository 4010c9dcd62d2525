"""Records: statements as the ledger sequenced them (ARCHITECTURE §3).

A record is the JSON object ``{seq, prev, received_at, statement, signature}``.
Its bytes are the RFC 8785 (JCS) canonical form. Because JCS sorts keys and
``statement`` sorts last, the record's bytes are built by concatenation around
the statement's exact signed bytes::

    {"prev":"<hex>","received_at":"<time>","seq":<n>,"signature":"<b64>","statement":<signed bytes>}

so the statement's signature is checked over a slice of the stored record
bytes, with no re-canonicalization (and the test suite checks this equals
``rfc8785.dumps`` of the record object).

- record hash = SHA-256(record bytes); ``prev`` of record ``seq`` is the hex
  record hash of record ``seq - 1``, or 64 zeros for record 0;
- Merkle leaf hash = SHA-256(0x00 || record bytes) (RFC 9162 §2.1.1);
- ``seq`` is 0-based and equals the record's Merkle ``leaf_index``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from binascii import a2b_base64
from dataclasses import dataclass
from typing import Any

from ledger.core.errors import EncodingError, RecordError
from ledger.core.frozen import make_frozen
from ledger.core.statement import SignedStatement, Statement

GENESIS_PREV = "0" * 64
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_STATEMENT_MARK = b',"statement":'
_RECORD_KEYS = frozenset(("seq", "prev", "received_at", "statement", "signature"))
_JSON = json.JSONDecoder()
#: a record in canonical form whose envelope fields are all well formed
_CANONICAL_RE = re.compile(
    rb'\{"prev":"([0-9a-f]{64})","received_at":"([0-9TZ:.-]{1,40})","seq":(0|[1-9][0-9]{0,17}),'
    rb'"signature":"([A-Za-z0-9+/]{86}==)","statement":(\{.*\})\}',
    re.DOTALL,
)


def record_hash(record_bytes: bytes) -> bytes:
    return hashlib.sha256(record_bytes).digest()


def leaf_hash(record_bytes: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + record_bytes).digest()


def build_record_bytes(
    seq: int, prev: str, received_at: str, signature_b64: str, statement_bytes: bytes
) -> bytes:
    """The JCS bytes of a record, by concatenation (see the module docs)."""
    head = (
        f'{{"prev":"{prev}","received_at":"{received_at}","seq":{seq},'
        f'"signature":"{signature_b64}","statement":'
    )
    return head.encode("ascii") + statement_bytes + b"}"


@dataclass(frozen=True)
class Record:
    """A parsed record and its exact bytes."""

    seq: int
    prev: str
    received_at: str
    signature: bytes
    statement_bytes: bytes
    record_bytes: bytes
    fields: dict[str, Any]

    @classmethod
    def build(cls, seq: int, prev: str, received_at: str, signed: SignedStatement) -> Record:
        data = build_record_bytes(seq, prev, received_at, signed.signature_b64, signed.signed_bytes)
        return cls(
            seq=seq,
            prev=prev,
            received_at=received_at,
            signature=signed.signature,
            statement_bytes=signed.signed_bytes,
            record_bytes=data,
            fields=signed.statement.to_mapping(),
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, expected_seq: int | None = None) -> Record:
        """Parse stored record bytes; raises :class:`RecordError` naming the seq."""
        fast = cls._from_canonical(data, expected_seq)
        if fast is not None:
            return fast
        seq_hint = expected_seq
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise RecordError(f"record bytes are not JSON: {e}", seq=seq_hint) from e
        if not isinstance(obj, dict) or obj.keys() != _RECORD_KEYS:
            raise RecordError(
                "record must have exactly the fields seq, prev, received_at, statement, signature",
                seq=seq_hint,
            )
        seq = obj["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise RecordError(f"seq: expected a non-negative integer, got {seq!r}", seq=seq_hint)
        if expected_seq is not None and seq != expected_seq:
            raise RecordError(f"seq: expected {expected_seq}, found {seq}", seq=expected_seq)
        prev = obj["prev"]
        if not isinstance(prev, str) or not _HEX64_RE.fullmatch(prev):
            raise RecordError(f"prev: expected 64 lower-case hex digits, got {prev!r}", seq=seq)
        received_at = obj["received_at"]
        if not isinstance(received_at, str):
            raise RecordError("received_at: expected a string", seq=seq)
        sig_b64 = obj["signature"]
        if not isinstance(sig_b64, str):
            raise RecordError("signature: expected a base64 string", seq=seq)
        try:
            signature = base64.b64decode(sig_b64, validate=True)
        except ValueError as e:
            raise RecordError(f"signature: not valid base64: {e}", seq=seq) from e
        if len(signature) != 64:
            raise RecordError(f"signature: expected 64 bytes, got {len(signature)}", seq=seq)
        # The only string fields before "statement" are hex, a timestamp and
        # base64, none of which can contain the mark, so its first occurrence is it.
        at = data.find(_STATEMENT_MARK)
        if at < 0 or not data.endswith(b"}"):
            raise RecordError("record bytes are not in canonical form", seq=seq)
        statement_bytes = data[at + len(_STATEMENT_MARK) : -1]
        statement = obj["statement"]
        if not isinstance(statement, dict):
            raise RecordError("statement: expected a JSON object", seq=seq)
        return cls(
            seq=seq,
            prev=prev,
            received_at=received_at,
            signature=signature,
            statement_bytes=statement_bytes,
            record_bytes=data,
            fields=statement,
        )

    @classmethod
    def _from_canonical(cls, data: bytes, expected_seq: int | None) -> Record | None:
        """The record, if ``data`` has exactly the canonical form and every field
        is good; else ``None``, and :meth:`from_bytes` parses it in full and says
        what is wrong. The envelope's fields need no JSON parser in this form,
        so only the statement is parsed: the verifier's most frequent call."""
        match = _CANONICAL_RE.fullmatch(data)
        if match is None:
            return None
        prev, received_at, seq_text, sig_b64, statement_bytes = match.groups()
        seq = int(seq_text)
        if expected_seq is not None and seq != expected_seq:
            return None
        try:
            signature = a2b_base64(sig_b64, strict_mode=True)  # the regex checked its alphabet
            # what json.loads does with bytes that start with "{", minus its checks
            text = statement_bytes.decode("utf-8", "surrogatepass")
            statement, end = _JSON.raw_decode(text)
        except (ValueError, UnicodeDecodeError):
            return None
        if len(signature) != 64 or not isinstance(statement, dict) or end != len(text):
            return None
        return make_frozen(  # once per record verified: see ledger.core.frozen
            cls,
            {
                "seq": seq,
                "prev": prev.decode("ascii"),
                "received_at": received_at.decode("ascii"),
                "signature": signature,
                "statement_bytes": statement_bytes,
                "record_bytes": data,
                "fields": statement,
            },
        )

    def statement(self) -> Statement:
        """The statement, validated field by field."""
        try:
            return Statement.from_mapping(self.fields)
        except EncodingError as e:
            raise RecordError(f"statement: {e}", seq=self.seq) from e

    @property
    def hash(self) -> bytes:
        """SHA-256 of the record bytes (computed once: the verifier and the
        storage checks both need it)."""
        cached: bytes | None = self.__dict__.get("_hash")
        if cached is None:
            cached = self.__dict__["_hash"] = record_hash(self.record_bytes)
        return cached

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.record_bytes)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (for APIs); its JCS is :attr:`record_bytes`."""
        return {
            "seq": self.seq,
            "prev": self.prev,
            "received_at": self.received_at,
            "statement": self.fields,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

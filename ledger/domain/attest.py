"""``doc.attest``: any registered actor notarizes a document by its digest.

Body: ``{"digest": "<64 hex SHA-256>"}`` and, when a payload travels with the
statement, ``"payload_digest"``. The document itself never enters the ledger,
and there is deliberately no free-text field (ARCHITECTURE §5). It is the simplest statement
type, used to exercise the log itself (tests, benchmarks).
"""

from __future__ import annotations

import re

from ledger.core.errors import RejectionError
from ledger.core.statement import Statement
from ledger.domain.state import Effect, State

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = frozenset(("digest", "payload_digest"))


def decide_attest(state: State, statement: Statement) -> list[Effect]:
    del state  # stateless beyond authorization
    body = statement.body
    if not body.keys() <= _FIELDS:
        extra = sorted(set(body) - _FIELDS)
        raise RejectionError("malformed-body", f"body: unknown field(s) {', '.join(extra)}")
    digest = body.get("digest")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise RejectionError(
            "malformed-body", "body.digest: expected 64 lower-case hex digits (SHA-256)"
        )
    return []

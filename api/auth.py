"""Authentication of actors by signed requests (``ledger.core.request_auth``)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request

from api.deps import LedgerDep
from ledger.core.errors import EncodingError, RejectionError
from ledger.core.request_auth import parse_authorization, request_message
from ledger.core.statement import (
    MAX_CLOCK_SKEW,
    format_time,
    instant,
    now,
    parse_time,
    verifier_for,
)
from ledger.domain.registry import get_actor, key_valid_at
from ledger.domain.state import Document
from ledger.store.state import DbState


class AuthError(RejectionError):
    def __init__(self, message: str) -> None:
        super().__init__("unauthenticated", message)


async def authenticated_actor(request: Request, ledger: LedgerDep) -> Document:
    """The registered actor that signed this request, or 401."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthError("this read needs a signed request (Authorization: RxLedger-Sig ...)")
    try:
        params = parse_authorization(header)
        signature = base64.b64decode(params["signature"], validate=True)
        verifier = verifier_for(params["key"])
        when = parse_time(params["time"], field="time")
    except (EncodingError, binascii.Error, ValueError) as e:
        raise AuthError(f"malformed Authorization header: {e}") from e
    skew = abs((when - now()).total_seconds())
    if skew > MAX_CLOCK_SKEW.total_seconds():
        raise AuthError(f"request time {params['time']} is {skew:.0f}s from the ledger's clock")
    target = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    if query:
        target = f"{target}?{query}"
    body = await request.body()
    message = request_message(request.method, target, params["time"], body)
    if verifier.name != params["actor"] or not verifier.verify(message, signature):
        raise AuthError("the request signature does not verify for this actor and key")
    with ledger.engine.connect() as conn:
        state = DbState(conn, ledger.reader.head(conn).size)
        actor = get_actor(state, params["actor"])
    grant = None
    if actor is not None:
        grant = next((g for g in actor["keys"] if g["vkey"] == params["key"]), None)
    if actor is None or grant is None or grant.get("purpose", "general") != "general":
        raise AuthError(f"key is not a registered key of {params['actor']!r}")
    if key_valid_at(grant, instant(format_time(now()))) is not None:
        raise AuthError("the key is no longer valid")
    return actor


ActorDep = Annotated[Document, Depends(authenticated_actor)]


def require_patient(actor: Document, patient: str) -> None:
    """The actor is the patient, or a guardian registered for them; else 403."""
    if actor["actor_id"] == patient or patient in actor.get("guardian_of", []):
        return
    raise RejectionError(
        "forbidden", f"{actor['actor_id']!r} may not read patient {patient!r}'s wallet"
    )

"""Clinical payloads behind access control (``ledger.access``), the patient's
access log, and the operator's pseudonym lookup.

Every route needs a signed request (``api.auth``). Who may read which payload
is decided in :func:`ledger.access.read_payload`; every read, refused read and
pseudonym lookup is written to the access log, which only the patient (or a
guardian registered for them) reads.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.auth import ActorDep, require_patient
from api.deps import LedgerDep
from api.params import Digits
from ledger.access import access_log_for, lookup_pseudonym, read_payload
from ledger.core.canonical import parse_json
from ledger.core.errors import EncodingError, RejectionError

router = APIRouter()
Id = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
MAX_LOOKUP_BYTES = 4096


@router.get("/v1/payloads/{seq}")
def payload(
    ledger: LedgerDep, actor: ActorDep, seq: Annotated[int, Digits, Path(ge=0, le=2**62)]
) -> dict[str, Any]:
    """The payload of record ``seq``, for a reader with a basis: ``{seq, type,
    patient, basis, payload}``; 403 otherwise, 410 when it was shredded."""
    return read_payload(ledger, actor, seq)


@router.get("/v1/wallet/{patient}/access-log")
def access_log(
    ledger: LedgerDep,
    actor: ActorDep,
    patient: Id,
    after_id: Annotated[int, Digits, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Digits, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Who read my data, and who tried: AuditEvents oldest first, ``after_id`` on."""
    require_patient(actor, patient)
    events = access_log_for(ledger.engine, patient, after_id=after_id, limit=limit)
    following = events[-1]["id"] if len(events) == limit else None
    return {"patient": patient, "events": events, "next_after_id": following}


@router.post("/v1/operator/pseudonyms")
async def pseudonym(request: Request, ledger: LedgerDep, actor: ActorDep) -> dict[str, Any]:
    """The pseudonym of a patient's identifier (registrar only). Body ``{identifier}``."""
    raw = await request.body()
    if len(raw) > MAX_LOOKUP_BYTES:
        raise RejectionError("too-large", f"lookup body exceeds {MAX_LOOKUP_BYTES} bytes")
    if actor["role"] != "registrar":  # before reading what was sent
        raise RejectionError("forbidden", "only the registrar (operator) looks up pseudonyms")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise EncodingError("request body: expected a JSON object")
    identifier = body.get("identifier")
    if set(body) != {"identifier"} or not isinstance(identifier, str):
        raise EncodingError('request body: expected {"identifier": "<string>"} and nothing else')
    return {"pseudonym": await run_in_threadpool(lookup_pseudonym, ledger, actor, identifier)}

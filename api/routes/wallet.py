"""The data wallet: previews for data users, and the patient's own views.

Every route here needs a signed request (``api.auth``): a data user sees
only its own uses; a patient (or a guardian registered for them) only their
own wallet.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.auth import ActorDep, require_patient
from api.deps import LedgerDep
from api.params import Digits
from ledger.core.canonical import parse_json
from ledger.core.errors import EncodingError, RejectionError
from ledger.domain import fields as f
from ledger.domain import wallet as rules
from ledger.wallet_service import (
    after_revocation,
    patient_balance,
    patient_consents,
    patient_uses,
    preview_use,
    released,
)

router = APIRouter()
Id = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
MAX_PREVIEW_BYTES = 4 * 1024 * 1024


@router.post("/v1/uses/preview")
async def preview(request: Request, ledger: LedgerDep, actor: ActorDep) -> dict[str, Any]:
    """What a data.use would be decided: the permitted and denied patients, and the
    body fields (counts, cohort root) to sign. Body: ``{use_id, issued_at, purpose,
    categories, patients}``. Nothing is recorded."""
    raw = await request.body()
    if len(raw) > MAX_PREVIEW_BYTES:
        raise RejectionError("too-large", f"preview body exceeds {MAX_PREVIEW_BYTES} bytes")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise EncodingError("request body: expected a JSON object")
    if actor["role"] != "data_user":
        raise RejectionError("forbidden", "only data users preview data uses")
    f.only(body, {"use_id", "issued_at", "purpose", "categories", "patients"}, "body")
    use_id = f.id_field(body, "use_id", "body")
    at = f.time_field(body, "issued_at", "body")
    purpose = rules.parse_use_purpose(body.get("purpose"), "body.purpose")
    categories = rules.parse_categories(body, "categories", "body")
    patients = f.list_field(body, "patients", "body", min_len=1, max_len=rules.MAX_COHORT)
    for i, patient in enumerate(patients):
        f.id_field({"p": patient}, "p", f"body.patients[{i}]")
    # Deciding a cohort of thousands takes a while: in a worker thread, not on the
    # event loop, so that other requests are served meanwhile.
    return await run_in_threadpool(
        preview_use,
        ledger.engine,
        data_user=actor["actor_id"],
        use_id=use_id,
        at=at,
        purpose=purpose,
        categories=categories,
        patients=patients,
    )


@router.get("/v1/uses/{use_id}")
def use(ledger: LedgerDep, actor: ActorDep, use_id: Id) -> dict[str, Any]:
    """A recorded use and exactly which patients' data may be released for it."""
    found = released(ledger.engine, use_id)
    if actor["actor_id"] != found["data_user"] and actor["role"] != "auditor":
        raise RejectionError("forbidden", f"data use {use_id!r} is not {actor['actor_id']!r}'s")
    return found


@router.get("/v1/wallet/{patient}/consents")
def consents(ledger: LedgerDep, actor: ActorDep, patient: Id) -> dict[str, Any]:
    """My consents, in force and past."""
    require_patient(actor, patient)
    return patient_consents(ledger.engine, patient)


@router.get("/v1/wallet/{patient}/uses")
def uses(
    ledger: LedgerDep,
    actor: ActorDep,
    patient: Id,
    limit: Annotated[int, Digits, Query(ge=1, le=500)] = 100,
    before_seq: Annotated[int | None, Digits, Query(ge=0, le=2**62)] = None,
) -> dict[str, Any]:
    """My data-use log, newest first."""
    require_patient(actor, patient)
    return patient_uses(ledger.engine, patient, limit=limit, before_seq=before_seq)


@router.get("/v1/wallet/{patient}/balance")
def balance(ledger: LedgerDep, actor: ActorDep, patient: Id) -> dict[str, Any]:
    """My balance and every payment into it."""
    require_patient(actor, patient)
    return patient_balance(ledger.engine, patient)


@router.get("/v1/wallet/{patient}/consents/{consent_id}/after-revocation")
def proof_after_revocation(
    ledger: LedgerDep, actor: ActorDep, patient: Id, consent_id: Id
) -> dict[str, Any]:
    """Every data use after this consent's revocation, each with its inclusion proof
    and a proof that I am, or am not, in it."""
    require_patient(actor, patient)
    return after_revocation(ledger.engine, patient, consent_id)

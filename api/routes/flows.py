"""Reads of the prescription and settlement flows.

These serve projections (current state derived from the records). A
prescription's view holds clinical detail derived from its payload (drug
codes, quantities), so it needs a signed request and is shown only to whoever
may read that payload, or to a pharmacy while the prescription is active; a
patient's list only to the patient, a guardian or an auditor with a grant.
Every such read is logged in the patient's access log (``ledger.access``).
Claims and decisions hold only what their records say, and stay public.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from api.auth import ActorDep
from api.deps import LedgerDep
from api.params import Digits
from ledger import access
from ledger.core.errors import NotFoundError
from ledger.domain import settlement
from ledger.service import claim_trail
from ledger.store.reader import ProjectionReader

router = APIRouter()
Id = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
Limit = Annotated[int, Digits, Query(ge=1, le=500)]
Before = Annotated[int | None, Digits, Query(ge=0, le=2**62)]


def _page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    next_before = items[-1]["_seq"] if len(items) == limit else None
    for item in items:
        item.pop("_seq", None)
    return {"items": items, "next_before_seq": next_before}


@router.get("/v1/prescriptions/{rx_id}")
def prescription(ledger: LedgerDep, actor: ActorDep, rx_id: Id) -> dict[str, Any]:
    """A prescription's state (expiry computed now), items and history."""
    return access.read_prescription(ledger, actor, rx_id)


@router.get("/v1/patients/{patient}/prescriptions")
def patient_prescriptions(
    ledger: LedgerDep,
    actor: ActorDep,
    patient: Id,
    limit: Limit = 100,
    before_seq: Before = None,
) -> dict[str, Any]:
    """A patient's prescriptions by pseudonym, the most recently changed first."""
    items = access.read_patient_prescriptions(
        ledger, actor, patient, limit=limit, before_seq=before_seq
    )
    return _page(items, limit)


@router.get("/v1/claims/{claim_id}")
def claim(ledger: LedgerDep, claim_id: Id) -> dict[str, Any]:
    """A claim and, once decided, its decision with every rule's outcome."""
    found = ProjectionReader(ledger.engine).get(settlement.CLAIM, claim_id)
    if found is None:
        raise NotFoundError(f"no claim {claim_id!r}")
    return found


@router.get("/v1/claims/{claim_id}/trail")
def trail(ledger: LedgerDep, claim_id: Id) -> dict[str, Any]:
    """Settlement -> claim -> dispense -> prescription -> prescriber registration, with proofs."""
    return claim_trail(ledger.engine, claim_id)


@router.get("/v1/insurers/{insurer}/decisions")
def decisions(
    ledger: LedgerDep,
    insurer: Id,
    *,
    outcome: Annotated[
        str | None, Query(pattern=r"^(approved|partially-approved|rejected|pending)$")
    ] = None,
    rule: Annotated[str | None, Query(pattern=r"^[a-z0-9-]{1,64}$")] = None,
    limit: Limit = 100,
    before_seq: Before = None,
) -> dict[str, Any]:
    """An insurer's claims and decisions, newest first, by outcome and failed rule code."""
    items = ProjectionReader(ledger.engine).page(
        settlement.CLAIM,
        party=insurer,
        status=outcome,
        tag=rule,
        before_seq=before_seq,
        limit=limit,
    )
    return _page(items, limit)

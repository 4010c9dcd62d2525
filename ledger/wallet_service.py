"""Wallet use cases: preview a data use, the patient's views, proofs after revocation.

Service layer (``ledger.service`` beside it): reads the projections and the
records, and uses the same pure rules as the sequencer.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import Engine, select

from ledger.core import cohort
from ledger.core.checkpoint import note_size
from ledger.core.errors import NotFoundError, RejectionError
from ledger.core.record import Record
from ledger.core.statement import format_time, instant, now
from ledger.domain import wallet
from ledger.domain.registry import get_actor
from ledger.store.reader import LedgerReader, ProjectionReader
from ledger.store.schema import records
from ledger.store.state import DbState


def preview_use(
    engine: Engine,
    *,
    data_user: str,
    use_id: str,
    at: str,
    purpose: dict[str, Any],
    categories: list[str],
    patients: list[str],
) -> dict[str, Any]:
    """What a ``data.use`` issued at ``at`` would be decided, with the body to sign.

    Nothing is recorded. The data user signs a ``data.use`` whose body carries
    ``body_fields``; if the consents change before it is sequenced, the use is
    refused (``cohort-mismatch``) and the preview must be run again.
    """
    reader = LedgerReader(engine)
    with engine.connect() as conn:
        state = DbState(conn, reader.head(conn).size)
        user = get_actor(state, data_user)
        if user is None or user["role"] != "data_user":
            raise RejectionError("unknown-actor", f"{data_user!r} is not a registered data user")
        permitted, denied = wallet.evaluate_use(
            state,
            use_id=use_id,
            data_user=user,
            at=instant(at),
            purpose=purpose,
            categories=sorted(categories),
            patients=patients,
        )
    return {
        "use_id": use_id,
        "permitted": sorted(permitted),
        "denied": sorted(denied),
        "body_fields": {
            "requested_count": len(patients),
            "permitted_count": len(permitted),
            "denied_count": len(denied),
            "permitted_root": cohort.cohort_root(use_id, permitted).hex(),
        },
    }


def released(engine: Engine, use_id: str) -> dict[str, Any]:
    """A recorded use and exactly which patients' data may be released for it."""
    views = ProjectionReader(engine)
    use = views.get(wallet.USE, use_id)
    members = views.get(wallet.MEMBERS, use_id)
    if use is None or members is None:
        raise NotFoundError(f"no data use {use_id!r}")
    return {**use, "permitted": sorted(members["weights"])}


def patient_consents(engine: Engine, patient: str) -> dict[str, Any]:
    doc = ProjectionReader(engine).get(wallet.CONSENTS, patient) or {"consents": []}
    now_ = _now()
    consents = []
    for consent in doc["consents"]:
        consents.append({**consent, "in_force": wallet.in_force(consent, now_)})
    return {"patient": patient, "consents": consents}


def patient_uses(
    engine: Engine, patient: str, *, limit: int = 100, before_seq: int | None = None
) -> dict[str, Any]:
    """The uses that included the patient, newest first."""
    views = ProjectionReader(engine)
    rows = views.page(wallet.MEMBER, patient=patient, before_seq=before_seq, limit=limit)
    items = []
    for row in rows:
        use = views.get(wallet.USE, row["use_id"]) or {}
        items.append(
            {
                "use_id": row["use_id"],
                "seq": row["seq"],
                "data_user": use.get("data_user"),
                "purpose": use.get("purpose"),
                "categories": use.get("categories"),
                "at": use.get("at"),
            }
        )
    next_before = rows[-1]["_seq"] if len(rows) == limit else None
    return {"patient": patient, "uses": items, "next_before_seq": next_before}


def patient_balance(engine: Engine, patient: str) -> dict[str, Any]:
    views = ProjectionReader(engine)
    wallet_doc = views.get(wallet.WALLET, patient) or {"balance": 0, "payments": 0}
    payments: list[dict[str, Any]] = []
    before: int | None = None
    while True:  # every payment, newest first, in pages
        page = views.page(wallet.PAYMENT, patient=patient, before_seq=before, limit=1000)
        payments.extend(page)
        if len(page) < 1000:
            break
        before = page[-1]["_seq"]
    for p in payments:
        p.pop("_seq", None)
    return {"patient": patient, "balance": wallet_doc["balance"], "payments": payments}


def after_revocation(engine: Engine, patient: str, consent_id: str) -> dict[str, Any]:
    """For a revoked consent: every data use recorded after the revocation, each
    with its record, its inclusion proof against the latest checkpoint, and a
    proof that the patient is — or is not — in its permitted set.

    Checkable offline with :func:`ledger.client.check_after_revocation`.
    """
    views = ProjectionReader(engine)
    doc = views.get(wallet.CONSENTS, patient)
    consent = next(
        (c for c in (doc or {}).get("consents", []) if c["consent_id"] == consent_id), None
    )
    if consent is None:
        raise NotFoundError(f"patient {patient!r} has no consent {consent_id!r}")
    if consent["revoked_seq"] is None:
        raise RejectionError("consent-not-revoked", f"consent {consent_id!r} is in force")
    reader = LedgerReader(engine)
    note = reader.latest_checkpoint()
    size = note_size(note)
    uses = []
    with engine.connect() as conn:
        rows = conn.execute(
            select(records.c.seq, records.c.record_bytes)
            .where(
                records.c.type == "data.use",
                records.c.seq > consent["revoked_seq"],
                records.c.seq < size,
            )
            .order_by(records.c.seq)
        ).all()
    for row in rows:
        record = Record.from_bytes(bytes(row.record_bytes), expected_seq=int(row.seq))
        body = record.fields["body"]
        members = views.get(wallet.MEMBERS, body["use_id"]) or {}
        cohort_members = sorted(members.get("weights", {}))
        uses.append(
            {
                "seq": record.seq,
                "use_id": body["use_id"],
                "record_bytes": base64.b64encode(record.record_bytes).decode("ascii"),
                "inclusion_proof": [h.hex() for h in reader.inclusion_proof(record.seq, size)],
                "membership": cohort.membership_proof(body["use_id"], cohort_members, patient),
            }
        )
    return {
        "patient": patient,
        "consent_id": consent_id,
        "revoked_seq": consent["revoked_seq"],
        "revoked_at": consent["revoked_at"],
        "checkpoint": note,
        "tree_size": size,
        "uses": uses,
        "included": [u["use_id"] for u in uses if u["membership"]["member"]],
    }


def _now() -> str:
    return instant(format_time(now()))


__all__ = [
    "after_revocation",
    "patient_balance",
    "patient_consents",
    "patient_uses",
    "preview_use",
    "released",
]

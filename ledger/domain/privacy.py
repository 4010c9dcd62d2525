"""Patients' privacy on the ledger: erasure, retention, legal holds, audit grants.

ADR 0010 and ``docs/privacy.md``. Clinical payloads are sealed per patient
(:mod:`ledger.core.sealing`); these statements decide when they are shredded
and who may read them.

``erasure.request`` (the patient, or a guardian registered for them)
    ``{patient}``: asks the operator to erase the patient's clinical data.
``erasure.execute`` (the registrar, i.e. the operator)
    ``{patient, reason}`` with ``reason`` ``patient-request`` (needs a
    request on record) or ``legal-order``. Refused while a legal hold covers
    the patient. Its record is the erasure: the store destroys the patient's
    data key and every payload sealed with it, in the same transaction. The
    patient's prescriptions and dispenses keep only what their records say
    (status ``erased``); every consent of theirs is revoked; nothing about
    them can be recorded afterwards (``patient-erased``).
``retention.shred`` (the registrar)
    ``{rx_ids: [...], retention_days}``: the payloads of these prescriptions
    and their dispenses are shredded (the patient's key stays): each was
    issued at least ``retention_days`` before, is no longer active, and no
    legal hold covers it or its patient.
``hold.place`` / ``hold.release`` (the registrar or an auditor)
    ``{hold_id, patient? | rx_id?, reason}`` / ``{hold_id}``: a legal hold
    keeps a patient's or one prescription's data from erasure and retention.
    Only who placed a hold, or the registrar, releases it.
``audit.grant`` / ``audit.revoke`` (the registrar)
    ``{grant_id, auditor, patients: "*" | [pseudonyms], valid_from,
    valid_until}`` / ``{grant_id}``: an auditor may read those patients'
    payloads while the grant is in force.

Replay after a shredding (:data:`ERASED`): a record whose payload was shredded
cannot be decided again. The replay then checks what its public fields say
(the signer, the prescription, the fill order) and marks what it derives
``inputs_erased``; a settlement decision on such a dispense is taken as
recorded. See ``docs/privacy.md`` for what an auditor can and cannot check.
"""

from __future__ import annotations

from typing import Any

from ledger.core.errors import RejectionError
from ledger.core.payload import ERASED, Payload
from ledger.core.statement import Statement
from ledger.domain import fields as f
from ledger.domain.registry import get_actor
from ledger.domain.state import Document, Effect, Put, State

__all__ = ["ERASED", "Payload"]  # re-exported for the rules

ERASURE = "erasure"  # per patient: requested / executed
PATIENT_RX = "patient-rx"  # per patient: their prescriptions' ids
SHRED = "shred"  # per prescription: shredded by retention
HOLD = "hold"  # per hold id
HOLDS = "holds"  # per target (``patient:P`` or ``rx:R``): the holds in force
AUDIT_GRANT = "audit-grant"  # per grant id
AUDITOR_GRANTS = "auditor-grants"  # per auditor: their grant ids
#: in a replay only: a shredded payload was met for this patient (key: the
#: pseudonym) or for anyone (key ``*``); never written by the sequencer
INPUTS_ERASED = "inputs-erased"
#: the owner of payloads that belong to no patient (a data use's cohort); "#"
#: is outside the id alphabet, so no patient can be called this
LEDGER_OWNER = "#ledger"
ERASURE_REASONS = ("patient-request", "legal-order")
HOLD_REASONS = ("litigation", "investigation", "regulator-order", "audit", "other")
#: the statements after whose record the store shreds payloads
SHREDDING_TYPES = frozenset({"erasure.execute", "retention.shred"})


def erased(state: State, patient: str) -> bool:
    doc = state.peek(ERASURE, patient)
    return doc is not None and doc["status"] == "executed"


def refuse_if_erased(state: State, patient: str) -> None:
    if erased(state, patient):
        raise RejectionError(
            "patient-erased", f"patient {patient!r} was erased: nothing more is recorded for them"
        )


def holds_on(state: State, target: str) -> list[str]:
    doc = state.peek(HOLDS, target)
    return list(doc["holds"]) if doc else []


def acts_for(state: State, actor: str, patient: str) -> bool:
    """Is ``actor`` the patient, or a guardian registered for them?"""
    if actor == patient:
        return True
    signer = get_actor(state, actor)
    return signer is not None and patient in signer.get("guardian_of", [])


def _may_act_for(state: State, statement: Statement, patient: str) -> None:
    if acts_for(state, statement.actor, patient):
        return
    raise RejectionError(
        "not-your-patient",
        f"{statement.actor!r} may not act for patient {patient!r}: only the patient or a "
        "guardian registered for them",
    )


def decide_request(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    f.only(body, {"patient"}, "body")
    patient = f.id_field(body, "patient", "body")
    _may_act_for(state, statement, patient)
    refuse_if_erased(state, patient)
    doc = {
        "patient": patient,
        "status": "requested",
        "requested_seq": seq,
        "requested_at": statement.issued_at,
    }
    return [Put(ERASURE, patient, doc, patient=patient, status="requested", seq=seq)]


def _scrub_rx(rx: Document, seq: int) -> Document:
    out = {k: v for k, v in rx.items() if k != "inputs_erased"}
    out.update(items=None, controlled_class=None, status="erased", erased_seq=seq)
    return out


def _scrub(state: State, rx_ids: list[str], seq: int) -> list[Effect]:
    """Effects that leave of these prescriptions only what their records say."""
    from ledger.domain import prescriptions, settlement  # noqa: PLC0415 - they import us

    effects: list[Effect] = []
    for rx_id in rx_ids:
        rx = state.get(prescriptions.RX, rx_id)
        if rx is None:
            continue
        dispense_keys = [
            prescriptions.dispense_key(rx_id, n) for n in range(1, rx["fills_done"] + 1)
        ]
        for key, doc in state.get_many(prescriptions.DISPENSE, dispense_keys).items():
            if doc is None:
                continue
            claims = state.peek(settlement.FILL_CLAIMS, key) or {"claims": []}
            for line in doc.get("items") or []:
                paid_key = f"{rx['patient']}|{line['drug_code']}"
                paid = state.peek(settlement.PAID_FILL, paid_key)
                if paid is not None and paid.get("claim_id") in claims["claims"]:
                    effects.append(Put(settlement.PAID_FILL, paid_key, {}, seq=seq, delete=True))
            scrubbed = {k: v for k, v in doc.items() if k != "inputs_erased"}
            scrubbed.update(items=None, erased_seq=seq)
            effects.append(prescriptions.dispense_put(scrubbed, seq))
        effects.append(prescriptions.rx_put(_scrub_rx(rx, seq), seq))
    return effects


def decide_execute(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    from ledger.domain import wallet  # noqa: PLC0415 - wallet imports us

    body = statement.body
    f.only(body, {"patient", "reason"}, "body")
    patient = f.id_field(body, "patient", "body")
    reason = f.code_field(body, "reason", "body")
    if reason not in ERASURE_REASONS:
        raise f.malformed("body.reason", f"expected one of {', '.join(ERASURE_REASONS)}")
    doc = state.get(ERASURE, patient)
    if doc is not None and doc["status"] == "executed":
        raise RejectionError("patient-erased", f"patient {patient!r} was erased already")
    if reason == "patient-request" and doc is None:
        raise RejectionError("no-erasure-request", f"patient {patient!r} has not requested erasure")
    held = holds_on(state, f"patient:{patient}")
    if held:
        raise RejectionError(
            "legal-hold", f"patient {patient!r} is under legal hold {', '.join(held)}"
        )
    done = {
        **(doc or {"patient": patient, "requested_seq": None, "requested_at": None}),
        "status": "executed",
        "reason": reason,
        "executed_seq": seq,
        "executed_at": statement.issued_at,
    }
    effects: list[Effect] = [
        Put(ERASURE, patient, done, patient=patient, status="executed", seq=seq)
    ]
    index = state.peek(PATIENT_RX, patient)
    effects.extend(_scrub(state, list(index["rx_ids"]) if index else [], seq))
    effects.extend(wallet.revoke_all(state, patient, at=statement.issued_at, seq=seq))
    return effects


def decide_shred(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    from ledger.domain import prescriptions  # noqa: PLC0415 - it imports us

    body = statement.body
    f.only(body, {"rx_ids", "retention_days"}, "body")
    days = f.int_field(body, "retention_days", "body", minimum=1, maximum=100 * 366)
    rx_ids = f.list_field(body, "rx_ids", "body", min_len=1, max_len=1000)
    seen: set[str] = set()
    effects: list[Effect] = []
    for i, raw in enumerate(rx_ids):
        where = f"body.rx_ids[{i}]"
        if not isinstance(raw, str) or raw in seen:
            raise f.malformed(where, "expected a prescription id, each listed once")
        seen.add(raw)
        rx = state.get(prescriptions.RX, raw)
        if rx is None:
            raise RejectionError("unknown-rx", f"prescription {raw!r} does not exist")
        if state.peek(SHRED, raw) is not None or rx["status"] == "erased":
            raise RejectionError("rx-erased", f"prescription {raw!r} was shredded already")
        # a replayed prescription whose payloads were shredded does not know
        # whether its quantities were used up: its status is not evidence
        if (
            rx["status"] == "active"
            and not rx.get("inputs_erased")
            and statement.issued_at < rx["valid_until"]
        ):
            raise RejectionError("rx-active", f"prescription {raw!r} can still be dispensed")
        if statement.issued_at < _plus_days(rx["issued_at"], days):
            raise RejectionError(
                "retention-not-due",
                f"prescription {raw!r} was issued at {rx['issued_at']}: kept {days} days, "
                f"until {_plus_days(rx['issued_at'], days)}",
            )
        held = holds_on(state, f"rx:{raw}") + holds_on(state, f"patient:{rx['patient']}")
        if held:
            raise RejectionError(
                "legal-hold", f"prescription {raw!r} is under legal hold {', '.join(held)}"
            )
        shred = {"rx_id": raw, "seq": seq, "retention_days": days, "records": list(rx["history"])}
        effects.append(Put(SHRED, raw, shred, patient=rx["patient"], seq=seq))
    effects.extend(_scrub(state, sorted(seen), seq))
    return effects


def _plus_days(at: str, days: int) -> str:
    from datetime import datetime, timedelta  # noqa: PLC0415

    moment = datetime.fromisoformat(at) + timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def shredded_records(state: State, statement: Statement) -> tuple[str | None, list[int]]:
    """What the store shreds after this (accepted) statement's effects:
    ``(owner whose key goes, seqs whose payloads go)``."""
    if statement.type == "erasure.execute":
        return str(statement.body["patient"]), []
    if statement.type == "retention.shred":
        seqs: list[int] = []
        for rx_id in statement.body["rx_ids"]:
            doc = state.peek(SHRED, rx_id)
            assert doc is not None
            seqs.extend(doc["records"])
        return None, seqs
    return None, []


def decide_hold(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    hold_id = f.id_field(body, "hold_id", "body")
    if statement.type == "hold.release":
        f.only(body, {"hold_id"}, "body")
        hold = state.get(HOLD, hold_id)
        if hold is None or hold["released_seq"] is not None:
            raise RejectionError("unknown-hold", f"no hold {hold_id!r} in force")
        releaser = get_actor(state, statement.actor)
        if statement.actor != hold["placed_by"] and (releaser or {}).get("role") != "registrar":
            raise RejectionError(
                "not-your-hold",
                f"hold {hold_id!r} was placed by {hold['placed_by']!r}: only they or the "
                "registrar may release it",
            )
        hold.update(released_seq=seq, released_at=statement.issued_at)
        index = state.get(HOLDS, hold["target"]) or {"holds": []}
        index["holds"] = [h for h in index["holds"] if h != hold_id]
        return [
            Put(HOLD, hold_id, hold, patient=hold.get("patient"), status="released", seq=seq),
            Put(HOLDS, hold["target"], index, seq=seq),
        ]
    f.only(body, {"hold_id", "patient", "rx_id", "reason"}, "body")
    patient = f.id_field(body, "patient", "body", optional=True)
    rx_id = f.id_field(body, "rx_id", "body", optional=True)
    if bool(patient) == bool(rx_id):
        raise f.malformed("body", "a hold names exactly one of patient or rx_id")
    reason = f.code_field(body, "reason", "body")
    if reason not in HOLD_REASONS:
        raise f.malformed("body.reason", f"expected one of {', '.join(HOLD_REASONS)}")
    if state.get(HOLD, hold_id) is not None:
        raise RejectionError("hold-exists", f"hold {hold_id!r} exists")
    target = f"patient:{patient}" if patient else f"rx:{rx_id}"
    hold = {
        "hold_id": hold_id,
        "target": target,
        "patient": patient or None,
        "rx_id": rx_id or None,
        "reason": reason,
        "placed_by": statement.actor,
        "placed_seq": seq,
        "placed_at": statement.issued_at,
        "released_seq": None,
        "released_at": None,
    }
    index = state.get(HOLDS, target) or {"holds": []}
    index["holds"] = [*index["holds"], hold_id]
    return [
        Put(HOLD, hold_id, hold, patient=patient or None, status="active", seq=seq),
        Put(HOLDS, target, index, seq=seq),
    ]


def decide_grant(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    grant_id = f.id_field(body, "grant_id", "body")
    if statement.type == "audit.revoke":
        f.only(body, {"grant_id"}, "body")
        grant = state.get(AUDIT_GRANT, grant_id)
        if grant is None or grant["revoked_seq"] is not None:
            raise RejectionError("unknown-grant", f"no audit grant {grant_id!r} in force")
        grant.update(revoked_seq=seq, revoked_at=statement.issued_at)
        return [
            Put(AUDIT_GRANT, grant_id, grant, party=grant["auditor"], status="revoked", seq=seq)
        ]
    f.only(body, {"grant_id", "auditor", "patients", "valid_from", "valid_until"}, "body")
    auditor = f.id_field(body, "auditor", "body")
    found = get_actor(state, auditor)
    if found is None or found["role"] != "auditor":
        raise RejectionError("unknown-auditor", f"{auditor!r} is not a registered auditor")
    patients: Any = body.get("patients")
    if patients != "*":
        if not isinstance(patients, list) or not 1 <= len(patients) <= 10_000:
            raise f.malformed("body.patients", 'expected "*" or an array of 1 to 10000 pseudonyms')
        for i, _ in enumerate(patients):
            f.id_field({"p": patients[i]}, "p", f"body.patients[{i}]")
        patients = sorted(set(patients))
    valid_from = f.time_field(body, "valid_from", "body")
    valid_until = f.time_field(body, "valid_until", "body")
    if valid_until <= valid_from:
        raise f.malformed("body.valid_until", "must be after valid_from")
    if state.get(AUDIT_GRANT, grant_id) is not None:
        raise RejectionError("grant-exists", f"audit grant {grant_id!r} exists")
    grant = {
        "grant_id": grant_id,
        "auditor": auditor,
        "patients": patients,
        "valid_from": valid_from,
        "valid_until": valid_until,
        "granted_seq": seq,
        "revoked_seq": None,
        "revoked_at": None,
    }
    index = state.get(AUDITOR_GRANTS, auditor) or {"grants": []}
    index["grants"] = [*index["grants"], grant_id]
    return [
        Put(AUDIT_GRANT, grant_id, grant, party=auditor, status="active", seq=seq),
        Put(AUDITOR_GRANTS, auditor, index, party=auditor, seq=seq),
    ]


def audit_grant_covers(state: State, auditor: str, patient: str, at: str) -> str | None:
    """The id of a grant in force at ``at`` letting ``auditor`` read ``patient``, or None."""
    index = state.peek(AUDITOR_GRANTS, auditor)
    for grant_id in (index or {}).get("grants", []):
        grant = state.peek(AUDIT_GRANT, grant_id)
        if grant is None or grant["revoked_seq"] is not None:
            continue
        if not grant["valid_from"] <= at < grant["valid_until"]:
            continue
        if grant["patients"] == "*" or patient in grant["patients"]:
            return str(grant_id)
    return None


def note_inputs_erased(patient: str, seq: int) -> list[Effect]:
    """Replay only: later decisions of this patient (and traceability-code
    counts of anyone) may have read what was shredded here."""
    doc = {"since_seq": seq}
    return [
        Put(INPUTS_ERASED, patient, doc, patient=patient, seq=seq),
        Put(INPUTS_ERASED, "*", doc, seq=seq),
    ]


def index_rx(state: State, patient: str, rx_id: str, seq: int) -> Put:
    """The patient's prescriptions index with ``rx_id`` added (kept by ``rx.issue``)."""
    index = state.get(PATIENT_RX, patient) or {"rx_ids": []}
    index["rx_ids"] = [*index["rx_ids"], rx_id]
    return Put(PATIENT_RX, patient, index, patient=patient, seq=seq)


def payload_owner(state: State, statement: Statement) -> str:
    """Whose data key seals this (accepted) statement's payload: the patient's of
    a prescription or a dispense, else the ledger's (a data use's cohort)."""
    from ledger.domain import prescriptions  # noqa: PLC0415 - it imports us

    if statement.type == "rx.issue":
        return str(statement.body["patient"])
    if statement.type == "rx.dispense":
        rx = state.peek(prescriptions.RX, str(statement.body["rx_id"]))
        assert rx is not None
        return str(rx["patient"])
    return LEDGER_OWNER

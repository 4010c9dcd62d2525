"""Who may read what: clinical payloads behind access control, and the access log.

The records on the log are public; their payloads (a prescription's items and
diagnoses, a dispense's lines, a data use's cohort) are sealed
(:mod:`ledger.store.vault`) and are opened only here, for a reader who has a
*basis* for it:

``patient``
    the patient the payload belongs to, or a guardian registered for them.
``care``
    (``rx.issue`` / ``rx.dispense`` of prescription R) R's prescriber, and a
    pharmacy that dispensed a fill of R.
``claim``
    (same) an insurer that a claim on a fill of R is against.
``data-use:<use_id>``
    (same) a data user whose data use permitted this patient, for the category
    the payload is (``prescriptions`` for ``rx.issue``, ``dispenses`` for
    ``rx.dispense``), and only for records that were on the ledger when the use
    was made (a use releases what existed then, not what comes after); for a
    ``data.use`` payload (its cohort), the data user who made that use.
``audit-grant:<grant_id>``
    an auditor with an audit grant in force now that covers the patient; for a
    cohort (owner ``ledger``), only a grant of every patient (``"*"``).

Nobody else: not another patient, prescriber, pharmacy, insurer or data user,
and not the registrar (the operator holds the master key on its host; through
the service it reads nothing).

Every read is written to ``access_log`` as a FHIR AuditEvent-like document, in
its own transaction *before* the payload is handed back: no payload leaves
without its row. A refused read is logged too, with ``outcome`` ``"4"`` and
basis ``refused`` (who tried, which record, whose data; never the payload), so
that a patient sees attempts on their data as well as reads. A read of a record
that has no payload (404) or whose payload was shredded (410) is not logged:
nothing was, or could be, disclosed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from ledger.core.canonical import parse_json
from ledger.core.errors import EncodingError, NotFoundError, RejectionError
from ledger.core.sealing import SealError
from ledger.core.statement import Statement, format_time, instant
from ledger.core.statement import now as clock
from ledger.domain import prescriptions, settlement, wallet
from ledger.domain.privacy import AUDIT_GRANT, AUDITOR_GRANTS, LEDGER_OWNER, audit_grant_covers
from ledger.domain.state import Document, State
from ledger.service import Ledger
from ledger.store.reader import ProjectionReader
from ledger.store.schema import access_log, payloads, projections
from ledger.store.state import DbState

#: what a payload of each type is, for a data use's categories
CATEGORY = {"rx.issue": "prescriptions", "rx.dispense": "dispenses"}
AUDIT_EVENT_TYPE = {
    "code": "rest",
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
}
OUTCOME_SUCCESS = "0"
OUTCOME_MINOR_FAILURE = "4"
REFUSED = "refused"
PSEUDONYM_LOOKUP = "pseudonym-lookup"
MAX_LOG_PAGE = 500


def audit_event(
    *,
    action: str,
    recorded: str,
    actor: str,
    role: str,
    patient: str | None,
    what: str,
    basis: str,
    outcome: str = OUTCOME_SUCCESS,
) -> dict[str, Any]:
    """A FHIR AuditEvent-like document (R4 field names) for one access."""
    return {
        "resourceType": "AuditEvent",
        "type": dict(AUDIT_EVENT_TYPE),
        "action": action,
        "recorded": recorded,
        "outcome": outcome,
        "agent": [{"who": {"identifier": {"value": actor}}, "role": role, "requestor": True}],
        "entity": [{"what": {"identifier": {"value": what}}, "patient": patient}],
        "purposeOfEvent": basis,
    }


def log_access(
    engine: Engine,
    *,
    action: str,
    actor: str,
    role: str,
    patient: str | None,
    seq: int | None,
    what: str,
    basis: str,
    outcome: str = OUTCOME_SUCCESS,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Write one ``access_log`` row (committed when this returns); returns its event."""
    recorded = format_time(at or clock())
    event = audit_event(
        action=action,
        recorded=recorded,
        actor=actor,
        role=role,
        patient=patient,
        what=what,
        basis=basis,
        outcome=outcome,
    )
    with engine.begin() as conn:
        conn.execute(
            insert(access_log).values(
                recorded=recorded,
                action=action,
                actor=actor,
                role=role,
                patient=patient,
                seq=seq,
                basis=basis,
                event=json.dumps(event, sort_keys=True, separators=(",", ":")),
            )
        )
    return event


def access_log_for(
    engine: Engine, patient: str, *, after_id: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    """The AuditEvents about ``patient`` (reads of their payloads, lookups of their
    pseudonym), oldest first, after row ``after_id``; each with its row ``id``."""
    limit = max(1, min(limit, MAX_LOG_PAGE))
    query = (
        select(access_log.c.id, access_log.c.event)
        .where(access_log.c.patient == patient, access_log.c.id > after_id)
        .order_by(access_log.c.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{"id": int(r.id), **json.loads(r.event)} for r in rows]


# -- who may read -------------------------------------------------------------------


def _forbidden(reader: Document, seq: int) -> RejectionError:
    # Says who and which record, never what the payload holds or whose it is.
    return RejectionError(
        "forbidden", f"{reader['actor_id']!r} has no basis to read the payload of record {seq}"
    )


def _wildcard_grant(state: State, auditor: str, at: str) -> str | None:
    """A grant in force at ``at`` letting ``auditor`` read every patient's data."""
    index = state.get(AUDITOR_GRANTS, auditor)
    for grant_id in (index or {}).get("grants", []):
        grant = state.get(AUDIT_GRANT, grant_id)
        if grant is None or grant["revoked_seq"] is not None or grant["patients"] != "*":
            continue
        if grant["valid_from"] <= at < grant["valid_until"]:
            return str(grant_id)
    return None


def _rx_basis(
    state: State, conn: Connection, reader: Document, *, seq: int, kind: str, rx: Document
) -> str | None:
    actor, role = str(reader["actor_id"]), reader["role"]
    if role == "prescriber" and rx["prescriber"] == actor:
        return "care"
    fills = [
        prescriptions.dispense_key(rx["rx_id"], n) for n in range(1, int(rx["fills_done"]) + 1)
    ]
    if role == "pharmacy":
        dispenses = state.get_many(prescriptions.DISPENSE, fills)
        if any(d is not None and d["pharmacy"] == actor for d in dispenses.values()):
            return "care"
    if role == "insurer":
        claim_ids: list[str] = []
        for index in state.get_many(settlement.FILL_CLAIMS, fills).values():
            claim_ids.extend((index or {}).get("claims", []))
        claims = state.get_many(settlement.CLAIM, claim_ids)
        if any(c is not None and c["insurer"] == actor for c in claims.values()):
            return "claim"
    if role == "data_user":
        return _use_basis(
            state, conn, actor, patient=str(rx["patient"]), seq=seq, category=CATEGORY[kind]
        )
    return None


def _use_basis(
    state: State, conn: Connection, data_user: str, *, patient: str, seq: int, category: str
) -> str | None:
    """``data-use:<id>`` of a use by ``data_user`` that permitted ``patient`` for
    ``category`` and was made after record ``seq``."""
    keys = conn.execute(
        select(projections.c.key)
        .where(
            projections.c.kind == wallet.MEMBER,
            projections.c.patient == patient,
            projections.c.party == data_user,
            projections.c.seq > seq,
        )
        .order_by(projections.c.seq)
    ).scalars()
    use_ids = [str(k).rsplit("|", 1)[0] for k in keys]
    for use_id, use in state.get_many(wallet.USE, use_ids).items():
        if use is None or use["data_user"] != data_user or use["seq"] <= seq:
            continue
        if category in use["categories"]:
            return f"data-use:{use_id}"
    return None


def decide_basis(
    state: State,
    conn: Connection,
    reader: Document,
    *,
    seq: int,
    kind: str,
    body: dict[str, Any],
    owner: str,
    at: str,
) -> str | None:
    """Why ``reader`` may read the payload of record ``seq`` (``kind``, ``body``),
    whose owner is ``owner``; ``None`` when they may not."""
    actor, role = str(reader["actor_id"]), reader["role"]
    if owner == LEDGER_OWNER:
        if kind != "data.use":
            return None
        use_id = str(body.get("use_id"))
        use = state.get(wallet.USE, use_id)
        if role == "data_user" and use is not None and use["data_user"] == actor:
            return f"data-use:{use_id}"
        if role == "auditor":
            grant = _wildcard_grant(state, actor, at)
            return None if grant is None else f"audit-grant:{grant}"
        return None
    if role == "patient" and (actor == owner or owner in reader.get("guardian_of", [])):
        return "patient"
    if role == "auditor":
        grant = audit_grant_covers(state, actor, owner, at)
        return None if grant is None else f"audit-grant:{grant}"
    if kind in CATEGORY:
        rx = state.get(prescriptions.RX, str(body.get("rx_id")))
        if rx is not None and rx["patient"] == owner:
            return _rx_basis(state, conn, reader, seq=seq, kind=kind, rx=rx)
    return None


def read_payload(
    ledger: Ledger, reader: Document, seq: int, *, now: datetime | None = None
) -> dict[str, Any]:
    """The payload of record ``seq`` for ``reader`` (an actor document), logged.

    ``{seq, type, patient, basis, payload}``. Raises ``not-found`` when there is
    no such record or it has no payload, ``forbidden`` when the reader has no
    basis (logged with outcome ``4``), ``payload-erased`` when it was shredded.
    """
    if not 0 <= seq <= 2**62:
        raise EncodingError(f"seq: {seq}, want 0..2^62")
    moment = now or clock()
    at = instant(format_time(moment))
    record = ledger.reader.record(seq)  # NotFoundError when there is none
    statement = record.statement()
    with ledger.engine.connect() as conn:
        row = conn.execute(
            select(payloads.c.owner, payloads.c.erased_seq).where(payloads.c.seq == seq)
        ).first()
        if row is None:
            raise NotFoundError(f"record {seq} ({statement.type}) has no payload")
        state = DbState(conn, ledger.reader.head(conn).size)
        owner = str(row.owner) if row.owner is not None else _owner_of(state, statement)
        basis = decide_basis(
            state,
            conn,
            reader,
            seq=seq,
            kind=statement.type,
            body=dict(statement.body),
            owner=owner,
            at=at,
        )
    patient = None if owner == LEDGER_OWNER else owner
    common = _log_fields(reader, patient, seq, f"record/{seq}", moment)
    if basis is None:
        log_access(
            ledger.engine, action="R", basis=REFUSED, outcome=OUTCOME_MINOR_FAILURE, **common
        )
        raise _forbidden(reader, seq)
    if row.erased_seq is not None:
        raise RejectionError(
            "payload-erased",
            f"the payload of record {seq} was shredded by record {row.erased_seq} "
            "(erasure or retention)",
        )
    try:
        found = ledger.vault.read(ledger.engine, seq)
    except SealError:  # not shredded, yet it does not open: the store is damaged
        raise RejectionError(
            "payload-unreadable",
            f"the payload of record {seq} does not open: the store is damaged; tell the operator",
        ) from None
    if found is None:  # shredded since it was looked up
        raise RejectionError("payload-erased", f"the payload of record {seq} was shredded")
    content = parse_json(found[1])
    log_access(ledger.engine, action="R", basis=basis, **common)
    return {
        "seq": seq,
        "type": statement.type,
        "patient": patient,
        "basis": basis,
        "payload": content,
    }


def _owner_of(state: State, statement: Statement) -> str:
    """Whose a payload is, from the record (when the store no longer says)."""
    if statement.type == "rx.issue":
        return str(statement.body["patient"])
    if statement.type == "rx.dispense":
        rx = state.get(prescriptions.RX, str(statement.body["rx_id"]))
        if rx is not None:
            return str(rx["patient"])
    return LEDGER_OWNER


def lookup_pseudonym(ledger: Ledger, reader: Document, identifier: str) -> str:
    """The pseudonym of a patient's identifier, for the registrar only; logged
    (action ``E``) under the pseudonym. The identifier is never stored or logged."""
    if reader["role"] != "registrar":
        raise RejectionError("forbidden", "only the registrar (operator) looks up pseudonyms")
    if not isinstance(identifier, str) or not 0 < len(identifier) <= 256:
        raise EncodingError("identifier: expected a string of 1 to 256 characters")
    try:
        pseudonym = ledger.vault.master.pseudonym(identifier)
    except ValueError:
        raise EncodingError("identifier: an empty identifier has no pseudonym") from None
    log_access(
        ledger.engine,
        action="E",
        actor=str(reader["actor_id"]),
        role=str(reader["role"]),
        patient=pseudonym,
        seq=None,
        what=f"pseudonym/{pseudonym}",
        basis=PSEUDONYM_LOOKUP,
    )
    return pseudonym


def _view_basis(ledger: Ledger, reader: Document, rx: Document, at: str) -> str | None:
    """Who may see a prescription's view: who may read its issue's payload. Not
    "any pharmacy": prescription ids are public (in the records), so that would
    let every pharmacy page through every active prescription. A pharmacy sees
    one once it dispensed a fill; before, the patient shows it."""
    with ledger.engine.connect() as conn:
        state = DbState(conn, ledger.reader.head(conn).size)
        return decide_basis(
            state,
            conn,
            reader,
            seq=int(rx["issued_seq"]),
            kind="rx.issue",
            body={"rx_id": rx["rx_id"]},
            owner=str(rx["patient"]),
            at=at,
        )


def read_prescription(
    ledger: Ledger, reader: Document, rx_id: str, *, now: datetime | None = None
) -> dict[str, Any]:
    """The prescription view (drug codes, quantities: derived from its payload) for
    ``reader``: whoever may read its payload; logged like a payload read
    (``what`` = ``prescription/<id>``)."""
    from ledger.service import prescription_view  # noqa: PLC0415

    moment = now or clock()
    view = prescription_view(ledger.engine, rx_id)  # NotFoundError when there is none
    basis = _view_basis(ledger, reader, view, instant(format_time(moment)))
    common = _log_fields(
        reader, str(view["patient"]), int(view["issued_seq"]), f"prescription/{rx_id}", moment
    )
    _logged(ledger, basis, common, f"has no basis to read prescription {rx_id!r}")
    return view


def _log_fields(
    reader: Document, patient: str | None, seq: int | None, what: str, at: datetime
) -> dict[str, Any]:
    """The access-log fields of ``reader`` reading ``what`` (all but action and basis)."""
    return {
        "actor": str(reader["actor_id"]),
        "role": str(reader["role"]),
        "patient": patient,
        "seq": seq,
        "what": what,
        "at": at,
    }


def _logged(ledger: Ledger, basis: str | None, common: dict[str, Any], refusal: str) -> None:
    """Log a read (or its refusal, then raise ``forbidden``)."""
    if basis is None:
        log_access(
            ledger.engine, action="R", basis=REFUSED, outcome=OUTCOME_MINOR_FAILURE, **common
        )
        raise RejectionError("forbidden", f"{common['actor']!r} {refusal}")
    log_access(ledger.engine, action="R", basis=basis, **common)


def read_patient_prescriptions(
    ledger: Ledger, reader: Document, patient: str, *, limit: int, before_seq: int | None
) -> list[dict[str, Any]]:
    """A page of ``patient``'s prescriptions, for the patient, a guardian or an
    auditor with a grant covering them; logged (``patient/<P>/prescriptions``)."""
    moment = clock()
    basis = patient_basis(ledger, reader, patient, instant(format_time(moment)))
    common = _log_fields(reader, patient, None, f"patient/{patient}/prescriptions", moment)
    _logged(ledger, basis, common, f"may not list patient {patient!r}'s prescriptions")
    return ProjectionReader(ledger.engine).page(
        prescriptions.RX, patient=patient, before_seq=before_seq, limit=limit
    )


def patient_basis(ledger: Ledger, reader: Document, patient: str, at: str) -> str | None:
    """Why ``reader`` may list ``patient``'s prescriptions: the patient, a guardian,
    or an auditor with a grant covering them."""
    actor, role = str(reader["actor_id"]), reader["role"]
    if role == "patient" and (actor == patient or patient in reader.get("guardian_of", [])):
        return "patient"
    if role == "auditor":
        with ledger.engine.connect() as conn:
            state = DbState(conn, ledger.reader.head(conn).size)
            grant = audit_grant_covers(state, actor, patient, at)
        return None if grant is None else f"audit-grant:{grant}"
    return None

"""E-prescriptions: issue, dispense (in fills), cancel, reject; expiry is computed.

Public body (in the record) versus clinical payload (beside the record,
committed by ``body.payload_digest``; ARCHITECTURE §5):

``rx.issue`` (prescriber)
    body ``{rx_id, patient, valid_until, fills_allowed, payload_digest}``;
    payload ``{salt, items: [{drug_code, drug_name?, quantity, unit,
    days_supply, dose?}], diagnosis_codes: [...], controlled_class?}``.
``rx.dispense`` (pharmacy)
    body ``{rx_id, fill_number, claimed, insurer?, payload_digest}``;
    payload ``{salt, items: [{item, quantity, unit_price, trace_codes:
    [{code, pack_size, units}]}]}`` (``item`` indexes the prescription's
    items; ``unit_price`` in the smallest currency unit).
``rx.cancel`` (the issuing prescriber), ``rx.reject`` (a pharmacy)
    body ``{rx_id, reason}`` with ``reason`` a code (no free text).

Rules: no dispense of an unknown, cancelled, rejected, expired or completed
prescription; never more than prescribed per item over all fills; fill numbers
consecutive and within ``fills_allowed``; a controlled drug needs a prescriber
licensed for its class; a traceability code is never dispensed beyond its
pack size (a pack may be split across dispenses).
"""

from __future__ import annotations

from typing import Any

from ledger.core.errors import RejectionError
from ledger.core.statement import Statement
from ledger.domain import fields as f
from ledger.domain import privacy
from ledger.domain.registry import CONTROLLED_CLASSES, get_actor
from ledger.domain.state import Document, Effect, Put, State

RX = "rx"
DISPENSE = "dispense"
TRACE = "trace"
REASONS = (
    "patient-request",
    "prescribing-error",
    "interaction",
    "allergy",
    "out-of-stock",
    "suspected-fraud",
    "invalid-prescription",
    "other",
)
MAX_FILLS = 12


def dispense_key(rx_id: str, fill_number: int) -> str:
    return f"{rx_id}#{fill_number}"


def dispense_put(dispense: Document, seq: int) -> Put:
    return Put(
        DISPENSE,
        dispense_key(dispense["rx_id"], dispense["fill_number"]),
        dispense,
        patient=dispense["patient"],
        party=dispense["pharmacy"],
        status="claimed" if dispense["claimed"] else "unclaimed",
        seq=seq,
    )


def rx_put(rx: Document, seq: int) -> Put:
    return Put(
        RX,
        rx["rx_id"],
        rx,
        patient=rx["patient"],
        party=rx["prescriber"],
        status=rx["status"],
        seq=seq,
    )


def require_payload(payload: Any, statement: Statement) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RejectionError(
            "payload-required", f"{statement.type} needs its clinical payload (a JSON object)"
        )
    salt = payload.get("salt")
    if not isinstance(salt, str) or len(salt) < 16:
        raise f.malformed("payload.salt", "expected a random salt of at least 16 characters")
    return payload


def _clinical(
    payload: Any, statement: Statement, prescriber: Document
) -> tuple[str | None, list[dict[str, Any]]]:
    """The prescription's controlled class and items, from its payload."""
    clinical = require_payload(payload, statement)
    f.only(clinical, {"salt", "items", "diagnosis_codes", "controlled_class", "notes"}, "payload")
    items = []
    drugs: set[str] = set()
    for i, raw in enumerate(f.list_field(clinical, "items", "payload", min_len=1, max_len=20)):
        where = f"payload.items[{i}]"
        if not isinstance(raw, dict):
            raise f.malformed(where, "expected an object")
        f.only(raw, {"drug_code", "drug_name", "quantity", "unit", "days_supply", "dose"}, where)
        drug = f.code_field(raw, "drug_code", where)
        if drug in drugs:  # limits are per drug: one item per drug keeps them honest
            raise f.malformed(f"{where}.drug_code", f"{drug} is listed twice; list it once")
        drugs.add(drug)
        items.append(
            {
                "drug_code": drug,
                "quantity": f.int_field(raw, "quantity", where, minimum=1, maximum=100_000),
                "unit": f.str_field(raw, "unit", where, max_len=32),
                "days_supply": f.int_field(raw, "days_supply", where, minimum=1, maximum=365),
                "dispensed": 0,
            }
        )
    for i, code in enumerate(f.list_field(clinical, "diagnosis_codes", "payload", max_len=20)):
        if not isinstance(code, str) or not code:
            raise f.malformed(f"payload.diagnosis_codes[{i}]", "expected a code")
    controlled = clinical.get("controlled_class")
    if controlled is not None:
        if controlled not in CONTROLLED_CLASSES:
            raise f.malformed(
                "payload.controlled_class", f"expected one of {', '.join(CONTROLLED_CLASSES)}"
            )
        if controlled not in prescriber.get("controlled_classes", []):
            raise RejectionError(
                "prescriber-not-licensed",
                f"prescriber {prescriber['actor_id']!r} is not licensed for {controlled} drugs",
            )
    return controlled, items


def decide_issue(
    state: State, statement: Statement, prescriber: Document, payload: Any, *, seq: int
) -> list[Effect]:
    body = statement.body
    f.only(body, {"rx_id", "patient", "valid_until", "fills_allowed", "payload_digest"}, "body")
    rx_id = f.id_field(body, "rx_id", "body")
    patient = f.id_field(body, "patient", "body")
    valid_until = f.time_field(body, "valid_until", "body")
    fills_allowed = f.int_field(body, "fills_allowed", "body", minimum=1, maximum=MAX_FILLS)
    if valid_until <= statement.issued_at:
        raise f.malformed("body.valid_until", "must be after issued_at")
    privacy.refuse_if_erased(state, patient)
    erased = payload is privacy.ERASED  # a replay of a shredded payload: the body only
    controlled, items = (None, None) if erased else _clinical(payload, statement, prescriber)
    if state.get(RX, rx_id) is not None:
        raise RejectionError("rx-exists", f"prescription {rx_id!r} already exists")
    rx: Document = {
        "rx_id": rx_id,
        "patient": patient,
        "prescriber": statement.actor,
        "issued_at": statement.issued_at,
        "issued_seq": seq,
        "valid_until": valid_until,
        "fills_allowed": fills_allowed,
        "fills_done": 0,
        "controlled_class": controlled,
        "items": items,
        "status": "active",
        "history": [seq],
    }
    effects = [rx_put(rx, seq), privacy.index_rx(state, patient, rx_id, seq)]
    if erased:
        rx["inputs_erased"] = True
        effects.extend(privacy.note_inputs_erased(patient, seq))
    return effects


def active_rx(state: State, rx_id: str, at: str) -> Document:
    """The prescription if it can still be dispensed at ``at``; else reject."""
    rx = state.get(RX, rx_id)
    if rx is None:
        raise RejectionError("unknown-rx", f"prescription {rx_id!r} does not exist")
    if at < rx["issued_at"]:
        raise RejectionError(
            "rx-not-yet-issued",
            f"prescription {rx_id!r} was issued at {rx['issued_at']}, after this statement ({at})",
        )
    privacy.refuse_if_erased(state, rx["patient"])
    status = rx["status"]
    if status != "active":
        raise RejectionError(f"rx-{status}", f"prescription {rx_id!r} is {status}")
    if at >= rx["valid_until"]:
        raise RejectionError(
            "rx-expired", f"prescription {rx_id!r} expired at {rx['valid_until']}; now {at}"
        )
    return rx


def decide_dispense(state: State, statement: Statement, payload: Any, *, seq: int) -> list[Effect]:
    body = statement.body
    f.only(body, {"rx_id", "fill_number", "claimed", "insurer", "payload_digest"}, "body")
    rx_id = f.id_field(body, "rx_id", "body")
    fill = f.int_field(body, "fill_number", "body", minimum=1, maximum=MAX_FILLS)
    claimed = f.bool_field(body, "claimed", "body")
    insurer = f.id_field(body, "insurer", "body", optional=True) or None
    if claimed and insurer is None:
        raise f.malformed("body.insurer", "a claimed dispense names its insurer")
    if insurer is not None:
        found = get_actor(state, insurer)
        if found is None or found["role"] != "insurer":
            raise RejectionError("unknown-insurer", f"{insurer!r} is not a registered insurer")
    erased = payload is privacy.ERASED  # a replay of a shredded payload: the body only
    clinical = None if erased else require_payload(payload, statement)
    if clinical is not None:
        f.only(clinical, {"salt", "items"}, "payload")
    # A prescription whose last fill is done is ``completed``: active_rx refuses it.
    rx = active_rx(state, rx_id, statement.issued_at)
    if fill != rx["fills_done"] + 1:
        raise RejectionError(
            "fill-out-of-order", f"fill_number: expected {rx['fills_done'] + 1}, got {fill}"
        )
    if rx.get("inputs_erased") and not erased:
        raise RejectionError(
            "inputs-erased",
            f"prescription {rx_id!r}'s payload was shredded; its dispense's was not",
        )
    lines, traces = (None, {}) if clinical is None else _lines(state, rx, fill, clinical)
    rx["fills_done"] = fill
    rx["history"] = [*rx["history"], seq]
    if rx["fills_done"] >= rx["fills_allowed"] or (
        lines is not None and all(it["dispensed"] >= it["quantity"] for it in rx["items"])
    ):
        rx["status"] = "completed"
    dispense: Document = {
        "rx_id": rx_id,
        "fill_number": fill,
        "pharmacy": statement.actor,
        "patient": rx["patient"],
        "prescriber": rx["prescriber"],
        "dispensed_at": statement.issued_at,
        "seq": seq,
        "claimed": claimed,
        "insurer": insurer,
        "items": lines,
    }
    effects: list[Effect] = [rx_put(rx, seq)]
    if erased:
        dispense["inputs_erased"] = True
        effects.extend(
            [dispense_put(dispense, seq), *privacy.note_inputs_erased(rx["patient"], seq)]
        )
        return effects
    effects.append(dispense_put(dispense, seq))
    effects.extend(Put(TRACE, code, doc, seq=seq) for code, doc in sorted(traces.items()))
    return effects


def _lines(
    state: State, rx: Document, fill: int, clinical: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Document]]:
    """A dispense's lines from its payload, checked against the prescription
    (whose items' ``dispensed`` counts it updates), and the packs they touch."""
    rx_id = rx["rx_id"]
    lines = []
    seen_items: set[int] = set()
    traces: dict[str, Document] = {}
    for i, raw in enumerate(f.list_field(clinical, "items", "payload", min_len=1, max_len=20)):
        where = f"payload.items[{i}]"
        if not isinstance(raw, dict):
            raise f.malformed(where, "expected an object")
        f.only(raw, {"item", "quantity", "unit_price", "trace_codes"}, where)
        index = f.int_field(raw, "item", where, maximum=len(rx["items"]) - 1)
        if index in seen_items:
            raise f.malformed(where, f"item {index} listed twice")
        seen_items.add(index)
        quantity = f.int_field(raw, "quantity", where, minimum=1, maximum=100_000)
        unit_price = f.int_field(raw, "unit_price", where, maximum=10**9)
        item = rx["items"][index]
        if item["dispensed"] + quantity > item["quantity"]:
            raise RejectionError(
                "over-quantity",
                f"item {index} ({item['drug_code']}): prescribed {item['quantity']}, "
                f"dispensed {item['dispensed']}, asked {quantity}",
            )
        item["dispensed"] += quantity
        codes = []
        covered = 0
        for j, tc in enumerate(f.list_field(raw, "trace_codes", where, min_len=1, max_len=200)):
            twhere = f"{where}.trace_codes[{j}]"
            if not isinstance(tc, dict):
                raise f.malformed(twhere, "expected an object")
            f.only(tc, {"code", "pack_size", "units"}, twhere)
            code = f.trace_code(tc.get("code"), f"{twhere}.code")
            pack = f.int_field(tc, "pack_size", twhere, minimum=1, maximum=10_000)
            units = f.int_field(tc, "units", twhere, minimum=1, maximum=pack)
            trace = (
                traces.get(code)
                or state.get(TRACE, code)
                or {"code": code, "pack_size": pack, "dispensed": 0, "settled": 0, "dispenses": []}
            )
            if trace["pack_size"] != pack:
                raise RejectionError(
                    "trace-pack-mismatch",
                    f"traceability code {code}: pack size recorded {trace['pack_size']}, "
                    f"got {pack}",
                )
            if trace["dispensed"] + units > pack:
                raise RejectionError(
                    "trace-code-used-up",
                    f"traceability code {code}: pack of {pack}, {trace['dispensed']} already "
                    f"dispensed, {units} more asked",
                )
            trace["dispensed"] += units
            trace["dispenses"] = [*trace["dispenses"], dispense_key(rx_id, fill)]
            traces[code] = trace
            codes.append({"code": code, "pack_size": pack, "units": units})
            covered += units
        if covered != quantity:
            raise f.malformed(
                f"{where}.trace_codes", f"units add up to {covered}, but quantity is {quantity}"
            )
        lines.append(
            {
                "item": index,
                "drug_code": item["drug_code"],
                "days_supply": item["days_supply"],
                "prescribed_quantity": item["quantity"],
                "quantity": quantity,
                "unit_price": unit_price,
                "trace_codes": codes,
            }
        )
    return lines, traces


def decide_end(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    """``rx.cancel`` (issuing prescriber) or ``rx.reject`` (any pharmacy)."""
    body = statement.body
    f.only(body, {"rx_id", "reason"}, "body")
    rx_id = f.id_field(body, "rx_id", "body")
    reason = f.code_field(body, "reason", "body")
    if reason not in REASONS:
        raise f.malformed("body.reason", f"expected one of {', '.join(REASONS)}")
    rx = active_rx(state, rx_id, statement.issued_at)
    if statement.type == "rx.cancel":
        if rx["prescriber"] != statement.actor:
            raise RejectionError(
                "not-issuer", f"only the issuing prescriber {rx['prescriber']!r} may cancel"
            )
        rx["status"] = "cancelled"
    else:
        rx["status"] = "rejected"
    rx["ended"] = {"by": statement.actor, "reason": reason, "at": statement.issued_at, "seq": seq}
    rx["history"] = [*rx["history"], seq]
    return [rx_put(rx, seq)]


def status_at(rx: Document, at: str) -> str:
    """The prescription's status at ``at``: expiry is computed, not recorded."""
    if rx["status"] == "active" and at >= rx["valid_until"]:
        return "expired"
    return str(rx["status"])

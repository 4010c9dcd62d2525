"""Insurance settlement checks: coverage, policies, claims and decisions.

``coverage.enroll`` / ``coverage.end`` (insurer)
    ``{patient, plan, valid_from, valid_until}`` / ``{patient}``.
``policy.publish`` (insurer)
    ``{version, formulary: {drug_code: {max_unit_price, max_quantity,
    max_days_supply}}, refill_threshold_pct, copay_bp, controlled_allowed,
    controlled_max_days_supply}``. The policy in force for a dispense is the
    latest the insurer published before it (by ``seq``).
``claim.submit`` (the dispensing pharmacy)
    ``{claim_id, rx_id, fill_number}``.
``settlement.decision`` (the insurer's *settlement* key, held by the service)
    ``{claim_id, outcome, claimed_amount, approved_amount, policy_version,
    rules: [{rule, result, code?, item?}]}``.

:func:`evaluate` computes the decision from ledger content only — the claim,
its dispense and prescription, the coverage, the policy in force and earlier
paid claims — with no clock and no randomness. The rule for
``settlement.decision`` recomputes it and refuses any decision that differs,
so the auditor's replay re-runs every decision ("penetrating audit").

Money is integers in the smallest currency unit. Approved amount: for each
item that passes, ``quantity * min(unit_price, max_unit_price)``; summed; the
patient's copay taken off as ``total * (10000 - copay_bp) // 10000``
(rounded down, in the insurer's favour by at most one unit).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ledger.core.errors import RejectionError
from ledger.core.statement import Statement
from ledger.domain import fields as f
from ledger.domain import privacy
from ledger.domain.prescriptions import DISPENSE, RX, TRACE, dispense_key
from ledger.domain.registry import get_actor, key_valid_at
from ledger.domain.state import Document, Effect, Put, State

COVERAGE = "coverage"
POLICY = "policy"
CLAIM = "claim"
FILL_CLAIMS = "fill-claims"
PAID_FILL = "paid-fill"

#: our rule codes and the NCPDP reject codes they correspond to (docs/settlement.md)
NCPDP = {
    "not-covered": "65",
    "not-in-formulary": "70",
    "prescriber-not-authorised": "71",
    "quantity-limit": "76",
    "days-supply-limit": "76",
    "controlled-not-covered": "70",
    "refill-too-soon": "79",
    "duplicate-claim": "83",
    "rx-not-valid": "",
    "trace-code-settled": "",
    "price-capped": "78",
}
OUTCOMES = ("approved", "partially-approved", "rejected")


def coverage_key(insurer: str, patient: str) -> str:
    return f"{insurer}|{patient}"


def decide_enroll(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    f.only(body, {"patient", "plan", "valid_from", "valid_until"}, "body")
    patient = f.id_field(body, "patient", "body")
    plan = f.code_field(body, "plan", "body")
    valid_from = f.time_field(body, "valid_from", "body")
    valid_until = f.time_field(body, "valid_until", "body")
    if valid_until <= valid_from:
        raise f.malformed("body.valid_until", "must be after valid_from")
    key = coverage_key(statement.actor, patient)
    doc = state.get(COVERAGE, key) or {
        "insurer": statement.actor,
        "patient": patient,
        "periods": [],
    }
    for period in doc["periods"]:
        end = period["ended_at"] or period["valid_until"]
        if period["valid_from"] < valid_until and valid_from < end:
            raise RejectionError(
                "coverage-overlaps",
                f"patient already covered from {period['valid_from']} to {end}",
            )
    doc["periods"] = [
        *doc["periods"],
        {
            "plan": plan,
            "valid_from": valid_from,
            "valid_until": valid_until,
            "ended_at": None,
            "seq": seq,
        },
    ]
    return [Put(COVERAGE, key, doc, patient=patient, party=statement.actor, seq=seq)]


def decide_end_coverage(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    f.only(body, {"patient"}, "body")
    patient = f.id_field(body, "patient", "body")
    key = coverage_key(statement.actor, patient)
    doc = state.get(COVERAGE, key)
    at = statement.issued_at
    current = [
        p
        for p in (doc or {}).get("periods", [])
        if p["ended_at"] is None and p["valid_from"] <= at < p["valid_until"]
    ]
    if doc is None or not current:
        raise RejectionError("not-covered", f"patient {patient!r} has no coverage in force")
    doc["periods"] = [{**p, "ended_at": at} if p in current else p for p in doc["periods"]]
    return [Put(COVERAGE, key, doc, patient=patient, party=statement.actor, seq=seq)]


def decide_publish(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    f.only(
        body,
        {
            "version",
            "formulary",
            "refill_threshold_pct",
            "copay_bp",
            "controlled_allowed",
            "controlled_max_days_supply",
        },
        "body",
    )
    version = f.int_field(body, "version", "body", minimum=1)
    formulary = f.obj_field(body, "formulary", "body")
    for drug, entry in formulary.items():
        where = f"body.formulary.{drug}"
        if not isinstance(entry, dict):
            raise f.malformed(where, "expected an object")
        f.code_field({"drug": drug}, "drug", "body.formulary")
        f.only(entry, {"max_unit_price", "max_quantity", "max_days_supply"}, where)
        f.int_field(entry, "max_unit_price", where, maximum=10**9)
        f.int_field(entry, "max_quantity", where, minimum=1)
        f.int_field(entry, "max_days_supply", where, minimum=1, maximum=365)
    f.int_field(body, "refill_threshold_pct", "body", maximum=100)
    f.int_field(body, "copay_bp", "body", maximum=10_000)
    f.bool_field(body, "controlled_allowed", "body")
    f.int_field(body, "controlled_max_days_supply", "body", minimum=1, maximum=365)
    doc = state.get(POLICY, statement.actor) or {"insurer": statement.actor, "versions": []}
    if doc["versions"] and version <= doc["versions"][-1]["version"]:
        raise RejectionError(
            "policy-version",
            f"version must increase: latest is {doc['versions'][-1]['version']}, got {version}",
        )
    doc["versions"] = [
        *doc["versions"],
        {"version": version, "seq": seq, "published_at": statement.issued_at, "rules": dict(body)},
    ]
    return [Put(POLICY, statement.actor, doc, party=statement.actor, seq=seq)]


def decide_claim(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    f.only(body, {"claim_id", "rx_id", "fill_number"}, "body")
    claim_id = f.id_field(body, "claim_id", "body")
    rx_id = f.id_field(body, "rx_id", "body")
    fill = f.int_field(body, "fill_number", "body", minimum=1)
    dispense = state.get(DISPENSE, dispense_key(rx_id, fill))
    if dispense is None:
        raise RejectionError("unknown-dispense", f"no fill {fill} of prescription {rx_id!r}")
    privacy.refuse_if_erased(state, dispense["patient"])
    if dispense.get("erased_seq") is not None:
        raise RejectionError("rx-erased", f"fill {fill} of {rx_id!r} was shredded")
    if dispense["pharmacy"] != statement.actor:
        raise RejectionError(
            "not-your-dispense",
            f"fill {fill} of {rx_id!r} was dispensed by {dispense['pharmacy']!r}, "
            f"not {statement.actor!r}",
        )
    if not dispense["claimed"] or not dispense["insurer"]:
        raise RejectionError(
            "dispense-not-claimed", "the dispense was recorded as not claimed against an insurer"
        )
    if state.get(CLAIM, claim_id) is not None:
        raise RejectionError("claim-exists", f"claim {claim_id!r} already exists")
    fill_key = dispense_key(rx_id, fill)
    index = state.get(FILL_CLAIMS, fill_key) or {"claims": []}
    claim: Document = {
        "claim_id": claim_id,
        "rx_id": rx_id,
        "fill_number": fill,
        "pharmacy": statement.actor,
        "insurer": dispense["insurer"],
        "patient": dispense["patient"],
        "submitted_seq": seq,
        "earlier_claims": list(index["claims"]),
        "status": "pending",
        "decision": None,
    }
    index["claims"] = [*index["claims"], claim_id]
    return [
        Put(
            CLAIM,
            claim_id,
            claim,
            patient=claim["patient"],
            party=claim["insurer"],
            status="pending",
            seq=seq,
        ),
        Put(FILL_CLAIMS, fill_key, index, seq=seq),
    ]


def _days_between(earlier: str, later: str) -> float:
    delta = datetime.fromisoformat(later) - datetime.fromisoformat(earlier)
    return delta.total_seconds() / 86400


def _policy_before(state: State, insurer: str, seq: int) -> dict[str, Any] | None:
    doc = state.get(POLICY, insurer)
    found = None
    for version in (doc or {}).get("versions", []):
        if version["seq"] < seq:
            found = version
    return found


def _covered(state: State, insurer: str, patient: str, at: str) -> bool:
    doc = state.get(COVERAGE, coverage_key(insurer, patient))
    for p in (doc or {}).get("periods", []):
        end = min(p["valid_until"], p["ended_at"]) if p["ended_at"] else p["valid_until"]
        if p["valid_from"] <= at < end:
            return True
    return False


def _prescriber_authorised(state: State, rx: Document, at: str) -> bool:
    prescriber = get_actor(state, rx["prescriber"])
    if prescriber is None or prescriber["role"] != "prescriber":
        return False
    if rx["controlled_class"] and rx["controlled_class"] not in prescriber["controlled_classes"]:
        return False
    return any(
        key_valid_at(g, at) is None for g in prescriber["keys"] if g.get("purpose") == "general"
    )


def evaluate(
    state: State, claim: Document, *, recorded: Mapping[tuple[str, int], bool] | None = None
) -> dict[str, Any]:
    """The decision on ``claim``: a pure function of ledger content.

    ``recorded`` (a replay after a shredding only): results of history rules
    per ``(rule, item)`` taken from the recorded decision instead of computed
    (:func:`_recorded_history`); everything else is computed as always.
    """
    history = recorded or {}
    dispense = state.get(DISPENSE, dispense_key(claim["rx_id"], claim["fill_number"]))
    rx = state.get(RX, claim["rx_id"])
    assert dispense is not None
    assert rx is not None
    at = dispense["dispensed_at"]
    insurer = claim["insurer"]
    policy = _policy_before(state, insurer, dispense["seq"])
    rules: list[dict[str, Any]] = []

    def outcome(rule: str, ok: bool, *, item: int | None = None, code: str | None = None) -> bool:
        entry: dict[str, Any] = {"rule": rule, "result": "pass" if ok else "fail"}
        if item is not None:
            entry["item"] = item
        if not ok:
            entry["code"] = code or rule
        rules.append(entry)
        return ok

    claimed = sum(line["quantity"] * line["unit_price"] for line in dispense["items"])
    claim_ok = all(
        [
            outcome(
                "eligibility", _covered(state, insurer, claim["patient"], at), code="not-covered"
            ),
            outcome("policy-in-force", policy is not None, code="no-policy"),
            outcome("duplicate-claim", not _paid_before(state, claim), code="duplicate-claim"),
            outcome(
                "rx-valid-at-dispense",
                rx["issued_at"] <= at < rx["valid_until"],
                code="rx-not-valid",
            ),
            outcome(
                "prescriber-authorised",
                _prescriber_authorised(state, rx, at),
                code="prescriber-not-authorised",
            ),
        ]
    )
    approved_gross = 0
    items_ok = 0
    capped = False
    if claim_ok and policy is not None:
        terms = policy["rules"]
        formulary = terms["formulary"]
        for line in dispense["items"]:
            n = line["item"]
            entry = formulary.get(line["drug_code"])
            ok = outcome("formulary", entry is not None, item=n, code="not-in-formulary")
            if entry is not None:
                ok &= outcome("quantity-limit", line["quantity"] <= entry["max_quantity"], item=n)
                ok &= outcome(
                    "days-supply-limit", line["days_supply"] <= entry["max_days_supply"], item=n
                )
            if rx["controlled_class"]:
                ok &= outcome(
                    "controlled-drug",
                    terms["controlled_allowed"]
                    and line["days_supply"] <= terms["controlled_max_days_supply"],
                    item=n,
                    code="controlled-not-covered",
                )
            in_time = history.get(("refill-too-soon", n))
            if in_time is None:
                pct = terms["refill_threshold_pct"]
                in_time = not _too_soon(state, claim["patient"], line, at, pct)
            ok &= outcome("refill-too-soon", in_time, item=n)
            unsettled = history.get(("trace-code-settled", n))
            if unsettled is None:
                unsettled = _trace_unsettled(state, line)
            ok &= outcome("trace-code-settled", unsettled, item=n)
            if ok and entry is not None:
                price = line["unit_price"]
                if price > entry["max_unit_price"]:
                    capped = True
                    rules.append(
                        {
                            "rule": "unit-price-cap",
                            "result": "partial",
                            "code": "price-capped",
                            "item": n,
                        }
                    )
                    price = entry["max_unit_price"]
                else:
                    outcome("unit-price-cap", True, item=n)
                approved_gross += line["quantity"] * price
                items_ok += 1
    copay_bp = policy["rules"]["copay_bp"] if policy is not None else 0
    approved = approved_gross * (10_000 - copay_bp) // 10_000 if items_ok else 0
    if items_ok == 0:
        result = "rejected"
        approved = 0
    elif items_ok < len(dispense["items"]) or capped:
        result = "partially-approved"
    else:
        result = "approved"
    for rule in rules:
        code = rule.get("code")
        if code and NCPDP.get(code):
            rule["ncpdp"] = NCPDP[code]
    return {
        "claim_id": claim["claim_id"],
        "outcome": result,
        "claimed_amount": claimed,
        "approved_amount": approved,
        "policy_version": policy["version"] if policy is not None else 0,
        "rules": rules,
    }


def _decision_as_recorded(claim: Document, body: dict[str, Any], *, seq: int) -> list[Effect]:
    """Replay of a decision whose dispense's payload was shredded: the decision
    cannot be evaluated again, so it is taken as recorded (its record is still
    signed, chained and in the tree); see ``docs/privacy.md``."""
    outcome = f.str_field(body, "outcome", "body", max_len=32)
    if (
        outcome not in ("approved", "partially-approved", "rejected")
        or body.get("claim_id") != claim["claim_id"]
    ):
        raise f.malformed("body", "not a settlement decision")
    claim["status"] = outcome
    claim["decision"] = {**body, "seq": seq}
    failed = sorted(
        {r["code"] for r in body.get("rules", []) if isinstance(r, dict) and r.get("code")}
    )
    return [
        Put(
            CLAIM,
            claim["claim_id"],
            claim,
            patient=claim["patient"],
            party=claim["insurer"],
            status=outcome,
            tags=" ".join(failed) or None,
            seq=seq,
        )
    ]


def _recorded_history(
    state: State, claim: Document, body: dict[str, Any]
) -> dict[tuple[str, int], bool] | None:
    """Replay only: the results of history rules a recorded decision may keep
    because the fills they read were shredded since. ``trace-code-settled``
    once the replay has met any shredded payload (a pack may be shared), and
    ``refill-too-soon`` once it has met one of this patient's. ``None`` when
    the replay met none: the sequencer never does, so live decisions are
    always evaluated in full."""
    if state.peek(privacy.INPUTS_ERASED, "*") is None:
        return None
    may = {"trace-code-settled"}
    if state.peek(privacy.INPUTS_ERASED, str(claim["patient"])) is not None:
        may.add("refill-too-soon")
    rules = body.get("rules")
    if not isinstance(rules, list):
        return None
    return {
        (str(r["rule"]), r["item"]): r.get("result") == "pass"
        for r in rules
        if isinstance(r, dict) and r.get("rule") in may and isinstance(r.get("item"), int)
    }


def _paid_before(state: State, claim: Document) -> bool:
    for other_id in claim["earlier_claims"]:
        other = state.get(CLAIM, other_id)
        if other is not None and other["status"] in ("approved", "partially-approved", "pending"):
            return True
    return False


def _too_soon(state: State, patient: str, line: dict[str, Any], at: str, pct: int) -> bool:
    previous = state.get(PAID_FILL, f"{patient}|{line['drug_code']}")
    if previous is None:
        return False
    elapsed = _days_between(previous["dispensed_at"], at)
    return bool(elapsed * 100 < previous["days_supply"] * pct)


def covered_days(line: dict[str, Any]) -> int:
    """The days a fill covers: the item's days supply prorated by the quantity dispensed.

    A partial fill of 30 of 60 tablets prescribed for 30 days covers 15 days, so
    completing it after 15 days is not a refill too soon. Rounded up.
    """
    prescribed = line["prescribed_quantity"]
    return int(-(-line["days_supply"] * line["quantity"] // prescribed))


def _trace_unsettled(state: State, line: dict[str, Any]) -> bool:
    for tc in line["trace_codes"]:
        trace = state.get(TRACE, tc["code"])
        if trace is not None and trace["settled"] + tc["units"] > trace["pack_size"]:
            return False
    return True


def decide_decision(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = dict(statement.body)
    claim_id = f.id_field(body, "claim_id", "body")
    claim = state.get(CLAIM, claim_id)
    if claim is None:
        raise RejectionError("unknown-claim", f"claim {claim_id!r} does not exist")
    if claim["insurer"] != statement.actor:
        raise RejectionError(
            "not-your-claim", f"claim {claim_id!r} is against {claim['insurer']!r}"
        )
    if claim["status"] != "pending":
        raise RejectionError("already-decided", f"claim {claim_id!r} was decided already")
    dispense = state.peek(DISPENSE, dispense_key(claim["rx_id"], claim["fill_number"]))
    assert dispense is not None
    privacy.refuse_if_erased(state, claim["patient"])
    if dispense.get("erased_seq") is not None:
        raise RejectionError("rx-erased", f"the dispense of claim {claim_id!r} was shredded")
    if dispense.get("inputs_erased"):
        return _decision_as_recorded(claim, body, seq=seq)
    expected = evaluate(state, claim)
    if body != expected:
        recorded = _recorded_history(state, claim, body)
        if recorded:  # a replay after a shredding: history rules as recorded, the rest computed
            expected = evaluate(state, claim, recorded=recorded)
    if body != expected:
        differing = sorted(k for k in set(body) | set(expected) if body.get(k) != expected.get(k))
        raise RejectionError(
            "decision-mismatch",
            f"settlement decision for {claim_id!r} differs from the policy's result in "
            f"{', '.join(differing)}: expected outcome {expected['outcome']} approving "
            f"{expected['approved_amount']}, recorded {body.get('outcome')} approving "
            f"{body.get('approved_amount')}",
        )
    claim["status"] = expected["outcome"]
    claim["decision"] = {**expected, "seq": seq}
    failed = sorted({r["code"] for r in expected["rules"] if r.get("code")})
    effects: list[Effect] = [
        Put(
            CLAIM,
            claim_id,
            claim,
            patient=claim["patient"],
            party=claim["insurer"],
            status=claim["status"],
            tags=" ".join(failed) or None,
            seq=seq,
        )
    ]
    if expected["outcome"] != "rejected":
        dispense = state.get(DISPENSE, dispense_key(claim["rx_id"], claim["fill_number"]))
        assert dispense is not None
        failed_items = {
            r["item"] for r in expected["rules"] if "item" in r and r["result"] == "fail"
        }
        traces: dict[str, Document] = {}
        for line in dispense["items"]:
            if line["item"] in failed_items:
                continue
            effects.append(
                Put(
                    PAID_FILL,
                    f"{claim['patient']}|{line['drug_code']}",
                    {
                        "dispensed_at": dispense["dispensed_at"],
                        "days_supply": covered_days(line),
                        "claim_id": claim_id,
                    },
                    patient=claim["patient"],
                    seq=seq,
                )
            )
            for tc in line["trace_codes"]:
                trace = traces.get(tc["code"]) or state.get(TRACE, tc["code"])
                assert trace is not None
                trace["settled"] += tc["units"]
                traces[tc["code"]] = trace
        effects.extend(Put(TRACE, code, doc, seq=seq) for code, doc in sorted(traces.items()))
    return effects

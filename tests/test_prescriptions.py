"""E-prescriptions: issue, dispense in fills, cancel, reject, expiry.

Every test runs on SQLite and on a fresh PostgreSQL database. All tests share
one world per backend: each makes its own prescriptions, and each bad-statement
case checks by a snapshot that its refusal changed nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.core.note import Signer
from ledger.core.payload import seal
from ledger.core.statement import SignedStatement
from ledger.service import prescription_view
from ledger.store.audit import verify_database
from ledger.store.sequencer import Receipt, Submission
from tests.conftest import BACKENDS
from tests.helpers import snapshot
from tests.world import (
    CONTROLLED_CLASS,
    DRUG_B,
    DRUG_C,
    World,
    accepted,
    box,
    is_accepted,
    item,
    ledger_on,
    line,
    new_box_code,
    refused,
    unsalted,
)


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with ledger_on(request.param, tmp_path_factory.mktemp("rx")) as env:
        yield World.build(env)


# --- bad statements: one table ----------------------------------------------------
#
# Each case sets up what it needs (accepted statements) and returns the bad
# submission; the test snapshots the database, submits it, and checks the
# refusal's code and that nothing was written.


def _pharmacy_issues(w: World) -> Submission:
    return w.make_issue(w.new_id("RX"), by="pharmacy-1")


def _unknown_rx(w: World) -> Submission:
    return w.make_dispense(w.new_id("RX-NONE"), 1)


def _after_cancel(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    accepted(w.cancel(rx))
    return w.make_dispense(rx, 1)


def _after_reject(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    accepted(w.reject(rx, by="pharmacy-2"))
    return w.make_dispense(rx, 1)


def _expired(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx, valid_for=timedelta(seconds=3)))
    later = w.now() + timedelta(seconds=30)
    # the ledger's clock moves past valid_until (restored by the test: nothing is written)
    w.env.ledger.sequencer.clock = lambda: later
    return w.make_dispense(rx, 1, at=later)


def _over_quantity_over_two_fills(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx, items=[item(quantity=60)], fills=3))
    w.must(w.make_dispense(rx, 1, [line(0, 40)]))
    return w.make_dispense(rx, 2, [line(0, 21)])


def _fill_skipped(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx, fills=3))
    w.must(w.make_dispense(rx, 1, [line(0, 20)]))
    return w.make_dispense(rx, 3, [line(0, 20)])


def _no_fills_left(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx, items=[item(quantity=60)], fills=1))
    w.must(w.make_dispense(rx, 1, [line(0, 30)]))  # 30 of 60 left, but no fill
    return w.make_dispense(rx, 2, [line(0, 30)])


def _fully_dispensed(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx, items=[item(quantity=30)], fills=3))
    w.must(w.make_dispense(rx, 1, [line(0, 30)]))
    return w.make_dispense(rx, 2, [line(0, 1)])


def _same_box_twice(w: World) -> Submission:
    first, second, code = w.new_id("RX"), w.new_id("RX"), new_box_code()
    w.must(w.make_issue(first))
    w.must(w.make_issue(second))
    w.must(w.make_dispense(first, 1, [line(0, 30, boxes=[box(30, code=code)])]))
    return w.make_dispense(second, 1, [line(0, 30, boxes=[box(30, code=code)])], by="pharmacy-2")


def _box_pack_size_changes(w: World) -> Submission:
    first, second, code = w.new_id("RX"), w.new_id("RX"), new_box_code()
    w.must(w.make_issue(first))
    w.must(w.make_issue(second))
    w.must(w.make_dispense(first, 1, [line(0, 10, boxes=[box(30, 10, code=code)])]))
    return w.make_dispense(second, 1, [line(0, 10, boxes=[box(60, 10, code=code)])])


def _trace_units_do_not_add_up(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    return w.make_dispense(rx, 1, [line(0, 30, boxes=[box(20), box(20, 5)])])


def _same_item_twice(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    return w.make_dispense(rx, 1, [line(0, 10), line(0, 10)])


def _unlicensed_controlled(w: World) -> Submission:
    return w.make_issue(
        w.new_id("RX"),
        items=[item(DRUG_C, 14, 7)],
        controlled_class=CONTROLLED_CLASS,
        by="dr-wu",
    )


def _controlled_class_not_held(w: World) -> Submission:
    return w.make_issue(
        w.new_id("RX"), items=[item(DRUG_C, 14, 7)], controlled_class="narcotic", by="dr-li"
    )


def _forged_key(w: World) -> Submission:
    return w.make_issue(w.new_id("RX"), signer=Signer.generate("dr-li"))


def _forged_signature(w: World) -> Submission:
    honest = w.make_issue(w.new_id("RX"))
    forger = Signer.generate("dr-li")
    forged = SignedStatement(
        statement=honest.signed.statement,
        signed_bytes=honest.signed.signed_bytes,
        signature=forger.sign(honest.signed.signed_bytes),
    )
    return Submission(forged, payload=honest.payload)


def _cancel_by_another(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx, by="dr-li"))
    return w.make_end("rx.cancel", rx, by="dr-wu", reason="prescribing-error")


def _pharmacy_cancels(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    return w.make_end("rx.cancel", rx, by="pharmacy-1", reason="other")


def _reason_in_free_text(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    return w.make_end("rx.reject", rx, by="pharmacy-1", reason="patient-seemed-drunk")


def _cancel_after_completion(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx, fills=1))
    w.must(w.make_dispense(rx, 1))
    return w.make_end("rx.cancel", rx, by="dr-li", reason="patient-request")


def _payload_missing(w: World) -> Submission:
    issue = w.make_issue(w.new_id("RX"))
    return Submission(issue.signed, payload=None)


def _payload_not_committed(w: World) -> Submission:
    issue = w.make_issue(w.new_id("RX"))
    body = {k: v for k, v in issue.signed.statement.body.items() if k != "payload_digest"}
    return Submission(w.sign(w.prescribers["dr-li"], "rx.issue", body), payload=None)


def _payload_digest_mismatch(w: World) -> Submission:
    issue = w.make_issue(w.new_id("RX"))
    other, _ = seal({"items": [item(quantity=600)], "diagnosis_codes": []})
    return Submission(issue.signed, payload=other)


def _payload_without_salt(w: World) -> Submission:
    return w.make_issue(
        w.new_id("RX"), payload=unsalted({"items": [item()], "diagnosis_codes": ["I10"]})
    )


def _dispense_payload_without_salt(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    return w.make_dispense(rx, 1, payload=unsalted({"items": [line(0, 30)]}))


def _unknown_insurer(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    return w.make_dispense(rx, 1, insurer="dr-wu")  # an actor, but not an insurer


def _claimed_without_insurer(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    return w.make_dispense(rx, 1, insurer=None)


def _rx_id_reused(w: World) -> Submission:
    rx = w.new_id("RX")
    w.must(w.make_issue(rx))
    return w.make_issue(rx, by="dr-wu")


BAD: list[tuple[str, Callable[[World], Submission], str]] = [
    ("wrong role: a pharmacy issues a prescription", _pharmacy_issues, "wrong-role"),
    ("dispense of unknown prescription", _unknown_rx, "unknown-rx"),
    ("dispense after cancel", _after_cancel, "rx-cancelled"),
    ("dispense after reject", _after_reject, "rx-rejected"),
    ("expired prescription", _expired, "rx-expired"),
    ("over quantity over two fills", _over_quantity_over_two_fills, "over-quantity"),
    ("fill number skipped", _fill_skipped, "fill-out-of-order"),
    # The last allowed fill completes the prescription, so the refusal names
    # that status.
    ("no fills left", _no_fills_left, "rx-completed"),
    ("dispense of a fully dispensed prescription", _fully_dispensed, "rx-completed"),
    ("reused traceability code (same box twice)", _same_box_twice, "trace-code-used-up"),
    ("a box that changes its pack size", _box_pack_size_changes, "trace-pack-mismatch"),
    ("trace units do not add up", _trace_units_do_not_add_up, "malformed-body"),
    ("same item twice in one dispense", _same_item_twice, "malformed-body"),
    ("controlled drug by unlicensed prescriber", _unlicensed_controlled, "prescriber-not-licensed"),
    (
        "controlled drug of a class the prescriber does not hold",
        _controlled_class_not_held,
        "prescriber-not-licensed",
    ),
    ("forged prescriber: a key of its own named dr-li", _forged_key, "unknown-key"),
    ("forged prescriber: dr-li's key, another's signature", _forged_signature, "bad-signature"),
    ("cancel by another prescriber", _cancel_by_another, "not-issuer"),
    ("cancel by a pharmacy", _pharmacy_cancels, "wrong-role"),
    ("reason in free text", _reason_in_free_text, "malformed-body"),
    ("cancel after completion", _cancel_after_completion, "rx-completed"),
    ("clinical payload missing", _payload_missing, "payload-missing"),
    ("clinical payload neither sent nor committed", _payload_not_committed, "payload-required"),
    ("payload digest mismatch", _payload_digest_mismatch, "payload-mismatch"),
    ("payload without salt", _payload_without_salt, "malformed-body"),
    ("dispense payload without salt", _dispense_payload_without_salt, "malformed-body"),
    ("dispense claimed against a non-insurer", _unknown_insurer, "unknown-insurer"),
    ("claimed dispense without insurer", _claimed_without_insurer, "malformed-body"),
    ("prescription id reused", _rx_id_reused, "rx-exists"),
]


@pytest.mark.parametrize(("make", "code"), [(m, c) for _, m, c in BAD], ids=[i for i, _, _ in BAD])
def test_bad_statement_is_refused_and_changes_nothing(
    shared: World, make: Callable[[World], Submission], code: str
) -> None:
    clock = shared.env.ledger.sequencer.clock
    try:
        bad = make(shared)
        before = snapshot(shared.engine)
        refused(shared.submit(bad), code)
        assert snapshot(shared.engine) == before
    finally:
        shared.env.ledger.sequencer.clock = clock


# --- stories ----------------------------------------------------------------------
#
# On the shared world too: each story makes its own prescriptions.


def test_two_fills_dispense_the_prescription_and_complete_it(shared: World) -> None:
    w, rx_id = shared, shared.new_id("RX")
    issued = w.must(w.make_issue(rx_id, items=[item(quantity=60), item(DRUG_B, 20, 20)], fills=2))
    rx = w.rx(rx_id)
    assert (rx["status"], rx["fills_done"], rx["prescriber"]) == ("active", 0, "dr-li")
    assert [i["dispensed"] for i in rx["items"]] == [0, 0]

    first = w.must(w.make_dispense(rx_id, 1, [line(0, 30), line(1, 20)], claimed=False))
    rx = w.rx(rx_id)
    assert rx["status"] == "active"
    assert [i["dispensed"] for i in rx["items"]] == [30, 20]

    second = w.must(w.make_dispense(rx_id, 2, [line(0, 30)], by="pharmacy-2"))
    rx = w.rx(rx_id)
    assert (rx["status"], rx["fills_done"]) == ("completed", 2)
    assert [i["dispensed"] for i in rx["items"]] == [60, 20]
    assert rx["history"] == [issued.seq, first.seq, second.seq]

    view = prescription_view(w.engine, rx_id)
    assert view["status"] == "completed"
    assert [(h["seq"], h["type"], h["actor"]) for h in view["history"]] == [
        (issued.seq, "rx.issue", "dr-li"),
        (first.seq, "rx.dispense", "pharmacy-1"),
        (second.seq, "rx.dispense", "pharmacy-2"),
    ]
    verify_database(w.engine)


def test_all_items_dispensed_before_the_last_fill_completes_the_prescription(
    shared: World,
) -> None:
    w, rx_id = shared, shared.new_id("RX")
    w.must(w.make_issue(rx_id, items=[item(quantity=30)], fills=3))
    w.must(w.make_dispense(rx_id, 1, [line(0, 30)]))
    assert w.rx(rx_id)["status"] == "completed"


def test_cancel_and_reject_end_a_prescription_and_are_in_its_history(shared: World) -> None:
    w, one_id, two_id = shared, shared.new_id("RX"), shared.new_id("RX")
    w.must(w.make_issue(one_id))
    w.must(w.make_issue(two_id))
    cancelled = accepted(w.cancel(one_id, reason="patient-request"))
    rejected = accepted(w.reject(two_id, by="pharmacy-2", reason="allergy"))
    one, two = w.rx(one_id), w.rx(two_id)
    assert one["status"] == "cancelled"
    assert one["ended"] == {
        "by": "dr-li",
        "reason": "patient-request",
        "at": one["ended"]["at"],
        "seq": cancelled.seq,
    }
    assert two["status"] == "rejected"
    assert two["ended"]["by"] == "pharmacy-2"
    assert two["history"][-1] == rejected.seq
    refused(w.cancel(one_id), "rx-cancelled")  # ended once, for good


def test_expiry_is_computed_from_valid_until_not_recorded(shared: World) -> None:
    w, rx_id = shared, shared.new_id("RX")
    w.must(w.make_issue(rx_id, valid_for=timedelta(milliseconds=400)))
    size = w.size()
    time.sleep(0.5)
    assert w.rx(rx_id)["status"] == "active"  # stored as issued
    assert prescription_view(w.engine, rx_id)["status"] == "expired"  # computed now
    refused(w.dispense(rx_id, 1), "rx-expired")
    assert w.size() == size


def test_a_pack_may_be_split_across_dispenses_but_not_beyond_its_size(shared: World) -> None:
    w, code = shared, new_box_code()
    one, two, three = (w.new_id("RX") for _ in range(3))
    for rx_id in (one, two, three):
        w.must(w.make_issue(rx_id))
    w.must(w.make_dispense(one, 1, [line(0, 20, boxes=[box(30, 20, code=code)])]))
    w.must(w.make_dispense(two, 1, [line(0, 10, boxes=[box(30, 10, code=code)])]))
    refused(w.dispense(three, 1, [line(0, 1, boxes=[box(30, 1, code=code)])]), "trace-code-used-up")


def test_a_batch_dispensing_one_fill_twice_records_only_the_first(shared: World) -> None:
    w, rx_id = shared, shared.new_id("RX")
    w.must(w.make_issue(rx_id, items=[item(quantity=60)], fills=1))
    size = w.size()
    one = w.make_dispense(rx_id, 1, [line(0, 60)], by="pharmacy-1", claimed=False)
    two = w.make_dispense(rx_id, 1, [line(0, 60)], by="pharmacy-2", claimed=False)
    first, second = w.env.ledger.append([one, two])
    assert isinstance(first, Receipt)
    refused(second, "rx-completed")
    assert w.size() == size + 1
    assert w.rx(rx_id)["items"][0]["dispensed"] == 60


def test_the_clinical_payload_is_stored_beside_the_record_not_in_it(shared: World) -> None:
    w, rx_id = shared, shared.new_id("RX")
    issued = w.must(w.make_issue(rx_id, items=[item(DRUG_B, 20, 20)]))
    record = w.env.ledger.reader.record(issued.seq)
    assert DRUG_B.encode() not in record.record_bytes
    assert "items" not in record.fields["body"]
    payload = w.env.ledger.reader.payload(issued.seq)
    assert payload is not None
    assert DRUG_B.encode() in payload
    assert hashlib.sha256(payload).hexdigest() == record.fields["body"]["payload_digest"]


# --- property: never more than prescribed ------------------------------------------

Attempt = tuple[int, list[int]]


@st.composite
def dispense_plans(draw: st.DrawFn) -> tuple[list[int], int, list[Attempt]]:
    prescribed = draw(st.lists(st.integers(1, 20), min_size=1, max_size=2))
    fills = draw(st.integers(1, 4))
    attempt = st.tuples(
        st.integers(1, fills + 1),
        st.lists(st.integers(0, 12), min_size=len(prescribed), max_size=len(prescribed)),
    ).filter(lambda a: any(a[1]))
    return prescribed, fills, draw(st.lists(attempt, min_size=1, max_size=6))


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plan=dispense_plans())
def test_random_dispenses_never_exceed_what_was_prescribed(
    shared: World, plan: tuple[list[int], int, list[Attempt]]
) -> None:
    prescribed, fills, attempts = plan
    rx = shared.new_id("RX-H")
    drugs = [f"DRUG-R{n}" for n in range(len(prescribed))]  # one item per drug
    shared.must(
        shared.make_issue(
            rx, items=[item(d, q, 10) for d, q in zip(drugs, prescribed, strict=True)], fills=fills
        )
    )
    # the reference model: what the rules say, written the plain way
    dispensed, done, completed = [0] * len(prescribed), 0, False
    accepted_count = refused_count = 0
    size = shared.size()
    for fill, quantities in attempts:
        lines = [line(i, q) for i, q in enumerate(quantities) if q]
        outcome = shared.dispense(rx, fill, lines, claimed=False, insurer=None)
        fits = all(dispensed[i] + q <= prescribed[i] for i, q in enumerate(quantities))
        expected = not completed and fill == done + 1 and fill <= fills and fits
        assert is_accepted(outcome) == expected, (fill, quantities, outcome)
        if expected:
            accepted_count += 1
            done = fill
            dispensed = [d + q for d, q in zip(dispensed, quantities, strict=True)]
            completed = done >= fills or dispensed == prescribed
        else:
            refused_count += 1
        doc = shared.rx(rx)
        assert [i["dispensed"] for i in doc["items"]] == dispensed
        assert all(i["dispensed"] <= i["quantity"] for i in doc["items"])
    assert shared.size() == size + accepted_count
    assert accepted_count + refused_count == len(attempts)
    assert shared.rx(rx)["fills_done"] == done

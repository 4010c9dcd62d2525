"""The actor registry: keys are added, rotated and revoked from a moment on, never backwards.

Every test runs on SQLite and on a fresh PostgreSQL database, on one world per
backend; each test registers the actors whose keys it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from ledger.core.note import Signer
from ledger.core.statement import format_time
from ledger.domain import rules
from ledger.domain.registry import get_actor
from ledger.store.audit import verify_database
from ledger.store.sequencer import Submission
from tests.conftest import BACKENDS
from tests.helpers import snapshot
from tests.world import ProjectedState, World, accepted, ledger_on, line, refused


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    with ledger_on(request.param, tmp_path_factory.mktemp("registry")) as env:
        yield World.build(env)


def actor_doc(w: World, actor_id: str) -> dict[str, Any]:
    found = get_actor(ProjectedState(w.engine), actor_id)
    assert found is not None
    return found


def change(w: World, signer: Signer, kind: str, **body: Any) -> Submission:
    return Submission(w.sign(signer, kind, body))


def issue_as(w: World, signer: Signer, **kwargs: Any) -> Submission:
    return w.make_issue(w.new_id("RX"), signer=signer, **kwargs)


# --- rotate -----------------------------------------------------------------------


def test_an_actor_rotates_its_key_with_the_old_key(shared: World) -> None:
    w = shared
    doctor = w.new_id("dr")
    old, new = w.add_prescriber(doctor), Signer.generate(doctor)
    before = w.new_id("RX")
    w.must(w.make_issue(before, signer=old))

    w.must(change(w, old, "actor.rotate_key", actor=doctor, old_key=old.vkey, new_key=new.vkey))
    keys = {k["vkey"]: k for k in actor_doc(w, doctor)["keys"]}
    assert keys[old.vkey]["valid_until"] == keys[new.vkey]["valid_from"]  # old stops, new starts
    assert keys[new.vkey]["purpose"] == "general"

    refused(w.submit(issue_as(w, old)), "key-expired")
    w.must(issue_as(w, new))
    # what the old key signed before stays valid: its prescription goes on with the new key
    w.prescribers[doctor] = new
    accepted(w.submit(w.make_end("rx.cancel", before, by=doctor, reason="patient-request")))
    verify_database(w.engine)


def test_the_registrar_rotates_a_key_for_an_actor(shared: World) -> None:
    w = shared
    pharmacy = w.new_id("ph")
    old, new = w.add_pharmacy(pharmacy), Signer.generate(pharmacy)
    rx_id = w.new_id("RX")
    w.must(w.make_issue(rx_id, fills=2))
    w.must(w.make_dispense(rx_id, 1, [line(0, 10)], by=pharmacy))
    w.must(
        change(
            w,
            w.env.registrar,
            "actor.rotate_key",
            actor=pharmacy,
            old_key=old.vkey,
            new_key=new.vkey,
        )
    )
    refused(w.dispense(rx_id, 2, [line(0, 10)], by=pharmacy), "key-expired")
    w.pharmacies[pharmacy] = new
    w.must(w.make_dispense(rx_id, 2, [line(0, 10)], by=pharmacy))
    verify_database(w.engine)


def test_a_rotated_settlement_key_keeps_its_purpose(shared: World) -> None:
    w = shared
    insurer = w.new_id("ins")
    w.add_insurer(insurer, hold_settlement_key=False)
    old, new = w.settlement_keys[insurer], Signer.generate(insurer)
    w.must(
        change(
            w,
            w.env.registrar,
            "actor.rotate_key",
            actor=insurer,
            old_key=old.vkey,
            new_key=new.vkey,
        )
    )
    keys = {k["vkey"]: k for k in actor_doc(w, insurer)["keys"]}
    assert keys[new.vkey]["purpose"] == "settlement"
    _, claim_id = w.dispensed_and_claimed(
        patient=w.new_patient(insurers=[insurer]), insurer=insurer
    )
    decision = w.expected_decision(claim_id)
    refused(w.decide(decision, insurer=insurer), "key-expired")
    w.settlement_keys[insurer] = new
    accepted(w.decide(decision, insurer=insurer))
    refused(w.submit(issue_as(w, new)), "wrong-key-purpose")


# --- revoke -----------------------------------------------------------------------


def test_a_revoked_prescriber_is_refused_from_then_on_and_history_still_verifies(
    shared: World,
) -> None:
    w = shared
    doctor = w.new_id("dr")
    signer = w.add_prescriber(doctor)
    rx_id = w.new_id("RX")
    w.must(w.make_issue(rx_id, signer=signer))
    w.must(change(w, w.env.registrar, "actor.revoke", actor=doctor, reason="licence-suspended"))
    assert all(k["revoked_at"] for k in actor_doc(w, doctor)["keys"])

    size = w.size()
    refused(w.submit(issue_as(w, signer)), "key-revoked")
    refused(
        w.submit(w.make_end("rx.cancel", rx_id, by=doctor, reason="patient-request")),
        "key-revoked",
    )
    assert w.size() == size
    # the prescription signed before the revocation stands and can be dispensed
    w.must(w.make_dispense(rx_id, 1, claimed=False, insurer=None))
    verify_database(w.engine)


def test_an_actor_revokes_one_of_its_own_keys(shared: World) -> None:
    w = shared
    doctor = w.new_id("dr")
    first, second = w.add_prescriber(doctor), Signer.generate(doctor)
    w.must(change(w, first, "actor.add_key", actor=doctor, key=second.vkey, purpose="general"))
    w.must(issue_as(w, second))
    w.must(change(w, second, "actor.revoke", actor=doctor, key=first.vkey, reason="lost"))
    refused(w.submit(issue_as(w, first)), "key-revoked")
    w.must(issue_as(w, second))
    verify_database(w.engine)


# --- bad registry statements: one table ----------------------------------------------


def _settlement_key_for_a_pharmacy(w: World) -> Submission:
    key = Signer.generate("pharmacy-1")
    return change(
        w, w.pharmacies["pharmacy-1"], "actor.add_key", actor="pharmacy-1", key=key.vkey,
        purpose="settlement",
    )  # fmt: skip


def _settlement_key_enrolls(w: World) -> Submission:
    body = {
        "patient": w.new_id("P"),
        "plan": "basic",
        "valid_from": format_time(w.now()),
        "valid_until": format_time(w.now() + timedelta(days=30)),
    }
    return Submission(w.sign(w.settlement_keys["insurer-a"], "coverage.enroll", body))


def _general_key_decides(w: World) -> Submission:
    _, claim_id = w.dispensed_and_claimed(
        patient=w.new_patient(insurers=["insurer-b"]), insurer="insurer-b"
    )
    return w.make_decision(w.expected_decision(claim_id), general_key=True)


def _key_named_after_another_actor(w: World) -> Submission:
    key = Signer.generate("dr-wu")
    return change(w, w.prescribers["dr-li"], "actor.add_key", actor="dr-li", key=key.vkey,
                  purpose="general")  # fmt: skip


def _key_added_twice(w: World) -> Submission:
    signer = w.prescribers["dr-li"]
    return change(w, signer, "actor.add_key", actor="dr-li", key=signer.vkey, purpose="general")


def _key_added_to_another_actor(w: World) -> Submission:
    key = Signer.generate("dr-wu")
    return change(w, w.prescribers["dr-li"], "actor.add_key", actor="dr-wu", key=key.vkey,
                  purpose="general")  # fmt: skip


def _key_not_yet_valid(w: World) -> Submission:
    doctor = w.new_id("dr")
    signer = w.add_prescriber(doctor)
    later = Signer.generate(doctor)
    tomorrow = format_time(w.now() + timedelta(days=1))
    w.must(change(w, signer, "actor.add_key", actor=doctor, key=later.vkey, purpose="general",
                  valid_from=tomorrow))  # fmt: skip
    return issue_as(w, later)


def _rotation_signed_by_another_own_key(w: World) -> Submission:
    doctor = w.new_id("dr")
    first, second = w.add_prescriber(doctor), Signer.generate(doctor)
    w.must(change(w, first, "actor.add_key", actor=doctor, key=second.vkey, purpose="general"))
    return change(w, second, "actor.rotate_key", actor=doctor, old_key=first.vkey,
                  new_key=Signer.generate(doctor).vkey)  # fmt: skip


def _rotation_by_another_actor(w: World) -> Submission:
    old = w.prescribers["dr-wu"]
    return change(w, w.prescribers["dr-li"], "actor.rotate_key", actor="dr-wu",
                  old_key=old.vkey, new_key=Signer.generate("dr-wu").vkey)  # fmt: skip


def _rotation_of_a_rotated_key(w: World) -> Submission:
    doctor = w.new_id("dr")
    old = w.add_prescriber(doctor)
    w.must(change(w, old, "actor.rotate_key", actor=doctor, old_key=old.vkey,
                  new_key=Signer.generate(doctor).vkey))  # fmt: skip
    return change(w, w.env.registrar, "actor.rotate_key", actor=doctor, old_key=old.vkey,
                  new_key=Signer.generate(doctor).vkey)  # fmt: skip


def _revoke_by_another_actor(w: World) -> Submission:
    return change(w, w.prescribers["dr-li"], "actor.revoke", actor="dr-wu", reason="rivalry")


def _self_revoke_of_every_key(w: World) -> Submission:
    return change(w, w.prescribers["dr-wu"], "actor.revoke", actor="dr-wu", reason="leaving")


def _registered_twice(w: World) -> Submission:
    key = Signer.generate("dr-li")
    return change(w, w.env.registrar, "actor.register", actor="dr-li", role="prescriber",
                  key=key.vkey, licence="MD-2")  # fmt: skip


def _prescriber_without_licence(w: World) -> Submission:
    doctor = w.new_id("dr")
    key = Signer.generate(doctor)
    return change(w, w.env.registrar, "actor.register", actor=doctor, role="prescriber",
                  key=key.vkey)  # fmt: skip


def _pharmacy_with_controlled_classes(w: World) -> Submission:
    pharmacy = w.new_id("ph")
    key = Signer.generate(pharmacy)
    return change(w, w.env.registrar, "actor.register", actor=pharmacy, role="pharmacy",
                  key=key.vkey, licence="PH-9", controlled_classes=["narcotic"])  # fmt: skip


def _a_pharmacy_registers(w: World) -> Submission:
    doctor = w.new_id("dr")
    key = Signer.generate(doctor)
    return change(w, w.pharmacies["pharmacy-1"], "actor.register", actor=doctor,
                  role="prescriber", key=key.vkey, licence="MD-9")  # fmt: skip


def _register(role: str, **extra: Any) -> Callable[[World], Submission]:
    def make(w: World) -> Submission:
        actor = w.new_id("P" if role == "patient" else "ph")
        key = Signer.generate(actor)
        licence = {"licence": "PH-9"} if role == "pharmacy" else {}
        return change(w, w.env.registrar, "actor.register", actor=actor, role=role,
                      key=key.vkey, **licence, **extra)  # fmt: skip

    return make


BAD_NAMES: list[tuple[str, Any]] = [
    ("an object", {"a": 1}),
    ("a list", ["x"]),
    ("a number", 7),
    ("true", True),
    ("empty", ""),
    ("201 characters", "n" * 201),
    ("a line break", "Main St\nPharmacy"),
    ("a NUL", "Main\x00St"),
    ("a bidi override", "Main \u202eSt"),
]

BAD: list[tuple[str, Callable[[World], Submission], str]] = [
    *[
        (f"display name {what}", _register("pharmacy", display_name=name), "malformed-body")
        for what, name in BAD_NAMES
    ],
    ("a patient with an empty name", _register("patient", display_name=""), "malformed-body"),
    ("a patient with a false name", _register("patient", display_name=False), "malformed-body"),
    ("a data user of class 0", _register("data_user", data_user_class=0), "malformed-body"),
    ("a data user of class ''", _register("data_user", data_user_class=""), "malformed-body"),
    ("settlement key for a pharmacy", _settlement_key_for_a_pharmacy, "malformed-body"),
    ("settlement key signs a coverage enrolment", _settlement_key_enrolls, "wrong-key-purpose"),
    ("general key signs a settlement decision", _general_key_decides, "wrong-key-purpose"),
    ("key named after another actor", _key_named_after_another_actor, "malformed-body"),
    ("key added twice", _key_added_twice, "key-exists"),
    ("key added to another actor", _key_added_to_another_actor, "wrong-role"),
    ("key used before it is valid", _key_not_yet_valid, "key-not-yet-valid"),
    ("rotation signed by another own key", _rotation_signed_by_another_own_key, "wrong-key"),
    ("rotation by another actor", _rotation_by_another_actor, "wrong-role"),
    ("rotation of a rotated key", _rotation_of_a_rotated_key, "key-revoked"),
    ("revoke by another actor", _revoke_by_another_actor, "wrong-role"),
    ("self revoke of every key", _self_revoke_of_every_key, "wrong-role"),
    ("actor registered twice", _registered_twice, "actor-exists"),
    ("prescriber without licence", _prescriber_without_licence, "malformed-body"),
    ("pharmacy with controlled classes", _pharmacy_with_controlled_classes, "malformed-body"),
    ("a pharmacy registers a prescriber", _a_pharmacy_registers, "wrong-role"),
]


@pytest.mark.parametrize(("make", "code"), [(m, c) for _, m, c in BAD], ids=[i for i, _, _ in BAD])
def test_bad_registry_statement_is_refused_and_changes_nothing(
    shared: World, make: Callable[[World], Submission], code: str
) -> None:
    bad = make(shared)
    before = snapshot(shared.engine)
    refused(shared.submit(bad), code)
    assert snapshot(shared.engine) == before


def test_every_permitted_type_has_its_rule() -> None:
    """decide() finds each type's rule by name: none is permitted without one."""
    ruled = rules.REGISTRY_TYPES | rules.PAYLOAD_TYPES | {"doc.attest"} | set(rules._DECIDERS)
    assert set(rules.PERMISSIONS) == ruled


def test_a_display_name_is_stored_as_sent(shared: World) -> None:
    make = _register("pharmacy", display_name="Apotheke Zürich — 北京 №1")
    submission = make(shared)
    accepted(shared.submit(submission))
    actor = get_actor(ProjectedState(shared.engine), submission.signed.statement.body["actor"])
    assert actor is not None
    assert actor["display_name"] == "Apotheke Zürich — 北京 №1"

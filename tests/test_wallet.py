"""The patient's data wallet: consents, data uses decided per patient, proceeds.

Every test runs on SQLite and on a fresh PostgreSQL database, on one wallet
world per backend (``tests.wallet_world``); each test makes its own patients.
Bad statements are refused with their code and change nothing (a snapshot of
every table before and after); denials are recorded: the use is on the log,
with the patient counted as denied and absent from the permitted set. A
property test checks the recorded permitted sets against a brute-force reading
of the consents written here, from the rules in ``ledger.domain.wallet``'s
docstring and GA4GH DUO.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from math import floor
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from ledger.core.cohort import cohort_root
from ledger.core.statement import format_time, instant
from ledger.domain import wallet
from ledger.store.audit import replayed_projections, verify_database
from ledger.store.reader import ProjectionReader
from ledger.store.sequencer import Submission
from ledger.wallet_service import patient_balance, patient_uses, released
from tests.conftest import BACKENDS
from tests.helpers import snapshot
from tests.wallet_world import (
    DS,
    GRU,
    HMB,
    NCU,
    NPU,
    POA,
    PUB,
    TS,
    WalletWorld,
    duo,
)
from tests.world import accepted, is_accepted, ledger_on, refused


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WalletWorld]:
    with ledger_on(request.param, tmp_path_factory.mktemp("wallet")) as env:
        yield WalletWorld.build(env)


# --- bad statements: one table ------------------------------------------------------
#
# Each case sets up what it needs (accepted statements) and returns the bad
# submission; the test snapshots the database, submits it, and checks the
# refusal's code and that nothing was written.


def _grant_by_another_patient(w: WalletWorld) -> Submission:
    patient, other = w.new_patients(2)
    return w.make_grant(patient, by=other)


def _guardian_of_another_ward(w: WalletWorld) -> Submission:
    ward, stranger = w.new_patients(2)
    guardian = w.new_guardian(ward)
    return w.make_grant(stranger, by=guardian)


def _grant_to_unknown_data_user(w: WalletWorld) -> Submission:
    return w.make_grant(w.new_patient(), grantee="nobody-inc")


def _grant_to_a_patient(w: WalletWorld) -> Submission:
    patient, other = w.new_patients(2)
    return w.make_grant(patient, grantee=other)


def _grant_without_permission(w: WalletWorld) -> Submission:
    return w.make_grant(w.new_patient(), purposes=[duo(NCU), duo(PUB)])


def _ds_without_disease(w: WalletWorld) -> Submission:
    return w.make_grant(w.new_patient(), purposes=[duo(DS)])


def _disease_on_hmb(w: WalletWorld) -> Submission:
    return w.make_grant(w.new_patient(), purposes=[duo(HMB, disease="E11")])


def _ts_without_months(w: WalletWorld) -> Submission:
    return w.make_grant(w.new_patient(), purposes=[duo(HMB), duo(TS)])


def _unknown_duo(w: WalletWorld) -> Submission:
    return w.make_grant(w.new_patient(), purposes=[duo(HMB), duo("DUO:0000099")])


def _unknown_category(w: WalletWorld) -> Submission:
    return w.make_grant(w.new_patient(), categories=["prescriptions", "genomes"])


def _share_above(w: WalletWorld) -> Submission:
    return w.make_grant(w.new_patient(), share_bp=10_001)


def _ends_before_it_starts(w: WalletWorld) -> Submission:
    t = w.now()
    return w.make_grant(w.new_patient(), valid_from=t, valid_until=t - timedelta(days=1))


def _consent_id_reused(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    consent = w.grant(patient)
    return w.make_grant(patient, consent, purposes=[duo(GRU)])


def _narrow_extends(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    consent = w.grant(patient, valid_until=w.now() + timedelta(days=30))
    return w.make_narrow(patient, consent, valid_until=w.now() + timedelta(days=31))


def _narrow_lifts_non_commercial(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    consent = w.grant(patient, purposes=[duo(HMB), duo(NCU)])
    return w.make_narrow(patient, consent, remove_purposes=[NCU])


def _narrow_last_permission(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    consent = w.grant(patient, purposes=[duo(HMB), duo(NCU)])
    return w.make_narrow(patient, consent, remove_purposes=[HMB])


def _narrow_last_category(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    consent = w.grant(patient, categories=["prescriptions"])
    return w.make_narrow(patient, consent, remove_categories=["prescriptions"])


def _narrow_changes_nothing(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    consent = w.grant(patient, categories=["prescriptions"])
    return w.make_narrow(patient, consent, remove_categories=["claims"])


def _narrow_by_another_patient(w: WalletWorld) -> Submission:
    patient, other = w.new_patients(2)
    consent = w.grant(patient, categories=["prescriptions", "claims"])
    return w.make_narrow(patient, consent, by=other, remove_categories=["claims"])


def _narrow_after_revoke(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    consent = w.grant(patient, categories=["prescriptions", "claims"])
    w.revoke(patient, consent)
    return w.make_narrow(patient, consent, remove_categories=["claims"])


def _revoke_twice(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    consent = w.grant(patient)
    w.revoke(patient, consent)
    return w.make_revoke(patient, consent)


def _revoke_unknown(w: WalletWorld) -> Submission:
    return w.make_revoke(w.new_patient(), "c-never-given")


def _revoke_by_another_patient(w: WalletWorld) -> Submission:
    patient, other = w.new_patients(2)
    return w.make_revoke(patient, w.grant(patient), by=other)


def _consented(w: WalletWorld, count: int = 2) -> list[str]:
    patients = w.new_patients(count)
    for patient in patients:
        w.grant(patient)
    return patients


def _use_wrong_root(w: WalletWorld) -> Submission:
    patients = _consented(w)
    return w.make_use("uni", patients, permitted_root=cohort_root("another-use", patients).hex())


def _use_wrong_counts(w: WalletWorld) -> Submission:
    patients = [*_consented(w), w.new_patient()]  # two permitted, one denied
    return w.make_use("uni", patients, permitted_count=3, denied_count=0)


def _use_root_of_a_subset(w: WalletWorld) -> Submission:
    patients = _consented(w, 3)
    use_id = w.new_id("use")
    subset = cohort_root(use_id, patients[:2]).hex()
    return w.make_use("uni", patients, use_id=use_id, permitted_root=subset, permitted_count=2)


def _use_signed_before_a_revocation(w: WalletWorld) -> Submission:
    """Previewed and signed a minute ago; the patient revokes before it is sequenced.

    ``preview_use``'s docstring: "if the consents change before it is
    sequenced, the use is refused (cohort-mismatch)".
    """
    patient = w.new_patient()
    consent = w.grant(patient)
    use = w.make_use("uni", [patient], at=w.now() - timedelta(minutes=1))
    w.revoke(patient, consent)
    return use


def _use_by_a_patient(w: WalletWorld) -> Submission:
    patients = _consented(w)
    return w.make_use("uni", patients, by=patients[0])


def _use_id_reused(w: WalletWorld) -> Submission:
    patients = _consented(w)
    use_id = str(w.use("uni", patients)["use_id"])
    return w.make_use("charity", patients, use_id=use_id)


def _use_lists_a_patient_twice(w: WalletWorld) -> Submission:
    patients = _consented(w)
    return w.make_use("uni", [*patients, patients[0]])


def _use_purpose_is_a_modifier(w: WalletWorld) -> Submission:
    return w.make_use("uni", _consented(w), purpose=duo(NCU))


def _use_of_an_unknown_category(w: WalletWorld) -> Submission:
    return w.make_use("uni", _consented(w), categories=["genomes"])


def _use_without_its_cohort(w: WalletWorld) -> Submission:
    use = w.make_use("uni", _consented(w))
    return Submission(use.signed, payload=None)


def _use_of_another_cohort(w: WalletWorld) -> Submission:
    use = w.make_use("uni", _consented(w))
    other = w.make_use("uni", _consented(w))
    return Submission(use.signed, payload=other.payload)


def _recorded_use(w: WalletWorld, user: str = "uni") -> str:
    return str(w.use(user, _consented(w))["use_id"])


def _proceeds_unknown_use(w: WalletWorld) -> Submission:
    return w.make_proceeds("uni", "use-never-made", 100)


def _proceeds_by_another(w: WalletWorld) -> Submission:
    return w.make_proceeds("pharma", _recorded_use(w, "uni"), 100)


def _proceeds_by_a_patient(w: WalletWorld) -> Submission:
    patient = w.new_patient()
    return w.make_proceeds(patient, _recorded_use(w), 100)


def _payment_id_reused(w: WalletWorld) -> Submission:
    use_id = _recorded_use(w)
    w.proceeds("uni", use_id, 100, payment_id="pay-once")
    return w.make_proceeds("uni", use_id, 50, payment_id="pay-once")


def _proceeds_for_no_one(w: WalletWorld) -> Submission:
    use = w.use("uni", w.new_patients(2))  # no consent: both denied
    assert use["permitted_count"] == 0
    return w.make_proceeds("uni", str(use["use_id"]), 100)


def _proceeds_of_nothing(w: WalletWorld) -> Submission:
    return w.make_proceeds("uni", _recorded_use(w), 0)


BAD: list[tuple[str, Callable[[WalletWorld], Submission], str]] = [
    ("consent signed by another patient", _grant_by_another_patient, "not-your-consent"),
    ("guardian not registered as such", _guardian_of_another_ward, "not-your-consent"),
    ("grant to an unknown data user", _grant_to_unknown_data_user, "unknown-grantee"),
    ("grant to a patient, not a data user", _grant_to_a_patient, "unknown-grantee"),
    ("grant without a permission term", _grant_without_permission, "malformed-body"),
    ("disease-specific without a disease", _ds_without_disease, "malformed-body"),
    ("a disease on a non-DS term", _disease_on_hmb, "malformed-body"),
    ("time limit without months", _ts_without_months, "malformed-body"),
    ("unknown DUO code", _unknown_duo, "malformed-body"),
    ("unknown category", _unknown_category, "malformed-body"),
    ("share above 10000 bp", _share_above, "malformed-body"),
    ("consent that ends before it starts", _ends_before_it_starts, "malformed-body"),
    ("consent id reused", _consent_id_reused, "consent-exists"),
    ("narrow that extends the consent", _narrow_extends, "consent-broadened"),
    # Removing a modifier (NCU, NPU, TS) would broaden a consent.
    (
        "narrow that lifts the non-commercial term",
        _narrow_lifts_non_commercial,
        "consent-broadened",
    ),
    ("narrow removing the last permission", _narrow_last_permission, "malformed-body"),
    ("narrow removing the last category", _narrow_last_category, "malformed-body"),
    ("narrow that changes nothing", _narrow_changes_nothing, "malformed-body"),
    ("narrow by another patient", _narrow_by_another_patient, "not-your-consent"),
    ("narrow after revoke", _narrow_after_revoke, "consent-revoked"),
    ("revoke twice", _revoke_twice, "consent-revoked"),
    ("revoke unknown consent", _revoke_unknown, "unknown-consent"),
    ("revoke by another patient", _revoke_by_another_patient, "not-your-consent"),
    ("use with a wrong cohort root", _use_wrong_root, "cohort-mismatch"),
    ("use with wrong counts", _use_wrong_counts, "cohort-mismatch"),
    ("use committing to a subset of the permitted", _use_root_of_a_subset, "cohort-mismatch"),
    # A revocation recorded before the use stops it, whatever time the use states.
    (
        "use signed before a revocation, sequenced after it",
        _use_signed_before_a_revocation,
        "cohort-mismatch",
    ),
    ("use by a patient", _use_by_a_patient, "wrong-role"),
    ("use id reused", _use_id_reused, "use-exists"),
    ("use listing a patient twice", _use_lists_a_patient_twice, "malformed-body"),
    ("use whose purpose is a modifier", _use_purpose_is_a_modifier, "malformed-body"),
    ("use of an unknown category", _use_of_an_unknown_category, "malformed-body"),
    ("use without its cohort payload", _use_without_its_cohort, "payload-missing"),
    ("use with another use's cohort", _use_of_another_cohort, "payload-mismatch"),
    ("proceeds for an unknown use", _proceeds_unknown_use, "unknown-use"),
    ("proceeds by another data user", _proceeds_by_another, "not-your-use"),
    ("proceeds by a patient", _proceeds_by_a_patient, "wrong-role"),
    ("payment id reused", _payment_id_reused, "payment-exists"),
    ("proceeds for a use that permitted no one", _proceeds_for_no_one, "no-one-to-pay"),
    ("proceeds of nothing", _proceeds_of_nothing, "malformed-body"),
]


@pytest.mark.parametrize(("make", "code"), [(m, c) for _, m, c in BAD], ids=[i for i, _, _ in BAD])
def test_bad_statement_is_refused_and_changes_nothing(
    shared: WalletWorld, make: Callable[[WalletWorld], Submission], code: str
) -> None:
    bad = make(shared)
    before = snapshot(shared.engine)
    refused(shared.submit(bad), code)
    assert snapshot(shared.engine) == before


# --- decisions: recorded, not refused ----------------------------------------------------
#
# Each case gives one fresh patient consents (or none) and returns how the use
# is made: by whom (default ``uni``, accredited non-profit), for what purpose
# (default HMB) and which categories (default prescriptions), and when.

Setup = Callable[[WalletWorld, str], dict[str, Any]]


def _no_consent(w: WalletWorld, p: str) -> dict[str, Any]:
    return {}


def _plain_hmb(w: WalletWorld, p: str) -> dict[str, Any]:
    w.grant(p)
    return {}


def _after_revocation(w: WalletWorld, p: str) -> dict[str, Any]:
    w.revoke(p, w.grant(p))
    return {}


def _backdated_before_revocation(w: WalletWorld, p: str) -> dict[str, Any]:
    """The revocation is on the log; the data user signs its use 2 minutes earlier
    (within the ledger's 5-minute window)."""
    w.revoke(p, w.grant(p))
    return {"at": w.now() - timedelta(minutes=2)}


def _revoked_but_another_permits(w: WalletWorld, p: str) -> dict[str, Any]:
    w.grant(p)
    w.revoke(p, w.grant(p))
    return {}


def _grant(purposes: list[dict[str, Any]], **use: Any) -> Setup:
    def setup(w: WalletWorld, p: str) -> dict[str, Any]:
        w.grant(p, purposes=purposes)
        return dict(use)

    return setup


def _to(grantee: str, user: str) -> Setup:
    def setup(w: WalletWorld, p: str) -> dict[str, Any]:
        w.grant(p, grantee=grantee)
        return {"user": user}

    return setup


def _categories(granted: list[str], used: list[str]) -> Setup:
    def setup(w: WalletWorld, p: str) -> dict[str, Any]:
        w.grant(p, categories=granted)
        return {"categories": used}

    return setup


def _time_limit(days_ago: int, months: int) -> Setup:
    def setup(w: WalletWorld, p: str) -> dict[str, Any]:
        w.grant(
            p,
            purposes=[duo(HMB), duo(TS, months=months)],
            valid_from=w.now() - timedelta(days=days_ago),
        )
        return {}

    return setup


def _expired(w: WalletWorld, p: str) -> dict[str, Any]:
    t = w.now()
    w.grant(p, valid_from=t - timedelta(days=10), valid_until=t - timedelta(hours=1))
    return {}


def _not_yet_valid(w: WalletWorld, p: str) -> dict[str, Any]:
    t = w.now()
    w.grant(p, valid_from=t + timedelta(days=1), valid_until=t + timedelta(days=30))
    return {}


def _narrowed_category(w: WalletWorld, p: str) -> dict[str, Any]:
    consent = w.grant(p, categories=["prescriptions", "diagnoses"])
    w.narrow(p, consent, remove_categories=["diagnoses"])
    return {"categories": ["diagnoses"]}


def _narrowed_permission(w: WalletWorld, p: str) -> dict[str, Any]:
    consent = w.grant(p, purposes=[duo(GRU), duo(HMB)])
    w.narrow(p, consent, remove_purposes=[GRU])
    return {"purpose": duo(POA)}


def _narrowed_but_still_covering(w: WalletWorld, p: str) -> dict[str, Any]:
    consent = w.grant(p, purposes=[duo(GRU), duo(HMB)], categories=["prescriptions", "claims"])
    w.narrow(p, consent, remove_purposes=[GRU], remove_categories=["claims"])
    return {"purpose": duo(DS, disease="E11")}


def _narrowed_expired_consent(w: WalletWorld, p: str) -> dict[str, Any]:
    """An expired consent narrowed to an even earlier end must stay expired."""
    t = w.now()
    consent = w.grant(p, valid_from=t - timedelta(days=10), valid_until=t - timedelta(days=1))
    (refused,) = w.env.ledger.append([w.make_narrow(p, consent, valid_until=t - timedelta(days=2))])
    assert getattr(refused, "code", None) == "consent-ended"
    return {"at": t - timedelta(minutes=2)}


def _by_guardian(w: WalletWorld, p: str) -> dict[str, Any]:
    guardian = w.new_guardian(p)
    w.grant(p, by=guardian)
    return {}


DECISIONS: list[tuple[str, Setup, bool]] = [
    ("use without consent", _no_consent, False),
    ("use of a plain HMB consent", _plain_hmb, True),
    ("use after revocation", _after_revocation, False),
    ("use backdated to before a recorded revocation", _backdated_before_revocation, False),
    ("one consent revoked, another still permits", _revoked_but_another_permits, True),
    ("commercial use of an NCU consent", _grant([duo(HMB), duo(NCU)], user="pharma"), False),
    ("commercial use of an NPU consent", _grant([duo(HMB), duo(NPU)], user="pharma"), False),
    ("non-profit use of an NCU consent", _grant([duo(HMB), duo(NCU)], user="charity"), True),
    ("non-profit use of an NPU consent", _grant([duo(HMB), duo(NPU)], user="charity"), True),
    ("commercial use of a plain HMB consent", _grant([duo(HMB)], user="pharma"), True),
    ("publication required is recorded, not enforced", _grant([duo(HMB), duo(PUB)]), True),
    ("category not covered", _categories(["prescriptions"], ["prescriptions", "claims"]), False),
    ("every category covered", _categories(["claims", "diagnoses"], ["diagnoses", "claims"]), True),
    ("HMB consent, POA use", _grant([duo(HMB)], purpose=duo(POA)), False),
    ("HMB consent, GRU use", _grant([duo(HMB)], purpose=duo(GRU)), False),
    ("HMB consent covers a DS use", _grant([duo(HMB)], purpose=duo(DS, disease="I10")), True),
    ("GRU consent covers a POA use", _grant([duo(GRU)], purpose=duo(POA)), True),
    ("POA consent, HMB use", _grant([duo(POA)], purpose=duo(HMB)), False),
    ("DS consent, HMB use", _grant([duo(DS, disease="E11")], purpose=duo(HMB)), False),
    (
        "DS E11 consent, DS I10 use",
        _grant([duo(DS, disease="E11")], purpose=duo(DS, disease="I10")),
        False,
    ),
    (
        "DS E11 consent covers a DS E11.9 use",
        _grant([duo(DS, disease="E11")], purpose=duo(DS, disease="E11.9")),
        True,
    ),
    (
        "DS E11.9 consent, DS E11 use",
        _grant([duo(DS, disease="E11.9")], purpose=duo(DS, disease="E11")),
        False,
    ),
    (
        "DS I10 or E11 consent covers a DS E11 use",
        _grant([duo(DS, disease="I10"), duo(DS, disease="E11")], purpose=duo(DS, disease="E11")),
        True,
    ),
    (
        "accredited class, plain non-profit user",
        _to("class:accredited-nonprofit", "charity"),
        False,
    ),
    ("accredited class, accredited user", _to("class:accredited-nonprofit", "uni"), True),
    ("non-profit class, commercial user", _to("class:nonprofit", "pharma"), False),
    ("non-profit class, accredited user", _to("class:nonprofit", "uni"), True),
    ("consent to one data user, used by another", _to("uni", "charity"), False),
    ("consent to one data user, used by it", _to("pharma", "pharma"), True),
    ("time limit passed", _time_limit(40, 1), False),
    ("within its time limit", _time_limit(10, 1), True),
    ("expired consent", _expired, False),
    ("consent not yet valid", _not_yet_valid, False),
    ("narrowed consent no longer covering a category", _narrowed_category, False),
    ("narrowed consent no longer covering a purpose", _narrowed_permission, False),
    ("narrowed consent still covering", _narrowed_but_still_covering, True),
    ("narrowing an expired consent does not revive it", _narrowed_expired_consent, False),
    ("guardian granting for a ward", _by_guardian, True),
]


@pytest.mark.parametrize(
    ("setup", "permitted"), [(s, p) for _, s, p in DECISIONS], ids=[i for i, _, _ in DECISIONS]
)
def test_a_use_is_decided_by_the_consents_and_recorded(
    shared: WalletWorld, setup: Setup, permitted: bool
) -> None:
    w = shared
    patient, bystander = w.new_patients(2)  # the bystander has no consent: always denied
    how = setup(w, patient)
    user = how.pop("user", "uni")
    use = w.use(user, [bystander, patient], **how)

    assert use["permitted"] == ([patient] if permitted else [])
    assert (use["requested_count"], use["permitted_count"], use["denied_count"]) == (
        2,
        int(permitted),
        2 - int(permitted),
    )
    assert use["data_user"] == user
    assert use["permitted_root"] == cohort_root(use["use_id"], use["permitted"]).hex()
    logged = [u["use_id"] for u in patient_uses(w.engine, patient)["uses"]]
    assert logged == ([use["use_id"]] if permitted else [])
    assert patient_uses(w.engine, bystander)["uses"] == []


# --- stories in time ----------------------------------------------------------------------


def test_a_time_limited_consent_stops_permitting_after_its_months(shared: WalletWorld) -> None:
    w = shared
    patient = w.new_patient()
    w.grant(patient, purposes=[duo(HMB), duo(TS, months=1)], valid_from=w.now())
    assert w.permitted("uni", [patient]) == [patient]
    w.travel(days=20)
    assert w.permitted("uni", [patient]) == [patient]
    w.travel(days=12)  # 32 days after valid_from
    assert w.permitted("uni", [patient]) == []


def test_a_consent_stops_permitting_when_it_expires(shared: WalletWorld) -> None:
    w = shared
    patient = w.new_patient()
    w.grant(patient, valid_until=w.now() + timedelta(hours=1))
    assert w.permitted("uni", [patient]) == [patient]
    w.travel(seconds=3599)
    assert w.permitted("uni", [patient]) == [patient]
    w.travel(seconds=2)
    assert w.permitted("uni", [patient]) == []


def test_a_narrowed_end_takes_effect_when_it_comes(shared: WalletWorld) -> None:
    w = shared
    patient = w.new_patient()
    consent = w.grant(patient)
    end = w.now() + timedelta(days=1)
    w.narrow(patient, consent, valid_until=end)
    assert w.consent(patient, consent)["valid_until"] == instant(format_time(end))
    assert w.permitted("uni", [patient]) == [patient]
    w.travel(days=2)
    assert w.permitted("uni", [patient]) == []


def test_a_time_limit_counts_whole_calendar_months(shared: WalletWorld) -> None:
    """A TS consent given on the 31st for 12 months permits until the 31st a year on.

    ``_months_after`` counts whole calendar months, clamped to the month's last day.
    """
    w = shared
    day = w.now() + timedelta(days=1)
    while not (day.day == 29 and calendar.monthrange(day.year, day.month)[1] == 31):
        day += timedelta(days=1)
    target = datetime(day.year, day.month, 29, 12, tzinfo=UTC)
    w.travel(seconds=(target - w.now()).total_seconds())
    patient = w.new_patient()
    start = datetime(day.year - 1, day.month, 31, tzinfo=UTC)
    w.grant(patient, purposes=[duo(HMB), duo(TS, months=12)], valid_from=start)
    # the 29th, two days before the twelve months are up
    assert w.permitted("uni", [patient]) == [patient]


def test_a_guardian_grants_narrows_and_revokes_for_a_ward(shared: WalletWorld) -> None:
    w = shared
    ward = w.new_patient()
    guardian = w.new_guardian(ward)
    consent = w.grant(ward, by=guardian, categories=["prescriptions", "claims"])
    assert w.consent(ward, consent)["granted_by"] == guardian
    assert w.permitted("uni", [ward], categories=["claims"]) == [ward]
    w.narrow(ward, consent, by=guardian, remove_categories=["claims"])
    assert w.permitted("uni", [ward], categories=["claims"]) == []
    assert w.permitted("uni", [ward]) == [ward]
    w.revoke(ward, consent, by=guardian)
    assert w.permitted("uni", [ward]) == []
    # the guardian's own wallet is untouched
    assert ProjectionReader(w.engine).get(wallet.CONSENTS, guardian) is None


def test_the_weight_of_a_patient_is_their_largest_share_among_the_covering_consents(
    shared: WalletWorld,
) -> None:
    w = shared
    patient = w.new_patient()
    w.grant(patient, share_bp=700)
    w.grant(patient, share_bp=2500, categories=["claims"])  # does not cover the use
    w.grant(patient, share_bp=1200, purposes=[duo(GRU)])
    use = w.use("uni", [patient])
    members = ProjectionReader(w.engine).get(wallet.MEMBERS, use["use_id"])
    assert members == {"use_id": use["use_id"], "weights": {patient: 1200}}


# --- proceeds -----------------------------------------------------------------------------


def reference_split(amount: int, weights: dict[str, int]) -> dict[str, int]:
    """Largest remainder, with exact fractions: floors first, then one unit each to the
    largest remainders (ties: the smaller pseudonym); all-zero weights split equally."""
    if not any(weights.values()):
        weights = dict.fromkeys(weights, 1)
    total = sum(weights.values())
    exact = {p: Fraction(amount * w, total) for p, w in weights.items()}
    shares = {p: floor(x) for p, x in exact.items()}
    left = amount - sum(shares.values())
    for p in sorted(exact, key=lambda p: (-(exact[p] - shares[p]), p))[:left]:
        shares[p] += 1
    return shares


@settings(max_examples=300)
@given(
    amount=st.integers(1, 10**15),
    weights=st.dictionaries(
        st.integers(0, 999).map(lambda i: f"P-{i:03d}"), st.integers(0, 10_000), min_size=1
    ),
)
def test_split_conserves_the_total_and_follows_the_largest_remainder_rule(
    amount: int, weights: dict[str, int]
) -> None:
    shares = wallet.split(amount, weights)
    assert sum(shares.values()) == amount
    assert shares == reference_split(amount, weights)


@pytest.mark.parametrize(
    ("amount", "weights", "shares"),
    [
        (1001, {"A": 1000, "B": 2000, "C": 3000, "D": 0}, {"A": 167, "B": 334, "C": 500, "D": 0}),
        (7, {"A": 1000, "B": 2000, "C": 3000}, {"A": 1, "B": 2, "C": 4}),
        (100, {"B": 5000, "A": 5000, "C": 5000}, {"A": 34, "B": 33, "C": 33}),
        (10, {"A": 3333, "B": 3333, "C": 3334}, {"A": 3, "B": 3, "C": 4}),
        (5, {"A": 0, "B": 0}, {"A": 3, "B": 2}),
        (1, {"A": 1}, {"A": 1}),
    ],
    ids=[
        "floors then remainders",
        "a small amount",
        "ties to the smaller pseudonym",
        "one unit left",
        "all weights zero split equally",
        "one patient",
    ],
)
def test_split_by_hand(amount: int, weights: dict[str, int], shares: dict[str, int]) -> None:
    assert wallet.split(amount, weights) == shares


def test_proceeds_are_split_by_weight_and_credited_to_each_wallet(shared: WalletWorld) -> None:
    w = shared
    a, b, c, d, e = w.new_patients(5)
    for patient, share in ((a, 1000), (b, 2000), (c, 3000), (d, 0)):
        w.grant(patient, share_bp=share)
    w.grant(c, share_bp=500, purposes=[duo(GRU)])  # c's weight stays 3000
    use = w.use("uni", [a, b, c, d, e])  # e has no consent
    assert use["permitted"] == sorted([a, b, c, d])
    use_id = str(use["use_id"])
    weights = {a: 1000, b: 2000, c: 3000, d: 0}

    w.proceeds("uni", use_id, 1001, payment_id="pay-1")
    w.proceeds("uni", use_id, 7, payment_id="pay-2")
    first, second = reference_split(1001, weights), reference_split(7, weights)
    assert [first[p] for p in (a, b, c, d)] == [167, 334, 500, 0]
    assert [second[p] for p in (a, b, c, d)] == [1, 2, 4, 0]

    total = 0
    for patient in (a, b, c, d):
        wallet_view = patient_balance(w.engine, patient)
        assert wallet_view["balance"] == first[patient] + second[patient]
        paid = sorted(
            (p["payment_id"], p["amount"], p["of_total"]) for p in wallet_view["payments"]
        )
        assert paid == [("pay-1", first[patient], 1001), ("pay-2", second[patient], 7)]
        assert all(p["use_id"] == use_id for p in wallet_view["payments"])
        total += wallet_view["balance"]
    assert total == 1001 + 7
    assert patient_balance(w.engine, e) == {"patient": e, "balance": 0, "payments": []}
    recorded = released(w.engine, use_id)
    assert (recorded["paid"], recorded["payments"]) == (1008, ["pay-1", "pay-2"])


# --- property: the recorded permitted set equals a brute-force reading ------------------------
#
# Written from the rules, not from the code: GA4GH DUO's permission hierarchy
# (GRU covers every purpose, HMB covers HMB and DS, DS covers DS of a disease
# under its code, POA only POA), NCU/NPU exclude commercial users, TS ends
# ``months`` calendar months after valid_from, every category must be granted,
# the period is [valid_from, valid_until), a revocation ends everything from its
# time on, and a patient's weight is their largest share among covering consents.
# Consents start on the first of a month: the calendar-month bug above is
# tested on its own.

USERS = {"uni": "accredited-nonprofit", "pharma": "commercial"}
COVERS = {GRU: {GRU, HMB, DS, POA}, HMB: {HMB, DS}, DS: {DS}, POA: {POA}}
PERMISSION_TERMS = [duo(GRU), duo(HMB), duo(DS, disease="E11"), duo(DS, disease="I10"), duo(POA)]
USE_PURPOSES = [*PERMISSION_TERMS, duo(DS, disease="E11.9"), duo(DS, disease="E1")]
MODIFIER_TERMS = [duo(NCU), duo(NPU), duo(PUB), duo(TS, months=1), duo(TS, months=2)]
GRANTEES = [
    "class:any",
    "class:any",
    "class:nonprofit",
    "class:accredited-nonprofit",
    "uni",
    "pharma",
]


@dataclass
class Consent:
    consent_id: str
    grantee: str
    purposes: list[dict[str, Any]]
    categories: list[str]
    valid_from: datetime
    valid_until: datetime
    share: int
    revoked_at: datetime | None = None


def add_months(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + year, month + 1
    return moment.replace(
        year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1])
    )


def model_permits(
    c: Consent, *, user: str, at: datetime, purpose: dict[str, Any], categories: list[str]
) -> bool:
    if c.revoked_at is not None and at >= c.revoked_at:
        return False
    if not c.valid_from <= at < c.valid_until:
        return False
    user_class = USERS[user]
    grantee_ok = {
        "class:any": True,
        "class:nonprofit": user_class != "commercial",
        "class:accredited-nonprofit": user_class == "accredited-nonprofit",
    }.get(c.grantee, c.grantee == user)
    if not grantee_ok:
        return False
    permits = False
    for term in c.purposes:
        if term["code"] in COVERS and purpose["code"] in COVERS[term["code"]]:
            disease_ok = term["code"] != DS or purpose["disease"].startswith(term["disease"])
            permits = permits or disease_ok
        if term["code"] in (NCU, NPU) and user_class == "commercial":
            return False
        if term["code"] == TS and at >= add_months(c.valid_from, term["months"]):
            return False
    return permits and set(categories) <= set(c.categories)


def model_weights(consents: dict[str, list[Consent]], **use: Any) -> dict[str, int]:
    weights = {}
    for patient, given_ in consents.items():
        shares = [c.share for c in given_ if model_permits(c, **use)]
        if shares:
            weights[patient] = max(shares)
    return weights


def month_start(moment: datetime, back: int) -> datetime:
    return add_months(moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0), -back)


def draw_consent(data: st.DataObject, w: WalletWorld, at: datetime) -> Consent:
    terms = data.draw(
        st.lists(st.sampled_from(PERMISSION_TERMS), min_size=1, max_size=2, unique_by=str),
        label="permissions",
    )
    modifiers = data.draw(
        st.lists(st.sampled_from(MODIFIER_TERMS), max_size=2, unique_by=lambda t: t["code"]),
        label="modifiers",
    )
    categories = data.draw(
        st.lists(st.sampled_from(wallet.CATEGORIES), min_size=2, max_size=5, unique=True),
        label="categories",
    )
    return Consent(
        consent_id=w.new_id("c"),
        grantee=data.draw(st.sampled_from(GRANTEES), label="grantee"),
        purposes=[*terms, *modifiers],
        categories=sorted(categories),
        valid_from=month_start(at, data.draw(st.integers(0, 3), label="months back")),
        valid_until=at + timedelta(days=data.draw(st.integers(1, 60), label="days")),
        share=data.draw(st.integers(0, 10_000), label="share"),
    )


def grant_of(w: WalletWorld, patient: str, consent: Consent) -> Submission:
    return w.make_grant(
        patient,
        consent.consent_id,
        grantee=consent.grantee,
        purposes=consent.purposes,
        categories=consent.categories,
        valid_from=consent.valid_from,
        valid_until=consent.valid_until,
        share_bp=consent.share,
    )


@settings(
    max_examples=40,
    deadline=None,
    # no shrinking: every example writes to the shared ledger, shrinking would take minutes
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_released_patients_equal_a_brute_force_reading_of_the_consents(
    shared: WalletWorld, data: st.DataObject
) -> None:
    w = shared
    w.travel(seconds=1)  # pinned: every statement of a step is at the same instant
    patients = w.new_patients(4)
    cohort = [*patients, w.new_id("P-never-registered")]
    first = {p: draw_consent(data, w, w.now()) for p in patients}
    for outcome in w.env.ledger.append([grant_of(w, p, c) for p, c in first.items()]):
        accepted(outcome)
    consents: dict[str, list[Consent]] = {p: [c] for p, c in first.items()}
    steps = data.draw(
        st.lists(
            st.sampled_from(
                ["grant", "narrow", "narrow", "revoke", "revoke", "use", "use", "travel"]
            ),
            min_size=2,
            max_size=7,
        ),
        label="steps",
    )
    for step in [*steps, "use"]:
        at = w.now()
        if step == "grant":
            patient = data.draw(st.sampled_from(patients), label="patient")
            consent = draw_consent(data, w, at)
            w.must(grant_of(w, patient, consent))
            consents[patient].append(consent)
        elif step == "revoke":
            patient = data.draw(st.sampled_from(patients), label="patient")
            consent = data.draw(st.sampled_from(consents[patient]), label="consent")
            outcome = w.submit(w.make_revoke(patient, consent.consent_id))
            assert is_accepted(outcome) is (consent.revoked_at is None), outcome
            consent.revoked_at = consent.revoked_at or at
        elif step == "narrow":
            patient = data.draw(st.sampled_from(patients), label="patient")
            consent = data.draw(st.sampled_from(consents[patient]), label="consent")
            codes = sorted({t["code"] for t in consent.purposes if t["code"] in COVERS})
            remove = data.draw(
                st.lists(st.sampled_from(codes), max_size=len(codes) - 1, unique=True)
                | st.just(codes),  # sometimes every permission: refused
                label="remove",
            )
            drop = data.draw(
                st.lists(
                    st.sampled_from(consent.categories),
                    max_size=len(consent.categories) - 1,
                    unique=True,
                ),
                label="drop",
            )
            changes: dict[str, Any] = {"remove_purposes": remove, "remove_categories": drop}
            until = consent.valid_until
            room = (consent.valid_until - at).days  # only ends still ahead are brought forward
            if room >= 1 and data.draw(st.booleans(), label="earlier end"):
                until = at + timedelta(days=data.draw(st.integers(1, room), label="end"))
                changes["valid_until"] = until
            purposes = [t for t in consent.purposes if t["code"] not in remove]
            categories = [c for c in consent.categories if c not in drop]
            valid = (
                consent.revoked_at is None
                and at < consent.valid_until  # an ended consent is not narrowed (consent-ended)
                and any(t["code"] in COVERS for t in purposes)
                and bool(categories)
                and (purposes, categories, until)
                != (consent.purposes, consent.categories, consent.valid_until)
            )
            outcome = w.submit(w.make_narrow(patient, consent.consent_id, **changes))
            event(f"a narrow is {'accepted' if valid else 'refused'}")
            assert is_accepted(outcome) is valid, outcome
            if valid:
                consent.purposes, consent.categories = purposes, categories
                consent.valid_until = until
        elif step == "travel":
            w.travel(days=data.draw(st.sampled_from([0.25, 3, 12, 31]), label="travel"))
        else:  # every user and every purpose at once, in one batch
            categories = data.draw(
                st.lists(st.sampled_from(wallet.CATEGORIES), min_size=1, max_size=2, unique=True),
                label="categories",
            )
            asked = [(user, purpose) for user in sorted(USERS) for purpose in USE_PURPOSES]
            batch = [
                w.make_use(user, cohort, purpose=purpose, categories=categories)
                for user, purpose in asked
            ]
            for outcome in w.env.ledger.append(batch):
                accepted(outcome)
            for (user, purpose), submission in zip(asked, batch, strict=True):
                use = released(w.engine, str(submission.signed.statement.body["use_id"]))
                expected = model_weights(
                    consents, user=user, at=at, purpose=purpose, categories=categories
                )
                event(f"a use permits {len(expected)} of {len(cohort)}")
                assert use["permitted"] == sorted(expected), (user, purpose, categories)
                assert (use["permitted_count"], use["denied_count"]) == (
                    len(expected),
                    len(cohort) - len(expected),
                )
                members = ProjectionReader(w.engine).get(wallet.MEMBERS, use["use_id"])
                assert members is not None
                assert members["weights"] == expected
                assert use["at"] == instant(format_time(at))


# --- the whole log -------------------------------------------------------------------------


def test_replayed_projections_equal_the_stored_ones_and_the_log_verifies(
    shared: WalletWorld,
) -> None:
    """Last in the module: after every story above."""
    w = shared
    assert ProjectionReader(w.engine).page(wallet.USE, limit=1)
    result = verify_database(w.engine)
    assert result.size == w.size()
    assert replayed_projections(w.engine) == ProjectionReader(w.engine).all_rows()

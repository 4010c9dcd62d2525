"""The fast paths of a data-use decision decide exactly as the rules do.

- :func:`ledger.domain.wallet.use_matcher` (the per-use predicate that
  ``evaluate_use`` runs over a cohort) equals :func:`covers` on any consent;
- the consent cache shared by the previews and the sequencer
  (:mod:`ledger.store.consents`) never serves a consent that has changed: a
  revocation or narrowing recorded in the same batch, in an earlier batch, or
  by another process on the same database is seen by the next decision; it
  stays within its bound; it empties itself for another log or too long a
  catch-up; and under threads that preview, use, revoke and narrow at once,
  every recorded decision is the one the auditor's replay makes without it.

Every database test runs on SQLite and on a fresh PostgreSQL database.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.cohort import cohort_root
from ledger.core.errors import RejectionError
from ledger.core.record import Record
from ledger.core.statement import format_time, instant
from ledger.domain import wallet
from ledger.domain.rules import decide
from ledger.domain.state import MemoryState
from ledger.service import Ledger
from ledger.store.audit import replayed_projections, verify_database
from ledger.store.consents import ConsentCache, consent_cache
from ledger.store.db import configured_master_key
from ledger.store.reader import LedgerReader, ProjectionReader
from ledger.store.vault import Vault
from ledger.wallet_service import preview_use, released
from tests.conftest import BACKENDS
from tests.wallet_world import DS, GRU, HMB, NCU, NPU, POA, PUB, TS, WalletWorld, duo
from tests.world import accepted, ledger_on, refused

# --- use_matcher equals covers -----------------------------------------------------------

AT = "2026-03-31T12:00:00.000000Z"
TIMES = [
    instant(format_time(datetime(2026, 3, 31, 12, tzinfo=UTC) + timedelta(days=d)))
    for d in (-800, -400, -366, -31, -30, -1, 0, 1, 30, 400)
]
#: a data user whose id is spelled like a grantee class: the class rule decides, not the id
USERS = [
    {"actor_id": "uni", "data_user_class": "accredited-nonprofit"},
    {"actor_id": "charity", "data_user_class": "nonprofit"},
    {"actor_id": "pharma", "data_user_class": "commercial"},
    {"actor_id": "unclassed"},
    {"actor_id": "nulled", "data_user_class": None},
    {"actor_id": "class:nonprofit", "data_user_class": "commercial"},
    {"actor_id": "class:accredited-nonprofit", "data_user_class": "nonprofit"},
]
GRANTEES = [*wallet.GRANTEE_CLASSES, "uni", "pharma", "charity", "unclassed"]
DISEASES = ["E1", "E11", "E11.9", "E10", "C50", "I10"]
TERMS = st.one_of(
    st.sampled_from([duo(GRU), duo(HMB), duo(POA), duo(NCU), duo(NPU), duo(PUB)]),
    st.builds(lambda d: duo(DS, disease=d), st.sampled_from(DISEASES)),
    st.builds(lambda m: duo(TS, months=m), st.integers(1, 30)),
)


@st.composite
def consents(draw: st.DrawFn) -> dict[str, Any]:
    start, end = sorted(draw(st.lists(st.sampled_from(TIMES), min_size=2, max_size=2)))
    return {
        "consent_id": "c1",
        "grantee": draw(st.sampled_from(GRANTEES)),
        "purposes": draw(st.lists(TERMS, min_size=1, max_size=4)),
        "categories": sorted(draw(st.sets(st.sampled_from(wallet.CATEGORIES), min_size=1))),
        "valid_from": start,
        "valid_until": end,
        "share_bp": draw(st.integers(0, 10_000)),
        "revoked_at": draw(st.none() | st.sampled_from(TIMES)),
    }


@settings(max_examples=3000, deadline=None)
@given(
    consent=consents(),
    user=st.sampled_from(USERS),
    purpose=st.one_of(
        st.sampled_from([duo(GRU), duo(HMB), duo(POA)]),
        st.builds(lambda d: duo(DS, disease=d), st.sampled_from(DISEASES)),
    ),
    categories=st.lists(st.sampled_from(wallet.CATEGORIES), max_size=3, unique=True),
    at=st.sampled_from([AT, *TIMES]),
)
def test_the_matcher_of_a_use_answers_as_covers_for_every_consent(
    consent: dict[str, Any],
    user: dict[str, Any],
    purpose: dict[str, Any],
    categories: list[str],
    at: str,
) -> None:
    use = {"at": at, "data_user": user, "purpose": purpose, "categories": categories}
    matches = wallet.use_matcher(**use)
    terms = wallet.consent_terms({"patient": "P-1", "consents": [consent]})
    assert any(matches(term) for term in terms) is wallet.covers(consent, **use)


# --- what changes a patient's consents ---------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WalletWorld]:
    with ledger_on(request.param, tmp_path_factory.mktemp("wallet-cache")) as env:
        yield WalletWorld.build(env)


def another_process(w: WalletWorld) -> Ledger:
    """A second service on the same database: its own engine, so its own caches."""
    return Ledger.open(w.env.url, log_key_file=w.env.key_dir / "log.skey")


def terms_in(engine: Any) -> Callable[[list[str]], dict[str, wallet.Terms]]:
    """A ``fetch`` for :meth:`ConsentCache.read`: the terms of the documents in the table."""
    views = ProjectionReader(engine)
    return lambda keys: {k: wallet.consent_terms(views.get(wallet.CONSENTS, k)) for k in keys}


def preview(w: WalletWorld, user: str, patients: list[str], **use: Any) -> dict[str, Any]:
    return w.preview(
        user,
        w.new_id("use"),
        patients=patients,
        purpose=use.get("purpose", duo(HMB)),
        categories=use.get("categories", ["prescriptions"]),
        at=w.now(),
    )


def test_only_consent_statements_change_consents_and_only_their_patients(
    shared: WalletWorld,
) -> None:
    """What :mod:`ledger.store.consents` follows the log by: every CONSENTS document a
    record changes is the one of the patient in the body of a consent statement."""
    w = shared
    patients = w.new_patients(3)
    guardian = w.new_guardian(patients[2])
    first = w.grant(patients[0])
    second = w.grant(patients[1], categories=["prescriptions", "claims"])
    w.grant(patients[2], by=guardian)
    w.narrow(patients[1], second, remove_categories=["claims"])
    w.revoke(patients[0], first)
    use = w.use("uni", patients)
    w.proceeds("uni", use["use_id"], 1000)
    reader = LedgerReader(w.engine, vault=Vault(configured_master_key()))
    state = MemoryState(keep_pending=False)
    seen: set[str] = set()
    for item in reader.iter_records():
        record = Record.from_bytes(item.record_bytes)
        statement = record.statement()
        effects = decide(state, statement, seq=record.seq, payload=item.payload)
        written = {p.key for p in effects if p.kind == wallet.CONSENTS}
        if statement.type in wallet.CONSENT_TYPES:
            assert written == {wallet.consents_key(record.fields)}, statement.type
        else:
            assert not written, statement.type
        seen.add(statement.type)
        state.apply(effects)
    assert {
        "consent.grant",
        "consent.narrow",
        "consent.revoke",
        "data.use",
        "data.proceeds",
    } <= seen


# --- the cache never serves a changed consent ---------------------------------------------


def test_a_revocation_between_preview_and_use_is_seen_by_the_sequencer(
    shared: WalletWorld,
) -> None:
    """The preview fills the cache; the use signed from it is refused after a revocation."""
    w = shared
    patients = w.new_patients(2)
    consent = w.grant(patients[0])
    w.grant(patients[1])
    stale = w.make_use("uni", patients)  # previewed: both permitted
    assert stale.signed.statement.body["permitted_count"] == 2
    w.revoke(patients[0], consent)
    refused(w.submit(stale), "cohort-mismatch")
    assert w.use("uni", patients)["permitted"] == [patients[1]]


def test_a_revocation_in_the_same_batch_is_seen_by_the_use_after_it(shared: WalletWorld) -> None:
    w = shared
    patients = w.new_patients(2)
    consent = w.grant(patients[0])
    w.grant(patients[1])
    preview(w, "uni", patients)  # the cache now holds both patients, both permitted
    revoke = w.make_revoke(patients[0], consent)
    stale = w.make_use("uni", patients)
    # signed for what the rules give after the revocation: only the second patient
    use_id = w.new_id("use")
    fresh = w.make_use(
        "uni",
        patients,
        use_id=use_id,
        permitted_count=1,
        denied_count=1,
        permitted_root=cohort_root(use_id, [patients[1]]).hex(),
    )
    revoked, mismatch, used = w.env.ledger.append([revoke, stale, fresh])
    accepted(revoked)
    refused(mismatch, "cohort-mismatch")
    accepted(used)
    assert released(w.engine, use_id)["permitted"] == [patients[1]]


def test_consents_changed_by_another_process_are_seen_by_the_next_use(
    shared: WalletWorld,
) -> None:
    """Another service on the same database revokes, narrows and grants: this one's
    previews and sequencer see each change, though its cache held the patients."""
    w = shared
    patients = w.new_patients(4)
    revoked = w.grant(patients[0])
    narrowed = w.grant(patients[1], categories=["prescriptions", "claims"])
    w.grant(patients[2], categories=["prescriptions", "claims"])
    use = {"categories": ["prescriptions", "claims"]}
    assert w.use("uni", patients, **use)["permitted"] == sorted(patients[1:3])
    stale = w.make_use("uni", patients, **use)
    other = another_process(w)
    try:
        there = WalletWorld(w.env, signers=w.signers)
        there.send = lambda submission: other.append([submission])[0]
        there.revoke(patients[0], revoked)
        there.narrow(patients[1], narrowed, remove_categories=["claims"])
        there.grant(patients[3], categories=["prescriptions", "claims"])
    finally:
        other.close()
    refused(w.submit(stale), "cohort-mismatch")
    assert w.use("uni", patients, **use)["permitted"] == sorted([patients[2], patients[3]])


def test_the_cache_holds_at_most_its_bound_and_answers_as_the_table(shared: WalletWorld) -> None:
    w = shared
    patients = w.new_patients(10)
    for i, patient in enumerate(patients[:7]):
        w.grant(patient, share_bp=100 * i)
    cache = ConsentCache(max_patients=4)
    fetched: list[list[str]] = []
    table = terms_in(w.engine)

    def fetch(keys: list[str]) -> dict[str, wallet.Terms]:
        fetched.append(list(keys))
        return table(keys)

    expected = table(patients)
    last = patients[-4:]
    with w.engine.connect() as conn:
        size = w.size()
        assert cache.read(conn, patients, size, fetch) == expected
        assert len(cache) == 4
        assert cache.read(conn, last, size, fetch) == {p: expected[p] for p in last}
        assert len(fetched) == 1  # the last four were kept
        assert cache.read(conn, patients, size, fetch) == expected
        assert fetched[-1] == patients[:6]
        assert len(cache) == 4
    assert (cache.stats.hits, cache.stats.misses) == (4 + 4, 10 + 6)


def test_the_cache_starts_again_for_another_log_or_a_long_catch_up(
    shared: WalletWorld, tmp_path: Path
) -> None:
    w = shared
    patients = w.new_patients(2)
    w.grant(patients[0])
    cache = ConsentCache(max_catch_up=1)
    with w.engine.connect() as conn:
        assert cache.read(conn, patients, w.size(), terms_in(w.engine))[patients[0]]
    # two consent statements since: more than it catches up on, so it starts again
    w.grant(patients[1])
    w.grant(patients[0])
    with w.engine.connect() as conn:
        got = cache.read(conn, patients, w.size(), terms_in(w.engine))
    assert cache.stats.resets == 1
    assert got == terms_in(w.engine)(patients)
    assert all(got.values())
    # the same cache on another ledger (as a database replaced under the same engine)
    backend = "postgres" if w.engine.dialect.name == "postgresql" else "sqlite"
    with ledger_on(backend, tmp_path) as env:
        other = WalletWorld.build(env)
        other.new_patients(w.size() + 3 - other.size())
        with env.ledger.engine.connect() as conn:
            got = cache.read(conn, patients, other.size(), terms_in(env.ledger.engine))
        assert got == dict.fromkeys(patients, ())  # nobody there has consents
        assert cache.stats.resets == 2


def test_a_fill_read_before_a_change_is_not_kept(shared: WalletWorld) -> None:
    """A reader fetches a patient's consents; before it stores them, a revocation is
    recorded and another reader brings the cache past it: the stale read is dropped."""
    w = shared
    patient = w.new_patient()
    consent = w.grant(patient)
    cache = ConsentCache()
    table = terms_in(w.engine)

    def fetch(keys: list[str]) -> dict[str, wallet.Terms]:
        found = table(keys)  # before the revocation
        w.revoke(patient, consent)
        with w.engine.connect() as conn:  # another reader, at the new size
            cache.read(conn, [], w.size(), table)
        return found

    with w.engine.connect() as conn:
        stale = cache.read(conn, [patient], w.size(), fetch)
    assert stale[patient]  # what that reader saw
    with w.engine.connect() as conn:
        assert cache.read(conn, [patient], w.size(), table) == {patient: ()}
    assert cache.stats.hits == 0


def test_threads_previewing_using_and_revoking_at_once_decide_as_the_replay(
    shared: WalletWorld,
) -> None:
    """Two threads preview and record uses, a third grants, narrows and revokes (half
    of it through another service on the same database), all at once. Every recorded
    decision must be the one the auditor's replay makes, with no cache at all."""
    w = shared
    patients = w.new_patients(24)
    consents = {p: w.grant(p, categories=["prescriptions", "claims"]) for p in patients}
    other = another_process(w)
    errors: list[BaseException] = []
    recorded: list[str] = []
    start = threading.Barrier(3)

    def user(name: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(12):
                cohort = rng.sample(patients, 12)
                outcome = w.submit(w.make_use(name, cohort, categories=["prescriptions"]))
                if isinstance(outcome, RejectionError):
                    refused(outcome, "cohort-mismatch")  # a change came in between: fine
                else:
                    recorded.append(name)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def patient_side() -> None:
        rng = random.Random(7)
        try:
            start.wait()
            for i, patient in enumerate(rng.sample(patients, 16)):
                send = (lambda s: other.append([s])[0]) if i % 2 else w.submit
                if i % 3 == 0:
                    accepted(send(w.make_revoke(patient, consents[patient])))
                elif i % 3 == 1:
                    change = {"remove_categories": ["prescriptions"]}
                    accepted(send(w.make_narrow(patient, consents[patient], **change)))
                else:
                    accepted(send(w.make_grant(patient, categories=["prescriptions"])))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [
        threading.Thread(target=user, args=("uni", 1)),
        threading.Thread(target=user, args=("charity", 2)),
        threading.Thread(target=patient_side),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.close()
    assert not errors, errors
    assert recorded
    assert verify_database(w.engine).size == w.size()  # replays every use's decision
    assert replayed_projections(w.engine) == ProjectionReader(w.engine).all_rows()
    # and a preview through the cache answers as one through an empty cache
    use = {
        "data_user": "uni",
        "use_id": "u",
        "at": format_time(w.now()),
        "purpose": duo(HMB),
        "categories": ["prescriptions"],
        "patients": patients,
    }
    through_cache = preview_use(w.engine, **use)
    consent_cache(w.engine).clear()
    assert preview_use(w.engine, **use) == through_cache

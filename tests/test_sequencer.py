"""The sequencer, called directly: seqs, chain, checkpoints, keys, genesis, time.

Every test runs on SQLite and on a fresh PostgreSQL database (``ledger_env``);
the tests that only refuse statements or add uniquely named actors share one
ledger per backend (``shared_env``) and check themselves that a refusal changed
nothing.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from ledger.core import merkle
from ledger.core.checkpoint import open_checkpoint
from ledger.core.errors import RejectionError, VerificationError
from ledger.core.note import Signer, Verifier
from ledger.core.statement import SignedStatement, format_time, make_statement
from ledger.domain.rules import decide
from ledger.domain.state import MemoryState
from ledger.store import sequencer
from ledger.store.audit import verify_database
from ledger.store.schema import checkpoints, records
from ledger.store.sequencer import MAX_BATCH, MAX_STATEMENT, Receipt, Submission
from tests.conftest import (
    BACKENDS,
    LedgerEnv,
    create_postgres_database,
    drop_postgres_database,
    make_ledger_env,
)
from tests.helpers import attest, register, snapshot

LONG_AGO = "2000-01-01T00:00:00.000Z"


@pytest.fixture(scope="module", params=BACKENDS)
def shared_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LedgerEnv]:
    postgres = request.param == "postgres"
    url = (
        create_postgres_database()
        if postgres
        else f"sqlite:///{tmp_path_factory.mktemp('seq-db') / 'ledger.db'}"
    )
    try:
        env = make_ledger_env(url, tmp_path_factory.mktemp("seq-keys"))
        try:
            yield env
        finally:
            env.ledger.close()
    finally:
        if postgres:
            drop_postgres_database(url)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def append_one(env: LedgerEnv, signed: SignedStatement) -> Receipt | RejectionError:
    (outcome,) = env.ledger.append([Submission(signed)])
    assert isinstance(outcome, Receipt | RejectionError), outcome
    return outcome


def code_of(outcome: object) -> str:
    assert isinstance(outcome, RejectionError), f"expected a rejection, got {outcome!r}"
    return outcome.code


def checkpoint_sizes(env: LedgerEnv) -> list[int]:
    with env.ledger.engine.connect() as conn:
        rows = conn.execute(select(checkpoints.c.size).order_by(checkpoints.c.size)).scalars()
        return [int(size) for size in rows]


def record_count(env: LedgerEnv) -> int:
    with env.ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(records)).scalar_one())


def with_signature_of(signed: SignedStatement, other: Signer) -> SignedStatement:
    """The same statement with a well-formed signature by a key it does not name."""
    return SignedStatement(
        statement=signed.statement,
        signed_bytes=signed.signed_bytes,
        signature=other.sign(signed.signed_bytes),
    )


# --- seqs, chain, checkpoints ---------------------------------------------------


def test_batches_get_consecutive_seqs_prev_links_and_one_checkpoint_each(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    log_key = Verifier.from_vkey(env.log_vkey)
    assert checkpoint_sizes(env) == [0, 1]
    prev_hash = env.ledger.reader.record(0).hash
    next_seq = 1

    for size in (1, 3, 2, 5):
        outcomes = env.ledger.append([Submission(attest(env.registrar)) for _ in range(size)])

        assert all(isinstance(o, Receipt) and not o.duplicate for o in outcomes), outcomes
        receipts = [o for o in outcomes if isinstance(o, Receipt)]
        assert [r.seq for r in receipts] == list(range(next_seq, next_seq + size))
        notes = {r.checkpoint for r in receipts}
        assert len(notes) == 1  # the whole batch is covered by one checkpoint
        checkpoint, _ = open_checkpoint(notes.pop(), origin=env.origin, verifier=log_key)
        assert checkpoint.size == next_seq + size
        for receipt in receipts:
            # made without __init__ (ledger.core.frozen): the same value, every field
            assert receipt == Receipt(**vars(receipt))
            assert vars(receipt).keys() == {f.name for f in dataclasses.fields(Receipt)}
            assert receipt.prev == prev_hash.hex()
            assert receipt.tree_size == checkpoint.size
            record = env.ledger.reader.record(receipt.seq)
            assert record.hash == receipt.record_hash
            assert record.prev == receipt.prev
            merkle.verify_inclusion(
                record.leaf_hash,
                receipt.seq,
                receipt.tree_size,
                receipt.inclusion_proof,
                checkpoint.root_hash,
            )
            prev_hash = receipt.record_hash
        next_seq += size

    assert checkpoint_sizes(env) == [0, 1, 2, 5, 7, 12]
    head = env.ledger.reader.head()
    assert (head.size, head.head_hash) == (12, prev_hash)
    assert verify_database(env.ledger.engine).size == 12


def test_nonces_are_per_actor_and_a_batch_tells_replays_from_resends(
    shared_env: LedgerEnv,
) -> None:
    """One batch: an identical resend of a recorded statement (its receipt), a
    different statement reusing that actor's nonce (refused), another actor's
    statement with the same nonce (accepted: nonces are per actor), and a new one."""
    env = shared_env
    other = register(env, unique("pharmacy"), "pharmacy")
    nonce = uuid.uuid4().hex
    first = attest(env.registrar, nonce=nonce)
    (recorded,) = env.ledger.append([Submission(first)])
    assert isinstance(recorded, Receipt)

    outcomes = env.ledger.append(
        [
            Submission(attest(other, nonce=nonce)),
            Submission(first),
            Submission(attest(env.registrar, nonce=nonce)),
            Submission(attest(env.registrar)),
        ]
    )

    same_nonce, resent, replayed, fresh = outcomes
    assert isinstance(same_nonce, Receipt), same_nonce
    assert isinstance(resent, Receipt)
    assert (resent.seq, resent.duplicate) == (recorded.seq, True)
    assert code_of(replayed) == "replayed-nonce"
    assert isinstance(fresh, Receipt)
    assert (same_nonce.seq, fresh.seq) == (recorded.seq + 1, recorded.seq + 2)
    assert env.ledger.reader.record(same_nonce.seq).fields["actor"] == other.name
    (alone,) = env.ledger.append(
        [Submission(attest(register(env, unique("lab"), "pharmacy"), nonce=nonce))]
    )
    assert isinstance(alone, Receipt), alone


def test_a_refusal_in_the_middle_of_a_batch_does_not_move_later_seqs(
    ledger_env: LedgerEnv,
) -> None:
    env = ledger_env
    good = [attest(env.registrar) for _ in range(3)]
    batch = [
        good[0],
        attest(Signer.generate("stranger")),
        good[1],
        with_signature_of(attest(env.registrar), Signer.generate("registrar")),
        make_statement(env.registrar, "doc.attest", {"digest": "not hex"}),
        good[2],
    ]

    outcomes = env.ledger.append([Submission(s) for s in batch])

    assert [o.seq if isinstance(o, Receipt) else o.code for o in outcomes] == [
        1,
        "unknown-actor",
        2,
        "bad-signature",
        "malformed-body",
        3,
    ]
    assert record_count(env) == 4
    assert checkpoint_sizes(env) == [0, 1, 4]
    assert [env.ledger.reader.record(s).statement_bytes for s in (1, 2, 3)] == [
        s.signed_bytes for s in good
    ]
    verify_database(env.ledger.engine)


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_a_large_batch_is_prechecked_on_threads_with_each_refusal_in_its_place(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Signatures of a large batch are checked a slice per thread; whatever the
    slicing, every outcome lands at its own index and the seqs follow in order."""
    monkeypatch.setattr(sequencer, "_precheck_threads", lambda: threads)
    env = ledger_env
    impostor = Signer.generate("registrar")
    bad_at = {0, 33, 34, 99, 150, 199}
    batch = [
        with_signature_of(attest(env.registrar), impostor) if i in bad_at else attest(env.registrar)
        for i in range(200)
    ]
    expected: list[int | str] = []
    seq = 1
    for i in range(len(batch)):
        if i in bad_at:
            expected.append("bad-signature")
        else:
            expected.append(seq)
            seq += 1

    outcomes = env.ledger.append([Submission(s) for s in batch])

    assert [o.seq if isinstance(o, Receipt) else o.code for o in outcomes] == expected
    assert [env.ledger.reader.record(o.seq).statement_bytes for o in outcomes[1:4]] == [
        s.signed_bytes for s in batch[1:4]
    ]
    assert verify_database(env.ledger.engine).size == 1 + 200 - len(bad_at)


# --- keys -------------------------------------------------------------------------


def _in_hours(hours: float) -> str:
    return format_time(datetime.now(UTC) + timedelta(hours=hours))


@pytest.mark.parametrize(
    ("validity", "code"),
    [
        pytest.param(
            lambda: {"valid_from": _in_hours(1)},
            "key-not-yet-valid",
            id="key valid from the future",
        ),
        pytest.param(
            lambda: {"valid_from": _in_hours(-2), "valid_until": _in_hours(-1)},
            "key-expired",
            id="key valid until the past",
        ),
        pytest.param(
            lambda: {"valid_from": _in_hours(-2), "valid_until": _in_hours(1)},
            None,
            id="key valid now",
        ),
    ],
)
def test_key_must_be_valid_when_the_statement_is_issued(
    shared_env: LedgerEnv, validity: Callable[[], dict[str, str]], code: str | None
) -> None:
    env = shared_env
    patient = register(env, unique("pat"), "patient", **validity())
    before = snapshot(env.ledger.engine)

    outcome = append_one(env, attest(patient))

    if code is None:
        assert isinstance(outcome, Receipt), outcome
        verify_database(env.ledger.engine)
    else:
        assert code_of(outcome) == code
        assert snapshot(env.ledger.engine) == before


@dataclass(frozen=True)
class EdgeOfValidity:
    valid_from: str
    valid_until: str | None
    issued_at: str
    code: str


# The ledger's clock in these cases; the statements are within its skew window.
EDGE_CLOCK = datetime(2030, 1, 1, 0, 0, 0, 250_000, tzinfo=UTC)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            EdgeOfValidity(
                "2029-12-31T00:00:00Z",
                "2030-01-01T00:00:00Z",
                "2030-01-01T00:00:00.500Z",
                "key-expired",
            ),
            id="issued half a second after valid_until written without a fraction",
        ),
        pytest.param(
            EdgeOfValidity(
                "2029-12-31T00:00:00Z",
                "2030-01-01T00:00:00Z",
                "2030-01-01T00:00:00.000Z",
                "key-expired",
            ),
            id="issued at valid_until written with a fraction",
        ),
        pytest.param(
            EdgeOfValidity(
                "2030-01-01T00:00:00.500Z", None, "2030-01-01T00:00:00Z", "key-not-yet-valid"
            ),
            id="issued half a second before valid_from",
        ),
    ],
)
def test_key_validity_compares_times_not_strings(
    ledger_env: LedgerEnv, case: EdgeOfValidity
) -> None:
    """Times are compared as instants, whatever their written width.

    Regression: ``issued_at``, ``valid_from`` and ``valid_until`` were compared as
    raw strings, and RFC 3339 times of different widths (``...:00Z`` vs
    ``...:00.500Z``; ``'.' < 'Z'``) do not sort like the instants they name, so a
    key was used after it expired or before it became valid.
    """
    env = ledger_env
    env.ledger.sequencer.clock = lambda: EDGE_CLOCK
    patient = Signer.generate("pat-1")
    body = {"actor": "pat-1", "role": "patient", "key": patient.vkey, "valid_from": case.valid_from}
    if case.valid_until is not None:
        body["valid_until"] = case.valid_until
    registration = make_statement(
        env.registrar, "actor.register", body, issued_at=EDGE_CLOCK - timedelta(seconds=10)
    )
    assert isinstance(append_one(env, registration), Receipt)

    outcome = append_one(env, attest(patient, issued_at=case.issued_at))

    assert isinstance(outcome, RejectionError), (
        f"a statement issued {case.issued_at} under a key valid from {case.valid_from} "
        f"until {case.valid_until} was recorded as seq {getattr(outcome, 'seq', '?')}; "
        f"expected {case.code}"
    )
    assert outcome.code == case.code


# --- genesis and the registry -------------------------------------------------------


def test_second_registrar_self_registration_is_refused(shared_env: LedgerEnv) -> None:
    env = shared_env
    before = snapshot(env.ledger.engine)
    again = make_statement(
        env.registrar,
        "actor.register",
        {"actor": "registrar", "role": "registrar", "key": env.registrar.vkey},
    )

    assert code_of(append_one(env, again)) == "actor-exists"
    assert snapshot(env.ledger.engine) == before


def test_an_outsider_cannot_make_itself_a_registrar(shared_env: LedgerEnv) -> None:
    env = shared_env
    mallory = Signer.generate("mallory")
    before = snapshot(env.ledger.engine)
    claim = make_statement(
        mallory, "actor.register", {"actor": "mallory", "role": "registrar", "key": mallory.vkey}
    )

    assert code_of(append_one(env, claim)) == "unknown-actor"
    assert snapshot(env.ledger.engine) == before


def test_registering_an_existing_actor_is_refused(shared_env: LedgerEnv) -> None:
    env = shared_env
    first, twice = unique("pat"), unique("pat")
    register(env, first, "patient")
    before = snapshot(env.ledger.engine)
    second = Signer.generate(first)
    again = make_statement(
        env.registrar,
        "actor.register",
        {"actor": first, "role": "patient", "key": second.vkey},
    )

    assert code_of(append_one(env, again)) == "actor-exists"
    assert snapshot(env.ledger.engine) == before
    # the same id registered twice in one batch: the second sees the first
    fresh = [Signer.generate(twice) for _ in range(2)]
    outcomes = env.ledger.append(
        [
            Submission(
                make_statement(
                    env.registrar,
                    "actor.register",
                    {"actor": twice, "role": "patient", "key": s.vkey},
                )
            )
            for s in fresh
        ]
    )
    assert isinstance(outcomes[0], Receipt)
    assert code_of(outcomes[1]) == "actor-exists"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        pytest.param(
            attest,
            "unknown-actor",
            id="first record is not a registration",
        ),
        pytest.param(
            lambda registrar: make_statement(
                registrar,
                "actor.register",
                {"actor": "pat-1", "role": "patient", "key": Signer.generate("pat-1").vkey},
            ),
            "genesis-required",
            id="first record registers someone else",
        ),
        pytest.param(
            lambda registrar: make_statement(
                registrar,
                "actor.register",
                {"actor": "registrar", "role": "auditor", "key": registrar.vkey},
            ),
            "genesis-required",
            id="first record registers itself in another role",
        ),
        pytest.param(
            lambda registrar: make_statement(
                registrar,
                "actor.register",
                {"actor": "registrar", "role": "registrar", "key": registrar.vkey},
            ),
            None,
            id="first record is the registrar registering itself",
        ),
    ],
)
def test_genesis_rules(make: Callable[[Signer], SignedStatement], code: str | None) -> None:
    registrar = Signer.generate("registrar")
    state = MemoryState()
    statement = make(registrar).statement

    if code is None:
        state.apply(decide(state, statement, seq=0))
        # the registrar now exists: its next statement is accepted
        assert isinstance(decide(state, attest(registrar).statement, seq=1), list)
    else:
        with pytest.raises(RejectionError) as refused:
            decide(state, statement, seq=0)
        assert refused.value.code == code
        assert state.size == 0


# --- time -------------------------------------------------------------------------------


def test_received_at_never_decreases_when_the_clock_goes_back(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    patient = register(env, "pat-1", "patient", valid_from=LONG_AGO)
    start = datetime.now(UTC)
    times = [
        start,
        start - timedelta(minutes=2),
        start - timedelta(minutes=1),
        start + timedelta(seconds=30),
    ]
    received: list[str] = []

    for moment in times:
        env.ledger.sequencer.clock = lambda moment=moment: moment
        outcome = append_one(env, attest(patient, issued_at=moment))
        assert isinstance(outcome, Receipt), outcome
        received.append(outcome.received_at)

    assert received == sorted(received)
    assert received[0] == received[1] == received[2] == format_time(start)
    assert received[3] == format_time(times[3])
    verify_database(env.ledger.engine)


def _stepped_back(start: datetime) -> tuple[list[datetime], datetime]:
    """The clock is stepped back ten minutes between two batches (an NTP step)."""
    back = start - timedelta(minutes=10)
    return [back], back


def _slow_lock(start: datetime) -> tuple[list[datetime], datetime]:
    """The clock read after taking the lock is 2 s later than the one before it."""
    return [start, start + timedelta(seconds=2)], start - timedelta(seconds=299)


def reading(times: list[datetime]) -> Callable[[], datetime]:
    """A clock that gives ``times`` in turn, then keeps giving the last."""
    left = list(times)

    def clock() -> datetime:
        return left.pop(0) if len(left) > 1 else left[0]

    return clock


@pytest.mark.parametrize(
    "timeline",
    [
        pytest.param(_stepped_back, id="clock stepped back ten minutes between batches"),
        pytest.param(_slow_lock, id="statement 299 s old and the head lock takes 2 s"),
    ],
)
def test_every_acknowledged_record_verifies_whatever_the_clock_does(
    ledger_env: LedgerEnv, timeline: Callable[[datetime], tuple[list[datetime], datetime]]
) -> None:
    """Whatever the sequencer answers, the log still verifies afterwards.

    Regression: the clock-skew check was made only against the clock read before
    the lock, while the record got ``received_at = max(clock read after the lock,
    last received_at)``. When those differed by enough, the sequencer acknowledged
    a record whose ``issued_at`` was more than the allowed skew from its
    ``received_at``, and ``verify`` failed on it from then on.
    """
    env = ledger_env
    patient = register(env, "pat-1", "patient", valid_from=LONG_AGO)
    start = datetime.now(UTC)
    reads, issued = timeline(start)
    env.ledger.sequencer.clock = lambda: start
    assert isinstance(append_one(env, attest(patient, issued_at=start)), Receipt)
    env.ledger.sequencer.clock = reading(reads)

    outcome = append_one(env, attest(patient, issued_at=issued))

    try:
        verify_database(env.ledger.engine)
    except VerificationError as e:
        pytest.fail(f"the sequencer answered {outcome!r:.60} but the log no longer verifies: {e}")
    if isinstance(outcome, RejectionError):
        assert outcome.code == "clock-skew"


# --- property: accepted == recorded -------------------------------------------------------

KINDS = (
    "good",
    "unknown actor",
    "bad signature",
    "malformed body",
    "clock skew",
    "replayed nonce",
    "copy of the previous",
    "resend of a recorded one",
)
EXPECTED = {
    "unknown actor": "unknown-actor",
    "bad signature": "bad-signature",
    "malformed body": "malformed-body",
    "clock skew": "clock-skew",
    "replayed nonce": "replayed-nonce",
}


#: per ledger (by URL), a statement recorded before the batches, to send again
_RECORDED: dict[str, SignedStatement] = {}


def _make(env: LedgerEnv, kind: str, used_nonce: str) -> SignedStatement:
    registrar = env.registrar
    if kind == "resend of a recorded one":
        if env.url not in _RECORDED:
            signed = attest(registrar)
            assert isinstance(append_one(env, signed), Receipt)
            _RECORDED[env.url] = signed
        return _RECORDED[env.url]
    if kind == "unknown actor":
        return attest(Signer.generate("stranger"))
    if kind == "bad signature":
        return with_signature_of(attest(registrar), Signer.generate("registrar"))
    if kind == "malformed body":
        return make_statement(registrar, "doc.attest", {"digest": "XYZ"})
    if kind == "clock skew":
        return attest(registrar, issued_at=datetime.now(UTC) + timedelta(hours=1))
    if kind == "replayed nonce":
        return attest(registrar, nonce=used_nonce)
    return attest(registrar)


@settings(max_examples=16, deadline=None, database=None)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=6), atomic=st.booleans())
def test_accepted_statements_are_exactly_the_records_added(
    shared_env: LedgerEnv, kinds: list[str], atomic: bool
) -> None:
    # the ledger is shared by the examples: every check below is relative to its size
    _check_batch(shared_env, kinds, atomic=atomic)


@pytest.mark.parametrize("atomic", [False, True], ids=["each", "atomic"])
def test_a_large_batch_is_decided_as_a_small_one(shared_env: LedgerEnv, atomic: bool) -> None:
    """A batch large enough to be prechecked on threads, a slice each: every kind
    of statement, spread over the slices, gets the outcome it gets alone."""
    assert sequencer.PARALLEL_PRECHECK_MIN * 2 < 300
    rng = random.Random(20261204)
    _check_batch(shared_env, [rng.choice(KINDS) for _ in range(300)], atomic=atomic)
    refused_under_lock = [rng.choice(("good", "unknown actor", "clock skew")) for _ in range(300)]
    _check_batch(shared_env, refused_under_lock, atomic=atomic)
    _check_batch(shared_env, ["good"] * 300, atomic=atomic)


def _check_batch(env: LedgerEnv, kinds: list[str], *, atomic: bool) -> None:
    used_nonce = str(env.ledger.reader.record(0).fields["nonce"])
    batch: list[SignedStatement] = []
    expected: list[str] = []  # "new", "duplicate" or a rejection code
    for kind in kinds:
        if kind == "copy of the previous" and batch:
            batch.append(batch[-1])
            expected.append("duplicate" if expected[-1] in ("new", "duplicate") else expected[-1])
        else:
            batch.append(_make(env, kind, used_nonce))
            expected.append(
                "duplicate" if kind == "resend of a recorded one" else EXPECTED.get(kind, "new")
            )
    size = env.ledger.reader.head().size

    outcomes = env.ledger.append([Submission(s) for s in batch], atomic=atomic)

    assert len(outcomes) == len(batch)
    added = env.ledger.reader.head().size - size
    new = [o for o in outcomes if isinstance(o, Receipt) and not o.duplicate]
    assert added == len(new)
    assert record_count(env) == env.ledger.reader.head().size
    refused = any(e not in ("new", "duplicate") for e in expected)
    if atomic and refused:
        assert added == 0
        codes = [code_of(o) for o in outcomes]
        assert set(codes) - {"batch-aborted"}, codes
        assert all(c in (e, "batch-aborted") for c, e in zip(codes, expected, strict=True))
    else:
        got = [
            ("duplicate" if o.duplicate else "new") if isinstance(o, Receipt) else o.code
            for o in outcomes
        ]
        assert got == expected
        assert [o.seq for o in new] == list(range(size, size + added))
    verify_database(env.ledger.engine)


def test_a_batch_signed_by_a_thousand_actors(ledger_env: LedgerEnv) -> None:
    """The replay lookup groups by actor; SQLite refuses expressions deeper than
    1,000, so a full batch of distinct signers must still go through."""
    signers = [Signer.generate(f"P-many-{i:04d}") for i in range(MAX_BATCH)]
    registered = ledger_env.ledger.append(
        [
            Submission(
                make_statement(
                    ledger_env.registrar,
                    "actor.register",
                    {"actor": s.name, "role": "patient", "key": s.vkey},
                )
            )
            for s in signers
        ]
    )
    assert all(isinstance(o, Receipt) for o in registered)
    attested = ledger_env.ledger.append([Submission(attest(s)) for s in signers])
    assert all(isinstance(o, Receipt) for o in attested)
    assert len({o.seq for o in attested if isinstance(o, Receipt)}) == MAX_BATCH


def test_a_statement_too_large_for_a_tiles_entry_is_refused(ledger_env: LedgerEnv) -> None:
    """Direct appends meet the API's limit too: every record fits a tlog-tiles entry."""
    big = make_statement(ledger_env.registrar, "doc.attest", {"digest": "a" * MAX_STATEMENT})
    before = snapshot(ledger_env.ledger.engine)

    (outcome,) = ledger_env.ledger.append([Submission(big)])

    assert isinstance(outcome, RejectionError)
    assert outcome.code == "too-large"
    assert snapshot(ledger_env.ledger.engine) == before

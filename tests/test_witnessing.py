"""The ledger asks its witnesses to cosign its checkpoints and serves the cosignatures.

A real ledger on SQLite and on PostgreSQL, and an in-process witness (the real
witness app over its own SQLite state, reached through a FastAPI test client).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api.app import create_app
from api.settings import Settings
from api.witness import create_witness_app
from ledger.core.checkpoint import note_size, open_checkpoint
from ledger.core.cosignature import WitnessVerifier, verify_cosignatures, witness_vkey
from ledger.core.errors import KeyFormatError
from ledger.core.note import Signer, Verifier
from ledger.service import Ledger
from ledger.store.db import normalize_url
from ledger.store.sequencer import Receipt, Submission
from ledger.witness import Witness, logs_from_verifiers
from ledger.witnessing import WitnessEndpoint, WitnessSubmitter, parse_witnesses
from tests.conftest import POSTGRES_URL, LedgerEnv
from tests.helpers import attest, register

WITNESS_URL = "http://witness.test"


@dataclass
class Setup:
    env: LedgerEnv
    patient: Signer
    witness: Witness
    witness_http: TestClient
    endpoint: WitnessEndpoint
    statuses: list[int]

    def append(self, count: int = 1) -> None:
        for _ in range(count):
            (outcome,) = self.env.ledger.append([Submission(attest(self.patient))])
            assert isinstance(outcome, Receipt), outcome

    def submitter(self, ledger: Ledger | None = None) -> WitnessSubmitter:
        return WitnessSubmitter(
            (ledger or self.env.ledger).engine, [self.endpoint], client=self.witness_http
        )

    def settings(self, *endpoints: WitnessEndpoint, interval: float = 3600) -> Settings:
        return Settings(
            database_url=self.env.url,
            log_key_file=self.env.key_dir / "log.skey",
            witnesses=endpoints,
            witness_interval=interval,
        )


@pytest.fixture
def setup(ledger_env: LedgerEnv, tmp_path: Path) -> Iterator[Setup]:
    patient = register(ledger_env, "pat-1", "patient")
    witness = Witness(
        Signer.generate("witness.test/w1"),
        logs_from_verifiers([Verifier.from_vkey(ledger_env.log_vkey)]),
        tmp_path / "witness.db",
    )
    statuses: list[int] = []
    with TestClient(create_witness_app(witness), base_url=WITNESS_URL) as http:
        http.event_hooks = {"response": [lambda r: statuses.append(r.status_code)]}
        yield Setup(
            env=ledger_env,
            patient=patient,
            witness=witness,
            witness_http=http,
            endpoint=WitnessEndpoint(witness.verifier, WITNESS_URL),
            statuses=statuses,
        )


def served_checkpoint(setup: Setup, app_settings: Settings | None = None) -> str:
    with TestClient(create_app(setup.env.ledger, app_settings or setup.settings())) as http:
        response = http.get("/v1/checkpoint")
    assert response.status_code == 200
    return response.text


def test_checkpoints_get_cosigned_and_served(setup: Setup) -> None:
    setup.append(3)
    submitter = setup.submitter()
    (result,) = submitter.submit_once()
    size = setup.env.ledger.reader.head().size
    assert (result.status, result.size) == ("cosigned", size)
    assert setup.statuses == [200]

    note = served_checkpoint(setup)
    checkpoint, _ = open_checkpoint(
        note, origin=setup.env.origin, verifier=Verifier.from_vkey(setup.env.log_vkey)
    )
    assert checkpoint.size == size
    (cosig,) = verify_cosignatures(note, [setup.witness.verifier])
    assert cosig.name == "witness.test/w1"
    assert abs(cosig.timestamp - time.time()) < 60

    # the log grows: the witness is sent a consistency proof from what it holds
    setup.append(4)
    (result,) = submitter.submit_once()
    assert result.status == "cosigned"
    assert setup.statuses == [200, 200]
    held = setup.witness.latest(setup.env.origin)
    assert held is not None
    assert held.size == size + 4
    assert verify_cosignatures(served_checkpoint(setup), [setup.witness.verifier])
    # the older checkpoint keeps its own cosignature
    older = setup.env.ledger.reader.checkpoint_cosigned(size)
    assert verify_cosignatures(older, [setup.witness.verifier])
    # nothing new: nothing sent
    (result,) = submitter.submit_once()
    assert result.status == "already"
    assert setup.statuses == [200, 200]


def test_a_409_tells_the_submitter_where_the_witness_is(setup: Setup) -> None:
    setup.append(2)
    setup.submitter().submit_once()
    setup.append(3)
    # a new submitter that forgot everything and a table that lost its rows
    with setup.env.ledger.engine.begin() as conn:
        conn.execute(text("DELETE FROM cosignatures"))
    (result,) = setup.submitter().submit_once()
    assert result.status == "cosigned"
    assert setup.statuses == [200, 409, 200]


def test_a_restarted_submitter_starts_from_the_size_it_stored(setup: Setup) -> None:
    setup.append(2)
    setup.submitter().submit_once()
    setup.append(2)
    (result,) = setup.submitter().submit_once()
    assert result.status == "cosigned"
    assert setup.statuses == [200, 200]  # no 409 round trip


def test_the_witness_cosigns_in_the_background_while_the_api_runs(setup: Setup) -> None:
    settings = setup.settings(setup.endpoint, interval=0.05)
    app = create_app(setup.env.ledger, settings, witness_client=setup.witness_http)
    with TestClient(app) as http:
        assert app.state.witnessing is not None
        setup.append(2)
        size = setup.env.ledger.reader.head().size
        deadline = time.monotonic() + 30
        while True:
            note = http.get("/v1/checkpoint").text
            if note_size(note) == size and verify_cosignatures(note, [setup.witness.verifier]):
                break
            assert time.monotonic() < deadline, "no cosignature within 30 s"
            time.sleep(0.05)
    assert app.state.witnessing is None  # stopped with the app


def test_a_witness_that_is_down_does_not_break_appends(setup: Setup) -> None:
    down = WitnessEndpoint(
        WitnessVerifier.from_vkey(witness_vkey(Signer.generate("down"))), "http://127.0.0.1:9"
    )
    settings = setup.settings(down, interval=0.05)
    app = create_app(setup.env.ledger, settings)
    with TestClient(app) as http:
        before = setup.env.ledger.reader.head().size
        for _ in range(3):
            response = http.post("/v1/statements", json=attest(setup.patient).to_json())
            assert response.status_code == 201, response.text
        note = http.get("/v1/checkpoint").text
        assert note_size(note) == before + 3
        assert verify_cosignatures(note, [down.verifier]) == []
        submitter: WitnessSubmitter = app.state.witnessing
        (result,) = submitter.submit_once(force=True)
        assert result.status == "failed"
        assert "ConnectError" in result.detail
        # backed off: the next round does not even try
        (result,) = submitter.submit_once()
        assert result.status == "skipped"


def test_a_witness_answering_garbage_is_not_stored(setup: Setup) -> None:
    setup.append(1)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="\u2014 witness.test/w1 AAAAAAAAAAAAAAAAAAAA\n")

    client = httpx.Client(transport=httpx.MockTransport(handler))
    submitter = WitnessSubmitter(setup.env.ledger.engine, [setup.endpoint], client=client)
    (result,) = submitter.submit_once()
    assert result.status == "failed"
    assert "no valid cosignature" in result.detail
    assert verify_cosignatures(served_checkpoint(setup), [setup.witness.verifier]) == []


# --- the fork, with real ledgers ------------------------------------------------------


@contextmanager
def clone_database(url: str, tmp_path: Path) -> Iterator[str]:
    """A copy of the ledger database at ``url`` (same log, same key, same records)."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        copy = tmp_path / f"clone-{uuid.uuid4().hex[:8]}.db"
        with sqlite3.connect(str(parsed.database)) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        yield f"sqlite:///{copy}"
        return
    name = f"rxl_clone_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{parsed.database}"'))
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_fork_shown_to_two_parties_is_caught_by_the_witness(setup: Setup, tmp_path: Path) -> None:
    """The operator copies its database and key and grows two histories of one size.

    Party A is served history A, party B history B: same origin, same log key,
    same size, different roots. The witness cosigns A; it refuses B and keeps B's
    log-signed checkpoint as evidence, so B's checkpoint never carries its
    cosignature.
    """
    setup.append(2)
    setup.submitter().submit_once()
    setup.env.ledger.engine.dispose()  # PostgreSQL copies a database nobody is using
    with clone_database(setup.env.url, tmp_path) as fork_url:
        fork = Ledger.open(fork_url, log_key_file=setup.env.key_dir / "log.skey")
        try:
            _fork_is_caught(setup, fork)
        finally:
            fork.close()


def _fork_is_caught(setup: Setup, fork: Ledger) -> None:
    setup.append(3)  # history A
    for _ in range(3):  # history B, signed with the same key
        (outcome,) = fork.append([Submission(attest(setup.patient))])
        assert isinstance(outcome, Receipt)
    note_a = setup.env.ledger.reader.latest_checkpoint()
    note_b = fork.reader.latest_checkpoint()
    assert note_size(note_a) == note_size(note_b)
    assert note_a != note_b

    (result_a,) = setup.submitter().submit_once()
    assert result_a.status == "cosigned"
    (result_b,) = setup.submitter(fork).submit_once()
    assert result_b.status == "refused"
    assert "another checkpoint" in result_b.detail

    served_a = setup.env.ledger.reader.latest_checkpoint_cosigned()
    served_b = fork.reader.latest_checkpoint_cosigned()
    assert verify_cosignatures(served_a, [setup.witness.verifier])
    assert verify_cosignatures(served_b, [setup.witness.verifier]) == []
    (evidence,) = setup.witness.evidence(setup.env.origin)
    assert evidence.reason == "fork"
    assert (evidence.note, evidence.held_note) == (note_b, note_a)

    # history B grows on: no consistency proof from A's checkpoint exists
    (outcome,) = fork.append([Submission(attest(setup.patient))])
    assert isinstance(outcome, Receipt)
    (result_b,) = setup.submitter(fork).submit_once()
    assert result_b.status == "refused"
    assert "HTTP 422" in result_b.detail


# --- configuration ----------------------------------------------------------------------


def test_parse_witnesses() -> None:
    w1 = witness_vkey(Signer.generate("w1.example"))
    odd = witness_vkey(Signer.generate("ops@w2.example"))  # '@' in the key name
    parsed = parse_witnesses(f" {w1}@https://w1.example/witness ,\n{odd}@http://10.0.0.2:8100 ")
    assert [(e.verifier.vkey, e.url) for e in parsed] == [
        (w1, "https://w1.example/witness"),
        (odd, "http://10.0.0.2:8100"),
    ]
    assert parsed[0].add_checkpoint_url == "https://w1.example/witness/add-checkpoint"
    assert parse_witnesses("") == []


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("https://w1.example", "VKEY@URL"),
        (f"{Signer.generate('w').vkey}@https://w.example", "VKEY@URL"),
        (f"{witness_vkey(Signer.generate('w'))}@ftp://w.example", "http"),
        (f"{witness_vkey(Signer.generate('w'))}@", "http"),
    ],
    ids=["no key", "a log key (0x01) instead of a witness key", "not http", "no URL"],
)
def test_bad_witness_configuration_is_refused(config: str, match: str) -> None:
    with pytest.raises(KeyFormatError, match=match):
        parse_witnesses(config)


def test_the_same_witness_twice_is_refused() -> None:
    w = witness_vkey(Signer.generate("w"))
    with pytest.raises(KeyFormatError, match="twice"):
        parse_witnesses(f"{w}@http://a.example {w}@http://b.example")


def test_settings_read_witnesses_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    w = witness_vkey(Signer.generate("w.example"))
    monkeypatch.setenv("RXLEDGER_WITNESSES", f"{w}@https://w.example")
    monkeypatch.setenv("RXLEDGER_WITNESS_INTERVAL", "2.5")
    settings = Settings.from_env()
    assert [e.verifier.vkey for e in settings.witnesses] == [w]
    assert settings.witness_interval == 2.5

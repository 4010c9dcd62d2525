"""Remote, incremental verification that trusts no operator (``ledger.auditing``).

The auditor keeps the last checkpoint it verified in a state file. The
operator holds the database and the log's signing key, and rewrites history
so well that ``verify --db`` passes on it; the auditor's next run must still
fail, with both signed checkpoints and the proof as evidence.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import insert

from api.app import create_app
from api.witness import create_witness_app
from cli.main import main
from ledger.auditing import AuditorState, DbSource, HttpSource, export_bundle, verify_remote
from ledger.bundle import verify_bundle
from ledger.core import merkle
from ledger.core.checkpoint import open_checkpoint
from ledger.core.cosignature import witness_vkey
from ledger.core.errors import (
    CheckpointError,
    ConsistencyProofError,
    EncodingError,
    InconsistencyError,
    RecordError,
    RootMismatchError,
)
from ledger.core.note import Signer, Verifier
from ledger.core.record import Record
from ledger.core.statement import make_statement
from ledger.demo import run_demo
from ledger.service import Ledger, read_key_file
from ledger.store.audit import verify_database
from ledger.store.schema import records
from ledger.store.sequencer import Receipt, Submission
from ledger.witness import Witness, logs_from_verifiers
from ledger.witnessing import WitnessEndpoint, WitnessSubmitter
from tests.conftest import LedgerEnv
from tests.helpers import attest
from tests.operator import backdate_one, rewrite_history


@dataclass
class Audited:
    env: LedgerEnv
    state: Path
    log_signer: Signer

    def source(self) -> Iterator[HttpSource]:
        """The log over HTTP, served by a fresh app on the current database."""
        ledger = Ledger.open(self.env.url, log_key_file=self.env.key_dir / "log.skey")
        try:
            with TestClient(create_app(ledger)) as http:
                yield HttpSource("http://testserver", http=http, page=50)
        finally:
            ledger.close()

    def verify(self, **kwargs: object) -> object:
        for source in self.source():
            return verify_remote(
                source,
                state_path=self.state,
                log_key=self.env.log_vkey,
                registrar_key=self.env.registrar_vkey,
                **kwargs,  # type: ignore[arg-type]
            )
        raise AssertionError("unreachable")

    def append(self, n: int) -> None:
        outcomes = self.env.ledger.append(
            [Submission(attest(self.env.registrar)) for _ in range(n)]
        )
        assert all(isinstance(o, Receipt) for o in outcomes), outcomes

    def rewrite(self, **kwargs: object) -> int:
        self.env.ledger.close()
        size = rewrite_history(
            self.env.ledger.engine,
            self.log_signer,
            self.env.origin,
            **kwargs,  # type: ignore[arg-type]
        )
        self.env.ledger = Ledger.open(self.env.url, log_key_file=self.env.key_dir / "log.skey")
        return size


@pytest.fixture
def audited(ledger_env: LedgerEnv, tmp_path: Path) -> Audited:
    run_demo(
        ledger_env.ledger,
        ledger_env.registrar,
        prescriptions=12,
        seed=5,
        key_dir=tmp_path / "settlement",
        wallet_key_dir=tmp_path / "wallet",
        batch_size=40,
    )
    return Audited(
        env=ledger_env,
        state=tmp_path / "auditor" / "state.json.gz",
        log_signer=read_key_file(ledger_env.key_dir / "log.skey"),
    )


def size_of(env: LedgerEnv) -> int:
    return env.ledger.reader.head().size


def test_first_run_verifies_everything_and_keeps_the_checkpoint(audited: Audited) -> None:
    size = size_of(audited.env)
    result = audited.verify()

    assert (result.tree_size, result.fetched, result.previous_size) == (size, size, 0)  # type: ignore[attr-defined]
    state = AuditorState.load(audited.state)
    verifier = Verifier.from_vkey(audited.env.log_vkey)
    assert state.checkpoint is not None
    checkpoint, _ = open_checkpoint(state.checkpoint, origin=audited.env.origin, verifier=verifier)
    assert checkpoint.size == size == state.position.size
    assert checkpoint.root_hash == audited.env.ledger.reader.head().root_hash
    assert state.target is None
    assert state.registrar_vkey == audited.env.registrar_vkey
    assert state.replay["records"] == size  # the rules' state, to continue the replay


def test_next_runs_fetch_only_new_records(audited: Audited) -> None:
    first = audited.verify()
    audited.append(7)
    second = audited.verify()
    third = audited.verify()

    assert second.previous_size == first.tree_size  # type: ignore[attr-defined]
    assert second.fetched == 7
    assert second.tree_size == first.tree_size + 7
    assert third.fetched == 0
    assert third.tree_size == second.tree_size


def test_the_continued_replay_still_applies_the_rules(audited: Audited) -> None:
    """A record the rules refuse, slipped in by the operator after a verified
    run, is caught by the incremental run: the replay continued from the
    saved state knows the stranger is not registered."""
    audited.verify()
    ledger = audited.env.ledger
    size = size_of(audited.env)
    forged = make_statement(Signer.generate("stranger"), "doc.attest", {"digest": "ab" * 32})
    last = ledger.reader.record(size - 1)
    record = Record.build(size, last.hash.hex(), last.received_at, forged)
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(records).values(
                seq=size,
                record_hash=record.hash,
                actor="stranger",
                nonce=forged.statement.nonce,
                type="doc.attest",
                received_at=record.received_at,
                record_bytes=record.record_bytes,
            )
        )
    assert audited.rewrite() == size + 1  # chained, in the tree, signed by the log key

    with pytest.raises(RecordError) as caught:
        audited.verify()

    assert caught.value.seq == size
    assert "unknown-actor" in str(caught.value)


@pytest.mark.parametrize("then_append", [False, True], ids=["same-size", "grown"])
def test_a_rewritten_history_is_caught_with_evidence(audited: Audited, then_append: bool) -> None:
    audited.verify()
    old_note = AuditorState.load(audited.state).checkpoint
    size = size_of(audited.env)
    target = next(
        seq
        for seq in range(size // 2, size)
        if audited.env.ledger.reader.record(seq).received_at
        > audited.env.ledger.reader.record(seq - 1).received_at
    )
    audited.rewrite(retime=backdate_one(target))
    if then_append:
        audited.append(3)
    # the operator's own database verifies: the rewrite is "valid-looking"
    verify_database(
        audited.env.ledger.engine,
        log_key=audited.env.log_vkey,
        registrar_key=audited.env.registrar_vkey,
    )

    with pytest.raises(InconsistencyError) as caught:
        audited.verify()

    evidence = caught.value.evidence
    verifier = Verifier.from_vkey(audited.env.log_vkey)
    old, _ = open_checkpoint(evidence.old_checkpoint, origin=audited.env.origin, verifier=verifier)
    new, _ = open_checkpoint(evidence.new_checkpoint, origin=audited.env.origin, verifier=verifier)
    assert evidence.old_checkpoint == old_note  # both signed by the log key: proof of equivocation
    if then_append:
        assert "rewritten" in str(caught.value)
        assert new.size == size + 3
        assert evidence.proof
        with pytest.raises((ConsistencyProofError, RootMismatchError)):
            merkle.verify_consistency(
                old.size, new.size, evidence.proof, old.root_hash, new.root_hash
            )
    else:
        assert "forked" in str(caught.value)
        assert new.size == old.size
        assert new.root_hash != old.root_hash
    # the state still holds the checkpoint verified before: every later run fails too
    assert AuditorState.load(audited.state).checkpoint == old_note
    with pytest.raises(InconsistencyError):
        audited.verify()


def test_a_log_that_shrank_is_caught(audited: Audited) -> None:
    audited.verify()
    old_note = AuditorState.load(audited.state).checkpoint
    size = size_of(audited.env)
    audited.rewrite(keep=size - 5)

    with pytest.raises(InconsistencyError) as caught:
        audited.verify()

    assert "shrank" in str(caught.value)
    assert caught.value.evidence.old_checkpoint == old_note
    assert f"\n{size - 5}\n" in caught.value.evidence.new_checkpoint


def test_an_interrupted_run_resumes_where_it_stopped(
    audited: Audited, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = size_of(audited.env)
    seen: list[int] = []

    def interrupt(done: int, total: int) -> None:
        seen.append(done)
        if done == 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        audited.verify(on_progress=interrupt)
    state = AuditorState.load(audited.state)
    assert state.checkpoint is None
    assert state.target is not None
    assert state.position.size == 100

    result = audited.verify()
    assert result.fetched == size - 100
    assert result.tree_size == size
    assert AuditorState.load(audited.state).target is None


def test_the_state_file_is_for_one_log(audited: Audited, tmp_path: Path) -> None:
    audited.verify()
    other = Signer.generate(audited.env.origin)
    for source in audited.source():
        with pytest.raises(EncodingError, match="state file is for the log key"):
            verify_remote(source, state_path=audited.state, log_key=other.vkey)
    audited.state.write_bytes(gzip.compress(json.dumps({"format": "other"}).encode()))
    for source in audited.source():
        with pytest.raises(EncodingError, match="not an rxledger auditor state"):
            verify_remote(source, state_path=audited.state, log_key=audited.env.log_vkey)
    junk = tmp_path / "junk"
    junk.write_text("not gzip")
    for source in audited.source():
        with pytest.raises(EncodingError, match="does not parse"):
            verify_remote(source, state_path=junk, log_key=audited.env.log_vkey)


def test_a_witness_quorum_is_required_of_the_checkpoint_verified(
    audited: Audited, tmp_path: Path
) -> None:
    witness = Witness(
        Signer.generate("witness.test/w1"),
        logs_from_verifiers([Verifier.from_vkey(audited.env.log_vkey)]),
        tmp_path / "witness.db",
    )
    stranger = witness_vkey(Signer.generate("witness.test/w2"))
    with TestClient(create_witness_app(witness), base_url="http://witness.test") as http:
        submitter = WitnessSubmitter(
            audited.env.ledger.engine,
            [WitnessEndpoint(witness.verifier, "http://witness.test")],
            client=http,
        )
        (result,) = submitter.submit_once()
        assert result.status == "cosigned"

        verified = audited.verify(witnesses=[witness.verifier.vkey], quorum=1)
        assert verified.witnesses == ("witness.test/w1",)  # type: ignore[attr-defined]
        with pytest.raises(CheckpointError, match="1 valid witness cosignature"):
            audited.verify(witnesses=[witness.verifier.vkey, stranger], quorum=2)
        # the database mode checks the latest checkpoint's cosignatures too
        args = ["verify", "--db", audited.env.url, "--witness", witness.verifier.vkey]
        assert CliRunner().invoke(main, [*args, "--json"]).exit_code == 0
        failed = CliRunner().invoke(main, [*args, "--witness", stranger])
        assert failed.exit_code == 1
        assert "at least 2 required" in failed.output
        # a bundle carries the anchor's cosignatures, checked offline
        bundle = tmp_path / "cosigned.zip"
        export_bundle(DbSource(audited.env.ledger.engine), bundle, log_vkey=audited.env.log_vkey)
        checked = verify_bundle(bundle, witnesses=[witness.verifier.vkey], quorum=1)
        assert checked.witnesses == ("witness.test/w1",)
        # a newer checkpoint not yet cosigned does not pass
        audited.append(2)
        with pytest.raises(CheckpointError, match="0 valid witness cosignature"):
            audited.verify(witnesses=[witness.verifier.vkey], quorum=1)

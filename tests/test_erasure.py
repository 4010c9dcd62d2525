"""Erasure by crypto-shredding (issue 6): the patient's data goes, the log stays valid.

After ``erasure.execute`` for one patient: ``verify`` passes (the replay takes
their shredded payloads as erased), every sealed payload of theirs fails to
open with every key the system still has, another patient's data is
untouched, a bundle exported afterwards verifies, and nothing more can be
recorded for them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from cli.main import main
from ledger.core.errors import PayloadError, RecordError
from ledger.core.payload import ERASED
from ledger.core.record import Record
from ledger.core.sealing import SealError, open_payload
from ledger.core.statement import make_statement
from ledger.domain.replay import Replayer
from ledger.domain.wallet import HMB
from ledger.store.audit import replayed_projections, verify_database
from ledger.store.reader import LedgerReader
from ledger.store.schema import data_keys, payloads, projections
from ledger.store.sequencer import Submission
from tests.conftest import LedgerEnv
from tests.wallet_world import WalletWorld, duo
from tests.world import DRUG_A, World, accepted, refused


class Story:
    """Two patients with prescriptions, claims, consents and a data use."""

    def __init__(self, env: LedgerEnv) -> None:
        self.env = env
        self.rx = World.build(env)
        self.wallet = WalletWorld.build(env)
        self.gone, self.kept = self.wallet.new_patients(2)
        for patient in (self.gone, self.kept):
            self.rx.enroll(patient)
            self.wallet.grant(patient, purposes=[duo(HMB)])
        self.gone_rx, self.gone_claim = self.rx.dispensed_and_claimed(patient=self.gone)
        self.kept_rx, self.kept_claim = self.rx.dispensed_and_claimed(patient=self.kept)
        self.use = self.wallet.use("uni", [self.gone, self.kept])

    def payload_rows(self) -> dict[int, dict[str, Any]]:
        with self.env.ledger.engine.connect() as conn:
            rows = conn.execute(select(payloads)).mappings().all()
        return {int(r["seq"]): dict(r) for r in rows}

    def payload_seq(self, owner: str) -> int:
        return min(s for s, r in self.payload_rows().items() if r["owner"] == owner)

    def request(self) -> None:
        signer = self.wallet.signers[self.gone]
        self.wallet.must(
            Submission(self.wallet.sign(signer, "erasure.request", {"patient": self.gone}))
        )

    def execute_cli(self, *extra: str) -> Any:
        return CliRunner().invoke(
            main,
            [
                "erasure",
                "execute",
                "--db",
                self.env.url,
                "--key-dir",
                str(self.env.key_dir),
                "--patient",
                self.gone,
                *extra,
            ],
        )


@pytest.fixture
def story(ledger_env: LedgerEnv) -> Story:
    return Story(ledger_env)


def test_erasure_shreds_one_patient_and_the_log_still_verifies(story: Story) -> None:
    ledger = story.env.ledger
    before = story.payload_rows()
    gone_seqs = sorted(s for s, r in before.items() if r["owner"] == story.gone)
    kept_seqs = sorted(s for s, r in before.items() if r["owner"] == story.kept)
    assert len(gone_seqs) == 2
    assert len(kept_seqs) == 2
    plain = {seq: ledger.reader.payload(seq) for seq in before}
    assert all(plain.values())  # every payload opens before

    story.request()
    result = story.execute_cli("--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["data_key_destroyed"] is True
    assert report["payloads_shredded"] == 2

    after = story.payload_rows()
    for seq in gone_seqs:
        assert after[seq]["content"] is None
        assert after[seq]["erased_seq"] == report["seq"]
        assert after[seq]["digest"] == before[seq]["digest"]  # the commitment stays
        assert ledger.reader.payload(seq) is None
    for seq in kept_seqs:  # the other patient is untouched
        assert after[seq]["content"] == before[seq]["content"]
        assert ledger.reader.payload(seq) == plain[seq]
    with ledger.engine.connect() as conn:
        keys = {r.owner: r for r in conn.execute(select(data_keys))}
    assert keys[story.gone].wrapped is None
    assert keys[story.gone].erased_seq == report["seq"]

    # A backup of the sealed bytes taken before opens with no key the system still has.
    master = ledger.vault.master
    remaining = [master.unwrap(o, bytes(r.wrapped)) for o, r in keys.items() if r.wrapped]
    assert len(remaining) >= 2  # the kept patient's and the ledger's
    for seq in gone_seqs:
        sealed = bytes(before[seq]["content"])
        for key in remaining:
            with pytest.raises(SealError):
                open_payload(key, seq, bytes(before[seq]["digest"]), sealed)

    # The chain, the tree, the checkpoints and the replay of every rule still hold.
    verified = verify_database(ledger.engine)
    assert verified.rules == "all"
    assert verified.shredded == 2
    assert verified.size == ledger.reader.head().size


def test_after_erasure_nothing_more_is_recorded_and_the_projections_keep_no_clinical_data(
    story: Story,
) -> None:
    story.request()
    assert story.execute_cli().exit_code == 0
    rx = story.rx.rx(story.gone_rx)
    assert rx["status"] == "erased"
    assert rx["items"] is None
    assert rx["controlled_class"] is None
    with story.env.ledger.engine.connect() as conn:
        rows = conn.execute(
            select(projections.c.kind, projections.c.key, projections.c.value).where(
                projections.c.patient == story.gone
            )
        ).all()
    assert rows
    for kind, key, value in rows:
        assert DRUG_A not in value, (kind, key)
        assert DRUG_A not in key, (kind, key)
    # nothing new for the erased patient
    refused(story.rx.issue(story.rx.new_id("RX"), patient=story.gone), "patient-erased")
    refused(story.rx.submit(story.rx.make_dispense(story.gone_rx, 2)), "patient-erased")
    grant = story.wallet.make_grant(story.gone, story.wallet.new_id("c"), purposes=[duo(HMB)])
    refused(story.wallet.submit(grant), "patient-erased")
    again = story.execute_cli()
    assert again.exit_code != 0
    assert "patient-erased" in again.output
    assert len(again.output.strip().splitlines()) == 1
    # their consents were revoked by the erasure: a new use leaves them out
    assert story.wallet.permitted("uni", [story.gone, story.kept]) == [story.kept]
    # the other patient's prescription carries on
    accepted(story.rx.submit(story.rx.make_dispense(story.kept_rx, 2)))


def test_replay_after_erasure_matches_the_projections_but_for_pack_counts(story: Story) -> None:
    story.request()
    assert story.execute_cli().exit_code == 0
    with story.env.ledger.engine.connect() as conn:
        live = sorted(
            tuple(r)
            for r in conn.execute(
                select(
                    projections.c.kind,
                    projections.c.key,
                    projections.c.value,
                    projections.c.patient,
                    projections.c.party,
                    projections.c.status,
                    projections.c.tags,
                    projections.c.seq,
                )
            )
        )
    replayed = replayed_projections(story.env.ledger.engine)
    differing = set(live) ^ set(replayed)
    # Only traceability-code documents differ: their pack counts came from the
    # erased dispense's payload, which no replay can read any more (docs/privacy.md);
    # and the replay notes where it met shredded payloads (it alone: "inputs-erased").
    assert {row[0] for row in differing} == {"trace", "inputs-erased"}
    assert {row[1] for row in differing if row[0] == "inputs-erased"} == {story.gone, "*"}
    assert not any(row[0] == "inputs-erased" for row in live)


def test_erasure_needs_a_request_and_yields_to_a_legal_hold(story: Story) -> None:
    refused_ = story.execute_cli()
    assert refused_.exit_code != 0
    assert "no-erasure-request" in refused_.output
    hold = make_statement(
        story.env.registrar,
        "hold.place",
        {"hold_id": "H-1", "patient": story.gone, "reason": "litigation"},
    )
    accepted(story.env.ledger.append([Submission(hold)])[0])
    story.request()
    held = story.execute_cli()
    assert held.exit_code != 0
    assert "legal-hold" in held.output
    assert story.env.ledger.reader.payload(story.payload_seq(story.gone)) is not None
    release = make_statement(story.env.registrar, "hold.release", {"hold_id": "H-1"})
    accepted(story.env.ledger.append([Submission(release)])[0])
    assert story.execute_cli().exit_code == 0


def test_a_legal_order_erases_without_a_request(story: Story) -> None:
    result = story.execute_cli("--reason", "legal-order")
    assert result.exit_code == 0, result.output
    assert verify_database(story.env.ledger.engine).shredded == 2


def test_a_bundle_exported_after_erasure_verifies_and_holds_no_payload(
    story: Story, tmp_path: Path
) -> None:
    story.request()
    assert story.execute_cli().exit_code == 0
    out = tmp_path / "after.zip"
    runner = CliRunner()
    exported = runner.invoke(main, ["export", "--db", story.env.url, "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    checked = runner.invoke(
        main, ["verify", "--bundle", str(out), "--log-key", story.env.log_vkey, "--json"]
    )
    assert checked.exit_code == 0, checked.output
    import zipfile  # noqa: PLC0415

    with zipfile.ZipFile(out) as bundle:
        names = bundle.namelist()
        blob = b"".join(bundle.read(n) for n in names)
    assert not any("payload" in n and n.endswith((".bin", ".enc")) for n in names)
    for row in story.payload_rows().values():
        if row["content"] is not None:
            assert bytes(row["content"])[:32] not in blob


def test_verify_reports_the_shredded_payloads(story: Story) -> None:
    story.request()
    assert story.execute_cli().exit_code == 0
    done = CliRunner().invoke(main, ["verify", "--db", story.env.url, "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    assert summary["payloads_shredded"] == 2
    assert summary["rules"] == "all"


def test_after_a_shredding_the_replay_still_recomputes_a_decisions_outcome(story: Story) -> None:
    """The replay may take history rules as recorded once it met a shredded
    payload, but never the outcome or the amount: a decision changed to approve
    more than its rules allow is still refused."""
    story.request()
    assert story.execute_cli().exit_code == 0
    w = story.rx
    accepted(w.submit(w.make_dispense(story.kept_rx, 2)))
    claim_id = w.new_id("C")
    accepted(w.submit(w.make_claim(claim_id, story.kept_rx, 2)))
    engine = story.env.ledger.engine
    reader = LedgerReader(engine, vault=story.env.ledger.vault)
    items = list(reader.iter_records())
    decision_seq = max(
        i
        for i, item in enumerate(items)
        if Record.from_bytes(item.record_bytes).fields["type"] == "settlement.decision"
    )

    def replay(tamper: bool) -> None:
        replayer = Replayer(registrar_key=story.env.registrar_vkey)
        for item in items:
            record = Record.from_bytes(item.record_bytes)
            statement = record.statement()
            if tamper and record.seq == decision_seq:
                body = dict(statement.body, outcome="approved", approved_amount=10**9)
                statement = dataclasses.replace(statement, body=body)
            replayer(record.seq, statement, ERASED if item.payload_erased else item.payload)

    replay(tamper=False)  # the log as it is replays
    with pytest.raises(RecordError, match="decision-mismatch"):
        replay(tamper=True)


def test_an_auditor_releases_only_its_own_holds(story: Story) -> None:
    env = story.env
    auditor = story.wallet.register("auditor-1", "auditor")
    other = story.wallet.register("auditor-2", "auditor")
    place = make_statement(
        env.registrar, "hold.place", {"hold_id": "H-R", "patient": story.gone, "reason": "audit"}
    )
    accepted(env.ledger.append([Submission(place)])[0])
    mine = make_statement(
        auditor, "hold.place", {"hold_id": "H-A", "rx_id": story.gone_rx, "reason": "audit"}
    )
    accepted(env.ledger.append([Submission(mine)])[0])
    for hold_id in ("H-R", "H-A"):
        release = make_statement(other, "hold.release", {"hold_id": hold_id})
        refused(env.ledger.append([Submission(release)])[0], "not-your-hold")
    accepted(
        env.ledger.append(
            [Submission(make_statement(auditor, "hold.release", {"hold_id": "H-A"}))]
        )[0]
    )
    accepted(
        env.ledger.append(
            [Submission(make_statement(env.registrar, "hold.release", {"hold_id": "H-R"}))]
        )[0]
    )


def test_without_the_master_key_a_dispense_cannot_be_passed_off_as_shredded(
    story: Story, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    story.request()
    result = story.execute_cli("--json")
    erasure_seq = json.loads(result.output)["seq"]
    rows = story.payload_rows()
    kept_dispense = max(s for s, r in rows.items() if r["owner"] == story.kept)
    with story.env.ledger.engine.begin() as conn:
        conn.execute(
            update(payloads)
            .where(payloads.c.seq == kept_dispense)
            .values(owner=story.gone, content=None, erased_seq=erasure_seq)
        )
    monkeypatch.delenv("RXLEDGER_MASTER_KEY")
    monkeypatch.setenv("RXLEDGER_HOME", str(tmp_path / "nokeys"))
    with pytest.raises(PayloadError) as caught:
        verify_database(story.env.ledger.engine)
    assert caught.value.seq == kept_dispense
    assert "owner" in str(caught.value)

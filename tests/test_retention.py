"""Retention (``ledger.retention``, ``rxledger retention run``) and legal holds.

Prescriptions of every class are issued, some dispensed and claimed, and the
ledger's clock is moved forward year by year: each year's run shreds exactly
the classes whose period is over, keeps what is held until the hold is
released, destroys exactly those prescriptions' payload rows, and leaves a log
that verifies. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from cli.main import main
from ledger import retention
from ledger.domain.registry import CONTROLLED_CLASSES
from ledger.retention import RetentionPolicy, RetentionPolicyError
from ledger.store.audit import verify_database
from ledger.store.reader import ProjectionReader
from ledger.store.schema import payloads
from ledger.store.sequencer import Submission
from tests.conftest import LedgerEnv
from tests.world import World, accepted, item, line, refused


@pytest.fixture
def world(ledger_env: LedgerEnv) -> Iterator[World]:
    w = World.build(ledger_env)
    w.add_prescriber("dr-all", controlled_classes=list(CONTROLLED_CLASSES))
    w.travel()  # the world's clock is fixed from here on: only travel moves it
    return w


# -- helpers -------------------------------------------------------------------------


def issue(
    w: World,
    *,
    controlled: str | None = None,
    dispensed: bool = False,
    claimed: bool = False,
    patient: str | None = None,
    valid_for: timedelta = timedelta(days=90),
    fills: int = 2,
    quantity: int = 60,
) -> str:
    rx_id = w.new_id("RX")
    accepted(
        w.issue(
            rx_id,
            by="dr-all",
            patient=patient or w.new_patient(),
            controlled_class=controlled,
            valid_for=valid_for,
            fills=fills,
            items=[item(quantity=quantity)],
        )
    )
    if dispensed:
        accepted(w.dispense(rx_id, 1, [line(0, 30)], claimed=claimed))
    if claimed:
        accepted(w.claim(w.new_id("C"), rx_id, 1))
    return rx_id


def place_hold(w: World, hold_id: str, **target: str) -> None:
    body = {"hold_id": hold_id, "reason": "litigation", **target}
    accepted(w.submit(Submission(w.sign(w.env.registrar, "hold.place", body))))


def release_hold(w: World, hold_id: str) -> None:
    body = {"hold_id": hold_id}
    accepted(w.submit(Submission(w.sign(w.env.registrar, "hold.release", body))))


def shred(w: World, rx_ids: list[str], days: int) -> Any:
    body = {"rx_ids": rx_ids, "retention_days": days}
    return w.submit(Submission(w.sign(w.env.registrar, "retention.shred", body)))


def payload_rows(w: World, rx_id: str) -> list[tuple[int, bool, int | None]]:
    """``(seq, content present, erased_seq)`` of the payload rows of the rx's records."""
    history = w.rx(rx_id)["history"]
    with w.engine.connect() as conn:
        rows = conn.execute(
            select(payloads.c.seq, payloads.c.content, payloads.c.erased_seq)
            .where(payloads.c.seq.in_(history))
            .order_by(payloads.c.seq)
        ).all()
    return [(int(r.seq), r.content is not None, r.erased_seq) for r in rows]


def assert_intact(w: World, rx_id: str) -> None:
    rows = payload_rows(w, rx_id)
    assert rows, f"{rx_id} has no payload rows"
    for seq, present, erased_seq in rows:
        assert present, (rx_id, seq)
        assert erased_seq is None, (rx_id, seq)
        assert w.env.ledger.reader.payload(seq) is not None, (rx_id, seq)
    assert w.rx(rx_id)["status"] != "erased"


def assert_shredded(w: World, rx_id: str, by_seq: int) -> None:
    rx = w.rx(rx_id)
    assert rx["status"] == "erased"
    assert rx["items"] is None
    assert rx["controlled_class"] is None
    rows = payload_rows(w, rx_id)
    assert rows, f"{rx_id} has no payload rows"
    for seq, present, erased_seq in rows:
        assert not present, (rx_id, seq)
        assert erased_seq == by_seq, (rx_id, seq, erased_seq)
        assert w.env.ledger.reader.payload(seq) is None, (rx_id, seq)


def seq_of(report: retention.Report, rx_id: str) -> int:
    (seq,) = [s.seq for s in report.statements if rx_id in s.rx_ids]
    return seq


def run(w: World, policy: RetentionPolicy | None = None, **kw: Any) -> retention.Report:
    return retention.run(w.env.ledger, w.env.registrar, policy or RetentionPolicy(), **kw)


# -- years go by ---------------------------------------------------------------------


def test_each_class_is_shredded_when_its_period_is_over_and_holds_keep_data(world: World) -> None:
    w = world
    held_patient = w.new_patient()
    rx = {
        "ordinary-claimed": issue(w, dispensed=True, claimed=True),
        "ordinary-never-filled": issue(w),
        "ordinary-cancelled": issue(w),
        "ordinary-long-valid": issue(w, valid_for=timedelta(days=400)),
        "toxic": issue(w, controlled="toxic", dispensed=True),
        "psychotropic-2": issue(w, controlled="psychotropic-2", dispensed=True, claimed=True),
        "narcotic": issue(w, controlled="narcotic", dispensed=True, claimed=True),
        "psychotropic-1": issue(w, controlled="psychotropic-1"),
        "radioactive": issue(w, controlled="radioactive", dispensed=True),
        "held-rx": issue(w, dispensed=True),
        "held-patient": issue(w, dispensed=True, patient=held_patient),
    }
    accepted(w.cancel(rx["ordinary-cancelled"], by="dr-all"))
    place_hold(w, "H-RX", rx_id=rx["held-rx"])
    place_hold(w, "H-PAT", patient=held_patient)

    # Day 364: nothing is due (and nothing is recorded).
    w.travel(days=364)
    size = w.size()
    report = run(w)
    assert report.shredded == []
    assert report.statements == []
    assert report.refused == []
    assert w.size() == size
    for rx_id in rx.values():
        assert_intact(w, rx_id)

    # A dry run on day 366 says what is due and records nothing.
    w.travel(days=2)
    dry = run(w, dry_run=True)
    year_one = {rx["ordinary-claimed"], rx["ordinary-never-filled"], rx["ordinary-cancelled"]}
    assert {d.rx_id for d in dry.due} == year_one
    assert dry.by_class() == {"ordinary": 3}
    assert dry.held == {rx["held-rx"]: ["H-RX"], rx["held-patient"]: ["H-PAT"]}
    assert w.size() == size
    assert retention.due(w.engine, RetentionPolicy(), w.now()) == dry.due

    # Year 1: the ordinary ones, not the held ones, not the one still valid.
    report = run(w)
    assert set(report.shredded) == year_one
    assert report.by_class() == {"ordinary": 3}
    assert report.held == {rx["held-rx"]: ["H-RX"], rx["held-patient"]: ["H-PAT"]}
    assert report.refused == []
    assert [s.retention_days for s in report.statements] == [365]
    # issue + dispense of the claimed one, issue of the two others
    assert report.payloads_destroyed == 4
    for rx_id in year_one:
        assert_shredded(w, rx_id, seq_of(report, rx_id))
    for rx_id in rx.values():
        if rx_id not in year_one:
            assert_intact(w, rx_id)
    audit = verify_database(w.engine)
    assert audit.shredded == 4

    # Re-running does nothing.
    size = w.size()
    again = run(w)
    assert again.shredded == []
    assert again.statements == []
    assert again.due == []
    assert set(again.held) == {rx["held-rx"], rx["held-patient"]}
    assert w.size() == size

    # Year 2: toxic, psychotropic-2, and the ordinary one that was valid for 400 days.
    w.travel(days=365)
    report = run(w)
    year_two = {rx["toxic"], rx["psychotropic-2"], rx["ordinary-long-valid"]}
    assert set(report.shredded) == year_two
    assert report.by_class() == {"ordinary": 1, "toxic": 1, "psychotropic-2": 1}
    assert sorted(s.retention_days for s in report.statements) == [365, 730]
    for rx_id in year_two:
        assert_shredded(w, rx_id, seq_of(report, rx_id))
    for name in ("narcotic", "psychotropic-1", "radioactive", "held-rx", "held-patient"):
        assert_intact(w, rx[name])

    # The hold on the prescription is released: it goes with year 3's.
    release_hold(w, "H-RX")
    w.travel(days=365)
    report = run(w)
    year_three = {rx["narcotic"], rx["psychotropic-1"], rx["radioactive"], rx["held-rx"]}
    assert set(report.shredded) == year_three
    assert report.by_class() == {
        "ordinary": 1,
        "narcotic": 1,
        "psychotropic-1": 1,
        "radioactive": 1,
    }
    assert report.held == {rx["held-patient"]: ["H-PAT"]}
    for rx_id in year_three:
        assert_shredded(w, rx_id, seq_of(report, rx_id))
    assert_intact(w, rx["held-patient"])

    # The patient's hold is released: the last one goes.
    release_hold(w, "H-PAT")
    report = run(w)
    assert report.shredded == [rx["held-patient"]]
    assert report.held == {}
    assert_shredded(w, rx["held-patient"], report.statements[0].seq)

    with w.engine.connect() as conn:
        erased = conn.execute(select(payloads.c.seq).where(payloads.c.erased_seq.is_not(None)))
        erased_rows = len(erased.all())
    audit = verify_database(w.engine)
    assert audit.shredded == erased_rows > 4
    assert run(w).statements == []


def test_a_shred_before_the_period_is_over_is_refused(world: World) -> None:
    w = world
    rx_id = issue(w, dispensed=True)
    w.travel(days=100)  # expired, but kept a year
    refused(shred(w, [rx_id], 365), "retention-not-due")
    refused(shred(w, [rx_id], 101), "retention-not-due")
    assert_intact(w, rx_id)
    # the period is what the statement says: 100 days are over
    receipt = accepted(shred(w, [rx_id], 100))
    assert_shredded(w, rx_id, receipt.seq)
    refused(shred(w, [rx_id], 100), "rx-erased")


def test_the_ledger_refuses_what_a_run_would_skip(world: World) -> None:
    w = world
    active = issue(w, valid_for=timedelta(days=800))
    held = issue(w)
    place_hold(w, "H-1", rx_id=held)
    w.travel(days=400)
    refused(shred(w, [active], 365), "rx-active")
    refused(shred(w, [held], 365), "legal-hold")
    report = run(w)
    assert report.shredded == []
    assert report.held == {held: ["H-1"]}
    assert_intact(w, active)
    assert_intact(w, held)


def test_a_hold_placed_after_the_scan_is_refused_and_the_rest_go(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    first, second, third = issue(w), issue(w), issue(w)
    w.travel(days=366)
    real_scan = retention.scan

    def scan_then_hold(*args: Any) -> retention.Scan:
        found = real_scan(*args)
        place_hold(w, "H-LATE", rx_id=second)  # between the scan and the statement
        return found

    monkeypatch.setattr(retention, "scan", scan_then_hold)
    report = run(w)
    assert sorted(report.shredded) == sorted([first, third])
    assert [(r.rx_ids, r.code) for r in report.refused] == [([second], "legal-hold")]
    assert_intact(w, second)
    assert_shredded(w, first, seq_of(report, first))


def test_a_shorter_configured_period(world: World) -> None:
    w = world
    ordinary, narcotic = issue(w, dispensed=True), issue(w, controlled="narcotic", dispensed=True)
    w.travel(days=120)
    assert run(w).shredded == []
    policy = RetentionPolicy.parse("ordinary=100,narcotic=110")
    report = run(w, policy)
    assert sorted(report.shredded) == sorted([ordinary, narcotic])
    assert sorted(s.retention_days for s in report.statements) == [100, 110]
    assert verify_database(w.engine).shredded == 4


# -- replay after a partial shredding ---------------------------------------------------


def test_verify_after_shredding_a_fill_a_later_claim_was_checked_against(world: World) -> None:
    w = world
    patient = w.new_patient()
    first = issue(w, dispensed=True, claimed=True, patient=patient)  # ordinary: paid
    w.travel(days=1)
    second = issue(w, controlled="toxic", dispensed=True, claimed=True, patient=patient)
    assert "refill-too-soon" in json.dumps(w.claim_doc(_claim_of(w, second))["decision"])
    w.travel(days=366)
    report = run(w)
    assert report.shredded == [first]
    verify_database(w.engine)


def test_verify_after_shredding_a_prescription_completed_by_quantity(world: World) -> None:
    w = world
    rx_id = issue(w, dispensed=True, quantity=30, fills=2)  # all 30 dispensed in fill 1
    assert w.rx(rx_id)["status"] == "completed"
    w.travel(days=11)  # still within valid_until (90 days)
    report = run(w, RetentionPolicy.parse("ordinary=10"))
    assert report.shredded == [rx_id]
    verify_database(w.engine)


def _claim_of(w: World, rx_id: str) -> str:
    (claim,) = [
        c for c in ProjectionReader(w.engine).page("claim", limit=1000) if c["rx_id"] == rx_id
    ]
    return str(claim["claim_id"])


# -- the policy ----------------------------------------------------------------------


def test_default_policy_follows_article_50() -> None:
    policy = RetentionPolicy()
    assert policy.days_for(None) == 365
    assert policy.days_for("toxic") == policy.days_for("psychotropic-2") == 730
    assert policy.days_for("narcotic") == policy.days_for("psychotropic-1") == 1095
    assert policy.days_for("radioactive") == 1095
    assert set(policy.to_json()) == {"ordinary", *CONTROLLED_CLASSES}


def test_policy_from_env_then_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(retention.ENV, "ordinary=400, narcotic=1200")
    policy = RetentionPolicy.configured()
    assert policy.days_for(None) == 400
    assert policy.days_for("narcotic") == 1200
    assert policy.days_for("toxic") == 730
    policy = RetentionPolicy.configured("narcotic=2000")
    assert policy.days_for(None) == 400
    assert policy.days_for("narcotic") == 2000
    monkeypatch.setenv(retention.ENV, "opioid=3")
    with pytest.raises(RetentionPolicyError, match="RXLEDGER_RETENTION: unknown class 'opioid'"):
        RetentionPolicy.configured()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("opioid=100", "unknown class 'opioid'"),
        ("ordinary=0", "ordinary=0: expected a whole number of days"),
        ("ordinary=-5", "ordinary=-5: expected a whole number"),
        ("ordinary=1.5", "expected a whole number"),
        ("ordinary=ten", "expected a whole number"),
        ("ordinary=99999", "from 1 to 36600"),
        ("ordinary", "expected CLASS=DAYS"),
        ("ordinary=400,ordinary=500", "given twice"),
        ("", "got nothing"),
    ],
)
def test_bad_policies_are_refused(spec: str, message: str) -> None:
    with pytest.raises(RetentionPolicyError, match=message):
        RetentionPolicy.parse(spec)


def test_a_policy_must_name_every_class_with_positive_days() -> None:
    with pytest.raises(RetentionPolicyError, match="no period for"):
        RetentionPolicy({"ordinary": 365})
    with pytest.raises(RetentionPolicyError, match="expected a whole number"):
        RetentionPolicy({**retention.DEFAULT_DAYS, "toxic": 0})


# -- the command line ----------------------------------------------------------------


class Cli:
    def __init__(self, w: World, monkeypatch: pytest.MonkeyPatch) -> None:
        self.w = w
        self.runner = CliRunner()
        # The commands sign and record at the world's time (years ahead of the real clock).
        monkeypatch.setattr("cli.retention.clock", w.now)

    def __call__(self, *args: str) -> Result:
        argv = [*args, "--db", self.w.env.url, "--key-dir", str(self.w.env.key_dir)]
        return self.runner.invoke(
            main, argv, env={"RXLEDGER_RETENTION": None}, catch_exceptions=False
        )


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(world, monkeypatch)


def one_line_error(result: Result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rxledger: error: ")
    return lines[0]


def test_cli_run_says_what_it_did(world: World, cli: Cli) -> None:
    w = world
    done = issue(w, dispensed=True, claimed=True)
    toxic = issue(w, controlled="toxic", dispensed=True)
    held = issue(w)
    w.travel(days=366)

    placed = cli("hold", "place", "--rx", held, "--reason", "investigation", "--json")
    assert placed.exit_code == 0, placed.output
    hold = json.loads(placed.stdout)
    assert hold["rx_id"] == held
    assert hold["hold_id"].startswith("H-")

    dry = cli("retention", "run", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["shredded"] == []
    assert w.rx(done)["status"] != "erased"

    result = cli("retention", "run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["shredded"] == [done]
    assert report["by_class"] == {"ordinary": 1}
    assert report["payloads_destroyed"] == 2
    assert report["held"] == {held: [hold["hold_id"]]}
    assert report["refused"] == []
    assert report["policy"]["ordinary"] == 365
    assert [s["retention_days"] for s in report["statements"]] == [365]
    assert_shredded(w, done, report["statements"][0]["seq"])
    assert_intact(w, toxic)

    text = cli("retention", "run")
    assert text.exit_code == 0, text.output
    assert "shredded 0 prescription(s)" in text.stdout
    assert f"{held}  hold {hold['hold_id']}" in text.stdout

    released = cli("hold", "release", hold["hold_id"])
    assert released.exit_code == 0, released.output
    assert f"hold {hold['hold_id']} released" in released.stdout
    text = cli("retention", "run", "--policy", "toxic=300")
    assert text.exit_code == 0, text.output
    assert "shredded 2 prescription(s) in 2 statement(s)" in text.stdout
    assert "toxic            1" in text.stdout
    assert_shredded(w, held, w.rx(held)["erased_seq"])
    assert_shredded(w, toxic, w.rx(toxic)["erased_seq"])
    assert verify_database(w.engine).shredded == 5  # 2 + 2 issues and dispenses, 1 issue


@pytest.mark.parametrize(
    "spec", ["ordinary=0", "opioid=10", "ordinary=-1", "ordinary", "narcotic=1e3"]
)
def test_cli_bad_policy_is_one_line(cli: Cli, spec: str) -> None:
    size = cli.w.size()
    line_ = one_line_error(cli("retention", "run", "--policy", spec))
    assert "retention policy" in line_
    assert cli.w.size() == size


def test_cli_hold_errors_are_one_line(cli: Cli) -> None:
    assert "exactly one of --patient or --rx" in one_line_error(
        cli("hold", "place", "--reason", "audit")
    )
    assert "exactly one" in one_line_error(
        cli("hold", "place", "--patient", "P-1", "--rx", "RX-1", "--reason", "audit")
    )
    placed = cli("hold", "place", "--patient", "P-1", "--reason", "audit", "--hold-id", "H-9")
    assert placed.exit_code == 0, placed.output
    assert "hold-exists" in one_line_error(
        cli("hold", "place", "--patient", "P-1", "--reason", "audit", "--hold-id", "H-9")
    )
    assert "unknown-hold" in one_line_error(cli("hold", "release", "H-NONE"))
    bad_reason = cli("hold", "place", "--patient", "P-1", "--reason", "because")
    assert bad_reason.exit_code == 2
    assert "Traceback" not in bad_reason.output


def test_cli_without_keys_is_one_line(world: World, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["retention", "run", "--db", world.env.url, "--key-dir", str(tmp_path / "none")],
        catch_exceptions=False,
    )
    assert "registrar.skey does not exist" in one_line_error(result)

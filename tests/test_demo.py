"""``rxledger demo``: the synthetic world, what it shows, and what it must never leak.

The world runs on SQLite and on PostgreSQL (``ledger_env``). One run of about
200 prescriptions per backend is checked for: every rejection category by
code, all three decision outcomes, a database that verifies, a replay that
gives the projections row for row, no patient identity and no drug name in any
record, and example claims whose audit trails check offline.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from sqlalchemy import select

from cli.main import main
from ledger.client import check_trail
from ledger.core.note import Verifier
from ledger.core.record import Record
from ledger.demo import CATALOGUE, DemoReport, run_demo
from ledger.domain.settlement import OUTCOMES
from ledger.service import claim_trail, init_ledger, read_key_file
from ledger.store.audit import replayed_projections, verify_database
from ledger.store.reader import ProjectionReader
from ledger.store.schema import payloads, records
from tests.conftest import LedgerEnv, make_ledger_env

#: statements the demo has refused on purpose, by code
REFUSALS = ("over-quantity", "trace-code-used-up", "rx-cancelled", "rx-expired", "rx-rejected")
#: rules the demo's claims fail on purpose, by code
FAILED_RULES = (
    "refill-too-soon",
    "not-in-formulary",
    "not-covered",
    "duplicate-claim",
    "price-capped",
    "quantity-limit",
    "days-supply-limit",
    "prescriber-not-authorised",
)
PSEUDONYM = re.compile(r"P-[0-9a-f]{16}")
#: a national ID, phone or insurance number: a long run of digits as a whole value
ID_LIKE = re.compile(r"\+?[0-9][0-9 -]{5,}[0-9Xx]")


def strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, string) in a JSON value."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in strings(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [pair for v in value for pair in strings(v, f"{path}[]")]
    return []


def check_privacy(env: LedgerEnv) -> None:
    names = [d.name.lower() for d in CATALOGUE]
    words = [d.name.split()[0].lower() for d in CATALOGUE]
    with env.ledger.engine.connect() as conn:
        stored = [bytes(b) for b in conn.execute(select(records.c.record_bytes)).scalars()]
        clinical = b"".join(bytes(c) for c in conn.execute(select(payloads.c.content)).scalars())
    # the names do exist, beside the chain: the scan below is not vacuous
    assert all(w.encode() in clinical.lower() for w in words[:5])
    for data in stored:
        lowered = data.lower()
        for name in [*names, *words]:
            assert name.encode() not in lowered, f"drug name {name!r} in a record"
        record = Record.from_bytes(data)
        statement = record.fields
        for path, value in strings(statement["body"], "body"):
            if path.endswith(".patient"):
                assert PSEUDONYM.fullmatch(value), f"patient {value!r} is not a pseudonym"
            assert not ID_LIKE.fullmatch(value), f"{path} = {value!r} looks like an ID number"
            if path.endswith("display_name"):
                assert statement["body"]["role"] != "patient"
        assert statement["body"].get("role") != "patient"  # patients are pseudonyms only


def check_report(report: DemoReport) -> None:
    assert report.unexpected == {}, report.unexpected
    for code in REFUSALS:
        assert report.refused_by_code.get(code), f"no statement refused with {code}"
    for code in FAILED_RULES:
        assert report.failed_rules_by_code.get(code), f"no decision failing {code}"
    for outcome in OUTCOMES:
        assert report.decisions_by_outcome.get(outcome), f"no {outcome} decision"
    assert "pending" not in report.decisions_by_outcome  # the service decided every claim
    assert report.decisions == report.accepted_by_type["claim.submit"]
    assert report.statements_accepted + report.statements_refused == report.statements_submitted
    # every accepted statement is a record, and so is every decision the service made
    assert report.records_written == report.statements_accepted + report.decisions
    assert report.tree_size == report.first_seq + report.records_written
    assert set(report.example_claims) == set(OUTCOMES)
    data = json.loads(json.dumps(report.to_json()))
    assert data["records_written"] == report.records_written
    assert data["decisions"]["by_outcome"] == report.decisions_by_outcome


def test_demo_world(ledger_env: LedgerEnv, tmp_path: Path) -> None:
    env = ledger_env
    engine = env.ledger.engine
    seen: list[tuple[int, int]] = []
    report = run_demo(
        env.ledger,
        env.registrar,
        prescriptions=200,
        seed=11,
        key_dir=tmp_path / "settlement",
        batch_size=250,
        progress=lambda done, total: seen.append((done, total)),
    )
    check_report(report)
    assert seen[-1] == (200, 200)

    # the settlement keys are on disk for `rxledger serve`, private, and registered
    assert len(report.settlement_key_files) == report.actors["insurers"]
    views = ProjectionReader(engine)
    for name in report.settlement_key_files:
        path = Path(name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        signer = read_key_file(path)
        actor = views.get("actor", signer.name)
        assert actor is not None
        grants = {g["vkey"]: g["purpose"] for g in actor["keys"]}
        assert grants[signer.vkey] == "settlement"

    result = verify_database(engine)
    assert result.size == report.tree_size
    assert replayed_projections(engine) == views.all_rows()

    check_privacy(env)

    verifier = Verifier.from_vkey(env.log_vkey)
    for outcome, claim_id in report.example_claims.items():
        trail = claim_trail(engine, claim_id)
        assert trail["status"] == outcome
        checkpoint = check_trail(trail, log_key=verifier, origin=env.origin)
        assert checkpoint.size == report.tree_size
        assert [s["step"] for s in trail["steps"]][:2] == ["settlement", "claim"]


def comparable(report: DemoReport) -> dict[str, Any]:
    data = report.to_json()
    for varying in ("seconds", "records_per_second", "settlement_key_files"):
        del data[varying]
    return data


def test_demo_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    """Same seed, fresh ledger: the same world and the same outcomes; another seed differs."""
    reports = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        env = make_ledger_env(f"sqlite:///{tmp_path / name}.db", tmp_path / f"keys-{name}")
        try:
            reports.append(run_demo(env.ledger, env.registrar, prescriptions=60, seed=seed))
        finally:
            env.ledger.close()
    assert comparable(reports[0]) == comparable(reports[1])
    assert comparable(reports[0]) != comparable(reports[2])


def test_demo_twice_on_one_ledger(ledger_env: LedgerEnv) -> None:
    """A second run on the same ledger uses fresh ids: nothing collides."""
    first = run_demo(ledger_env.ledger, ledger_env.registrar, prescriptions=30, seed=1)
    second = run_demo(ledger_env.ledger, ledger_env.registrar, prescriptions=30, seed=1)
    assert first.unexpected == second.unexpected == {}
    assert first.run_tag != second.run_tag
    assert second.first_seq == first.tree_size


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(
            main,
            list(args),
            env={
                "RXLEDGER_HOME": str(self.home),
                "RXLEDGER_DATABASE_URL": None,
                "RXLEDGER_LOG_KEY_FILE": None,
                "RXLEDGER_SETTLEMENT_KEY_DIR": None,
            },
            catch_exceptions=False,
        )


def test_cli_demo(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = cli("demo", "--db", url, "--prescriptions", "60", "--seed", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["prescriptions"] == 60
    assert data["unexpected"] == {}
    assert data["records_written"] > 60
    assert set(data["example_claims"]) == set(OUTCOMES)
    keys = tmp_path / "home" / "keys"
    assert (keys / "registrar.skey").is_file()  # the demo initialized the ledger
    assert len(list((keys / "settlement").glob("*.skey"))) == 3

    # the text summary, on the same ledger, names a command that audits a claim
    result = cli("demo", "--db", url, "--prescriptions", "40")
    assert result.exit_code == 0, result.output
    assert "records/s" in result.output
    commands = re.findall(r"rxledger (audit claim \S+ --db \S+)", result.output)
    assert len(commands) == 3
    audited = cli(*commands[0].split())
    assert audited.exit_code == 0, audited.output
    assert "every record is included" in audited.output


def test_cli_demo_needs_the_registrar_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    init_ledger(url, key_dir=tmp_path / "elsewhere")
    result = Cli(tmp_path / "home")("demo", "--db", url, "--prescriptions", "5")
    assert result.exit_code == 2
    assert "registrar.skey does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1

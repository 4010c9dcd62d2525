"""``rxledger demo``: the synthetic world, what it shows, and what it must never leak.

The world runs on SQLite and on PostgreSQL (``ledger_env``). One run of about
200 prescriptions per backend is checked for: every rejection category by
code, all three decision outcomes, a database that verifies, a replay that
gives the projections row for row, no patient identity and no drug name in any
record, and example claims whose audit trails check offline. Its data wallet:
consents of every kind, data uses that deny patients for every reason (the
demo's own model of the consents agrees with the rules on every patient),
proceeds credited in full, every wallet refusal by code, and example wallets
whose after-revocation proof checks offline.
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
from ledger.client import check_after_revocation, check_trail
from ledger.core.note import Verifier
from ledger.core.record import Record
from ledger.demo import CATALOGUE, DENIAL_REASONS, USES, WALLET_REFUSALS, DemoReport, run_demo
from ledger.domain.settlement import OUTCOMES
from ledger.service import claim_trail, init_ledger, read_key_file
from ledger.store.audit import replayed_projections, verify_database
from ledger.store.reader import ProjectionReader
from ledger.store.schema import payloads, records
from ledger.wallet_service import (
    after_revocation,
    patient_balance,
    patient_consents,
    patient_uses,
    released,
)
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
PSEUDONYM = re.compile(r"P-[0-9a-f]{32}")
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


def check_privacy(env: LedgerEnv, report: DemoReport) -> None:
    names = [d.name.lower() for d in CATALOGUE]
    words = [d.name.split()[0].lower() for d in CATALOGUE]
    with env.ledger.engine.connect() as conn:
        stored = [bytes(b) for b in conn.execute(select(records.c.record_bytes)).scalars()]
        sealed = {
            int(row.seq): bytes(row.content)
            for row in conn.execute(select(payloads.c.seq, payloads.c.content))
            if row.content is not None
        }
    # the names do exist, in the payloads the vault opens: the scans below are not vacuous
    opened = [env.ledger.reader.payload(seq) for seq in sealed]
    assert all(p is not None for p in opened)
    clinical = b"".join(p for p in opened if p is not None).lower()
    assert all(w.encode() in clinical for w in words[:5])
    # ... and are not there in clear: the payloads are sealed
    at_rest = b"".join(sealed.values()).lower()
    for name in [*names, *words]:
        assert name.encode() not in at_rest, f"drug name {name!r} in a stored payload"
    # the patients' identities were made, and appear in no record
    assert len(report.identities) == sum(report.patients.values())
    identities = [
        text.encode() for i in report.identities.values() for text in (i.id_number, i.name)
    ]
    for data in stored:
        lowered = data.lower()
        for name in [*names, *words]:
            assert name.encode() not in lowered, f"drug name {name!r} in a record"
        for identity in identities:
            assert identity not in data, "a patient's identity in a record"
        record = Record.from_bytes(data)
        statement = record.fields
        body = statement["body"]
        for path, value in strings(body, "body"):
            if path.endswith((".patient", ".guardian_of[]")):
                assert PSEUDONYM.fullmatch(value), f"patient {value!r} is not a pseudonym"
            assert not ID_LIKE.fullmatch(value), f"{path} = {value!r} looks like an ID number"
            if path.endswith("display_name"):
                assert body["role"] != "patient"
        if body.get("role") == "patient":  # a patient with a wallet: a pseudonym, no name
            assert PSEUDONYM.fullmatch(body["actor"]), body["actor"]
            assert "display_name" not in body
        if statement["type"] == "data.use":  # the cohort is in the payload, off the record
            assert not PSEUDONYM.search(data.decode()), "a data.use record names a patient"


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
    check_wallet_report(report)


def check_wallet_report(report: DemoReport) -> None:
    wallet, accepted = report.wallet, report.accepted_by_type
    for code in WALLET_REFUSALS:
        assert report.refused_by_code.get(code) == 1, f"no wallet statement refused with {code}"
    consents = wallet["consents"]
    assert consents["granted"] == accepted["consent.grant"] == sum(consents["by_profile"].values())
    assert consents["narrowed"] == accepted["consent.narrow"] > 0
    assert consents["revoked"] == accepted["consent.revoke"] > 0
    assert wallet["wards"] >= 1
    uses = wallet["uses"]
    assert uses["recorded"] == accepted["data.use"] == len(USES) + 1
    assert uses["requested"] == uses["permitted"] + uses["denied"]
    # every reason a patient's data is not released shows up (the model agreed: no unexpected)
    assert set(uses["denied_by_reason"]) == set(DENIAL_REASONS)
    for reason, count in uses["denied_by_reason"].items():
        assert count > 0, f"no patient denied for {reason}"
    assert sum(uses["denied_by_reason"].values()) == uses["denied"]
    assert uses["each"][-1]["permitted"] == 0  # the use that permitted no one
    proceeds = wallet["proceeds"]
    assert proceeds["payments"] == accepted["data.proceeds"] > 0
    assert proceeds["paid"] == proceeds["credited"] == sum(u["paid"] for u in uses["each"])
    assert set(wallet["example_wallets"]) == {"revoked", "paid", "guardian"}


def check_wallets(env: LedgerEnv, report: DemoReport) -> None:
    """The recorded uses and the example wallets, through the service's reads."""
    engine = env.ledger.engine
    for use in report.wallet["uses"]["each"]:
        found = released(engine, use["use_id"])
        assert (found["requested_count"], found["permitted_count"], found["paid"]) == (
            use["requested"],
            use["permitted"],
            use["paid"],
        )
        assert len(found["permitted"]) == use["permitted"]
    examples = report.wallet["example_wallets"]

    revoked = examples["revoked"]
    proof = after_revocation(engine, revoked["patient"], revoked["consent_id"])
    verifier = Verifier.from_vkey(env.log_vkey)
    assert check_after_revocation(proof, log_key=verifier, origin=env.origin) == []
    assert {u["use_id"] for u in proof["uses"]} == {
        u["use_id"] for u in report.wallet["uses"]["each"]
    }
    (consent,) = patient_consents(engine, revoked["patient"])["consents"]
    assert consent["revoked_seq"] == proof["revoked_seq"]
    assert not consent["in_force"]

    paid = examples["paid"]["patient"]
    balance = patient_balance(engine, paid)
    assert balance["balance"] == sum(p["amount"] for p in balance["payments"]) > 0
    assert patient_uses(engine, paid)["uses"]

    guardian = examples["guardian"]
    ward = patient_consents(engine, guardian["patient"])["consents"]
    assert ward
    assert all(c["granted_by"] == guardian["guardian"] for c in ward)
    actor = ProjectionReader(engine).get("actor", guardian["guardian"])
    assert actor is not None
    assert actor["guardian_of"] == [guardian["patient"]]


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
        wallet_key_dir=tmp_path / "wallets",
    )
    check_report(report)
    assert seen[-1] == (200, 200)

    # the example patients' keys are on disk for `rxledger wallet`, private
    assert len(report.wallet_key_files) == 3
    for name in report.wallet_key_files:
        path = Path(name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        signer = read_key_file(path)
        assert PSEUDONYM.fullmatch(signer.name)

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

    check_privacy(env, report)
    check_wallets(env, report)

    verifier = Verifier.from_vkey(env.log_vkey)
    for outcome, claim_id in report.example_claims.items():
        trail = claim_trail(engine, claim_id)
        assert trail["status"] == outcome
        checkpoint = check_trail(trail, log_key=verifier, origin=env.origin)
        assert checkpoint.size == report.tree_size
        assert [s["step"] for s in trail["steps"]][:2] == ["settlement", "claim"]


def comparable(report: DemoReport) -> dict[str, Any]:
    data = report.to_json()
    for varying in ("seconds", "records_per_second", "settlement_key_files", "wallet_key_files"):
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
    assert data["wallet"]["uses"]["recorded"] == len(USES) + 1
    assert data["wallet"]["proceeds"]["paid"] == data["wallet"]["proceeds"]["credited"]
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

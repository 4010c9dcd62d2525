"""Who may read what: payload reads behind access control, the access log, pseudonyms.

One world per backend (SQLite and a fresh PostgreSQL database): a patient
with a guardian, a prescription of theirs issued by ``dr-li``, its first fill
dispensed by ``pharmacy-1`` and claimed against ``insurer-a``, a consent and
two data uses (``uni`` for prescriptions, ``pharma`` for dispenses), and
auditors with a grant for the patient, for everyone, an expired, a revoked
and a not-yet-valid one. The table test has every reader try every kind of
payload over HTTP (signed requests) and checks that exactly the allowed reads
succeed, each with exactly one access-log row, and that each refusal is a 403
that reveals nothing of the payload (and is logged with outcome ``4``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from api.app import create_app
from api.errors import PROBLEM_JSON
from api.settings import Settings
from cli.main import main
from ledger.access import read_payload
from ledger.client import LedgerClient, RejectedError
from ledger.core.canonical import parse_json
from ledger.core.errors import RejectionError
from ledger.core.note import Signer
from ledger.core.request_auth import authorization
from ledger.core.statement import format_time, make_statement, now
from ledger.store.reader import ProjectionReader
from ledger.store.schema import access_log
from ledger.store.sequencer import Submission
from tests.conftest import BACKENDS, LedgerEnv
from tests.wallet_world import HMB, WalletWorld, duo
from tests.world import World, accepted, ledger_on

AUDIT_TYPE = {"code": "rest", "system": "http://terminology.hl7.org/CodeSystem/audit-event-type"}


@dataclass
class Access:
    env: LedgerEnv
    world: World
    wallet: WalletWorld
    http: TestClient
    client: LedgerClient
    patient: str
    guardian: str
    other_patient: str
    rx_id: str
    #: payload kind -> seq of its record
    seqs: dict[str, int] = field(default_factory=dict)
    #: payload kind -> what was sealed (the parsed payload)
    contents: dict[str, Any] = field(default_factory=dict)
    #: names used in the table's bases: uni_use, pharma_use, grant_p, grant_all
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        return self.env.ledger.engine

    def signer(self, who: str) -> Signer:
        for group in (
            self.world.prescribers,
            self.world.pharmacies,
            self.world.insurers,
            self.wallet.signers,
        ):
            if who in group:
                return group[who]
        assert who == "registrar", who
        return self.env.registrar

    def request(
        self, who: str, method: str, path: str, *, body: Any = None, **params: Any
    ) -> httpx.Response:
        """A request signed by ``who``, sent as is (no status check)."""
        content = b"" if body is None else json.dumps(body).encode()
        request = self.http.build_request(method, path, params=params or None, content=content)
        target = request.url.raw_path.decode("ascii")
        request.headers["Authorization"] = authorization(
            self.signer(who), method, target, format_time(now()), content
        )
        if body is not None:
            request.headers["Content-Type"] = "application/json"
        return self.http.send(request)

    def sign_registrar(self, kind: str, body: dict[str, Any]) -> None:
        statement = make_statement(self.env.registrar, kind, body, issued_at=self.world.now())
        (outcome,) = self.env.ledger.append([Submission(statement)])
        accepted(outcome)

    def log_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(access_log).order_by(access_log.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def log_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(access_log)).scalar_one())


def _grant(access: Access, grant_id: str, auditor: str, patients: Any, start: int, end: int) -> str:
    t = access.world.now()
    access.sign_registrar(
        "audit.grant",
        {
            "grant_id": grant_id,
            "auditor": auditor,
            "patients": patients,
            "valid_from": format_time(t + timedelta(days=start)),
            "valid_until": format_time(t + timedelta(days=end)),
        },
    )
    return grant_id


def build(env: LedgerEnv, http: TestClient) -> Access:
    world = World.build(env, patients=())
    wallet = WalletWorld.build(env)
    patient = wallet.new_patient()
    guardian = wallet.new_guardian(patient)
    other = wallet.new_patient()
    world.enroll(patient)
    client = LedgerClient(http=http, log_key=env.log_vkey, origin=env.origin)
    access = Access(env, world, wallet, http, client, patient, guardian, other, world.new_id("RX"))

    issue = world.make_issue(access.rx_id, patient=patient, by="dr-li", fills=2)
    access.seqs["rx.issue"] = accepted(world.submit(issue)).seq
    dispense = world.make_dispense(access.rx_id, 1, by="pharmacy-1", insurer="insurer-a")
    access.seqs["rx.dispense"] = accepted(world.submit(dispense)).seq
    accepted(world.claim(world.new_id("C"), access.rx_id, 1, by="pharmacy-1"))
    for kind, submission in (("rx.issue", issue), ("rx.dispense", dispense)):
        assert submission.payload is not None
        access.contents[kind] = parse_json(submission.payload)

    wallet.grant(patient, grantee="class:any", categories=("prescriptions", "dispenses"))
    uni = wallet.make_use("uni", [patient, other], purpose=duo(HMB), categories=("prescriptions",))
    access.seqs["data.use"] = wallet.must(uni).seq
    assert uni.payload is not None
    access.contents["data.use"] = parse_json(uni.payload)
    access.ids["uni_use"] = str(uni.signed.statement.body["use_id"])
    pharma = wallet.make_use("pharma", [patient], purpose=duo(HMB), categories=("dispenses",))
    wallet.must(pharma)
    access.ids["pharma_use"] = str(pharma.signed.statement.body["use_id"])
    assert wallet.permitted("charity", [other]) == []  # a use that permits no-one

    for auditor in ("aud-p", "aud-all", "aud-none", "aud-expired", "aud-revoked", "aud-future"):
        wallet.register(auditor, "auditor")
    access.ids["grant_p"] = _grant(access, "g-p", "aud-p", [patient], -1, 30)
    access.ids["grant_all"] = _grant(access, "g-all", "aud-all", "*", -1, 30)
    _grant(access, "g-other", "aud-none", [other], -1, 30)  # covers someone else only
    _grant(access, "g-expired", "aud-expired", "*", -10, -1)
    _grant(access, "g-revoked", "aud-revoked", "*", -1, 30)
    access.sign_registrar("audit.revoke", {"grant_id": "g-revoked"})
    _grant(access, "g-future", "aud-future", [patient], 1, 30)
    return access


@pytest.fixture(scope="module", params=BACKENDS)
def access(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Access]:
    with ledger_on(request.param, tmp_path_factory.mktemp("access")) as env:
        settings = Settings(database_url=env.url, log_key_file=env.key_dir / "log.skey")
        with TestClient(create_app(env.ledger, settings)) as http:
            yield build(env, http)


# reader -> {payload kind: basis (a template over Access.ids)}; a kind missing is refused
ALLOWED: dict[str, dict[str, str]] = {
    "patient": {"rx.issue": "patient", "rx.dispense": "patient"},
    "guardian": {"rx.issue": "patient", "rx.dispense": "patient"},
    "other-patient": {},
    "dr-li": {"rx.issue": "care", "rx.dispense": "care"},
    "dr-wu": {},
    "pharmacy-1": {"rx.issue": "care", "rx.dispense": "care"},
    "pharmacy-2": {},
    "insurer-a": {"rx.issue": "claim", "rx.dispense": "claim"},
    "insurer-b": {},
    "uni": {"rx.issue": "data-use:{uni_use}", "data.use": "data-use:{uni_use}"},
    "pharma": {"rx.dispense": "data-use:{pharma_use}"},
    "charity": {},
    "aud-p": {"rx.issue": "audit-grant:{grant_p}", "rx.dispense": "audit-grant:{grant_p}"},
    "aud-all": {
        "rx.issue": "audit-grant:{grant_all}",
        "rx.dispense": "audit-grant:{grant_all}",
        "data.use": "audit-grant:{grant_all}",
    },
    "aud-none": {},
    "aud-expired": {},
    "aud-revoked": {},
    "aud-future": {},
    "registrar": {},
}
KINDS = ("rx.issue", "rx.dispense", "data.use")
TABLE = [(reader, kind) for reader in ALLOWED for kind in KINDS]


def actor_id(access: Access, reader: str) -> str:
    return {
        "patient": access.patient,
        "guardian": access.guardian,
        "other-patient": access.other_patient,
    }.get(reader, reader)


def secrets_of(content: Any) -> list[str]:
    """Strings of a payload that must never appear in a refusal."""
    if isinstance(content, dict):
        return [s for v in content.values() for s in secrets_of(v)]
    if isinstance(content, list):
        return [s for v in content for s in secrets_of(v)]
    return [content] if isinstance(content, str) and len(content) >= 3 else []


@pytest.mark.parametrize(("reader", "kind"), TABLE, ids=[f"{r}-{k}" for r, k in TABLE])
def test_who_may_read_what(access: Access, reader: str, kind: str) -> None:
    who = actor_id(access, reader)
    seq = access.seqs[kind]
    owner = None if kind == "data.use" else access.patient
    before = access.log_count()
    response = access.request(who, "GET", f"/v1/payloads/{seq}")
    rows = access.log_rows()
    assert len(rows) == before + 1, "every attempt writes exactly one access-log row"
    row = rows[-1]
    event = json.loads(row["event"])
    assert (row["action"], row["actor"], row["seq"], row["patient"]) == ("R", who, seq, owner)
    assert event["agent"][0]["who"]["identifier"]["value"] == who
    assert event["entity"] == [
        {"what": {"identifier": {"value": f"record/{seq}"}}, "patient": owner}
    ]
    assert event["resourceType"] == "AuditEvent"
    assert event["type"] == AUDIT_TYPE

    expected = ALLOWED[reader].get(kind)
    if expected is None:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        problem = response.json()
        assert problem["type"] == "urn:rxledger:problem:forbidden"
        assert "payload" not in problem
        # (the reader's own id is in the message, and may be in a cohort)
        hidden = [s for s in secrets_of(access.contents[kind]) if s != who]
        leaked = [s for s in hidden if s in response.text]
        assert leaked == [], f"the refusal shows {leaked}"
        assert (row["basis"], event["outcome"]) == ("refused", "4")
        assert not any(s in row["event"] for s in hidden)
        return
    basis = expected.format(**access.ids)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer == {
        "seq": seq,
        "type": kind,
        "patient": owner,
        "basis": basis,
        "payload": access.contents[kind],
    }
    assert (row["basis"], event["outcome"], event["purposeOfEvent"]) == (basis, "0", basis)
    assert event["action"] == "R"
    assert event["recorded"] == row["recorded"]
    if owner is not None:  # the patient sees the read in their access log
        shown = access.client.access_log(access.patient, access.signer(access.patient))
        assert shown["events"][-1] == {"id": row["id"], **event}


def test_the_patients_access_log_is_theirs_alone(access: Access) -> None:
    access.client.read_payload(access.seqs["rx.issue"], access.signer("dr-li"))
    mine = access.client.access_log(access.patient, access.signer(access.patient))
    assert mine["patient"] == access.patient
    assert mine["events"], "the prescriber's read is in the patient's log"
    assert all(e["entity"][0]["patient"] == access.patient for e in mine["events"])
    assert [e["id"] for e in mine["events"]] == sorted(e["id"] for e in mine["events"])
    by_guardian = access.client.access_log(access.patient, access.signer(access.guardian))
    assert by_guardian["events"] == mine["events"]
    # paging: after_id and limit
    first = access.client.access_log(access.patient, access.signer(access.patient), limit=1)
    assert first["events"] == mine["events"][:1]
    assert first["next_after_id"] == mine["events"][0]["id"]
    rest = access.client.access_log(
        access.patient, access.signer(access.patient), after_id=first["next_after_id"]
    )
    assert rest["events"] == mine["events"][1:]
    for stranger in (access.other_patient, "dr-li", "registrar", "aud-all"):
        response = access.request(stranger, "GET", f"/v1/wallet/{access.patient}/access-log")
        assert response.status_code == 403, (stranger, response.text)
        assert response.json()["code"] == "forbidden"
    unsigned = access.http.get(f"/v1/wallet/{access.patient}/access-log")
    assert unsigned.status_code == 401


def test_a_data_use_releases_only_what_was_recorded_before_it(access: Access) -> None:
    """``pharma``'s use of dispenses came before fill 2: fill 2 is not released to it."""
    fill2 = accepted(
        access.world.submit(
            access.world.make_dispense(access.rx_id, 2, by="pharmacy-2", insurer="insurer-a")
        )
    ).seq
    refused = access.request("pharma", "GET", f"/v1/payloads/{fill2}")
    assert refused.status_code == 403
    # pharmacy-2 dispensed a fill of the prescription now: it may read the prescription
    answer = access.client.read_payload(access.seqs["rx.issue"], access.signer("pharmacy-2"))
    assert answer["basis"] == "care"
    assert access.client.read_payload(fill2, access.signer(access.patient))["basis"] == "patient"


def test_a_grant_is_read_in_force_at_the_time_of_the_read(access: Access) -> None:
    auditor = ProjectionReader(access.engine).get("actor", "aud-future")
    assert auditor is not None
    seq = access.seqs["rx.issue"]
    with pytest.raises(RejectionError) as caught:
        read_payload(access.env.ledger, auditor, seq)
    assert caught.value.code == "forbidden"
    later = read_payload(access.env.ledger, auditor, seq, now=now() + timedelta(days=2))
    assert later["basis"] == "audit-grant:g-future"
    with pytest.raises(RejectionError):
        read_payload(access.env.ledger, auditor, seq, now=now() + timedelta(days=31))


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/payloads/0", 404, "not-found"),  # genesis: a record with no payload
        ("/v1/payloads/999999", 404, "not-found"),
        ("/v1/payloads/-1", 400, "malformed"),
        ("/v1/payloads/abc", 400, "malformed"),
        (f"/v1/payloads/{2**63}", 400, "malformed"),
    ],
)
def test_bad_or_unknown_seq_is_a_problem_not_a_crash(
    access: Access, path: str, status: int, code: str
) -> None:
    before = access.log_count()
    response = access.request(access.patient, "GET", path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["code"] == code
    assert access.log_count() == before


def test_unsigned_read_is_401(access: Access) -> None:
    response = access.http.get(f"/v1/payloads/{access.seqs['rx.issue']}")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "RxLedger-Sig"


def test_a_shredded_payload_is_gone_410(access: Access) -> None:
    world, wallet = access.world, access.wallet
    erased = wallet.new_patient()
    rx_id = world.new_id("RX")
    seq = accepted(world.issue(rx_id, patient=erased, by="dr-li")).seq
    assert access.client.read_payload(seq, access.signer(erased))["basis"] == "patient"
    wallet.must(
        Submission(wallet.sign(wallet.signers[erased], "erasure.request", {"patient": erased}))
    )
    access.sign_registrar("erasure.execute", {"patient": erased, "reason": "patient-request"})
    before = access.log_count()
    for reader in (erased, "dr-li"):
        response = access.request(reader, "GET", f"/v1/payloads/{seq}")
        assert response.status_code == 410, response.text
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        assert response.json()["type"] == "urn:rxledger:problem:payload-erased"
    assert access.log_count() == before  # nothing was disclosed
    # a stranger is refused before learning anything about the record
    assert access.request(access.other_patient, "GET", f"/v1/payloads/{seq}").status_code == 403


def test_pseudonym_lookup_is_the_registrars_and_logged_without_the_identifier(
    access: Access,
) -> None:
    identifier = "ID-8812-4471-TEST"
    expected = access.env.ledger.vault.master.pseudonym(identifier)
    before = access.log_count()
    assert access.client.pseudonym(identifier, access.env.registrar) == expected
    rows = access.log_rows()
    assert len(rows) == before + 1
    row = rows[-1]
    event = json.loads(row["event"])
    assert (row["action"], row["actor"], row["role"], row["patient"], row["basis"]) == (
        "E",
        "registrar",
        "registrar",
        expected,
        "pseudonym-lookup",
    )
    assert event["action"] == "E"
    assert event["entity"][0]["patient"] == expected
    everything = json.dumps([{k: str(v) for k, v in r.items()} for r in rows])
    assert identifier not in everything
    assert identifier.lower() not in everything.lower()
    # the patient of that pseudonym sees that it was looked up (not by what)
    access.wallet.register(expected, "patient")
    shown = access.client.access_log(expected, access.signer(expected))
    assert shown["events"] == [{"id": row["id"], **event}]

    for who in (access.patient, "dr-li", "aud-all"):
        response = access.request(
            who, "POST", "/v1/operator/pseudonyms", body={"identifier": identifier}
        )
        assert response.status_code == 403, (who, response.text)
        assert response.json()["code"] == "forbidden"
        assert expected not in response.text
    assert access.log_count() == before + 1
    with pytest.raises(RejectedError) as caught:
        access.client.pseudonym("   ", access.env.registrar)
    assert caught.value.code == "malformed"
    bad = access.request("registrar", "POST", "/v1/operator/pseudonyms", body={"id": "x"})
    assert bad.status_code == 400
    assert access.log_count() == before + 1


def test_pseudonym_cli_prints_and_logs(access: Access, tmp_path: Path) -> None:
    identifier = "cli-4471 8812"
    expected = access.env.ledger.vault.master.pseudonym(identifier)
    runner = CliRunner()
    result = runner.invoke(main, ["pseudonym", identifier])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == expected
    before = access.log_count()
    result = runner.invoke(main, ["pseudonym", identifier, "--db", access.env.url])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == expected
    rows = access.log_rows()
    assert len(rows) == before + 1
    assert (rows[-1]["action"], rows[-1]["patient"], rows[-1]["basis"]) == (
        "E",
        expected,
        "pseudonym-lookup",
    )
    assert "4471" not in json.dumps([{k: str(v) for k, v in r.items()} for r in rows])
    missing = runner.invoke(
        main,
        ["pseudonym", identifier],
        env={"RXLEDGER_MASTER_KEY": "", "RXLEDGER_HOME": str(tmp_path)},
    )
    assert missing.exit_code == 2
    lines = missing.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rxledger: error: no master key")
    assert expected not in missing.output

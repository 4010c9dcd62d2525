"""The prescription and settlement flows through the HTTP API and the ``audit claim`` command.

Every test runs on SQLite and on a fresh PostgreSQL database, on one world per
backend whose statements all go through ``POST /v1/statements`` (the
receipt-checking :class:`LedgerClient` over a ``TestClient``); each test makes
its own patients, prescriptions and claims.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import PROBLEM_JSON
from api.settings import Settings
from cli.main import main
from ledger.client import LedgerClient, RejectedError, VerifiedReceipt, check_trail
from ledger.core.errors import VerificationError
from ledger.core.note import Signer, Verifier
from ledger.service import TRAIL_STEPS
from ledger.store.audit import verify_database
from ledger.store.reader import LedgerReader
from ledger.store.sequencer import Submission
from tests.conftest import BACKENDS
from tests.world import (
    DRUG_A,
    DRUG_B,
    NOT_LISTED,
    World,
    accepted,
    is_accepted,
    item,
    ledger_on,
    line,
    refused,
)


@dataclass
class Api:
    world: World
    http: TestClient
    client: LedgerClient
    log_key: Verifier
    home: Path

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, **params)

    def get_as(self, signer: Signer, path: str, **params: Any) -> Any:
        """A signed read (the clinical views need one)."""
        return self.client.signed("GET", path, signer, **params)

    def status_as(self, signer: Signer, path: str) -> int:
        path, _, query = path.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        try:
            self.client.signed("GET", path, signer, **params)
        except RejectedError as e:
            return e.status
        return 200

    def check(self, trail: dict[str, Any]) -> Any:
        return check_trail(trail, log_key=self.log_key, origin=self.world.env.origin)


@pytest.fixture(scope="module", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    directory = tmp_path_factory.mktemp("flows-api")
    with ledger_on(request.param, directory) as env:
        world = World.build(env)
        settings = Settings(database_url=env.url, log_key_file=env.key_dir / "log.skey")
        with TestClient(create_app(env.ledger, settings)) as http:
            client = LedgerClient(http=http, log_key=env.log_vkey, origin=env.origin)

            def send(submission: Submission) -> VerifiedReceipt | RejectedError:
                try:
                    return client.submit(submission.signed, payload=submission.payload)
                except RejectedError as e:
                    return e

            world.send = send
            yield Api(world, http, client, Verifier.from_vkey(env.log_vkey), directory / "home")


# --- prescriptions --------------------------------------------------------------------


def test_a_prescription_reads_back_with_its_status_items_and_history(api: Api) -> None:
    w, rx_id = api.world, api.world.new_id("RX")
    issued = w.must(w.make_issue(rx_id, items=[item(DRUG_A, 60, 30), item(DRUG_B, 10, 10)]))
    assert isinstance(issued, VerifiedReceipt)  # the client checked it against the checkpoint
    first = w.must(w.make_dispense(rx_id, 1, [line(0, 30), line(1, 10)], claimed=False))
    second = w.must(w.make_dispense(rx_id, 2, [line(0, 30)], by="pharmacy-2", claimed=False))

    view = api.get_as(w.prescribers["dr-li"], f"/v1/prescriptions/{rx_id}")
    assert view["rx_id"] == rx_id
    assert view["status"] == "completed"
    assert [(i["drug_code"], i["quantity"], i["dispensed"]) for i in view["items"]] == [
        (DRUG_A, 60, 60),
        (DRUG_B, 10, 10),
    ]
    assert [h["seq"] for h in view["history"]] == [issued.seq, first.seq, second.seq]
    assert [h["type"] for h in view["history"]] == ["rx.issue", "rx.dispense", "rx.dispense"]
    assert [h["actor"] for h in view["history"]] == ["dr-li", "pharmacy-1", "pharmacy-2"]
    reader = LedgerReader(w.engine)
    assert [h["record_hash"] for h in view["history"]] == [
        reader.record(r.seq).hash.hex() for r in (issued, first, second)
    ]


def test_a_prescription_is_shown_only_to_those_who_may_read_it_and_each_look_is_logged(
    api: Api,
) -> None:
    w, rx_id = api.world, api.world.new_id("RX")
    patient = w.new_patient()
    patient_signer = w.register(patient, "patient")
    w.must(w.make_issue(rx_id, patient=patient))
    path = f"/v1/prescriptions/{rx_id}"
    assert api.http.get(path).status_code == 401  # unsigned
    assert api.status_as(w.prescribers["dr-wu"], path) == 403  # not the prescriber
    assert api.status_as(w.insurers["insurer-b"], path) == 403
    # prescription ids are public: a pharmacy that has not dispensed it may not look
    assert api.status_as(w.pharmacies["pharmacy-2"], path) == 403
    assert api.status_as(patient_signer, path) == 200
    w.must(w.make_dispense(rx_id, 1, by="pharmacy-2", claimed=False))
    assert api.status_as(w.pharmacies["pharmacy-2"], path) == 200  # now it dispensed a fill
    log = api.client.access_log(patient, patient_signer)
    events = [(e["agent"][0]["who"]["identifier"]["value"], e["outcome"]) for e in log["events"]]
    assert events == [
        ("dr-wu", "4"),
        ("insurer-b", "4"),
        ("pharmacy-2", "4"),
        (patient, "0"),
        ("pharmacy-2", "0"),
    ]
    # a patient's list: the patient only (or a guardian, an auditor with a grant)
    listing = f"/v1/patients/{patient}/prescriptions"
    assert api.status_as(patient_signer, listing) == 200
    assert api.status_as(w.prescribers["dr-li"], listing) == 403


def test_a_refused_dispense_is_a_problem_with_its_code(api: Api) -> None:
    w, rx_id = api.world, api.world.new_id("RX")
    w.must(w.make_issue(rx_id, items=[item(quantity=10)]))
    size = w.size()
    problem = refused(w.dispense(rx_id, 1, [line(0, 11)]), "over-quantity")
    assert isinstance(problem, RejectedError)
    assert (problem.status, problem.problem["type"]) == (422, "urn:rxledger:problem:over-quantity")
    assert w.size() == size


def test_a_patients_prescriptions_page_newest_first(api: Api) -> None:
    w = api.world
    patient = w.new_patient()
    signer = w.register(patient, "patient")
    issued = []
    for _ in range(5):
        rx_id = w.new_id("RX")
        w.must(w.make_issue(rx_id, patient=patient))
        issued.append(rx_id)
    w.must(w.make_issue(w.new_id("RX"), patient=w.new_patient()))  # someone else's

    seen, pages, before = [], 0, None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if before is not None:
            params["before_seq"] = before
        page = api.get_as(signer, f"/v1/patients/{patient}/prescriptions", **params)
        pages += 1
        assert len(page["items"]) <= 2
        assert all(rx["patient"] == patient for rx in page["items"])
        seen += [rx["rx_id"] for rx in page["items"]]
        before = page["next_before_seq"]
        if before is None:
            break
    assert seen == issued[::-1]
    assert pages == 3

    # a dispense changes a prescription: it moves to the front
    w.must(w.make_dispense(issued[0], 1, claimed=False))
    first = api.get_as(signer, f"/v1/patients/{patient}/prescriptions", limit=1)
    assert [rx["rx_id"] for rx in first["items"]] == [issued[0]]


# --- claims -------------------------------------------------------------------------------


def test_a_claim_reads_back_with_its_decision(api: Api) -> None:
    w = api.world
    rx_id, claim_id = w.dispensed_and_claimed(lines=[line(0, 30, price=650)])
    claim = api.get(f"/v1/claims/{claim_id}")
    assert (claim["claim_id"], claim["rx_id"], claim["fill_number"]) == (claim_id, rx_id, 1)
    assert claim["status"] == "partially-approved"
    assert claim["decision"]["approved_amount"] == 30 * 500 * 8000 // 10_000
    assert claim["decision"]["seq"] == claim["submitted_seq"] + 1


def test_an_insurers_decisions_filter_by_outcome_and_failed_rule(api: Api) -> None:
    w = api.world
    insurer = w.new_id("ins")
    w.add_insurer(insurer)
    soon, covered, uncovered = (
        w.new_patient(insurers=[insurer]),
        w.new_patient(insurers=[insurer]),
        w.new_patient(insurers=[]),
    )
    _, not_listed = w.dispensed_and_claimed(
        patient=covered, insurer=insurer, items=[item(NOT_LISTED)]
    )
    _, not_covered = w.dispensed_and_claimed(patient=uncovered, insurer=insurer)
    rx_id = w.new_id("RX")
    w.must(w.make_issue(rx_id, patient=soon, items=[item(DRUG_A, 60, 30)], fills=2))
    w.must(w.make_dispense(rx_id, 1, [line(0, 30)], insurer=insurer))
    first = w.new_id("C")
    w.must(w.make_claim(first, rx_id, 1))
    w.travel(days=5)
    w.must(w.make_dispense(rx_id, 2, [line(0, 30)], insurer=insurer))
    too_soon = w.new_id("C")
    w.must(w.make_claim(too_soon, rx_id, 2))

    def ids(**params: Any) -> list[str]:
        page = api.get(f"/v1/insurers/{insurer}/decisions", **params)
        return [c["claim_id"] for c in page["items"]]

    assert ids(outcome="rejected", rule="refill-too-soon") == [too_soon]
    assert ids(rule="not-in-formulary") == [not_listed]
    assert ids(rule="not-covered") == [not_covered]
    assert ids(outcome="approved") == [first]
    assert ids(outcome="rejected") == [too_soon, not_covered, not_listed]
    assert ids(outcome="pending") == []
    assert ids() == [too_soon, first, not_covered, not_listed]
    assert ids(limit=1, before_seq=w.claim_doc(too_soon)["decision"]["seq"]) == [first]
    decision = api.get(f"/v1/claims/{too_soon}")["decision"]
    assert [(r["code"], r["ncpdp"]) for r in decision["rules"] if r["result"] == "fail"] == [
        ("refill-too-soon", "79")
    ]


def test_a_claims_trail_checks_and_leads_back_to_the_prescriber(api: Api) -> None:
    w = api.world
    rx_id, claim_id = w.dispensed_and_claimed()
    trail = api.get(f"/v1/claims/{claim_id}/trail")
    checkpoint = api.check(trail)
    assert checkpoint.size == trail["tree_size"]
    assert [s["step"] for s in trail["steps"]] == list(TRAIL_STEPS)
    assert [s["type"] for s in trail["steps"]] == [
        "settlement.decision",
        "claim.submit",
        "rx.dispense",
        "rx.issue",
        "actor.register",
    ]
    claim, rx = w.claim_doc(claim_id), w.rx(rx_id)
    seqs = {s["step"]: s["seq"] for s in trail["steps"]}
    assert seqs["settlement"] == claim["decision"]["seq"]
    assert seqs["claim"] == claim["submitted_seq"]
    assert seqs["prescription"] == rx["issued_seq"]
    assert trail["status"] == "approved"


def test_a_pending_claims_trail_has_no_settlement_step(api: Api) -> None:
    w = api.world
    _, claim_id = w.dispensed_and_claimed(
        patient=w.new_patient(insurers=["insurer-b"]), insurer="insurer-b"
    )
    trail = api.get(f"/v1/claims/{claim_id}/trail")
    api.check(trail)
    assert trail["status"] == "pending"
    assert trail["decision"] is None
    assert [s["step"] for s in trail["steps"]] == list(TRAIL_STEPS[1:])


def _flip(b64: str, at: int) -> str:
    data = bytearray(base64.b64decode(b64))
    data[at] ^= 0x01
    return base64.b64encode(bytes(data)).decode("ascii")


@pytest.mark.parametrize("step", range(len(TRAIL_STEPS)), ids=list(TRAIL_STEPS))
def test_a_trail_with_one_record_tampered_fails_its_check(api: Api, step: int) -> None:
    w = api.world
    _, claim_id = w.dispensed_and_claimed()
    trail = api.get(f"/v1/claims/{claim_id}/trail")
    tampered = copy.deepcopy(trail)
    tampered["steps"][step]["record_bytes"] = _flip(tampered["steps"][step]["record_bytes"], 40)
    with pytest.raises(VerificationError):
        api.check(tampered)
    # and with its hash made to match, the inclusion proof no longer leads to the root
    rehashed = copy.deepcopy(tampered)
    data = base64.b64decode(rehashed["steps"][step]["record_bytes"])
    rehashed["steps"][step]["record_hash"] = hashlib.sha256(data).hexdigest()
    with pytest.raises(VerificationError):
        api.check(rehashed)


# The three tests below fail today: ``check_trail`` (ledger/client.py) checks
# each record it is given, but not that the trail is complete, that each step
# is a record of the right type, nor that the decision summary it carries (what
# ``rxledger audit claim`` prints as the outcome) is the recorded decision.


def test_a_trail_whose_decision_summary_was_changed_fails_its_check(api: Api) -> None:
    w = api.world
    _, claim_id = w.dispensed_and_claimed(items=[item(NOT_LISTED)])
    trail = api.get(f"/v1/claims/{claim_id}/trail")
    assert trail["status"] == "rejected"
    forged = copy.deepcopy(trail)
    forged["status"] = forged["decision"]["outcome"] = "approved"
    forged["decision"]["approved_amount"] = forged["decision"]["claimed_amount"]
    with pytest.raises(VerificationError):
        api.check(forged)


@pytest.mark.parametrize("left_out", TRAIL_STEPS)
def test_a_trail_with_a_step_left_out_fails_its_check(api: Api, left_out: str) -> None:
    w = api.world
    _, claim_id = w.dispensed_and_claimed()
    trail = api.get(f"/v1/claims/{claim_id}/trail")
    trail["steps"] = [s for s in trail["steps"] if s["step"] != left_out]
    with pytest.raises(VerificationError):
        api.check(trail)


@pytest.mark.parametrize(
    ("step", "passed_off_as"),
    [("claim", "settlement"), ("dispense", "prescription")],
    ids=["the claim record as its settlement", "the dispense record as the prescription"],
)
def test_a_trail_step_that_is_a_record_of_another_type_fails_its_check(
    api: Api, step: str, passed_off_as: str
) -> None:
    w = api.world
    _, claim_id = w.dispensed_and_claimed()
    trail = api.get(f"/v1/claims/{claim_id}/trail")
    real = {s["step"]: s for s in trail["steps"]}
    trail["steps"] = [
        {**real[step], "step": passed_off_as} if s["step"] == passed_off_as else s
        for s in trail["steps"]
        # with the dispense as "prescription", the "prescriber" would be the pharmacy
        if not (passed_off_as == "prescription" and s["step"] == "prescriber-registration")
    ]
    with pytest.raises(VerificationError):
        api.check(trail)


# --- not found and bad ids -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/prescriptions/RX-NOSUCH",
        "/v1/claims/C-NOSUCH",
        "/v1/claims/C-NOSUCH/trail",
    ],
)
def test_an_unknown_id_is_a_404_problem(api: Api, path: str) -> None:
    response = api.http.get(path) if "prescriptions" not in path else None
    if response is None:  # a clinical view: asked by a registered actor
        with pytest.raises(RejectedError) as caught:
            api.get_as(api.world.pharmacies["pharmacy-1"], path)
        problem = caught.value.problem
        assert (problem["status"], problem["code"]) == (404, "not-found")
        assert "NOSUCH" in problem["detail"]
        return
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem = response.json()
    assert (problem["status"], problem["code"]) == (404, "not-found")
    assert "NOSUCH" in problem["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/prescriptions/-RX",
        "/v1/prescriptions/RX%20one",
        "/v1/claims/C!1",
        "/v1/claims/" + "C" * 129 + "/trail",
        "/v1/patients/P~1/prescriptions",
        "/v1/patients/P-1/prescriptions?limit=0",
        "/v1/patients/P-1/prescriptions?before_seq=-1",
        "/v1/insurers/insurer-a/decisions?outcome=maybe",
        "/v1/insurers/insurer-a/decisions?rule=Not%20Covered",
    ],
)
def test_a_bad_id_or_parameter_is_a_400_problem(api: Api, path: str) -> None:
    if "prescriptions" in path:  # a clinical view: asked by a registered actor
        assert api.status_as(api.world.pharmacies["pharmacy-1"], path) == 400
        return
    response = api.http.get(path)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["code"] == "malformed"


def test_ids_with_a_slash_read_back(api: Api) -> None:
    """The id alphabet of statements and routes allows "/" (``RX/2026/001``).

    Fails today: such a prescription and claim are recorded, but no route can
    reach them (a path parameter never matches "/", encoded or not). Either fix
    passes: ids without "/", or routes that take them.
    """
    w = api.world
    rx_id, claim_id = f"RX/2026/{w.new_id('n')}", f"CLM/2026/{w.new_id('n')}"
    issued = w.issue(rx_id)
    if not is_accepted(issued):
        refused(issued, "malformed-body")
        return
    w.must(w.make_dispense(rx_id, 1))
    w.must(w.make_claim(claim_id, rx_id, 1))
    assert (
        api.status_as(w.prescribers["dr-li"], f"/v1/prescriptions/{quote(rx_id, safe='')}") == 200
    )
    for path in (
        f"/v1/claims/{quote(claim_id, safe='')}",
        f"/v1/claims/{quote(claim_id, safe='')}/trail",
    ):
        response = api.http.get(path)
        assert response.status_code == 200, (path, response.text)


# --- rxledger audit claim ---------------------------------------------------------------


def audit(api: Api, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        ["audit", "claim", *args, "--db", api.world.env.url],
        env={"RXLEDGER_HOME": str(api.home), "RXLEDGER_DATABASE_URL": None},
        catch_exceptions=False,
    )


def test_audit_claim_names_every_step_of_the_trail(api: Api) -> None:
    w = api.world
    _, claim_id = w.dispensed_and_claimed(lines=[line(0, 30, price=650)])
    result = audit(api, claim_id)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"claim {claim_id}: partially-approved, approved 12000 of 19500" in out
    assert "partial: unit-price-cap (item 0) -> price-capped" in out
    for step in TRAIL_STEPS:
        assert step in out
    assert "every record is included in the checkpoint" in out


def test_audit_claim_json_is_the_checked_trail(api: Api) -> None:
    w = api.world
    _, claim_id = w.dispensed_and_claimed()
    result = audit(api, claim_id, "--json")
    assert result.exit_code == 0, result.output
    trail = json.loads(result.stdout)
    assert trail["verified"] is True
    assert trail["claim_id"] == claim_id
    assert [s["step"] for s in trail["steps"]] == list(TRAIL_STEPS)
    api.check(trail)


def test_audit_of_an_unknown_claim_exits_2_with_one_line(api: Api) -> None:
    result = audit(api, "C-NOSUCH")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rxledger: error:")
    assert "C-NOSUCH" in lines[0]


def test_flows_submitted_through_the_api_are_in_the_log(api: Api) -> None:
    w = api.world
    _, claim_id = w.dispensed_and_claimed(items=[item(DRUG_A, 30, 30)])
    accepted(w.claim(w.new_id("C"), w.claim_doc(claim_id)["rx_id"], 1))
    assert verify_database(w.engine).size == w.size()

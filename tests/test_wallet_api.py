"""The data wallet through the HTTP API: previews, uses, the patient's views, proofs.

Every test runs on SQLite and on a fresh PostgreSQL database, on one wallet
world per backend whose statements all go through ``POST /v1/statements`` (the
receipt-checking :class:`LedgerClient` over a ``TestClient``) and whose
previews go through ``POST /v1/uses/preview``; each test makes its own patients.
Every wallet route needs a signed request: the table of bad signatures checks
that each is a 401 with ``WWW-Authenticate``, and the table of tampered proofs
that :func:`check_after_revocation` refuses each.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import PROBLEM_JSON
from api.settings import Settings
from ledger.client import LedgerClient, RejectedError, VerifiedReceipt, check_after_revocation
from ledger.core.errors import LedgerError, VerificationError
from ledger.core.note import Signer, Verifier
from ledger.core.request_auth import authorization
from ledger.core.statement import format_time, make_statement, now
from ledger.store.sequencer import Submission
from ledger.wallet_service import preview_use
from tests.conftest import BACKENDS
from tests.wallet_world import DS, GRU, HMB, NCU, POA, WalletWorld, duo
from tests.world import ledger_on, refused


@dataclass
class Api:
    world: WalletWorld
    http: TestClient
    client: LedgerClient
    log_key: Verifier

    def as_(self, who: str, method: str, path: str, **kwargs: Any) -> Any:
        """A request signed by actor ``who``; raises :class:`RejectedError` unless 200."""
        return self.client.signed(method, path, self.world.signers[who], **kwargs)

    def problem(self, who: str, method: str, path: str, **kwargs: Any) -> RejectedError:
        with pytest.raises(RejectedError) as caught:
            self.as_(who, method, path, **kwargs)
        return caught.value

    def check(self, proof: dict[str, Any]) -> list[str]:
        return check_after_revocation(proof, log_key=self.log_key, origin=self.world.env.origin)


@pytest.fixture(scope="module", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with ledger_on(request.param, tmp_path_factory.mktemp("wallet-api")) as env:
        world = WalletWorld.build(env)
        settings = Settings(database_url=env.url, log_key_file=env.key_dir / "log.skey")
        with TestClient(create_app(env.ledger, settings)) as http:
            client = LedgerClient(http=http, log_key=env.log_vkey, origin=env.origin)

            def send(submission: Submission) -> VerifiedReceipt | RejectedError:
                try:
                    return client.submit(submission.signed, payload=submission.payload)
                except RejectedError as e:
                    return e

            def previewer(signer: Signer, body: dict[str, Any]) -> dict[str, Any]:
                return dict(client.signed("POST", "/v1/uses/preview", signer, json_body=body))

            world.send, world.previewer = send, previewer
            yield Api(world, http, client, Verifier.from_vkey(env.log_vkey))


# --- data users ----------------------------------------------------------------------------


def test_a_data_user_previews_submits_and_reads_its_use(api: Api) -> None:
    w = api.world
    plain, non_commercial, none = w.new_patients(3)
    w.grant(plain)
    w.grant(non_commercial, purposes=[duo(HMB), duo(NCU)])
    at = format_time(now())
    request = {
        "use_id": w.new_id("use"),
        "issued_at": at,
        "purpose": duo(DS, disease="E11"),
        "categories": ["prescriptions"],
        "patients": [plain, non_commercial, none],
    }
    shown = api.as_("pharma", "POST", "/v1/uses/preview", json_body=request)
    assert shown["permitted"] == [plain]
    assert shown["denied"] == sorted([non_commercial, none])
    assert shown == preview_use(
        w.engine,
        data_user="pharma",
        use_id=request["use_id"],
        at=at,
        purpose=request["purpose"],
        categories=request["categories"],
        patients=request["patients"],
    )
    # a preview records nothing; the non-profit gets both consenting patients
    assert api.as_("charity", "POST", "/v1/uses/preview", json_body=request)["permitted"] == sorted(
        [plain, non_commercial]
    )

    use = w.make_use(
        "pharma", [plain, non_commercial, none], purpose=duo(DS, disease="E11"), at=now()
    )
    receipt = w.must(use)
    assert isinstance(receipt, VerifiedReceipt)  # checked against the log's checkpoint
    use_id = use.signed.statement.body["use_id"]
    recorded = api.as_("pharma", "GET", f"/v1/uses/{use_id}")
    assert recorded["permitted"] == [plain]
    assert (recorded["requested_count"], recorded["permitted_count"], recorded["denied_count"]) == (
        3,
        1,
        2,
    )
    assert (recorded["data_user"], recorded["seq"]) == ("pharma", receipt.seq)

    for other in ("uni", plain):  # another data user, a patient of the use
        problem = api.problem(other, "GET", f"/v1/uses/{use_id}")
        assert (problem.status, problem.code) == (403, "forbidden")
    missing = api.problem("pharma", "GET", "/v1/uses/use-never-made")
    assert (missing.status, missing.code) == (404, "not-found")


def test_only_a_data_user_previews(api: Api) -> None:
    w = api.world
    patient = w.new_patient()
    body = {
        "use_id": "use-by-a-patient",
        "issued_at": format_time(now()),
        "purpose": duo(HMB),
        "categories": ["prescriptions"],
        "patients": [patient],
    }
    problem = api.problem(patient, "POST", "/v1/uses/preview", json_body=body)
    assert (problem.status, problem.code) == (403, "forbidden")


def test_a_preview_refuses_a_purpose_that_a_use_would_refuse(api: Api) -> None:
    """A modifier is no purpose: ``data.use`` refuses it (malformed-body).

    The preview applies the same rule, so it cannot promise what the use would refuse.
    """
    w = api.world
    patient = w.new_patient()
    w.grant(patient, purposes=[duo(GRU)])
    body = {
        "use_id": w.new_id("use"),
        "issued_at": format_time(now()),
        "purpose": duo(NCU),
        "categories": ["prescriptions"],
        "patients": [patient],
    }
    problem = api.problem("uni", "POST", "/v1/uses/preview", json_body=body)
    assert problem.code == "malformed-body"


def test_a_refused_use_is_a_problem_and_records_nothing(api: Api) -> None:
    w = api.world
    patient = w.new_patient()
    w.grant(patient)
    size = w.size()
    problem = refused(w.submit(w.make_use("uni", [patient], permitted_count=0)), "cohort-mismatch")
    assert isinstance(problem, RejectedError)
    assert (problem.status, problem.problem["type"]) == (
        422,
        "urn:rxledger:problem:cohort-mismatch",
    )
    assert w.size() == size


# --- the patient's views --------------------------------------------------------------------


def test_a_patient_sees_which_consents_are_in_force(api: Api) -> None:
    w = api.world
    patient = w.new_patient()
    t = now()
    in_force = w.grant(patient)
    revoked = w.grant(patient)
    w.revoke(patient, revoked)
    expired = w.grant(patient, valid_from=t - timedelta(days=9), valid_until=t - timedelta(days=1))
    future = w.grant(patient, valid_from=t + timedelta(days=1), valid_until=t + timedelta(days=9))
    narrowed = w.grant(patient, categories=["prescriptions", "claims"])
    w.narrow(patient, narrowed, remove_categories=["claims"])

    view = api.as_(patient, "GET", f"/v1/wallet/{patient}/consents")
    assert view["patient"] == patient
    flags = {c["consent_id"]: c["in_force"] for c in view["consents"]}
    assert flags == {in_force: True, revoked: False, expired: False, future: False, narrowed: True}
    by_id = {c["consent_id"]: c for c in view["consents"]}
    assert by_id[narrowed]["categories"] == ["prescriptions"]
    assert by_id[revoked]["revoked_at"] is not None
    assert all(c["granted_by"] == patient for c in view["consents"])


def test_a_patients_uses_page_newest_first(api: Api) -> None:
    w = api.world
    patient, other = w.new_patients(2)
    w.grant(patient, purposes=[duo(HMB), duo(NCU)])
    w.grant(other)
    mine = [w.use("uni", [patient, other])["use_id"] for _ in range(3)]
    w.use("pharma", [patient, other])  # NCU: the patient is denied, not in their log
    mine += [w.use("charity", [patient])["use_id"] for _ in range(2)]
    w.use("uni", [other])  # someone else's

    seen, seqs, pages, before = [], [], 0, None
    while True:
        page = api.as_(patient, "GET", f"/v1/wallet/{patient}/uses", limit=2, before_seq=before)
        pages += 1
        assert len(page["uses"]) <= 2
        seen += [u["use_id"] for u in page["uses"]]
        seqs += [u["seq"] for u in page["uses"]]
        before = page["next_before_seq"]
        if before is None:
            break
    assert seen == mine[::-1]
    assert seqs == sorted(seqs, reverse=True)
    assert pages == 3
    first = api.as_(patient, "GET", f"/v1/wallet/{patient}/uses")["uses"][0]
    assert (first["data_user"], first["purpose"], first["categories"]) == (
        "charity",
        duo(HMB),
        ["prescriptions"],
    )


def test_a_patient_sees_their_balance_and_every_payment(api: Api) -> None:
    w = api.world
    a, b = w.new_patients(2)
    w.grant(a, share_bp=1000)
    w.grant(b, share_bp=3000)
    first = w.use("uni", [a, b])["use_id"]
    second = w.use("pharma", [a, b])["use_id"]
    w.proceeds("uni", first, 1000, payment_id="pay-a")
    w.proceeds("pharma", second, 401, payment_id="pay-b")

    balance = api.as_(a, "GET", f"/v1/wallet/{a}/balance")
    assert balance["balance"] == 250 + 100
    paid = sorted(
        (p["use_id"], p["payment_id"], p["amount"], p["of_total"]) for p in balance["payments"]
    )
    assert paid == sorted([(first, "pay-a", 250, 1000), (second, "pay-b", 100, 401)])
    assert api.as_(b, "GET", f"/v1/wallet/{b}/balance")["balance"] == 750 + 301
    fresh = w.new_patient()
    assert api.as_(fresh, "GET", f"/v1/wallet/{fresh}/balance") == {
        "patient": fresh,
        "balance": 0,
        "payments": [],
    }


def test_a_guardian_reads_the_wards_wallet_and_no_one_else_does(api: Api) -> None:
    w = api.world
    ward, stranger = w.new_patients(2)
    guardian = w.new_guardian(ward)
    consent = w.grant(ward, by=guardian)
    w.use("uni", [ward])
    w.revoke(ward, consent, by=guardian)
    paths = [
        f"/v1/wallet/{ward}/consents",
        f"/v1/wallet/{ward}/uses",
        f"/v1/wallet/{ward}/balance",
        f"/v1/wallet/{ward}/consents/{consent}/after-revocation",
    ]
    for path in paths:
        assert api.as_(guardian, "GET", path)["patient"] == ward
        assert api.as_(ward, "GET", path)["patient"] == ward
        for intruder in (stranger, "uni"):
            problem = api.problem(intruder, "GET", path)
            assert (problem.status, problem.code) == (403, "forbidden"), path
    # a guardian's wallet is their own: the ward cannot read it
    problem = api.problem(ward, "GET", f"/v1/wallet/{guardian}/consents")
    assert (problem.status, problem.code) == (403, "forbidden")


# --- after a revocation ------------------------------------------------------------------------


@dataclass
class Revoked:
    """Two patients who revoked consent ``c1`` before uses ``u1`` (uni) and ``u2`` (pharma).

    ``out`` had nothing else: no use after the revocation includes them.
    ``kept`` still has ``c2`` (HMB, non-commercial), so ``u1`` includes them and
    ``u2`` (commercial) does not. ``u0`` came before the revocations. Four more
    patients consent to everything, so that both cohorts have other members.
    """

    out: str
    kept: str
    u0: str
    u1: str
    u2: str
    proofs: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def revoked(api: Api) -> Revoked:
    w = api.world
    out, kept = w.new_patients(2)
    w.grant(out, "c1")
    w.grant(kept, "c1")
    w.grant(kept, "c2", purposes=[duo(HMB), duo(NCU)])
    u0 = w.use("uni", [out, kept])["use_id"]
    w.revoke(out, "c1")
    w.revoke(kept, "c1")
    crowd = w.new_patients(4)  # consenting to all: the cohorts have members around ours
    for patient in crowd:
        w.grant(patient)
    u1 = w.use("uni", [out, kept, *crowd, *w.new_patients(1)])["use_id"]
    u2 = w.use("pharma", [out, kept, *crowd])["use_id"]
    proofs = {
        p: api.as_(p, "GET", f"/v1/wallet/{p}/consents/c1/after-revocation") for p in (out, kept)
    }
    return Revoked(out, kept, u0, u1, u2, proofs)


def test_after_revocation_a_patient_proves_no_later_use_included_them(
    api: Api, revoked: Revoked
) -> None:
    proof = revoked.proofs[revoked.out]
    listed = [u["use_id"] for u in proof["uses"]]
    assert revoked.u0 not in listed  # before the revocation
    assert {revoked.u1, revoked.u2} <= set(listed)
    assert proof["included"] == []
    assert api.check(proof) == []
    assert all(u["membership"]["member"] is False for u in proof["uses"])
    assert all(u["seq"] > proof["revoked_seq"] for u in proof["uses"])


def test_after_revocation_a_patient_still_permitted_by_another_consent_is_shown_included(
    api: Api, revoked: Revoked
) -> None:
    proof = revoked.proofs[revoked.kept]
    assert proof["included"] == [revoked.u1]  # u2 is commercial: c2 is non-commercial
    assert api.check(proof) == [revoked.u1]


def test_after_revocation_of_a_consent_in_force_or_unknown_is_a_problem(api: Api) -> None:
    w = api.world
    patient = w.new_patient()
    consent = w.grant(patient)
    problem = api.problem(
        patient, "GET", f"/v1/wallet/{patient}/consents/{consent}/after-revocation"
    )
    assert (problem.status, problem.code) == (422, "consent-not-revoked")
    problem = api.problem(patient, "GET", f"/v1/wallet/{patient}/consents/c-none/after-revocation")
    assert (problem.status, problem.code) == (404, "not-found")


def _use(proof: dict[str, Any], use_id: str) -> dict[str, Any]:
    return next(u for u in proof["uses"] if u["use_id"] == use_id)


def _flip_hex(text: str) -> str:
    data = bytearray(bytes.fromhex(text))
    data[0] ^= 1
    return data.hex()


def _flip_member_value(r: Revoked, p: dict[str, Any]) -> None:
    leaf = _use(p, r.u1)["membership"]["leaf"]
    leaf["value"] = _flip_hex(leaf["value"])


def _flip_neighbour_value(r: Revoked, p: dict[str, Any]) -> None:
    membership = _use(p, r.u2)["membership"]
    leaf = membership["left"] or membership["right"]
    leaf["value"] = _flip_hex(leaf["value"])


def _flip_membership_hash(r: Revoked, p: dict[str, Any]) -> None:
    membership = _use(p, r.u1)["membership"]
    membership["leaf"]["proof"][0] = _flip_hex(membership["leaf"]["proof"][0])


def _drop_membership(r: Revoked, p: dict[str, Any]) -> None:
    del _use(p, r.u1)["membership"]


def _drop_non_membership(r: Revoked, p: dict[str, Any]) -> None:
    del _use(p, r.u2)["membership"]


def _hide_inclusion(r: Revoked, p: dict[str, Any]) -> None:
    p["included"] = []


def _invent_inclusion(r: Revoked, p: dict[str, Any]) -> None:
    p["included"] = [r.u1, r.u2]


def _non_member_as_member(r: Revoked, p: dict[str, Any]) -> None:
    membership = _use(p, r.u2)["membership"]
    neighbour = membership["left"] or membership["right"]
    _use(p, r.u2)["membership"] = {"member": True, "leaf": neighbour}


def _member_as_non_member(r: Revoked, p: dict[str, Any]) -> None:
    _use(p, r.u1)["membership"] = {"member": False, "left": None, "right": None}
    p["included"] = []


def _flip_record_byte(r: Revoked, p: dict[str, Any]) -> None:
    use = _use(p, r.u1)
    data = bytearray(base64.b64decode(use["record_bytes"]))
    data[len(data) // 2] ^= 1
    use["record_bytes"] = base64.b64encode(bytes(data)).decode("ascii")


def _flip_inclusion_hash(r: Revoked, p: dict[str, Any]) -> None:
    use = _use(p, r.u1)
    use["inclusion_proof"][0] = _flip_hex(use["inclusion_proof"][0])


def _swap_records(r: Revoked, p: dict[str, Any]) -> None:
    first, second = _use(p, r.u1), _use(p, r.u2)
    first["record_bytes"], second["record_bytes"] = second["record_bytes"], first["record_bytes"]


def _revocation_moved_after_a_use(r: Revoked, p: dict[str, Any]) -> None:
    p["revoked_seq"] = _use(p, r.u1)["seq"]


def _checkpoint_signature_flipped(r: Revoked, p: dict[str, Any]) -> None:
    lines = p["checkpoint"].split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("\u2014 "))
    name, signature = lines[at].rsplit(" ", 1)
    raw = bytearray(base64.b64decode(signature))
    raw[-1] ^= 1
    lines[at] = f"{name} {base64.b64encode(bytes(raw)).decode('ascii')}"
    p["checkpoint"] = "\n".join(lines)


TAMPERED: list[tuple[str, Callable[[Revoked, dict[str, Any]], None]]] = [
    ("flip a bit of the patient's membership value", _flip_member_value),
    ("flip a bit of a neighbour's value", _flip_neighbour_value),
    ("flip a bit of a membership proof hash", _flip_membership_hash),
    ("drop a use's membership", _drop_membership),
    ("drop a use's non-membership", _drop_non_membership),
    ("change included: hide an inclusion", _hide_inclusion),
    ("change included: invent an inclusion", _invent_inclusion),
    ("a neighbour presented as the patient's own leaf", _non_member_as_member),
    ("a member presented as a non-member", _member_as_non_member),
    ("flip a byte of a use's record", _flip_record_byte),
    ("flip a bit of a record's inclusion proof", _flip_inclusion_hash),
    ("swap the records of two uses", _swap_records),
    ("move the revocation after a use", _revocation_moved_after_a_use),
    ("a checkpoint whose signature does not verify", _checkpoint_signature_flipped),
]


@pytest.mark.parametrize("tamper", [t for _, t in TAMPERED], ids=[i for i, _ in TAMPERED])
def test_a_tampered_proof_after_revocation_is_refused(
    api: Api, revoked: Revoked, tamper: Callable[[Revoked, dict[str, Any]], None]
) -> None:
    proof = copy.deepcopy(revoked.proofs[revoked.kept])
    assert api.check(proof) == [revoked.u1]
    tamper(revoked, proof)
    with pytest.raises(LedgerError) as caught:
        api.check(proof)
    # proof and record failures are verification errors; a mangled record may fail to parse
    assert isinstance(caught.value, VerificationError) or tamper is _flip_record_byte


# --- signed requests: who is asking --------------------------------------------------------------
#
# Each case returns the request to send (method, path, headers, body); every one
# is a 401 with WWW-Authenticate, whatever the route.


@dataclass
class Raw:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


def _signed(
    signer: Signer,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    time: str | None = None,
    sign_path: str | None = None,
    sign_body: bytes | None = None,
) -> Raw:
    header = authorization(
        signer,
        method,
        sign_path or path,
        time or format_time(now()),
        body if sign_body is None else sign_body,
    )
    headers = {"Authorization": header}
    if body:
        headers["Content-Type"] = "application/json"
    return Raw(method, path, headers, body)


def _wallet(w: WalletWorld) -> tuple[str, Signer, str]:
    patient = w.new_patient()
    return patient, w.signers[patient], f"/v1/wallet/{patient}/consents"


def _unsigned(w: WalletWorld) -> Raw:
    _, _, path = _wallet(w)
    return Raw("GET", path, {})


def _tampered_signature(w: WalletWorld) -> Raw:
    _, signer, path = _wallet(w)
    raw = _signed(signer, "GET", path)
    head, signature = raw.headers["Authorization"].rsplit('signature="', 1)
    sig = bytearray(base64.b64decode(signature.rstrip('"')))
    sig[5] ^= 1
    raw.headers["Authorization"] = f'{head}signature="{base64.b64encode(bytes(sig)).decode()}"'
    return raw


def _stale(w: WalletWorld) -> Raw:
    _, signer, path = _wallet(w)
    return _signed(signer, "GET", path, time=format_time(now() - timedelta(minutes=6)))


def _from_the_future(w: WalletWorld) -> Raw:
    _, signer, path = _wallet(w)
    return _signed(signer, "GET", path, time=format_time(now() + timedelta(minutes=6)))


def _unregistered_key(w: WalletWorld) -> Raw:
    patient, _, path = _wallet(w)
    return _signed(Signer.generate(patient), "GET", path)


def _revoked_key(w: WalletWorld) -> Raw:
    patient, signer, path = _wallet(w)
    body = {"actor": patient, "reason": "lost-device"}
    w.must(Submission(make_statement(w.env.registrar, "actor.revoke", body)))
    return _signed(signer, "GET", path)


def _body_changed(w: WalletWorld) -> Raw:
    request = {
        "use_id": "use-1",
        "issued_at": format_time(now()),
        "purpose": duo(HMB),
        "categories": ["prescriptions"],
        "patients": ["P-1"],
    }
    signed = json.dumps(request).encode()
    changed = json.dumps({**request, "purpose": duo(POA)}).encode()
    return _signed(w.signers["uni"], "POST", "/v1/uses/preview", body=changed, sign_body=signed)


def _signed_for_another_path(w: WalletWorld) -> Raw:
    patient, signer, path = _wallet(w)
    return _signed(signer, "GET", f"/v1/wallet/{patient}/balance", sign_path=path)


def _signed_for_another_query(w: WalletWorld) -> Raw:
    patient, signer, _ = _wallet(w)
    path = f"/v1/wallet/{patient}/uses"
    return _signed(signer, "GET", f"{path}?limit=500", sign_path=f"{path}?limit=2")


def _actor_not_the_keys(w: WalletWorld) -> Raw:
    patient, signer, path = _wallet(w)
    raw = _signed(signer, "GET", path)
    raw.headers["Authorization"] = raw.headers["Authorization"].replace(
        f'actor="{patient}"', 'actor="uni"'
    )
    return raw


def _another_scheme(w: WalletWorld) -> Raw:
    _, _, path = _wallet(w)
    return Raw("GET", path, {"Authorization": "Bearer secret-token"})


def _missing_time(w: WalletWorld) -> Raw:
    _, signer, path = _wallet(w)
    raw = _signed(signer, "GET", path)
    raw.headers["Authorization"] = re.sub(r' time="[^"]*",', "", raw.headers["Authorization"])
    assert "time=" not in raw.headers["Authorization"]
    return raw


UNAUTHENTICATED: list[tuple[str, Callable[[WalletWorld], Raw]]] = [
    ("unsigned", _unsigned),
    ("tampered signature", _tampered_signature),
    ("stale time (6 minutes ago)", _stale),
    ("time 6 minutes ahead", _from_the_future),
    ("unregistered key under the patient's name", _unregistered_key),
    ("revoked key", _revoked_key),
    ("body changed after signing", _body_changed),
    ("signed for another path", _signed_for_another_path),
    ("signed for another query", _signed_for_another_query),
    ("actor other than the key's", _actor_not_the_keys),
    ("another scheme", _another_scheme),
    ("no time", _missing_time),
]


@pytest.mark.parametrize(
    "make", [m for _, m in UNAUTHENTICATED], ids=[i for i, _ in UNAUTHENTICATED]
)
def test_a_request_not_signed_by_a_registered_key_now_is_401(
    api: Api, make: Callable[[WalletWorld], Raw]
) -> None:
    raw = make(api.world)
    response = api.http.request(raw.method, raw.path, headers=raw.headers, content=raw.body)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "RxLedger-Sig"
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["code"] == "unauthenticated"


def test_the_same_request_correctly_signed_is_200(api: Api) -> None:
    patient, signer, path = _wallet(api.world)
    raw = _signed(signer, "GET", path)
    response = api.http.request(raw.method, raw.path, headers=raw.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"patient": patient, "consents": []}

"""The HTTP API: bad input of every kind is refused clearly and changes nothing;
good input is acknowledged with receipts that check; reads give verifiable data.

Every test runs on SQLite and on a fresh PostgreSQL database. Tests that
write get their own ledger (``ledger_env``); the bad-input table and the reads
share one ledger per backend (``shared``): each bad-input case checks by a
snapshot that it changed nothing, and the reads do not depend on its size.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import PROBLEM_JSON, TYPE_PREFIX
from api.settings import Settings
from ledger.client import LedgerClient, RejectedError, VerifiedReceipt, check_receipt
from ledger.core import merkle
from ledger.core.canonical import canonicalize
from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.errors import LedgerError, RootMismatchError, VerificationError
from ledger.core.note import Signer, Verifier
from ledger.core.statement import SignedStatement, format_time, make_statement, new_nonce
from ledger.store.audit import verify_database
from ledger.store.sequencer import MAX_BATCH
from tests.conftest import (
    BACKENDS,
    LedgerEnv,
    create_postgres_database,
    drop_postgres_database,
    make_ledger_env,
)
from tests.helpers import attest, register, snapshot

PATIENT = "pat-1"


@dataclass
class Api:
    """An app over ``env.ledger``, a raw test client and a receipt-checking client."""

    env: LedgerEnv
    http: TestClient
    client: LedgerClient
    patient: Signer
    log_key: Verifier = field(init=False)

    def __post_init__(self) -> None:
        self.log_key = Verifier.from_vkey(self.env.log_vkey)

    def post(self, body: bytes | dict[str, Any]) -> Any:
        if isinstance(body, bytes):
            return self.http.post(
                "/v1/statements", content=body, headers={"Content-Type": "application/json"}
            )
        return self.http.post("/v1/statements", json=body)

    def check(self, receipt: dict[str, Any], signed: SignedStatement) -> VerifiedReceipt:
        return check_receipt(receipt, signed, log_key=self.log_key, origin=self.env.origin)

    def size(self) -> int:
        return self.env.ledger.reader.head().size

    def open(self, note: str) -> Checkpoint:
        checkpoint, _ = open_checkpoint(note, origin=self.env.origin, verifier=self.log_key)
        return checkpoint


def make_api(env: LedgerEnv, patient: Signer, **limits: int) -> Api:
    settings = Settings(database_url=env.url, log_key_file=env.key_dir / "log.skey", **limits)
    http = TestClient(create_app(env.ledger, settings))
    client = LedgerClient(http=http, log_key=env.log_vkey, origin=env.origin)
    return Api(env=env, http=http, client=client, patient=patient)


@pytest.fixture
def api(ledger_env: LedgerEnv) -> Iterator[Api]:
    patient = register(ledger_env, PATIENT, "patient")
    made = make_api(ledger_env, patient)
    try:
        yield made
    finally:
        made.http.close()


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """One ledger per backend for the tests that must not change it (bad input, reads).

    Each of those tests checks on its own that it changed nothing, so they can
    share a ledger; it holds checkpoints at sizes 0, 1, 2, 3, 6 and 8.
    """
    postgres = request.param == "postgres"
    url = (
        create_postgres_database()
        if postgres
        else f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'ledger.db'}"
    )
    try:
        env = make_ledger_env(url, tmp_path_factory.mktemp("api-keys"))
        made = make_api(env, register(env, PATIENT, "patient"))
        _grow(made, [1, 3, 2])
        try:
            yield made
        finally:
            made.http.close()
            env.ledger.close()
    finally:
        if postgres:
            drop_postgres_database(url)


def _grow(api: Api, batches: list[int]) -> None:
    for count in batches:
        results = api.client.submit_batch([attest(api.patient) for _ in range(count)])
        assert all(isinstance(r, VerifiedReceipt) for r in results), results


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_signed(signer: Signer, statement: dict[str, Any]) -> dict[str, Any]:
    """Sign an arbitrary statement mapping (bypassing make_statement's checks)."""
    return {"statement": statement, "signature": b64(signer.sign(canonicalize(statement)))}


def statement_fields(signer: Signer, **override: Any) -> dict[str, Any]:
    fields = {
        "type": "doc.attest",
        "actor": signer.name,
        "key": signer.vkey,
        "issued_at": format_time(datetime.now(UTC)),
        "nonce": new_nonce(),
        "body": {"digest": sha256_hex(b"document")},
    }
    fields.update(override)
    return fields


def problem_of(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    return body


# --- bad input: one table ---------------------------------------------------


def _with_payload(signed: SignedStatement, payload: bytes) -> dict[str, Any]:
    return {**signed.to_json(), "payload": b64(payload)}


def _replayed_nonce(api: Api) -> dict[str, Any]:
    nonce = new_nonce()
    api.client.submit(attest(api.patient, nonce=nonce))  # setup: the nonce is now used
    return attest(api.patient, nonce=nonce).to_json()


def _mallory_claims_patient(api: Api) -> dict[str, Any]:
    mallory = Signer.generate("mallory")
    return raw_signed(mallory, statement_fields(api.patient, key=mallory.vkey))


def _signed_by_another_key(api: Api) -> dict[str, Any]:
    signed = attest(api.patient)
    other = Signer.generate(PATIENT)
    return {**signed.to_json(), "signature": b64(other.sign(signed.signed_bytes))}


def _oversize_body(api: Api) -> dict[str, Any]:
    body = attest(api.patient).to_json()
    body["statement"]["body"]["pad"] = "x" * 3000
    return body


def _too_large_statement(api: Api) -> dict[str, Any]:
    signed = make_statement(
        api.patient, "doc.attest", {"digest": sha256_hex(b"d"), "pad": "x" * 2000}
    )
    return signed.to_json()


def _patient_registers(api: Api) -> dict[str, Any]:
    newcomer = Signer.generate("newcomer")
    return make_statement(
        api.patient,
        "actor.register",
        {"actor": "newcomer", "role": "pharmacy", "key": newcomer.vkey},
    ).to_json()


def _batch_of(count: int) -> Callable[[Api], dict[str, Any]]:
    def build(api: Api) -> dict[str, Any]:
        item = attest(api.patient).to_json()
        return {"statements": [item] * count}

    return build


def _duplicate_key(api: Api) -> bytes:
    good = attest(api.patient).to_json()
    text = json.dumps(good)
    # the same member twice: a valid signature first, a forged one second
    return text.replace(
        '"signature":', f'"signature": "{b64(bytes(64))}", "signature":', 1
    ).encode()


def _float_in_body(api: Api) -> bytes:
    fields = statement_fields(api.patient)
    signed = raw_signed(api.patient, {**fields, "body": {**fields["body"], "n": 1}})
    return json.dumps(signed).replace('"n": 1', '"n": 1.5').encode()


def _skewed(minutes: int) -> Callable[[Api], dict[str, Any]]:
    def build(api: Api) -> dict[str, Any]:
        when = datetime.now(UTC) + timedelta(minutes=minutes)
        return attest(api.patient, issued_at=when).to_json()

    return build


def _digest_mismatch(api: Api) -> dict[str, Any]:
    body = {"digest": sha256_hex(b"doc"), "payload_digest": sha256_hex(b"other payload")}
    signed = make_statement(api.patient, "doc.attest", body)
    return _with_payload(signed, b"the payload")


def _payload_without_digest(api: Api) -> dict[str, Any]:
    return _with_payload(attest(api.patient), b"the payload")


def _digest_without_payload(api: Api) -> dict[str, Any]:
    body = {"digest": sha256_hex(b"doc"), "payload_digest": sha256_hex(b"the payload")}
    return make_statement(api.patient, "doc.attest", body).to_json()


@dataclass(frozen=True)
class BadInput:
    build: Callable[[Api], bytes | dict[str, Any]]
    status: int
    code: str
    limits: dict[str, int] = field(default_factory=dict)
    #: a word the problem's detail must contain, so that the right check refused it
    mentions: str = ""


SMALL_BODY = {"max_body_bytes": 2048}
SMALL_STATEMENT = {"max_statement_bytes": 1024}

BAD_INPUT = [
    pytest.param(
        BadInput(lambda api: b'{"statement": {', 400, "malformed", mentions="invalid JSON"),
        id="malformed json",
    ),
    pytest.param(
        BadInput(
            lambda api: [attest(api.patient).to_json()],
            400,
            "malformed",
            mentions="expected a JSON object",
        ),
        id="json array instead of object",
    ),
    pytest.param(
        BadInput(
            lambda api: raw_signed(
                api.patient,
                {k: v for k, v in statement_fields(api.patient).items() if k != "nonce"},
            ),
            400,
            "malformed",
            mentions="nonce",
        ),
        id="statement missing nonce",
    ),
    pytest.param(
        BadInput(
            lambda api: raw_signed(
                api.patient, statement_fields(api.patient, issued_at=1767225600)
            ),
            400,
            "malformed",
            mentions="issued_at",
        ),
        id="issued_at wrong type",
    ),
    pytest.param(
        BadInput(
            lambda api: {**attest(api.patient).to_json(), "extra": 1},
            400,
            "malformed",
            mentions="extra",
        ),
        id="unknown top-level field",
    ),
    pytest.param(BadInput(_float_in_body, 400, "malformed", mentions="1.5"), id="float in body"),
    pytest.param(
        BadInput(_duplicate_key, 400, "malformed", mentions="duplicate"), id="duplicate key in json"
    ),
    pytest.param(
        BadInput(
            lambda api: {**attest(api.patient).to_json(), "signature": "not*base64!"},
            400,
            "malformed",
            mentions="base64",
        ),
        id="signature not base64",
    ),
    pytest.param(
        BadInput(
            lambda api: {**attest(api.patient).to_json(), "signature": b64(bytes(32))},
            400,
            "malformed",
            mentions="64 bytes",
        ),
        id="signature wrong length",
    ),
    pytest.param(
        BadInput(_signed_by_another_key, 403, "bad-signature", mentions="signature"),
        id="bad signature",
    ),
    pytest.param(
        BadInput(_mallory_claims_patient, 400, "malformed", mentions="mallory"),
        id="key name is not the actor",
    ),
    pytest.param(
        BadInput(
            lambda api: attest(Signer.generate("stranger")).to_json(),
            403,
            "unknown-actor",
            mentions="stranger",
        ),
        id="unknown actor",
    ),
    pytest.param(
        BadInput(
            lambda api: attest(Signer.generate(PATIENT)).to_json(),
            403,
            "unknown-key",
            mentions="not registered",
        ),
        id="unknown key for known actor",
    ),
    pytest.param(
        BadInput(_patient_registers, 403, "wrong-role", mentions="patient"), id="wrong role"
    ),
    pytest.param(
        BadInput(_replayed_nonce, 409, "replayed-nonce", mentions="nonce"), id="replayed nonce"
    ),
    pytest.param(
        BadInput(_oversize_body, 413, "too-large", SMALL_BODY, mentions="2048"), id="oversize body"
    ),
    pytest.param(
        BadInput(_too_large_statement, 413, "too-large", SMALL_STATEMENT, mentions="1024"),
        id="statement too large",
    ),
    pytest.param(
        BadInput(_skewed(+10), 422, "clock-skew", mentions="ahead"), id="clock skew ahead"
    ),
    pytest.param(
        BadInput(_skewed(-10), 422, "clock-skew", mentions="behind"), id="clock skew behind"
    ),
    pytest.param(
        BadInput(_digest_mismatch, 422, "payload-mismatch", mentions="payload_digest"),
        id="payload digest mismatch",
    ),
    pytest.param(
        BadInput(_payload_without_digest, 422, "payload-not-committed", mentions="payload"),
        id="payload without digest",
    ),
    pytest.param(
        BadInput(_digest_without_payload, 422, "payload-missing", mentions="payload"),
        id="digest without payload",
    ),
    pytest.param(
        BadInput(
            lambda api: make_statement(
                api.patient, "rx.teleport", {"digest": sha256_hex(b"d")}
            ).to_json(),
            422,
            "unknown-type",
            mentions="rx.teleport",
        ),
        id="unknown statement type",
    ),
    pytest.param(
        BadInput(_batch_of(MAX_BATCH + 1), 413, "batch-too-large", mentions="1001"),
        id="batch too large",
    ),
    pytest.param(
        BadInput(lambda api: {"statements": []}, 400, "malformed", mentions="statements"),
        id="empty batch",
    ),
    pytest.param(
        BadInput(
            lambda api: {"statements": [attest(api.patient).to_json()], "atomic": "yes"},
            400,
            "malformed",
            mentions="atomic",
        ),
        id="atomic not a bool",
    ),
    # a few more of the same kind
    pytest.param(
        BadInput(lambda api: b'{"statement": "\xff"}', 400, "malformed", mentions="UTF-8"),
        id="body not utf-8",
    ),
    pytest.param(
        BadInput(
            lambda api: {**attest(api.patient).to_json(), "payload": "%%%"},
            400,
            "malformed",
            mentions="payload",
        ),
        id="payload not base64",
    ),
    pytest.param(
        BadInput(
            lambda api: make_statement(api.patient, "doc.attest", {"digest": "ABC"}).to_json(),
            422,
            "malformed-body",
            mentions="digest",
        ),
        id="attested digest not hex",
    ),
    pytest.param(
        BadInput(
            lambda api: {"statements": [attest(api.patient).to_json()], "extra": True},
            400,
            "malformed",
            mentions="extra",
        ),
        id="unknown field beside a batch",
    ),
]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_refused_and_changes_nothing(shared: Api, case: BadInput) -> None:
    api = make_api(shared.env, shared.patient, **case.limits)
    engine = api.env.ledger.engine
    body = case.build(api)  # may do its own setup (e.g. use a nonce) before the snapshot
    before = snapshot(engine)

    response = api.post(body)

    assert 400 <= response.status_code < 500, response.text
    assert response.status_code == case.status, response.text
    problem = problem_of(response)
    assert problem["type"] == TYPE_PREFIX + case.code, problem
    assert problem["code"] == case.code
    assert problem["status"] == case.status
    assert isinstance(problem["detail"], str)
    assert problem["detail"].strip()
    assert case.mentions in problem["detail"], problem["detail"]
    assert problem["title"]
    assert snapshot(engine) == before


def test_oversize_body_without_content_length_is_refused(shared: Api) -> None:
    api = make_api(shared.env, shared.patient, max_body_bytes=2048)
    data = json.dumps(_oversize_body(api)).encode()
    before = snapshot(api.env.ledger.engine)

    # a generator body is sent chunked, with no Content-Length to check up front
    response = api.http.post(
        "/v1/statements",
        content=(data[i : i + 512] for i in range(0, len(data), 512)),
        headers={"Content-Type": "application/json"},
    )

    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert problem_of(response)["code"] == "too-large"
    assert snapshot(api.env.ledger.engine) == before


@pytest.mark.parametrize("path", ["/v1/operator/pseudonyms", "/v1/uses/preview"])
@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_signed_route_refuses_an_oversize_body_before_reading_it_all(
    shared: Api, path: str, chunked: bool
) -> None:
    """RXLEDGER_MAX_BODY_BYTES bounds every route: the request-signature check
    does not read (and hash) a body of any size first. A bogus signature: the
    body's size is refused before anyone is authenticated."""
    api = make_api(shared.env, shared.patient, max_body_bytes=2048)
    data = b"x" * 100_000

    def body() -> Iterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    header = (
        f'RxLedger-Sig actor="registrar", key="{shared.env.registrar.vkey}", '
        f'time="{format_time(datetime.now(UTC))}", signature="{"A" * 86}=="'
    )
    headers = {"Content-Type": "application/json", "Authorization": header}
    if chunked:
        response = api.http.post(path, content=body(), headers=headers)
        assert "content-length" not in response.request.headers
    else:
        response = api.http.post(path, content=data, headers=headers)

    assert response.status_code == 413, response.text
    assert problem_of(response)["code"] == "too-large"


# --- happy paths --------------------------------------------------------------


def test_single_submit_is_acknowledged_with_a_receipt_that_checks(api: Api) -> None:
    size = api.size()
    signed = attest(api.patient)

    response = api.post(signed.to_json())

    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    receipt = response.json()
    checked = api.check(receipt, signed)
    assert checked.seq == size
    assert not checked.duplicate
    assert checked.checkpoint.size == size + 1
    assert api.size() == size + 1
    stored = api.env.ledger.reader.record(size)
    assert stored.hash == checked.record_hash
    assert stored.statement_bytes == signed.signed_bytes
    # the client does the same checks on its own
    assert api.client.submit(attest(api.patient)).seq == size + 1
    verify_database(api.env.ledger.engine)


def test_a_receipt_for_another_statement_does_not_check(api: Api) -> None:
    signed = attest(api.patient)
    receipt = api.post(signed.to_json()).json()

    with pytest.raises(VerificationError, match="record_hash"):
        api.check(receipt, attest(api.patient))


def test_identical_resubmit_is_a_duplicate_with_the_same_seq(api: Api) -> None:
    signed = attest(api.patient)
    first = api.post(signed.to_json())
    assert first.status_code == 201
    size = api.size()

    again = api.post(signed.to_json())

    assert again.status_code == 200, again.text
    body = again.json()
    assert body["duplicate"] is True
    assert body["seq"] == first.json()["seq"]
    assert body["record_hash"] == first.json()["record_hash"]
    assert api.check(body, signed).duplicate
    assert api.size() == size
    assert api.client.submit(signed).duplicate
    assert api.size() == size


def test_identical_resubmit_after_the_skew_window_is_still_a_duplicate(api: Api) -> None:
    """An idempotent retry must not be told "clock-skew" for a statement that is recorded.

    BUG (ledger/store/sequencer.py, ``append``/``precheck``): the clock-skew check
    runs before the lookup of identical stored statements, so a client that lost
    the first answer and retries more than 5 minutes later gets 422 clock-skew,
    reads it as "not recorded", and may re-sign the fact with a new nonce: the
    fact is then recorded twice.
    """
    signed = attest(api.patient)
    first = api.post(signed.to_json())
    assert first.status_code == 201, first.text
    size = api.size()
    later = datetime.now(UTC) + timedelta(minutes=10)
    api.env.ledger.sequencer.clock = lambda: later

    again = api.post(signed.to_json())

    assert api.size() == size
    assert again.status_code == 200, (
        f"an identical retry of recorded seq {first.json()['seq']} after 10 minutes "
        f"should be a duplicate, got {again.status_code}: {again.text}"
    )
    assert again.json()["duplicate"] is True
    assert again.json()["seq"] == first.json()["seq"]


def test_batch_with_good_and_bad_items_records_the_good_in_order(api: Api) -> None:
    size = api.size()
    good = [attest(api.patient) for _ in range(3)]
    stranger = attest(Signer.generate("stranger"))
    short_signature = {**attest(api.patient).to_json(), "signature": b64(bytes(10))}
    items = [
        good[0].to_json(),
        stranger.to_json(),
        good[1].to_json(),
        short_signature,
        good[2].to_json(),
    ]

    response = api.post({"statements": items})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (3, 2)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "rejected", "accepted", "rejected", "accepted"]
    assert body["results"][1]["problem"]["code"] == "unknown-actor"
    assert body["results"][1]["problem"]["status"] == 403
    assert body["results"][3]["problem"]["code"] == "malformed"
    assert "statements[3]" in body["results"][3]["problem"]["detail"]
    receipts = [body["results"][i]["receipt"] for i in (0, 2, 4)]
    assert [r["seq"] for r in receipts] == [size, size + 1, size + 2]
    for receipt, signed in zip(receipts, good, strict=True):
        api.check(receipt, signed)
    assert api.size() == size + 3
    stored = [api.env.ledger.reader.record(size + i) for i in range(3)]
    assert [r.statement_bytes for r in stored] == [s.signed_bytes for s in good]


def test_atomic_batch_with_one_refused_statement_records_nothing(api: Api) -> None:
    before = snapshot(api.env.ledger.engine)
    items = [
        attest(api.patient).to_json(),
        attest(Signer.generate("stranger")).to_json(),
        attest(api.patient).to_json(),
    ]

    response = api.post({"statements": items, "atomic": True})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (0, 3)
    codes = [r["problem"]["code"] for r in body["results"]]
    assert codes == ["batch-aborted", "unknown-actor", "batch-aborted"]
    assert all(r["status"] == "rejected" for r in body["results"])
    assert snapshot(api.env.ledger.engine) == before
    # and the client reports each one as rejected
    results = api.client.submit_batch(
        [attest(api.patient), attest(api.patient, issued_at="2001-01-01T00:00:00Z")], atomic=True
    )
    assert [r.code for r in results if isinstance(r, RejectedError)] == [
        "batch-aborted",
        "clock-skew",
    ]
    assert snapshot(api.env.ledger.engine) == before


def test_atomic_batch_with_one_malformed_item_answers_per_item(api: Api) -> None:
    """The batch contract: 200 and one result per statement, all or nothing.

    BUG (api/routes/statements.py, ``submit``: ``if atomic: raise``): a parse
    error in an atomic batch turns the whole answer into a 400 problem instead
    of per-item results (``malformed`` for the bad one, ``batch-aborted`` for
    the rest), so ``LedgerClient.submit_batch(atomic=True)`` raises instead of
    returning a list. Nothing is recorded either way.
    """
    before = snapshot(api.env.ledger.engine)
    items = [
        attest(api.patient).to_json(),
        {**attest(api.patient).to_json(), "signature": b64(bytes(10))},
        attest(api.patient).to_json(),
    ]

    response = api.post({"statements": items, "atomic": True})

    assert snapshot(api.env.ledger.engine) == before
    assert response.status_code == 200, (
        "atomic batch with a malformed item should answer 200 with per-item results, "
        f"got {response.status_code}: {response.text}"
    )
    codes = [r["problem"]["code"] for r in response.json()["results"]]
    assert codes == ["batch-aborted", "malformed", "batch-aborted"]


def test_same_signed_statement_twice_in_one_batch_is_recorded_once(api: Api) -> None:
    size = api.size()
    signed = attest(api.patient)
    other = attest(api.patient)

    results = api.client.submit_batch([signed, other, signed])

    assert all(isinstance(r, VerifiedReceipt) for r in results), results
    first, second, again = results
    assert isinstance(first, VerifiedReceipt)
    assert isinstance(second, VerifiedReceipt)
    assert isinstance(again, VerifiedReceipt)
    assert (first.seq, second.seq, again.seq) == (size, size + 1, size)
    assert not first.duplicate
    assert again.duplicate
    assert again.record_hash == first.record_hash
    assert api.size() == size + 2
    verify_database(api.env.ledger.engine)


def test_payload_round_trip(api: Api) -> None:
    payload = b'{"drug":"amoxicillin","dose_mg":500}'
    body = {"digest": sha256_hex(b"prescription"), "payload_digest": sha256_hex(payload)}
    signed = make_statement(api.patient, "doc.attest", body)

    receipt = api.client.submit(signed, payload=payload)

    assert api.env.ledger.reader.payload(receipt.seq) == payload
    record = api.http.get(f"/v1/records/{receipt.seq}").json()
    assert record["record"]["statement"]["body"]["payload_digest"] == sha256_hex(payload)
    assert api.env.ledger.reader.payload(receipt.seq - 1) is None
    result = verify_database(api.env.ledger.engine)
    assert result.size == receipt.seq + 1


# --- reads --------------------------------------------------------------------


def test_checkpoint_is_plain_text_signed_by_the_log_key(shared: Api) -> None:
    api = shared

    response = api.http.get("/v1/checkpoint")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    checkpoint = api.open(response.text)
    head = api.env.ledger.reader.head()
    assert checkpoint.size == head.size
    assert checkpoint.size >= 8
    assert checkpoint.root_hash == head.root_hash
    assert api.client.checkpoint() == response.text
    impostor = Verifier.from_vkey(Signer.generate(api.env.origin).vkey)
    with pytest.raises(LedgerError, match="signature"):
        open_checkpoint(response.text, origin=api.env.origin, verifier=impostor)


def test_record_bytes_hash_to_the_record_hash(shared: Api) -> None:
    api = shared
    for seq in range(api.size()):
        response = api.http.get(f"/v1/records/{seq}")
        assert response.status_code == 200
        body = response.json()
        data = base64.b64decode(body["record_bytes"], validate=True)
        assert body["seq"] == seq
        assert hashlib.sha256(data).hexdigest() == body["record_hash"]
        assert merkle.hash_leaf(data).hex() == body["leaf_hash"]
        assert canonicalize(body["record"]) == data
        assert body["record"]["seq"] == seq


def test_records_paging_follows_next_start_to_the_end(shared: Api) -> None:
    api = shared
    size = api.size()
    assert size >= 8

    seen: list[int] = []
    start: int | None = 0
    pages = 0
    while start is not None:
        body = api.client.get("/v1/records", start=start, limit=3)
        assert body["tree_size"] == size
        assert 1 <= len(body["records"]) <= 3
        seen.extend(r["seq"] for r in body["records"])
        start = body["next_start"]
        pages += 1

    assert seen == list(range(size))
    assert pages == -(-size // 3)
    tail = api.client.get("/v1/records", start=size, limit=3)
    assert tail["records"] == []
    assert tail["next_start"] is None
    last = api.client.get("/v1/records", start=size - 3, limit=3)
    assert [r["seq"] for r in last["records"]] == [size - 3, size - 2, size - 1]
    assert last["next_start"] is None
    middle = api.client.get("/v1/records", start=2, limit=3)
    assert [r["seq"] for r in middle["records"]] == [2, 3, 4]
    assert middle["next_start"] == 5


def test_inclusion_and_consistency_proofs_verify_against_checkpoints(shared: Api) -> None:
    api = shared  # checkpoints at sizes 0, 1, 2, 3, 6, 8 (and maybe more)
    sizes = [2, 3, 6, 8]
    roots: dict[int, bytes] = {}
    for size in sizes:
        body = api.client.get("/v1/proofs/inclusion", leaf_index=0, tree_size=size)
        roots[size] = api.open(body["checkpoint"]).root_hash
    leaves = {
        seq: bytes.fromhex(api.client.get(f"/v1/records/{seq}")["leaf_hash"]) for seq in range(8)
    }

    for size in sizes:
        for leaf in range(size):
            body = api.client.get("/v1/proofs/inclusion", leaf_index=leaf, tree_size=size)
            assert (body["leaf_index"], body["tree_size"]) == (leaf, size)
            assert api.open(body["checkpoint"]).size == size
            hashes = [bytes.fromhex(h) for h in body["hashes"]]
            merkle.verify_inclusion(leaves[leaf], leaf, size, hashes, roots[size])
            if leaf + 1 < size:  # the proof is for this leaf, not its neighbour
                with pytest.raises(RootMismatchError):
                    merkle.verify_inclusion(leaves[leaf + 1], leaf, size, hashes, roots[size])

    for first in sizes:
        for second in sizes:
            if first > second:
                continue
            body = api.client.get("/v1/proofs/consistency", first=first, second=second)
            assert api.open(body["first_checkpoint"]).size == first
            assert api.open(body["second_checkpoint"]).size == second
            hashes = [bytes.fromhex(h) for h in body["hashes"]]
            merkle.verify_consistency(first, second, hashes, roots[first], roots[second])
    verify_database(api.env.ledger.engine)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        pytest.param(
            "/v1/proofs/inclusion", {"leaf_index": 5, "tree_size": 3}, id="leaf past size"
        ),
        pytest.param(
            "/v1/proofs/inclusion", {"leaf_index": 0, "tree_size": 99999}, id="tree past the log"
        ),
        pytest.param("/v1/proofs/inclusion", {"leaf_index": 0, "tree_size": 0}, id="empty tree"),
        pytest.param(
            "/v1/proofs/consistency", {"first": 1, "second": 99999}, id="second past the log"
        ),
        pytest.param("/v1/proofs/consistency", {"first": 3, "second": 2}, id="first after second"),
        pytest.param(
            "/v1/proofs/consistency", {"first": 0, "second": 2}, id="consistency from empty tree"
        ),
    ],
)
def test_out_of_range_proof_is_bad_range(shared: Api, path: str, params: dict[str, int]) -> None:
    response = shared.http.get(path, params=params)

    assert response.status_code == 400, response.text
    problem = problem_of(response)
    assert problem["type"] == TYPE_PREFIX + "bad-range"
    assert problem["detail"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        pytest.param("/v1/records/abc", {}, id="seq not a number"),
        pytest.param("/v1/records/-1", {}, id="negative seq"),
        pytest.param("/v1/records", {"start": "x"}, id="start not a number"),
        pytest.param("/v1/records", {"limit": 100000}, id="limit too big"),
        pytest.param(
            "/v1/proofs/inclusion", {"leaf_index": "1.5", "tree_size": 2}, id="fractional index"
        ),
        pytest.param("/v1/proofs/consistency", {"first": 1}, id="missing second"),
    ],
)
def test_bad_query_is_malformed(shared: Api, path: str, params: dict[str, Any]) -> None:
    response = shared.http.get(path, params=params)

    assert response.status_code == 400, response.text
    problem = problem_of(response)
    assert problem["type"] == TYPE_PREFIX + "malformed"
    assert problem["detail"]


def test_unknown_path_and_record_are_not_found(shared: Api) -> None:
    api = shared
    for path in ("/v1/nothing-here", "/v1/records/99999"):
        response = api.http.get(path)
        assert response.status_code == 404, response.text
        problem = problem_of(response)
        assert problem["type"] == TYPE_PREFIX + "not-found"
        assert problem["detail"]
    response = api.http.delete("/v1/statements")
    assert response.status_code == 405
    assert problem_of(response)["code"] == "method-not-allowed"
    assert response.headers["allow"] == "POST"


def test_a_client_gone_mid_body_is_not_an_internal_error(
    shared: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection closes after 13 of 1,000 declared bytes: the app answers
    (to nobody) without the internal-error path, and nothing is written."""
    before = snapshot(shared.env.ledger.engine)
    messages = [
        {"type": "http.request", "body": b'{"statements"', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/statements",
        "raw_path": b"/v1/statements",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    with caplog.at_level(logging.INFO):
        asyncio.run(shared.http.app(scope, receive, send))  # type: ignore[arg-type]

    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    body = json.loads(
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    )
    assert body["code"] == "client-disconnected"
    assert "unexpected error" not in caplog.text
    assert "client disconnected" in caplog.text
    assert snapshot(shared.env.ledger.engine) == before


@pytest.mark.parametrize(
    "path",
    [
        "/v1/records/1_0",
        "/v1/records/+1",
        "/v1/records/%201",
        "/v1/records/1.0",
        "/v1/records?start=1_0",
        "/v1/records?limit=2.0",
        "/v1/proofs/inclusion?leaf_index=%2B0&tree_size=1",
        "/v1/proofs/inclusion?leaf_index=0.0&tree_size=1",
        "/v1/proofs/inclusion?leaf_index=0&tree_size=1_0",
        "/v1/proofs/consistency?first=-1&second=1",
    ],
)
def test_an_integer_parameter_is_digits_alone(shared: Api, path: str) -> None:
    """A typo must not name another record: ``1_0``, ``+1``, `` 1`` and ``1.0`` are refused."""
    response = shared.http.get(path)
    assert response.status_code == 400, response.text
    assert problem_of(response)["code"] == "malformed"
    assert shared.http.get("/v1/records/0").status_code == 200


def test_healthz_reports_the_tree_size(shared: Api) -> None:
    response = shared.http.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["tree_size"] == shared.size()
    assert body["tree_size"] >= 8
    assert body["time"].endswith("Z")


def test_the_shared_ledger_still_verifies_after_everything(shared: Api) -> None:
    result = verify_database(shared.env.ledger.engine)

    assert result.size == shared.size()
    assert result.size >= 8

"""``rxledger wallet``: a patient's wallet from the command line, against a live server.

One ``rxledger serve`` subprocess (on a free port, over a temporary SQLite
ledger) serves the module; the CLI runs in-process with click's runner and
talks to it over HTTP, as a patient's machine would. A data user makes its
uses through :class:`LedgerClient` (preview, then a signed ``data.use``).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from ledger.client import LedgerClient
from ledger.core.checkpoint import open_checkpoint
from ledger.core.errors import LedgerError
from ledger.core.note import Signer, Verifier
from ledger.core.payload import seal
from ledger.core.statement import format_time, make_statement, now
from ledger.service import Ledger, init_ledger, read_key_file, write_key_file
from ledger.store.sequencer import Receipt, Submission

BIN = Path(sys.executable).parent
ALICE, BOB, GUARDIAN, WARD = (
    "P-00000000000000a1",
    "P-00000000000000b2",
    "P-00000000000000c3",
    "P-00000000000000d4",
)
HMB = {"code": "DUO:0000006"}


@dataclass
class Server:
    url: str
    log_vkey: str
    keys: Path

    def key(self, name: str) -> str:
        return str(self.keys / f"{name}.skey")

    def signer(self, name: str) -> Signer:
        return read_key_file(self.keys / f"{name}.skey")

    def client(self) -> LedgerClient:
        return LedgerClient(self.url, log_key=self.log_vkey)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_ledger(root: Path) -> tuple[str, str, Path, Path]:
    """A ledger with a data user, two patients, and a guardian of an unregistered ward."""
    url = f"sqlite:///{root / 'ledger.db'}"
    keys = root / "keys"
    result = init_ledger(url, key_dir=keys)
    ledger = Ledger.open(url, log_key_file=result.log_key_file)
    registrar = read_key_file(result.registrar_key_file)
    try:
        for actor, role, extra in (
            ("uni", "data_user", {"data_user_class": "accredited-nonprofit"}),
            (ALICE, "patient", {}),
            (BOB, "patient", {}),
            (GUARDIAN, "patient", {"guardian_of": [WARD]}),
        ):
            signer = Signer.generate(actor)
            body = {"actor": actor, "role": role, "key": signer.vkey, **extra}
            (out,) = ledger.append([Submission(make_statement(registrar, "actor.register", body))])
            assert isinstance(out, Receipt), out
            write_key_file(keys / f"{actor}.skey", signer.skey)
    finally:
        ledger.close()
    return url, result.log_vkey, result.log_key_file, keys


def is_ours(note: str, log_vkey: str) -> bool:
    verifier = Verifier.from_vkey(log_vkey)
    try:
        open_checkpoint(note, origin=verifier.name, verifier=verifier)
    except LedgerError:
        return False
    return True


def start_server(
    url: str, log_vkey: str, log_key_file: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str] | None:
    """``rxledger serve`` on a free port, once it answers with this ledger's checkpoint;
    ``None`` when it exited first (the port was taken meanwhile)."""
    port = free_port()
    command = [str(BIN / "rxledger"), "serve", "--db", url, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--log-key-file", str(log_key_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while process.poll() is None:
        try:
            answer = httpx.get(f"{base}/v1/checkpoint", timeout=2)
            # ours, not another server on the port: signed by this ledger's key
            if answer.status_code == 200 and is_ours(answer.text, log_vkey):
                return process, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail("rxledger serve did not answer within 60 s")
        time.sleep(0.2)
    assert process.stderr is not None
    if b"address already in use" not in process.stderr.read().lower():
        pytest.fail(f"rxledger serve exited with {process.returncode}")
    return None


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("wallet-cli")
    url, log_vkey, log_key_file, keys = build_ledger(root)
    env = {
        **os.environ,
        "RXLEDGER_HOME": str(root / "home"),
        "RXLEDGER_SETTLEMENT_KEY_DIR": str(root / "settlement"),
    }
    for _ in range(3):
        started = start_server(url, log_vkey, log_key_file, env)
        if started is not None:
            break
    else:
        pytest.fail("rxledger serve found no free port in 3 tries")
    process, base = started
    try:
        yield Server(base, log_vkey, keys)
    finally:
        stop(process)


def wallet(*args: str) -> Result:
    return CliRunner().invoke(main, ["wallet", *args], catch_exceptions=False)


def one_line_error(result: Result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("rxledger: error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def common(server: Server, who: str) -> list[str]:
    return ["--url", server.url, "--key", server.key(who), "--log-key", server.log_vkey]


def grant_args(server: Server, who: str, consent_id: str, *extra: str) -> list[str]:
    return [
        *common(server, who),
        "--consent-id",
        consent_id,
        "--grantee",
        "class:any",
        "--purpose",
        "HMB",
        "--purpose",
        "NCU",
        "--category",
        "prescriptions",
        "--category",
        "diagnoses",
        "--from",
        "2025-01-01",
        "--until",
        "+365d",
        "--share-bp",
        "2500",
        *extra,
    ]


def make_use(server: Server, use_id: str, patients: list[str]) -> dict[str, object]:
    """A data use by ``uni``, as a data user makes one: preview, sign, submit."""
    uni = server.signer("uni")
    at = format_time(now())
    query = {"use_id": use_id, "issued_at": at, "purpose": HMB, "categories": ["prescriptions"]}
    with server.client() as client:
        preview = client.signed(
            "POST", "/v1/uses/preview", uni, json_body={**query, "patients": patients}
        )
        payload, digest = seal({"patients": patients})
        body = {
            "use_id": use_id,
            "purpose": HMB,
            "categories": ["prescriptions"],
            **preview["body_fields"],
            "payload_digest": digest,
        }
        client.submit(make_statement(uni, "data.use", body, issued_at=at), payload=payload)
    return dict(preview)


def pay(server: Server, use_id: str, payment_id: str, amount: int) -> None:
    body = {"use_id": use_id, "payment_id": payment_id, "amount": amount}
    with server.client() as client:
        client.submit(make_statement(server.signer("uni"), "data.proceeds", body))


def test_grant_show_revoke_and_prove(server: Server, tmp_path: Path) -> None:
    granted = wallet("grant", *grant_args(server, ALICE, "c1"))
    assert granted.exit_code == 0, granted.output
    assert "consent c1 granted: seq " in granted.output
    assert "receipt verified: included in the checkpoint of size" in granted.output

    # Bob grants too (as JSON): the receipt's record hash is the record's
    result = wallet("grant", *grant_args(server, BOB, "c1", "--json"))
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.stdout)
    record = httpx.get(f"{server.url}/v1/records/{receipt['seq']}", timeout=10).json()
    assert receipt["record_hash"] in json.dumps(record)
    assert receipt["statement"]["body"]["purposes"] == [HMB, {"code": "DUO:0000046"}]

    preview = make_use(server, "u-before", [ALICE, BOB])
    assert preview["permitted"] == [ALICE, BOB]
    pay(server, "u-before", "pay-1", 1001)  # 2500 : 2500 -> 501 and 500 (ties: smaller name)

    shown = wallet("show", *common(server, ALICE))
    assert shown.exit_code == 0, shown.output
    assert f"wallet of {ALICE}" in shown.output
    assert "checkpoint of size" in shown.output
    assert "consents: 1 (1 in force)" in shown.output
    assert "HMB+NCU on diagnoses,prescriptions" in shown.output
    assert "u-before" in shown.output
    assert "balance: 501 (1 payments)" in shown.output

    revoked = wallet("revoke", *common(server, ALICE), "--consent-id", "c1")
    assert revoked.exit_code == 0, revoked.output
    assert "consent c1 revoked: seq " in revoked.output

    after = make_use(server, "u-after", [ALICE, BOB])
    assert after["permitted"] == [BOB]

    data = json.loads(wallet("show", *common(server, ALICE), "--json").stdout)
    (consent,) = data["consents"]
    assert consent["revoked_seq"] is not None
    assert not consent["in_force"]
    assert [u["use_id"] for u in data["uses"]] == ["u-before"]  # newest first; not u-after
    assert data["balance"] == 501

    saved = tmp_path / "proof.json"
    proved = wallet("proof", *common(server, ALICE), "--consent-id", "c1", "--out", str(saved))
    assert proved.exit_code == 0, proved.output
    assert "1 data use recorded after the revocation" in proved.output
    assert "no data use after the revocation included you" in proved.output

    checked = wallet("check-proof", str(saved), "--log-key", server.log_vkey, "--json")
    assert checked.exit_code == 0, checked.output
    summary = json.loads(checked.stdout)
    assert summary["verified"] is True
    assert summary["included"] == []
    assert [u["use_id"] for u in summary["uses_after"]] == ["u-after"]

    # a proof whose record was altered does not verify: exit 1, one line
    proof = json.loads(saved.read_text())
    data_bytes = bytearray(base64.b64decode(proof["uses"][0]["record_bytes"]))
    data_bytes[-10] ^= 1
    proof["uses"][0]["record_bytes"] = base64.b64encode(bytes(data_bytes)).decode()
    saved.write_text(json.dumps(proof))
    one_line_error(wallet("check-proof", str(saved), "--log-key", server.log_vkey), code=1)

    # ... nor does one that hides an inclusion
    proof = json.loads(proved_json(server, ALICE))
    proof["included"] = ["u-after"]
    saved.write_text(json.dumps(proof))
    line = one_line_error(wallet("check-proof", str(saved), "--log-key", server.log_vkey), 1)
    assert "the records say []" in line


def proved_json(server: Server, who: str) -> str:
    """The after-revocation proof of ``who``'s consent c1, as the server gives it."""
    with server.client() as client:
        proof = client.signed(
            "GET", f"/v1/wallet/{who}/consents/c1/after-revocation", server.signer(who)
        )
    return json.dumps(proof)


def test_a_guardian_acts_for_a_ward(server: Server) -> None:
    result = wallet(
        "grant",
        *common(server, GUARDIAN),
        "--patient",
        WARD,
        "--consent-id",
        "ward-1",
        "--grantee",
        "uni",
        "--purpose",
        "DUO:0000007:disease=E11",
        "--purpose",
        "TS:months=12",
        "--category",
        "prescriptions",
        "--until",
        "2030-01-01",
        "--share-bp",
        "0",
    )
    assert result.exit_code == 0, result.output
    narrowed = wallet(
        "narrow", *common(server, GUARDIAN), "--patient", WARD, "--consent-id", "ward-1",
        "--until", "+30d",
    )  # fmt: skip
    assert narrowed.exit_code == 0, narrowed.output
    # dropping a modifier would broaden the consent: the CLI does not send it
    line = one_line_error(
        wallet("narrow", *common(server, GUARDIAN), "--patient", WARD, "--consent-id", "ward-1",
               "--remove-purpose", "TS")
    )  # fmt: skip
    assert "would broaden it" in line
    shown = wallet("show", *common(server, GUARDIAN), "--patient", WARD)
    assert shown.exit_code == 0, shown.output
    assert f"wallet of {WARD} (read by {GUARDIAN}, their guardian)" in shown.output
    assert "to uni for DS(E11)+TS(12 months) on prescriptions" in shown.output
    assert "narrowed 1x" in shown.output
    # another patient may not read the ward's wallet
    line = one_line_error(wallet("show", *common(server, BOB), "--patient", WARD))
    assert "forbidden" in line


def test_refused_grants_are_one_line(server: Server) -> None:
    assert wallet("grant", *grant_args(server, BOB, "dup")).exit_code == 0
    line = one_line_error(wallet("grant", *grant_args(server, BOB, "dup")))
    assert "the ledger refused: consent-exists" in line

    args = grant_args(server, BOB, "c-nobody")
    args[args.index("class:any")] = "no-such-user"
    assert "unknown-grantee" in one_line_error(wallet("grant", *args))

    # a patient may not grant for another
    args = grant_args(server, BOB, "c-other", "--patient", ALICE)
    assert "not-your-consent" in one_line_error(wallet("grant", *args))

    args = grant_args(server, BOB, "c-bad")
    args[args.index("HMB")] = "DS"  # DS without a disease
    assert "--purpose 'DS'" in one_line_error(wallet("grant", *args))
    args[args.index("DS")] = "XYZ"
    assert "expected a DUO term" in one_line_error(wallet("grant", *args))

    args = grant_args(server, BOB, "c-time")
    args[args.index("+365d")] = "next year"
    assert "--until" in one_line_error(wallet("grant", *args))

    # only modifiers, no permission: refused by the ledger
    args = grant_args(server, BOB, "c-mod")
    args[args.index("HMB")] = "PUB"
    assert "malformed" in one_line_error(wallet("grant", *args))


def test_proof_of_a_consent_in_force_is_refused(server: Server) -> None:
    assert wallet("grant", *grant_args(server, BOB, "kept")).exit_code == 0
    line = one_line_error(wallet("proof", *common(server, BOB), "--consent-id", "kept"))
    assert "consent-not-revoked" in line
    line = one_line_error(wallet("proof", *common(server, BOB), "--consent-id", "never"))
    assert "not-found" in line


def test_bad_key_files_and_urls(server: Server, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.skey"
    garbage.write_text("not a key\n")
    args = ["--url", server.url, "--log-key", server.log_vkey]
    assert "PRIVATE+KEY" in one_line_error(wallet("show", *args, "--key", str(garbage)))
    missing = str(tmp_path / "missing.skey")
    assert "does not exist" in one_line_error(wallet("show", *args, "--key", missing))
    binary = tmp_path / "binary.skey"
    binary.write_bytes(b"\xff\xfe\x00")
    one_line_error(wallet("show", *args, "--key", str(binary)))

    # a key that is not registered: the server refuses the signed request
    stranger = tmp_path / "stranger.skey"
    write_key_file(stranger, Signer.generate("P-00000000000000ff").skey)
    assert "unauthenticated" in one_line_error(wallet("show", *args, "--key", str(stranger)))

    key = ["--key", server.key(ALICE), "--log-key", server.log_vkey]
    closed = f"http://127.0.0.1:{free_port()}"
    assert "cannot talk to the ledger" in one_line_error(wallet("show", "--url", closed, *key))
    assert "--url" in one_line_error(wallet("show", "--url", "ledger.example", *key))
    bad_log_key = ["--url", server.url, "--key", server.key(ALICE), "--log-key", "nonsense"]
    one_line_error(wallet("show", *bad_log_key))

    # another log's key: the checkpoint does not verify (exit 1)
    other = Signer.generate("rxledger.local/log").vkey
    wrong = ["--url", server.url, "--key", server.key(ALICE), "--log-key", other]
    one_line_error(wallet("show", *wrong), code=1)
    # ... nor does a receipt (the grant is recorded, but the CLI cannot show it is)
    args = grant_args(server, BOB, "unchecked")
    args[args.index(server.log_vkey)] = other
    assert "no signature by the log key" in one_line_error(wallet("grant", *args), code=1)

    not_json = tmp_path / "proof.json"
    not_json.write_text("{")
    assert "not JSON" in one_line_error(
        wallet("check-proof", str(not_json), "--log-key", server.log_vkey)
    )
    not_json.write_text("[]")
    one_line_error(wallet("check-proof", str(not_json), "--log-key", server.log_vkey), code=1)

"""The auditor's commands against a running ``rxledger serve``: ``verify --url
--state``, ``export``, ``verify --bundle``, ``prove inclusion --out`` and
``verify --proof``; their output, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from ledger.core.note import Signer
from ledger.demo import run_demo
from ledger.service import Ledger, init_ledger, read_key_file
from ledger.store.sequencer import Receipt, Submission
from tests.helpers import attest
from tests.operator import backdate_one, rewrite_history
from tests.test_wallet_cli import one_line_error, start_server, stop


@dataclass
class Served:
    url: str
    db: str
    log_vkey: str
    keys: Path

    def append(self, n: int) -> None:
        ledger = Ledger.open(self.db, log_key_file=self.keys / "log.skey")
        try:
            registrar = read_key_file(self.keys / "registrar.skey")
            out = ledger.append([Submission(attest(registrar)) for _ in range(n)])
            assert all(isinstance(o, Receipt) for o in out)
        finally:
            ledger.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    keys = tmp_path / "keys"
    result = init_ledger(db, key_dir=keys)
    ledger = Ledger.open(db, log_key_file=result.log_key_file)
    try:
        run_demo(
            ledger,
            read_key_file(result.registrar_key_file),
            prescriptions=8,
            seed=11,
            key_dir=tmp_path / "settlement",
            batch_size=30,
        )
    finally:
        ledger.close()
    env = {**os.environ, "RXLEDGER_HOME": str(tmp_path / "home")}
    env.pop("RXLEDGER_WITNESSES", None)
    for _ in range(3):
        started = start_server(db, result.log_vkey, result.log_key_file, env)
        if started is not None:
            break
    else:
        pytest.fail("rxledger serve found no free port in 3 tries")
    process, url = started
    try:
        yield Served(url, db, result.log_vkey, keys)
    finally:
        stop(process)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def test_verify_url_with_state_then_only_new_records(served: Served, tmp_path: Path) -> None:
    state = tmp_path / "auditor.state"
    args = ["verify", "--url", served.url, "--log-key", served.log_vkey, "--state", str(state)]

    first = json.loads(ok(cli(*args, "--json")).stdout)
    served.append(4)
    human = ok(cli(*args)).stdout
    again = json.loads(ok(cli(*args, "--json")).stdout)

    assert first["verified"] is True
    assert first["records_fetched"] == first["tree_size"]
    assert f"consistent with the checkpoint of size {first['tree_size']}" in human
    assert "4 new records verified" in human
    assert again["previous_size"] == first["tree_size"] + 4
    assert again["records_fetched"] == 0
    # the state file remembers the key: a later run needs no --log-key
    ok(cli("verify", "--url", served.url, "--state", str(state)))


def test_a_rewritten_history_fails_with_evidence(served: Served, tmp_path: Path) -> None:
    state = tmp_path / "auditor.state"
    args = ["verify", "--url", served.url, "--log-key", served.log_vkey, "--state", str(state)]
    ok(cli(*args))
    ledger = Ledger.open(served.db, log_key_file=served.keys / "log.skey")
    try:
        engine = ledger.engine
        size = ledger.reader.head().size
        reader = ledger.reader
        target = next(
            s
            for s in range(size - 1, 0, -1)
            if reader.record(s).received_at > reader.record(s - 1).received_at
        )
        rewrite_history(
            engine,
            read_key_file(served.keys / "log.skey"),
            ledger.origin,
            retime=backdate_one(target),
        )
    finally:
        ledger.close()
    served.append(2)

    human = cli(*args)
    as_json = cli(*args, "--json")

    line = one_line_error(human, 1)
    assert "history was rewritten" in line
    evidence_file = state.with_name(state.name + ".evidence.json")
    assert str(evidence_file) in line
    evidence = json.loads(evidence_file.read_text())
    assert f"\n{size}\n" in evidence["old_checkpoint"]
    assert f"\n{size + 2}\n" in evidence["new_checkpoint"]
    assert evidence["proof"]
    assert as_json.exit_code == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "inconsistent"
    assert error["evidence"] == evidence


def test_export_and_verify_a_bundle_offline(served: Served, tmp_path: Path) -> None:
    whole = tmp_path / "whole.zip"
    part = tmp_path / "part.zip"
    url = ["--url", served.url, "--log-key", served.log_vkey]

    exported = json.loads(ok(cli("export", *url, "--out", str(whole), "--json")).stdout)
    ok(cli("export", "--db", served.db, "--out", str(part), "--from", "20", "--to", "40"))
    verified = json.loads(
        ok(cli("verify", "--bundle", str(whole), "--log-key", served.log_vkey, "--json")).stdout
    )
    text = ok(cli("verify", "--bundle", str(part), "--log-key", served.log_vkey)).stdout
    unpinned = ok(cli("verify", "--bundle", str(part))).stdout

    assert verified["records"] == exported["records"] == exported["tree_size"]
    assert "records 20..40 (21)" in text
    assert "warning: the log key came from the bundle itself" in unpinned
    other = Signer.generate("rxledger.local/log").vkey
    failed = cli("verify", "--bundle", str(whole), "--log-key", other)
    assert "bundle is of the log" in one_line_error(failed, 1)


def test_prove_inclusion_to_a_file_and_check_it_offline(served: Served, tmp_path: Path) -> None:
    proof = tmp_path / "rx.proof.json"

    written = ok(cli("prove", "inclusion", "--url", served.url, "--seq", "12", "--out", str(proof)))
    checked = ok(cli("verify", "--proof", str(proof), "--log-key", served.log_vkey))
    as_json = json.loads(
        ok(cli("verify", "--proof", str(proof), "--log-key", served.log_vkey, "--json")).stdout
    )

    assert str(proof) in written.stdout
    assert "record 12 (" in checked.stdout
    assert "is in the log" in checked.stdout
    assert as_json["seq"] == 12
    other = Signer.generate("rxledger.local/log").vkey
    one_line_error(cli("verify", "--proof", str(proof), "--log-key", other), 1)
    document = json.loads(proof.read_text())
    document["hashes"] = document["hashes"][1:]
    proof.write_text(json.dumps(document))
    assert "record 12" in one_line_error(
        cli("verify", "--proof", str(proof), "--log-key", served.log_vkey), 1
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["verify", "--url", "U", "--bundle", "B"], "not --url and --bundle"),
        (["verify", "--state", "S"], "--state goes with --url"),
        (["verify", "--bundle", "B", "--quorum", "1"], "--quorum needs the witnesses"),
        (["verify", "--proof", "P"], "--proof needs --log-key"),
        (["verify", "--url", "http://127.0.0.1:9"], "--url needs --log-key"),
        (["export", "--url", "http://127.0.0.1:9", "--out", "x.zip"], "--url needs --log-key"),
        (["verify", "--bundle", "missing.zip"], "missing.zip"),
    ],
)
def test_usage_errors_are_one_line(
    args: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert says in one_line_error(cli(*args), 2)


def test_an_unreachable_ledger_is_an_io_error(tmp_path: Path) -> None:
    key = Signer.generate("rxledger.local/log").vkey
    result = cli("verify", "--url", "http://127.0.0.1:9", "--log-key", key)
    assert "cannot reach" in one_line_error(result, 2)


def test_serve_refuses_a_bad_witness_list_in_one_line(served: Served) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--db", served.db], env={"RXLEDGER_WITNESSES": "not-a-key@http://w"}
    )
    assert "expected VKEY@URL" in one_line_error(result, 2)

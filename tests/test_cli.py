"""The command line: init, keygen, verify and prove, through click's runner.

Every test that needs a database runs on SQLite and on a fresh PostgreSQL
database (``database_url``).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from cli.main import main
from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.errors import RootMismatchError
from ledger.core.note import Verifier
from ledger.service import Ledger, is_initialized, read_key_file
from ledger.store.db import make_engine
from ledger.store.schema import records
from ledger.store.sequencer import Receipt, Submission
from tests.helpers import attest


class Cli:
    """Runs ``rxledger`` with ``RXLEDGER_HOME`` set to a test directory."""

    def __init__(self, home: Path, database_url: str) -> None:
        self.home = home
        self.url = database_url
        self.runner = CliRunner()

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    def __call__(self, *args: str, db: bool = True) -> Result:
        argv = list(args)
        if db:
            argv += ["--db", self.url]
        return self.runner.invoke(
            main,
            argv,
            env={"RXLEDGER_HOME": str(self.home), "RXLEDGER_DATABASE_URL": None},
            catch_exceptions=False,
        )


@pytest.fixture
def cli(tmp_path: Path, database_url: str) -> Cli:
    return Cli(tmp_path / "home", database_url)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_line_error(result: Result, exit_code: int) -> str:
    """The exit code is ``exit_code`` and stderr is one line, without a traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rxledger: error: "), lines[0]
    return lines[0]


def initialized(cli: Cli) -> Result:
    result = cli("init")
    assert result.exit_code == 0, result.output
    return result


def grow(cli: Cli, batches: list[int]) -> None:
    """Append batches of attestations by the registrar (one checkpoint each)."""
    ledger = Ledger.open(cli.url, log_key_file=cli.keys / "log.skey")
    try:
        registrar = read_key_file(cli.keys / "registrar.skey")
        for count in batches:
            outcomes = ledger.append([Submission(attest(registrar)) for _ in range(count)])
            assert all(isinstance(o, Receipt) for o in outcomes), outcomes
    finally:
        ledger.close()


def log_key(cli: Cli) -> Verifier:
    return read_key_file(cli.keys / "log.skey").verifier()


def opened(cli: Cli, note: str) -> Checkpoint:
    checkpoint, _ = open_checkpoint(note, origin="rxledger.local/log", verifier=log_key(cli))
    return checkpoint


# --- init and keygen --------------------------------------------------------------


def test_init_creates_private_keys_readable_only_by_the_owner(cli: Cli) -> None:
    result = initialized(cli)

    assert "ledger initialized" in result.stdout
    for name in ("log.skey", "registrar.skey"):
        path = cli.keys / name
        assert mode_of(path) == 0o600, f"{path}: {oct(mode_of(path))}"
    log = read_key_file(cli.keys / "log.skey")
    registrar = read_key_file(cli.keys / "registrar.skey")
    assert log.vkey in result.stdout
    assert registrar.vkey in result.stdout
    engine = make_engine(cli.url)
    try:
        assert is_initialized(engine)
    finally:
        engine.dispose()


def test_init_again_changes_nothing(cli: Cli) -> None:
    initialized(cli)
    keys = {p.name: p.read_bytes() for p in cli.keys.iterdir()}
    verified = json.loads(cli("verify", "--json").stdout)

    again = cli("init")

    assert again.exit_code == 0, again.output
    assert "already initialized" in again.stdout
    assert read_key_file(cli.keys / "log.skey").vkey in again.stdout
    assert {p.name: p.read_bytes() for p in cli.keys.iterdir()} == keys
    assert json.loads(cli("verify", "--json").stdout) | {"seconds": 0, "records_per_second": 0} == (
        verified | {"seconds": 0, "records_per_second": 0}
    )


def test_init_refuses_to_reuse_key_files_for_an_empty_database(cli: Cli) -> None:
    cli.keys.mkdir(parents=True)
    existing = cli.keys / "log.skey"
    made = cli("keygen", "rxledger.local/log", "--out", str(existing), db=False)
    assert made.exit_code == 0, made.output
    before = existing.read_bytes()

    result = cli("init")

    line = one_line_error(result, 2)
    assert "log.skey" in line
    assert existing.read_bytes() == before
    assert not (cli.keys / "registrar.skey").exists()
    engine = make_engine(cli.url)
    try:
        assert not is_initialized(engine)
    finally:
        engine.dispose()
    # and verify says so in one line, too
    one_line_error(cli("verify"), 2)


def test_keygen_prints_the_vkey_and_never_overwrites(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", "unused://")
    out = tmp_path / "alice.skey"

    result = cli("keygen", "alice", "--out", str(out), db=False)

    assert result.exit_code == 0, result.output
    printed = result.stdout.strip()
    assert mode_of(out) == 0o600
    signer = read_key_file(out)
    assert signer.vkey == printed
    assert Verifier.from_vkey(printed).name == "alice"
    before = out.read_bytes()

    again = cli("keygen", "alice", "--out", str(out), db=False)

    assert "exists" in one_line_error(again, 2)
    assert again.stdout == ""
    assert out.read_bytes() == before


# --- verify --------------------------------------------------------------------------


def test_verify_passes_on_a_good_ledger(cli: Cli) -> None:
    initialized(cli)
    grow(cli, [2, 3])

    text = cli("verify")
    as_json = cli("verify", "--json")

    assert text.exit_code == 0, text.output
    assert "verified 6 records" in text.stdout
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["verified"] is True
    assert summary["tree_size"] == 6
    assert summary["checkpoints_verified"] == 4  # sizes 0, 1, 3 and 6


def test_verify_jobs_checks_signatures_on_threads_with_the_same_result(cli: Cli) -> None:
    initialized(cli)
    grow(cli, [2, 3])

    results = {jobs: cli("verify", "--json", "--jobs", jobs) for jobs in ("1", "3")}

    for jobs, result in results.items():
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["jobs"] == int(jobs)
    one, three = (json.loads(r.stdout) for r in results.values())
    assert one["tree_size"] == three["tree_size"] == 6
    assert one["root_hash"] == three["root_hash"]
    zero = cli("verify", "--jobs", "0")
    assert zero.exit_code == 2
    assert "Invalid value for '--jobs'" in zero.stderr
    bundle = cli.keys.parent / "b.rxlb"
    assert cli("export", "--out", str(bundle)).exit_code == 0
    assert "--jobs goes with --db" in one_line_error(
        cli("verify", "--bundle", str(bundle), "--jobs", "2", db=False), 2
    )


def _corrupt_digest(data: bytes) -> bytes:
    """Change one hex digit of the attested digest: same length, still JSON."""
    at = data.index(b'"digest":"') + len(b'"digest":"')
    digit = data[at : at + 1]
    return data[:at] + (b"0" if digit != b"0" else b"1") + data[at + 1 :]


def test_verify_names_the_record_whose_bytes_were_changed(cli: Cli) -> None:
    initialized(cli)
    grow(cli, [2, 3])
    engine = make_engine(cli.url)
    try:
        with engine.begin() as conn:
            data = conn.execute(
                select(records.c.record_bytes).where(records.c.seq == 3)
            ).scalar_one()
            conn.execute(
                update(records)
                .where(records.c.seq == 3)
                .values(record_bytes=_corrupt_digest(bytes(data)))
            )
    finally:
        engine.dispose()

    text = cli("verify")
    as_json = cli("verify", "--json")

    line = one_line_error(text, 1)
    assert "record 3" in line
    assert as_json.exit_code == 1, as_json.output
    assert "Traceback" not in as_json.output
    report: dict[str, Any] = json.loads(as_json.stdout)
    assert report["verified"] is False
    assert report["error"]["seq"] == 3
    assert report["error"]["code"]
    assert report["error"]["message"]


def test_verify_on_an_empty_database_is_a_one_line_error(cli: Cli) -> None:
    for args in (("verify",), ("verify", "--json")):
        result = cli(*args)

        one_line_error(result, 2)
        assert result.stdout == ""


# --- prove ---------------------------------------------------------------------------


def test_prove_inclusion_prints_a_proof_that_verifies(cli: Cli) -> None:
    initialized(cli)
    grow(cli, [2, 3])

    result = cli("prove", "inclusion", "--seq", "0")

    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    checkpoint = opened(cli, proof["checkpoint"])
    assert (proof["leaf_index"], proof["tree_size"]) == (0, checkpoint.size)
    assert checkpoint.size == 6
    hashes = [bytes.fromhex(h) for h in proof["hashes"]]
    leaf = bytes.fromhex(proof["leaf_hash"])
    merkle.verify_inclusion(leaf, 0, proof["tree_size"], hashes, checkpoint.root_hash)
    with pytest.raises(RootMismatchError):
        merkle.verify_inclusion(bytes(32), 0, proof["tree_size"], hashes, checkpoint.root_hash)
    # against an older checkpoint
    older = json.loads(cli("prove", "inclusion", "--seq", "2", "--tree-size", "3").stdout)
    old_checkpoint = opened(cli, older["checkpoint"])
    assert old_checkpoint.size == 3
    merkle.verify_inclusion(
        bytes.fromhex(older["leaf_hash"]),
        2,
        3,
        [bytes.fromhex(h) for h in older["hashes"]],
        old_checkpoint.root_hash,
    )


def test_prove_inclusion_of_a_missing_record_is_a_one_line_error(cli: Cli) -> None:
    initialized(cli)

    result = cli("prove", "inclusion", "--seq", "999")

    assert "999" in one_line_error(result, 2)
    assert result.stdout == ""


def test_prove_consistency_prints_a_proof_that_verifies(cli: Cli) -> None:
    initialized(cli)
    grow(cli, [2, 3])

    result = cli("prove", "consistency", "--first", "1")

    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    first = opened(cli, proof["first_checkpoint"])
    second = opened(cli, proof["second_checkpoint"])
    assert (proof["first"], proof["second"]) == (first.size, second.size) == (1, 6)
    hashes = [bytes.fromhex(h) for h in proof["hashes"]]
    merkle.verify_consistency(1, 6, hashes, first.root_hash, second.root_hash)
    between = json.loads(cli("prove", "consistency", "--first", "3", "--second", "6").stdout)
    merkle.verify_consistency(
        3,
        6,
        [bytes.fromhex(h) for h in between["hashes"]],
        opened(cli, between["first_checkpoint"]).root_hash,
        opened(cli, between["second_checkpoint"]).root_hash,
    )
    # a size with no checkpoint is refused in one line
    assert "checkpoint" in one_line_error(cli("prove", "consistency", "--first", "2"), 2)

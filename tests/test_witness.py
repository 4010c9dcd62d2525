"""The witness: c2sp.org/tlog-witness ``add-checkpoint``, its state, its HTTP app and CLI.

Checkpoints are built by hand over real RFC 9162 trees (``ledger.core.merkle``)
and signed with a log key, so that the operator's misbehaviour (a fork: two
different checkpoints of one size) can be staged exactly.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.witness import TLOG_SIZE, create_witness_app
from cli.main import main
from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint
from ledger.core.cosignature import (
    WitnessVerifier,
    add_cosignatures,
    format_add_checkpoint_request,
    verify_cosignatures,
    witness_vkey,
)
from ledger.core.note import Signer, Verifier
from ledger.witness import (
    BadRequestError,
    ForkError,
    InconsistentCheckpointError,
    LogSignatureError,
    StaleSizeError,
    UnknownLogError,
    Witness,
    WitnessStateError,
    logs_from_verifiers,
)

ORIGIN = "rxledger.test/log"
LOG = Signer.generate(ORIGIN)
WITNESS_KEY = Signer.generate("witness.test/w1")


class Tree:
    """A log's leaves; checkpoints and consistency proofs over any prefix."""

    def __init__(self, tag: bytes = b"") -> None:
        self.tag = tag
        self.leaves: list[bytes] = []

    def grow(self, size: int) -> Tree:
        while len(self.leaves) < size:
            self.leaves.append(merkle.hash_leaf(self.tag + len(self.leaves).to_bytes(8, "big")))
        return self

    def root(self, size: int) -> bytes:
        return merkle.root(self.leaves[:size])

    def note(self, size: int, signer: Signer = LOG) -> str:
        self.grow(size)
        return Checkpoint(signer.name, size, self.root(size)).sign([signer])

    def proof(self, old: int, new: int) -> list[bytes]:
        self.grow(new)
        if old in (0, new):
            return []
        return merkle.consistency_proof_from_leaves(self.leaves[:new], old)


def body(old: int, proof: list[bytes], note: str) -> bytes:
    return format_add_checkpoint_request(old, proof, note)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "witness" / "state.db"


@pytest.fixture
def witness(state: Path) -> Witness:
    return Witness(WITNESS_KEY, logs_from_verifiers([LOG.verifier()]), state)


def cosigned_by(witness: Witness, note: str, line: str) -> list[Any]:
    return verify_cosignatures(add_cosignatures(note, [line]), [witness.verifier])


# --- the protocol, on the witness object --------------------------------------------


def test_first_checkpoint_with_old_size_zero_is_cosigned(witness: Witness) -> None:
    tree = Tree()
    note = tree.note(5)
    line = witness.add_checkpoint_body(body(0, [], note))
    (cosig,) = cosigned_by(witness, note, line)
    assert cosig.name == "witness.test/w1"
    held = witness.latest(ORIGIN)
    assert held is not None
    assert (held.size, held.root_hash, held.note) == (5, tree.root(5), note)
    assert held.log_vkey == LOG.vkey


def test_growth_needs_a_consistency_proof_from_the_size_held(witness: Witness) -> None:
    tree = Tree()
    witness.add_checkpoint_body(body(0, [], tree.note(3)))
    note = tree.note(10)
    line = witness.add_checkpoint_body(body(3, tree.proof(3, 10), note))
    assert cosigned_by(witness, note, line)
    held = witness.latest(ORIGIN)
    assert held is not None
    assert held.size == 10


def test_a_stale_old_size_is_told_the_size_held(witness: Witness) -> None:
    tree = Tree()
    witness.add_checkpoint_body(body(0, [], tree.note(4)))
    with pytest.raises(StaleSizeError) as caught:
        witness.add_checkpoint_body(body(0, [], tree.note(6)))
    assert caught.value.size == 4
    with pytest.raises(StaleSizeError) as caught:
        witness.add_checkpoint_body(body(2, tree.proof(2, 6), tree.note(6)))
    assert caught.value.size == 4


def test_a_bad_consistency_proof_is_refused_and_kept_as_evidence(witness: Witness) -> None:
    tree = Tree()
    witness.add_checkpoint_body(body(0, [], tree.note(3)))
    proof = tree.proof(3, 7)
    proof[0] = bytes([proof[0][0] ^ 1]) + proof[0][1:]
    with pytest.raises(InconsistentCheckpointError, match="3 to 7"):
        witness.add_checkpoint_body(body(3, proof, tree.note(7)))
    held = witness.latest(ORIGIN)
    assert held is not None
    assert held.size == 3
    (evidence,) = witness.evidence(ORIGIN)
    assert evidence.reason == "inconsistent"
    assert evidence.proof == tuple(proof)
    assert evidence.note == tree.note(7)


def test_a_rewritten_history_fails_the_consistency_proof(witness: Witness) -> None:
    """The operator rewrites leaf 1 and signs a longer tree: no proof can bridge it."""
    honest, rewritten = Tree(), Tree(b"rewritten")
    witness.add_checkpoint_body(body(0, [], honest.note(4)))
    with pytest.raises(InconsistentCheckpointError):
        witness.add_checkpoint_body(body(4, rewritten.proof(4, 9), rewritten.note(9)))


def test_a_checkpoint_not_signed_by_the_log_key_is_forbidden(witness: Witness) -> None:
    impostor = Signer.generate(ORIGIN)  # same origin, another key
    with pytest.raises(LogSignatureError, match="not signed by a key"):
        witness.add_checkpoint_body(body(0, [], Tree().note(2, impostor)))
    note = Tree().note(2)
    sig_line = note[note.rfind("\n\n") + 2 :]
    raw = bytearray(base64.b64decode(sig_line.split(" ")[2]))
    raw[-1] ^= 1
    forged = note[: note.rfind("\n\n") + 2] + f"\u2014 {ORIGIN} {base64.b64encode(raw).decode()}\n"
    with pytest.raises(LogSignatureError, match="does not verify"):
        witness.add_checkpoint_body(body(0, [], forged))
    assert witness.latest(ORIGIN) is None


def test_an_unknown_origin_is_not_found(witness: Witness) -> None:
    other = Signer.generate("other.test/log")
    with pytest.raises(UnknownLogError, match=r"other\.test/log"):
        witness.add_checkpoint_body(body(0, [], Tree().note(2, other)))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"hello",
        b"old 0\n",
        b"old x\n\n",
        b"old 0\nnot-base64\n\n",
        b"old 0\n\nnot a note\n",
        b"old 0\n\n" + f"{ORIGIN}\nzero\nAAAA\n\n\u2014 {ORIGIN} AAAAAAAA\n".encode(),
    ],
    ids=[
        "empty",
        "garbage",
        "no empty line",
        "bad old size",
        "bad proof line",
        "not a signed note",
        "bad signature line and size",
    ],
)
def test_malformed_requests_are_bad_requests(witness: Witness, raw: bytes) -> None:
    with pytest.raises((BadRequestError, LogSignatureError, UnknownLogError)) as caught:
        witness.add_checkpoint_body(raw)
    # a body that names our origin but is malformed is a 400 or a 403, never a 500
    assert caught.value.code in ("malformed", "bad-log-signature", "unknown-log")


def test_an_old_size_above_the_checkpoint_size_is_a_bad_request(witness: Witness) -> None:
    tree = Tree()
    witness.add_checkpoint_body(body(0, [], tree.note(5)))
    with pytest.raises(BadRequestError, match="larger than the checkpoint size"):
        witness.add_checkpoint_body(body(5, [], tree.note(3)))
    held = witness.latest(ORIGIN)
    assert held is not None
    assert held.size == 5


def test_a_malformed_checkpoint_text_signed_by_the_log_is_a_bad_request(witness: Witness) -> None:
    from ledger.core.note import sign_note  # noqa: PLC0415

    note = sign_note(f"{ORIGIN}\n01\n{base64.b64encode(bytes(32)).decode()}\n", [LOG])
    with pytest.raises(BadRequestError, match="leading zeros"):
        witness.add_checkpoint_body(body(0, [], note))


def test_a_tree_size_beyond_signed_64_bits_is_a_bad_request(witness: Witness) -> None:
    note = Checkpoint(ORIGIN, 2**63, bytes(32)).sign([LOG])
    with pytest.raises(BadRequestError, match="2\\^63-1"):
        witness.add_checkpoint_body(body(0, [], note))


def test_the_empty_tree_needs_the_empty_root_and_no_proof(witness: Witness) -> None:
    empty = Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT).sign([LOG])
    wrong = Checkpoint(ORIGIN, 0, bytes(32)).sign([LOG])
    with pytest.raises(InconsistentCheckpointError, match="empty root"):
        witness.add_checkpoint_body(body(0, [], wrong))
    with pytest.raises(InconsistentCheckpointError, match="must be empty"):
        witness.add_checkpoint_body(body(0, [merkle.EMPTY_ROOT], Tree().note(1)))
    assert cosigned_by(witness, empty, witness.add_checkpoint_body(body(0, [], empty)))
    assert witness.evidence() == []  # nothing held yet: nothing contradicted


def test_the_same_checkpoint_again_is_cosigned_again(witness: Witness) -> None:
    tree = Tree()
    note = tree.note(4)
    witness.add_checkpoint_body(body(0, [], note))
    line = witness.add_checkpoint_body(body(4, [], note))
    assert cosigned_by(witness, note, line)
    with pytest.raises(InconsistentCheckpointError):
        witness.add_checkpoint_body(body(4, [tree.root(4)], note))


def test_timestamps_never_go_backwards(state: Path) -> None:
    times = iter([1_700_000_100, 1_700_000_000])
    witness = Witness(
        WITNESS_KEY, logs_from_verifiers([LOG.verifier()]), state, clock=lambda: next(times)
    )
    tree = Tree()
    first = witness.add_checkpoint_body(body(0, [], tree.note(2)))
    second = witness.add_checkpoint_body(body(2, tree.proof(2, 3), tree.note(3)))
    (a,) = cosigned_by(witness, tree.note(2), first)
    (b,) = cosigned_by(witness, tree.note(3), second)
    assert a.timestamp == 1_700_000_100
    assert b.timestamp == 1_700_000_100


def test_several_log_keys_and_logs(state: Path) -> None:
    old_key, new_key = LOG, Signer.generate(ORIGIN)
    other = Signer.generate("other.test/log")
    logs = logs_from_verifiers([old_key.verifier(), new_key.verifier(), other.verifier()])
    assert set(logs) == {ORIGIN, "other.test/log"}
    witness = Witness(WITNESS_KEY, logs, state)
    tree = Tree()
    witness.add_checkpoint_body(body(0, [], tree.note(2, old_key)))
    witness.add_checkpoint_body(body(2, tree.proof(2, 4), tree.note(4, new_key)))
    witness.add_checkpoint_body(body(0, [], Tree().note(7, other)))
    held = witness.latest(ORIGIN)
    assert held is not None
    assert (held.size, held.log_vkey) == (4, new_key.vkey)
    other_held = witness.latest("other.test/log")
    assert other_held is not None
    assert other_held.size == 7


# --- the fork --------------------------------------------------------------------------


def test_a_fork_shown_to_two_parties_is_caught(witness: Witness) -> None:
    """The operator shows checkpoint A of size 6 to one party and B of size 6 to another.

    Both are signed by the log key and both extend the size-3 checkpoint the
    witness holds. The witness cosigns whichever it sees first and refuses the
    other: the second party never gets a cosignature from it, and the witness
    keeps both log-signed checkpoints as proof of the fork.
    """
    common = Tree(b"a")
    witness.add_checkpoint_body(body(0, [], common.note(3)))

    view_a, view_b = Tree(b"a"), Tree(b"a")
    view_a.grow(3).leaves.extend(merkle.hash_leaf(b"to party A %d" % i) for i in range(3))
    view_b.grow(3).leaves.extend(merkle.hash_leaf(b"to party B %d" % i) for i in range(3))
    note_a, note_b = view_a.note(6), view_b.note(6)
    assert note_a != note_b
    assert view_a.root(6) != view_b.root(6)

    # party A's checkpoint: consistent with what the witness holds, cosigned
    line_a = witness.add_checkpoint_body(body(3, view_a.proof(3, 6), note_a))
    assert cosigned_by(witness, note_a, line_a)

    # party B's checkpoint, submitted the way the protocol asks (from size 6, no proof)
    with pytest.raises(ForkError, match="fork") as caught:
        witness.add_checkpoint_body(body(6, [], note_b))
    assert caught.value.size == 6
    # ...or from the old size with a valid proof of its own: stale, still refused
    with pytest.raises(StaleSizeError):
        witness.add_checkpoint_body(body(3, view_b.proof(3, 6), note_b))
    # ...and A's cosignature cannot be moved onto B
    assert verify_cosignatures(add_cosignatures(note_b, [line_a]), [witness.verifier]) == []

    held = witness.latest(ORIGIN)
    assert held is not None
    assert held.note == note_a
    (evidence,) = witness.evidence(ORIGIN)
    assert evidence.reason == "fork"
    assert (evidence.note, evidence.held_note) == (note_b, note_a)
    assert "same size" in evidence.detail


# --- state ---------------------------------------------------------------------------


def test_state_survives_a_restart(state: Path) -> None:
    tree = Tree()
    first = Witness(WITNESS_KEY, logs_from_verifiers([LOG.verifier()]), state)
    first.add_checkpoint_body(body(0, [], tree.note(5)))
    del first

    again = Witness(WITNESS_KEY, logs_from_verifiers([LOG.verifier()]), state)
    with pytest.raises(StaleSizeError) as caught:
        again.add_checkpoint_body(body(0, [], tree.note(8)))
    assert caught.value.size == 5
    assert cosigned_by(
        again, tree.note(8), again.add_checkpoint_body(body(5, tree.proof(5, 8), tree.note(8)))
    )


def test_concurrent_requests_never_both_advance_from_one_state(witness: Witness) -> None:
    tree = Tree()
    witness.add_checkpoint_body(body(0, [], tree.note(2)))
    sizes = list(range(3, 11))
    start = threading.Barrier(len(sizes))
    outcomes: dict[int, str] = {}

    def submit(size: int) -> None:
        request = body(2, tree.proof(2, size), tree.note(size))
        start.wait()
        try:
            witness.add_checkpoint_body(request)
            outcomes[size] = "cosigned"
        except StaleSizeError:
            outcomes[size] = "stale"

    tree.grow(max(sizes))
    threads = [threading.Thread(target=submit, args=(s,)) for s in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [s for s, o in outcomes.items() if o == "cosigned"]
    assert len(winners) == 1
    assert sorted(outcomes) == sizes
    held = witness.latest(ORIGIN)
    assert held is not None
    assert held.size == winners[0]


def test_a_state_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "state.db"
    bad.write_bytes(b"this is not a database, just some bytes " * 100)
    with pytest.raises(WitnessStateError, match="not a witness state"):
        Witness(WITNESS_KEY, logs_from_verifiers([LOG.verifier()]), bad)


def test_the_state_is_plain_sqlite_with_the_held_checkpoint(witness: Witness, state: Path) -> None:
    tree = Tree()
    witness.add_checkpoint_body(body(0, [], tree.note(3)))
    with sqlite3.connect(state) as conn:
        row = conn.execute("SELECT origin, size, root FROM logs").fetchone()
    assert row == (ORIGIN, 3, tree.root(3))


# --- HTTP ----------------------------------------------------------------------------


@pytest.fixture
def http(witness: Witness) -> Iterator[TestClient]:
    with TestClient(create_witness_app(witness)) as client:
        yield client


def post(client: TestClient, content: bytes) -> Any:
    return client.post("/add-checkpoint", content=content)


def test_http_status_codes_follow_the_protocol(http: TestClient, witness: Witness) -> None:
    tree = Tree()
    ok = post(http, body(0, [], tree.note(4)))
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/plain")
    assert ok.text.startswith("\u2014 witness.test/w1 ")
    assert ok.text.endswith("\n")
    assert cosigned_by(witness, tree.note(4), ok.text)

    stale = post(http, body(0, [], tree.note(6)))
    assert stale.status_code == 409
    assert stale.headers["content-type"] == TLOG_SIZE
    assert stale.text == "4\n"

    proof = tree.proof(4, 6)
    proof[-1] = bytes(32)
    assert post(http, body(4, proof, tree.note(6))).status_code == 422
    other = Signer.generate("nobody.test/log")
    assert post(http, body(0, [], Tree().note(1, other))).status_code == 404
    assert post(http, body(0, [], Tree().note(1, Signer.generate(ORIGIN)))).status_code == 403
    bad = post(http, b"old 1\n")
    assert bad.status_code == 400
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["code"] == "malformed"
    assert post(http, body(4, [], tree.note(2))).status_code == 400


def test_http_fork_is_409_with_the_size_held(http: TestClient) -> None:
    a, b = Tree(b"a"), Tree(b"b")
    assert post(http, body(0, [], a.note(5))).status_code == 200
    fork = post(http, body(5, [], b.note(5)))
    assert fork.status_code == 409
    assert fork.headers["content-type"] == TLOG_SIZE
    assert fork.text == "5\n"


def test_http_refuses_oversize_bodies(http: TestClient) -> None:
    response = post(http, b"old 0\n" + b"A" * 70_000)
    assert response.status_code == 413
    assert response.json()["code"] == "too-large"


def test_http_tells_its_key_and_what_it_holds(http: TestClient, witness: Witness) -> None:
    tree = Tree()
    post(http, body(0, [], tree.note(3)))
    about = http.get("/").json()
    assert about["vkey"] == witness_vkey(WITNESS_KEY)
    assert WitnessVerifier.from_vkey(about["vkey"]) == witness.verifier
    assert about["logs"] == [
        {"origin": ORIGIN, "log_keys": [LOG.vkey], "size": 3, "checkpoint": tree.note(3)}
    ]
    assert http.get("/healthz").json()["status"] == "ok"
    missing = http.get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_http_state_survives_a_restart_of_the_app(state: Path) -> None:
    tree = Tree()
    logs = logs_from_verifiers([LOG.verifier()])
    with TestClient(create_witness_app(Witness(WITNESS_KEY, logs, state))) as client:
        assert post(client, body(0, [], tree.note(5))).status_code == 200
    with TestClient(create_witness_app(Witness(WITNESS_KEY, logs, state))) as client:
        assert post(client, body(0, [], tree.note(7))).text == "5\n"
        assert post(client, body(5, tree.proof(5, 7), tree.note(7))).status_code == 200


# --- CLI -----------------------------------------------------------------------------


def run(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        ["witness", *args],
        env={"RXLEDGER_HOME": str(tmp_path / "home")},
        catch_exceptions=False,
    )


def test_cli_keygen_prints_the_witness_key(tmp_path: Path) -> None:
    out = tmp_path / "w.skey"
    result = run(tmp_path, "keygen", "witness.test/cli", "--out", str(out))
    assert result.exit_code == 0, result.output
    vkey = result.output.strip()
    verifier = WitnessVerifier.from_vkey(vkey)
    assert verifier.name == "witness.test/cli"
    signer = Signer.from_skey(out.read_text().strip())
    assert witness_vkey(signer) == vkey
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = run(tmp_path, "keygen", "witness.test/cli", "--out", str(out))
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.output
    shown = run(tmp_path, "vkey", "--key", str(out))
    assert shown.output.strip() == vkey


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["--key", "{tmp}/missing.skey", "--log-key", LOG.vkey], "does not exist"),
        ("key", ["--key", "{tmp}/w.skey", "--log-key", "not-a-key"], "verifier key"),
        ("key", ["--key", "{tmp}/w.skey", "--log-key", witness_vkey(LOG)], "unsupported"),
        ("junk", ["--key", "{tmp}/w.skey", "--log-key", LOG.vkey], "signer key"),
        (
            "key",
            ["--key", "{tmp}/w.skey", "--log-key", LOG.vkey, "--state", "{tmp}/notdb"],
            "not a witness state",
        ),
    ],
    ids=[
        "missing key file",
        "malformed log key",
        "a witness key as the log key",
        "key file without a key",
        "state file that is not sqlite",
    ],
)
def test_cli_serve_start_up_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: str, args: list[str], message: str
) -> None:
    import uvicorn  # noqa: PLC0415

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    if setup == "key":
        (tmp_path / "w.skey").write_text(WITNESS_KEY.skey + "\n")
    if setup == "junk":
        (tmp_path / "w.skey").write_text("hello\n")
    (tmp_path / "notdb").write_bytes(b"not a database at all " * 100)
    result = run(tmp_path, "serve", *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("rxledger: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_cli_serve_hands_the_app_its_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn  # noqa: PLC0415

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append((a, k)))
    # the CLI hands the app its configuration in the environment: undone after the test
    for name in ("KEY_FILE", "LOG_KEYS", "STATE"):
        monkeypatch.setenv(f"RXLEDGER_WITNESS_{name}", "")
    key = tmp_path / "w.skey"
    key.write_text(WITNESS_KEY.skey + "\n")
    state = tmp_path / "state" / "w.db"
    result = run(tmp_path, "serve", "--key", str(key), "--log-key", LOG.vkey, "--state", str(state))
    assert result.exit_code == 0, result.output
    assert witness_vkey(WITNESS_KEY) in result.output
    ((args, kwargs),) = calls
    assert args == ("api.witness:create_witness_app",)
    assert kwargs["factory"] is True
    assert kwargs["port"] == 8100
    assert os.environ["RXLEDGER_WITNESS_KEY_FILE"] == str(key)
    assert os.environ["RXLEDGER_WITNESS_LOG_KEYS"] == LOG.vkey
    assert os.environ["RXLEDGER_WITNESS_STATE"] == str(state)
    # the app the server would build, from what the CLI put in the environment
    with TestClient(create_witness_app()) as client:
        tree = Tree()
        assert post(client, body(0, [], tree.note(2))).status_code == 200
    assert Witness(WITNESS_KEY, {ORIGIN: [Verifier.from_vkey(LOG.vkey)]}, state).latest(ORIGIN)

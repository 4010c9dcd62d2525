"""No acknowledged record is lost when the server is killed mid-stream (ARCHITECTURE §7).

The real server (``rxledger serve``) runs as a subprocess. Client threads
stream batch appends through :class:`~ledger.client.LedgerClient`, which
checks every receipt (record hash, signed checkpoint, inclusion proof). While
requests are in flight the server gets SIGKILL — no shutdown, no flush. It is
then restarted on the same database, and:

- every acknowledged receipt's record is there, at its seq, with its hash and
  its payload, and every checkpoint handed out is consistent with the log;
- the log verifies (``verify_database`` with the trust anchors pinned);
- the batches whose answer was lost were each committed whole or not at all:
  re-sending one gives all duplicates or all fresh receipts, and no record in
  the log is unaccounted for;
- appends work again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ledger.client import LedgerClient, RejectedError, VerifiedReceipt
from ledger.core import merkle
from ledger.core.note import Signer
from ledger.core.statement import SignedStatement, make_statement
from ledger.service import LOG_KEY_FILE
from ledger.store.audit import verify_database
from ledger.store.db import configured_master_key, make_engine
from ledger.store.reader import LedgerReader
from ledger.store.vault import Vault
from tests.conftest import LedgerEnv, make_ledger_env
from tests.helpers import register

CLIENTS = 4
PER_BATCH = 20
MAX_BATCHES = 150  # per client: the loop is bounded even if the kill never comes
KILL_AFTER = 240  # acknowledged records before the kill
START_TIMEOUT = 30.0
STREAM_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0

Item = tuple[SignedStatement, bytes | None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``rxledger serve`` in a subprocess."""

    url: str
    key_dir: Path
    home: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""

    def start(self) -> None:
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("RXLEDGER_DATABASE_URL", "RXLEDGER_LOG_KEY_FILE")
        }
        env.update(RXLEDGER_HOME=str(self.home), PYTHONUNBUFFERED="1")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli.main",
                    "serve",
                    "--db",
                    self.url,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-key-file",
                    str(self.key_dir / LOG_KEY_FILE),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                response = httpx.get(f"{self.base}/healthz", timeout=1.0)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "ok"
            return
        pytest.fail(f"server did not answer /healthz in {START_TIMEOUT}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def server_env(database_url: str, tmp_path: Path) -> tuple[LedgerEnv, list[Signer]]:
    env = make_ledger_env(database_url, tmp_path / "keys")
    try:
        clients = [
            register(env, f"pharmacy-{i}", "pharmacy", licence=f"PH-{i:04d}")
            for i in range(CLIENTS)
        ]
    finally:
        env.ledger.close()  # the server is the only writer from here on
    return env, clients


@pytest.fixture
def server(server_env: tuple[LedgerEnv, list[Signer]], tmp_path: Path) -> Iterator[Server]:
    env, _ = server_env
    srv = Server(
        url=env.url, key_dir=env.key_dir, home=tmp_path / "home", log=tmp_path / "server.log"
    )
    try:
        yield srv
    finally:
        srv.kill()


def _make_batch(signer: Signer, n: int) -> list[Item]:
    batch: list[Item] = []
    for i in range(n):
        digest = hashlib.sha256(os.urandom(16)).hexdigest()
        if i % 4 == 0:
            payload = b"dose schedule " + os.urandom(32)
            body = {"digest": digest, "payload_digest": hashlib.sha256(payload).hexdigest()}
            batch.append((make_statement(signer, "doc.attest", body), payload))
        else:
            batch.append((make_statement(signer, "doc.attest", {"digest": digest}), None))
    return batch


@dataclass
class Stream:
    """What the clients were told, and what they sent without an answer."""

    acknowledged: list[tuple[Item, VerifiedReceipt]] = field(default_factory=list)
    in_doubt: list[list[Item]] = field(default_factory=list)
    in_flight_at_kill: int = 0  # requests cut off mid-way (not: refused to connect)
    submitting: int = 0  # clients inside submit_batch now
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged_count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def _client_loop(base: str, env: LedgerEnv, signer: Signer, stream: Stream) -> None:
    try:
        with LedgerClient(base, log_key=env.log_vkey, timeout=REQUEST_TIMEOUT) as client:
            for _ in range(MAX_BATCHES):
                batch = _make_batch(signer, PER_BATCH)
                with stream.lock:
                    stream.submitting += 1
                try:
                    results = client.submit_batch(batch)
                except httpx.TransportError as e:
                    with stream.lock:
                        stream.in_doubt.append(batch)
                        if not isinstance(e, httpx.ConnectError):
                            stream.in_flight_at_kill += 1
                    return
                finally:
                    with stream.lock:
                        stream.submitting -= 1
                assert all(isinstance(r, VerifiedReceipt) for r in results), results
                with stream.lock:
                    stream.acknowledged.extend(
                        (item, r)
                        for item, r in zip(batch, results, strict=True)
                        if isinstance(r, VerifiedReceipt)
                    )
    except BaseException as e:
        with stream.lock:
            stream.errors.append(e)


def test_sigkill_mid_stream_loses_no_acknowledged_record(
    server_env: tuple[LedgerEnv, list[Signer]], server: Server
) -> None:
    env, signers = server_env
    server.start()
    size_at_start = httpx.get(f"{server.base}/healthz").json()["tree_size"]
    assert size_at_start == 1 + CLIENTS  # genesis + the registrations

    stream = Stream()
    threads = [
        threading.Thread(target=_client_loop, args=(server.base, env, s, stream), daemon=True)
        for s in signers
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + STREAM_TIMEOUT
    while stream.acknowledged_count() < KILL_AFTER and time.monotonic() < deadline:
        assert not stream.errors, stream.errors
        time.sleep(0.005)
    assert stream.acknowledged_count() >= KILL_AFTER, "the stream was too slow to reach the kill"
    # Kill while most clients are inside a request, not signing their next
    # batch: with all four between requests no request would be cut off.
    busy_deadline = time.monotonic() + 2.0
    while stream.submitting < CLIENTS - 1 and time.monotonic() < busy_deadline:
        time.sleep(0.0005)
    server.kill()  # SIGKILL, with client requests in flight
    for t in threads:
        t.join(STREAM_TIMEOUT)
        assert not t.is_alive(), "a client did not stop after the kill"
    assert not stream.errors, stream.errors
    assert stream.in_flight_at_kill >= 1, "no request was in flight at the kill"

    server.start()  # on the same database
    engine = make_engine(env.url)
    try:
        reader = LedgerReader(engine, vault=Vault(configured_master_key()))
        size_after_restart = reader.head().size

        # Every acknowledged record is there, unchanged, with its payload.
        notes: dict[int, bytes] = {}
        for (signed, payload), receipt in stream.acknowledged:
            record = reader.record(receipt.seq)
            assert record.hash == receipt.record_hash, f"record {receipt.seq} changed or lost"
            assert record.statement_bytes == signed.signed_bytes
            assert reader.payload(receipt.seq) == payload
            notes[receipt.checkpoint.size] = receipt.checkpoint.root_hash
        assert size_after_restart >= max(r.seq for _, r in stream.acknowledged) + 1
        # ...and no checkpoint handed out before the crash was rolled back or forked.
        for size, root in notes.items():
            if size < size_after_restart:
                proof = reader.consistency_proof(size, size_after_restart)
                merkle.verify_consistency(
                    size, size_after_restart, proof, root, reader.root(size_after_restart)
                )
            else:
                assert root == reader.root(size)

        result = verify_database(engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey)
        assert result.size == size_after_restart

        with LedgerClient(server.base, log_key=env.log_vkey, timeout=REQUEST_TIMEOUT) as client:
            # The restarted server serves them too (the last acknowledged of each client;
            # on SQLite a client may have been starved of the lock and have none).
            last: dict[str, VerifiedReceipt] = {}
            for (signed, _), receipt in stream.acknowledged:
                last[signed.statement.actor] = receipt
            assert last
            for receipt in last.values():
                served = client.get(f"/v1/records/{receipt.seq}")
                assert served["record_hash"] == receipt.record_hash.hex()

            # Batches whose answer was lost were committed whole or not at all.
            committed_in_doubt = 0
            for batch in stream.in_doubt:
                results = client.submit_batch(batch)
                assert all(isinstance(r, VerifiedReceipt) for r in results), results
                receipts = [r for r in results if isinstance(r, VerifiedReceipt)]
                flags = {r.duplicate for r in receipts}
                assert len(flags) == 1, f"a batch was half committed: {flags}"
                if receipts[0].duplicate:
                    committed_in_doubt += len(batch)
                    assert all(r.seq < size_after_restart for r in receipts)
                else:
                    assert all(r.seq >= size_after_restart for r in receipts)
            # No record is unaccounted for: genesis, registrations, acknowledged, in doubt.
            assert size_after_restart == size_at_start + len(stream.acknowledged) + (
                committed_in_doubt
            )

            # Appends work again.
            size_now = reader.head().size
            fresh = _make_batch(signers[0], 5)
            results = client.submit_batch(fresh)
            assert [r.seq for r in results if isinstance(r, VerifiedReceipt)] == list(
                range(size_now, size_now + 5)
            ), [r for r in results if isinstance(r, RejectedError)]
            assert client.get("/healthz")["tree_size"] == size_now + 5

        result = verify_database(engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey)
        assert result.size == size_now + 5
    finally:
        engine.dispose()

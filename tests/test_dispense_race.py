"""Two pharmacies dispensing the last fill of one prescription at the same moment.

Two ``rxledger serve`` processes on one PostgreSQL database, each answering one
pharmacy; both requests are fired together (threads released by a barrier),
round after round with new prescriptions. In every round exactly one dispense
is recorded and the other is refused, and no prescription is ever dispensed
beyond what was prescribed (ARCHITECTURE §7).
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.store.audit import verify_database
from ledger.store.db import make_engine
from ledger.store.reader import ProjectionReader
from ledger.store.sequencer import Submission
from tests.conftest import make_ledger_env
from tests.world import DRUG_A, World, item, line

ROUNDS = 10
#: the whole test, servers included, must end within this (seconds)
BUDGET = 50.0
#: why the loser may be refused: the winner completed the prescription (its
#: last fill, or all of its quantity), or took the fill number it asked for
LOSING_CODES = {"rx-completed", "no-fills-left", "fill-out-of-order", "over-quantity"}
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def start_server(url: str, tmp: Path, name: str) -> Server:
    port = free_port()
    log = tmp / f"{name}.log"
    env = {
        **os.environ,
        "RXLEDGER_HOME": str(tmp / "home"),
        "RXLEDGER_SETTLEMENT_KEY_DIR": str(tmp / "empty"),
    }
    env.pop("RXLEDGER_DATABASE_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "rxledger"),
                "serve",
                "--db",
                url,
                "--port",
                str(port),
                "--log-key-file",
                str(tmp / "keys" / "log.skey"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(process, port, log)


def wait_ready(servers: list[Server], deadline: float) -> None:
    for server in servers:
        while True:
            assert server.process.poll() is None, f"server exited: {server.output()}"
            try:
                if httpx.get(server.url + "/v1/checkpoint", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready: {server.output()}"
            time.sleep(0.1)


def stop(servers: list[Server]) -> None:
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


def wire(submission: Submission) -> dict[str, Any]:
    body = submission.signed.to_json()
    assert submission.payload is not None
    body["payload"] = base64.b64encode(submission.payload).decode("ascii")
    return body


def race(clients: list[httpx.Client], bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Post ``bodies[k]`` through ``clients[k]``, all released at once."""
    barrier = threading.Barrier(len(bodies))
    responses: list[Any] = [None] * len(bodies)

    def fire(k: int) -> None:
        barrier.wait(timeout=10)
        try:
            responses[k] = clients[k].post("/v1/statements", json=bodies[k])
        except httpx.HTTPError as e:  # reported below, with the round
            responses[k] = e

    threads = [threading.Thread(target=fire, args=(k,)) for k in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert all(isinstance(r, httpx.Response) for r in responses), responses
    return responses


@pytest.mark.slow
@pytest.mark.postgres
def test_two_pharmacies_racing_for_the_last_fill_only_one_dispenses(
    postgres_url: str, tmp_path: Path
) -> None:
    deadline = time.monotonic() + BUDGET
    env = make_ledger_env(postgres_url, tmp_path / "keys")
    plans: list[tuple[str, int, list[int]]] = []  # (rx, fills allowed, the two quantities)
    try:
        world = World.build(env)
        for k in range(ROUNDS):
            rx_id = world.new_id("RX")
            # even rounds: the last allowed fill; odd rounds: the last of the quantity
            fills, quantities = (2, [30, 30]) if k % 2 == 0 else (3, [30, 30 - k % 4])
            world.must(world.make_issue(rx_id, items=[item(DRUG_A, 60, 30)], fills=fills))
            world.must(world.make_dispense(rx_id, 1, [line(0, 30)], claimed=False, insurer=None))
            plans.append((rx_id, fills, quantities))
    finally:
        env.ledger.close()
    (tmp_path / "empty").mkdir()

    servers: list[Server] = []
    clients = [httpx.Client(timeout=15), httpx.Client(timeout=15)]
    try:
        servers = [start_server(postgres_url, tmp_path, f"server-{k}") for k in (1, 2)]
        wait_ready(servers, deadline)
        for client, server in zip(clients, servers, strict=True):
            client.base_url = httpx.URL(server.url)

        winners: dict[str, int] = {}
        for round_, (rx_id, _, quantities) in enumerate(plans):
            bodies = [
                wire(
                    world.make_dispense(
                        rx_id, 2, [line(0, q)], by=pharmacy, claimed=False, insurer=None
                    )
                )
                for pharmacy, q in zip(("pharmacy-1", "pharmacy-2"), quantities, strict=True)
            ]
            responses = race(clients, bodies)
            statuses = sorted(r.status_code for r in responses)
            report = [(r.status_code, r.json().get("code")) for r in responses]
            assert statuses == [201, 422], f"round {round_}: {report}"
            (loser,) = [r.json() for r in responses if r.status_code == 422]
            assert loser["code"] in LOSING_CODES, f"round {round_}: {report}"
            winner = next(k for k, r in enumerate(responses) if r.status_code == 201)
            winners[rx_id] = quantities[winner]
            assert time.monotonic() < deadline, "the race test ran over its time budget"
    finally:
        for client in clients:
            client.close()
        stop(servers)

    engine = make_engine(postgres_url)
    try:
        views = ProjectionReader(engine)
        for rx_id, _, _ in plans:
            rx = views.get("rx", rx_id)
            assert rx is not None
            (it,) = rx["items"]
            assert it["dispensed"] == 30 + winners[rx_id] <= it["quantity"], rx
            assert rx["fills_done"] == 2
            assert len(rx["history"]) == 3  # issue, fill 1, one fill 2
        verify_database(engine)
    finally:
        engine.dispose()

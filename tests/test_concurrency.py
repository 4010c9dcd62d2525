"""Concurrent writers never fork the chain, never leave a gap, never lose a receipt.

ARCHITECTURE §4/§7: one sequencer per log; an append locks the log head
(PostgreSQL: ``SELECT … FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``), so writers
in threads of one process and in separate processes are serialized by the
database, not by anything in Python.

After the writers are done, every receipt any of them was given is checked
against the log: the record at its ``seq`` has its hash, its inclusion proof
verifies against its signed checkpoint, that checkpoint is the one stored and
is consistent with the final tree (no fork), seqs are ``0..n-1`` without gap
or duplicate, ``prev`` links form one chain, no ``(actor, nonce)`` appears
twice, and ``verify_database`` passes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ledger.client import check_receipt
from ledger.core import merkle
from ledger.core.checkpoint import open_checkpoint
from ledger.core.errors import LedgerError, RejectionError
from ledger.core.note import Signer, Verifier
from ledger.core.record import GENESIS_PREV, Record
from ledger.core.statement import SignedStatement, make_statement
from ledger.service import LOG_KEY_FILE, Ledger
from ledger.store.audit import verify_database
from ledger.store.reader import LedgerReader
from ledger.store.schema import records
from ledger.store.sequencer import Receipt, Submission
from tests._workers import make_batches, run_writer, writer_process
from tests.conftest import LedgerEnv, make_ledger_env
from tests.helpers import attest, register

THREADS = 4
PROCESSES = 4
BATCHES = 10
PER_BATCH = 20
JOIN_TIMEOUT = 90.0

Outcomes = list[tuple[dict[str, Any], dict[str, Any]]]


@pytest.fixture
def pg_env(postgres_url: str, tmp_path: Path) -> Iterator[LedgerEnv]:
    env = make_ledger_env(postgres_url, tmp_path / "keys")
    try:
        yield env
    finally:
        env.ledger.close()


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Iterator[LedgerEnv]:
    env = make_ledger_env(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "keys")
    try:
        yield env
    finally:
        env.ledger.close()


def _register_writers(env: LedgerEnv, count: int) -> dict[str, Signer]:
    return {
        f"writer-{i}": register(env, f"writer-{i}", "pharmacy", licence=f"PH-{i:04d}")
        for i in range(count)
    }


def _thread_writers(
    ledger: Ledger, plans: dict[str, list[list[SignedStatement]]], start: threading.Event
) -> tuple[list[threading.Thread], dict[str, Outcomes], dict[str, BaseException]]:
    results: dict[str, Outcomes] = {}
    errors: dict[str, BaseException] = {}

    def work(name: str) -> None:
        try:
            if not start.wait(JOIN_TIMEOUT):
                raise TimeoutError("no start signal")
            results[name] = run_writer(ledger, plans[name])
        except BaseException as e:
            errors[name] = e

    threads = [threading.Thread(target=work, args=(name,), name=name) for name in plans]
    for t in threads:
        t.start()
    return threads, results, errors


def _join(threads: list[threading.Thread], errors: dict[str, BaseException]) -> None:
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive(), f"{t.name} did not finish within {JOIN_TIMEOUT}s"
    assert not errors, errors


def check_log(env: LedgerEnv, outcomes: dict[str, Outcomes], *, registered: int) -> None:
    """Everything the module docs promise, for the receipts in ``outcomes``."""
    log_key = Verifier.from_vkey(env.log_vkey)
    engine = env.ledger.engine
    reader = LedgerReader(engine)

    # Every statement was valid: all accepted; the final re-send of the first
    # batch came back as duplicates of the original receipts.
    acknowledged: list[tuple[SignedStatement, dict[str, Any]]] = []
    for name, items in outcomes.items():
        assert len(items) == (BATCHES + 1) * PER_BATCH, name
        for _, receipt in items:
            assert "rejected" not in receipt, (name, receipt)
        first, rest = items[:PER_BATCH], items[PER_BATCH:]
        retry, fresh = rest[-PER_BATCH:], items[: BATCHES * PER_BATCH]
        for (w1, r1), (w2, r2) in zip(first, retry, strict=True):
            assert w1 == w2
            assert r2["duplicate"] is True, (name, r2)
            assert (r2["seq"], r2["record_hash"]) == (r1["seq"], r1["record_hash"]), name
            # a duplicate's receipt is a real proof too (against a later checkpoint)
            check_receipt(r2, SignedStatement.from_json(w2), log_key=log_key, origin=env.origin)
        for wire, receipt in fresh:
            assert receipt["duplicate"] is False, (name, receipt)
            acknowledged.append((SignedStatement.from_json(wire), receipt))

    # Counts, seqs: 0..n-1, no gap, no duplicate; the head agrees.
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                records.c.seq, records.c.actor, records.c.nonce, records.c.record_bytes
            ).order_by(records.c.seq)
        ).all()
    n = len(rows)
    assert n == len(acknowledged) + registered + 1  # + genesis
    assert [int(r.seq) for r in rows] == list(range(n))
    assert reader.head().size == n
    receipt_seqs = [int(r["seq"]) for _, r in acknowledged]
    assert len(set(receipt_seqs)) == len(receipt_seqs), "two receipts for one seq"
    assert set(receipt_seqs) == set(range(registered + 1, n))

    # No (actor, nonce) twice.
    pairs = [(r.actor, r.nonce) for r in rows]
    assert len(set(pairs)) == n

    # One chain: each prev is the hash of the record before.
    parsed = [Record.from_bytes(bytes(r.record_bytes), expected_seq=int(r.seq)) for r in rows]
    assert parsed[0].prev == GENESIS_PREV
    for before, record in itertools.pairwise(parsed):
        assert record.prev == before.hash.hex(), f"fork or break at seq {record.seq}"

    # Each receipt: the record at its seq is the statement sent, with the receipt's hash;
    # the receipt's proof verifies against its checkpoint, which is the one stored.
    final_size, final_root = n, reader.root(n)
    notes: dict[int, str] = {}
    for signed, receipt in acknowledged:
        record = parsed[receipt["seq"]]
        assert record.hash.hex() == receipt["record_hash"]
        assert record.statement_bytes == signed.signed_bytes
        assert record.prev == receipt["prev"]
        check_receipt(receipt, signed, log_key=log_key, origin=env.origin)
        size = receipt["inclusion_proof"]["tree_size"]
        assert notes.setdefault(size, receipt["checkpoint"]) == receipt["checkpoint"], (
            f"two different checkpoints handed out for tree size {size}"
        )
    # ...and every checkpoint handed out is consistent with the final tree: no fork.
    for size, note in notes.items():
        assert reader.checkpoint(size) == note
        checkpoint, _ = open_checkpoint(note, origin=env.origin, verifier=log_key)
        if size < final_size:
            proof = reader.consistency_proof(size, final_size)
            merkle.verify_consistency(size, final_size, proof, checkpoint.root_hash, final_root)
        else:
            assert checkpoint.root_hash == final_root

    result = verify_database(engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey)
    assert result.size == n
    assert result.root == final_root


def assert_interleaved(outcomes: dict[str, Outcomes], *, all_pairs: bool) -> None:
    """The writers really ran at once: their spans of seqs overlap.

    With ``all_pairs``, every writer's span overlaps every other's (PostgreSQL
    queues lock waiters fairly). SQLite's busy handler is not fair (a waiting
    writer sleeps and retries, and may be starved until others finish), so
    there it is enough that some writers' batches interleave.
    """
    spans = {}
    for name, items in outcomes.items():
        seqs = [r["seq"] for _, r in items]
        spans[name] = (min(seqs), max(seqs))
    if all_pairs:
        latest_first = max(lo for lo, _ in spans.values())
        earliest_last = min(hi for _, hi in spans.values())
        assert latest_first < earliest_last, f"writers did not overlap: {spans}"
    else:
        overlapping = [
            (a, b)
            for a in spans
            for b in spans
            if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
        ]
        assert overlapping, f"writers did not overlap: {spans}"


@pytest.mark.postgres
def test_postgres_threads_and_processes_append_without_fork_gap_or_loss(
    pg_env: LedgerEnv,
) -> None:
    env = pg_env
    signers = _register_writers(env, THREADS + PROCESSES)
    names = sorted(signers)
    thread_names, process_names = names[:THREADS], names[THREADS:]
    log_key_file = str(env.key_dir / LOG_KEY_FILE)

    ctx = multiprocessing.get_context("spawn")
    ready: Any = ctx.Queue()
    results: Any = ctx.Queue()
    go = ctx.Event()
    processes = [
        ctx.Process(
            target=writer_process,
            args=(
                name,
                env.url,
                log_key_file,
                signers[name].skey,
                BATCHES,
                PER_BATCH,
                ready,
                go,
                results,
            ),
            name=name,
            daemon=True,
        )
        for name in process_names
    ]
    go_threads = threading.Event()
    plans = {name: make_batches(signers[name], BATCHES, PER_BATCH) for name in thread_names}
    threads: list[threading.Thread] = []
    errors: dict[str, BaseException] = {}
    outcomes: dict[str, Outcomes] = {}
    try:
        for p in processes:
            p.start()
        for _ in processes:
            ready.get(timeout=JOIN_TIMEOUT)
        threads, thread_outcomes, errors = _thread_writers(env.ledger, plans, go_threads)
        go.set()
        go_threads.set()
        for _ in processes:
            name, items, failure = results.get(timeout=JOIN_TIMEOUT)
            assert failure is None, f"{name} failed:\n{failure}"
            outcomes[name] = items
        _join(threads, errors)
        outcomes.update(thread_outcomes)
        for p in processes:
            p.join(JOIN_TIMEOUT)
            assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
    finally:
        go.set()
        go_threads.set()
        for p in processes:
            if p.is_alive():
                p.kill()
                p.join(5)

    assert sorted(outcomes) == names
    assert_interleaved(outcomes, all_pairs=True)
    check_log(env, outcomes, registered=len(signers))


def test_sqlite_threads_are_serialized_by_begin_immediate(sqlite_env: LedgerEnv) -> None:
    env = sqlite_env
    writers = THREADS + PROCESSES
    signers = _register_writers(env, writers)
    plans = {name: make_batches(s, BATCHES, PER_BATCH) for name, s in signers.items()}
    go = threading.Event()
    threads, outcomes, errors = _thread_writers(env.ledger, plans, go)
    go.set()
    _join(threads, errors)
    assert sorted(outcomes) == sorted(signers)
    assert_interleaved(outcomes, all_pairs=False)
    check_log(env, outcomes, registered=writers)


# --- racing for the same nonce ------------------------------------------------------


def _race(ledger: Ledger, batches: list[list[Submission]]) -> list[list[Receipt | LedgerError]]:
    """Append every batch from its own thread, all released at once."""
    barrier = threading.Barrier(len(batches))
    out: list[list[Receipt | LedgerError] | None] = [None] * len(batches)
    errors: queue.Queue[BaseException] = queue.Queue()

    def work(i: int) -> None:
        try:
            barrier.wait(JOIN_TIMEOUT)
            out[i] = ledger.append(batches[i])
        except BaseException as e:
            errors.put(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive()
    assert errors.empty(), errors.get()
    return [o for o in out if o is not None]


@pytest.fixture
def race_env(database_url: str, tmp_path: Path) -> Iterator[LedgerEnv]:
    env = make_ledger_env(database_url, tmp_path / "keys")
    try:
        yield env
    finally:
        env.ledger.close()


def test_identical_statements_raced_are_recorded_once(race_env: LedgerEnv) -> None:
    """Eight writers send the same signed batch at once: one record each, same receipts."""
    env = race_env
    signer = register(env, "pharmacy-race", "pharmacy", licence="PH-0001")
    size_before = env.ledger.reader.head().size
    batch = [Submission(attest(signer)) for _ in range(PER_BATCH)]
    results = _race(env.ledger, [list(batch) for _ in range(THREADS + PROCESSES)])
    assert len(results) == THREADS + PROCESSES
    fresh = 0
    for outcomes in results:
        assert all(isinstance(o, Receipt) for o in outcomes), outcomes
        receipts = [o for o in outcomes if isinstance(o, Receipt)]
        assert [r.seq for r in receipts] == list(range(size_before, size_before + PER_BATCH))
        assert len({r.duplicate for r in receipts}) == 1, "a batch is one transaction"
        fresh += not receipts[0].duplicate
    assert fresh == 1, "exactly one writer recorded the batch; the others got duplicates"
    assert env.ledger.reader.head().size == size_before + PER_BATCH
    verify_database(env.ledger.engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey)


def test_different_statements_with_one_nonce_raced_one_wins(race_env: LedgerEnv) -> None:
    """Eight writers sign different statements under the same nonces: one wins each nonce."""
    env = race_env
    signer = register(env, "pharmacy-race", "pharmacy", licence="PH-0001")
    size_before = env.ledger.reader.head().size
    nonces = [f"race-nonce-{i:08d}" for i in range(PER_BATCH)]
    batches = [
        [
            Submission(make_statement(signer, "doc.attest", {"digest": f"{w:02x}" * 32}, nonce=n))
            for n in nonces
        ]
        for w in range(THREADS + PROCESSES)
    ]
    results = _race(env.ledger, batches)
    winners = 0
    for outcomes in results:
        kinds = {type(o) for o in outcomes}
        assert len(kinds) == 1, f"a batch is decided under one lock: {outcomes}"
        if isinstance(outcomes[0], Receipt):
            winners += 1
        else:
            for o in outcomes:
                assert isinstance(o, RejectionError)
                assert o.code == "replayed-nonce", o
    assert winners == 1
    assert env.ledger.reader.head().size == size_before + PER_BATCH
    with env.ledger.engine.connect() as conn:
        stored = conn.execute(
            select(records.c.nonce).where(records.c.actor == signer.name)
        ).scalars()
        assert sorted(stored) == nonces
    verify_database(env.ledger.engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey)

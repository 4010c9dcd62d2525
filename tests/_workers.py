"""Process targets for the concurrency tests (importable, so 'spawn' can pickle them).

A writer opens its own :class:`~ledger.service.Ledger` on the database, signs
its statements with its own actor key, says it is ready, waits for the start
signal, appends its batches, and puts what it was told (receipts) and what it
sent (the signed statements) on the result queue.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from ledger.core.errors import LedgerError
from ledger.core.note import Signer
from ledger.core.statement import SignedStatement
from ledger.service import Ledger
from ledger.store.sequencer import Receipt, Submission
from tests.helpers import attest

#: how long a worker waits for the start signal (seconds)
START_TIMEOUT = 60.0


def make_batches(signer: Signer, batches: int, per_batch: int) -> list[list[SignedStatement]]:
    return [[attest(signer) for _ in range(per_batch)] for _ in range(batches)]


def run_writer(
    ledger: Ledger, plan: list[list[SignedStatement]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Append each batch of ``plan``; then re-send the first batch (an idempotent retry).

    Returns ``(statement wire json, receipt json)`` for every outcome, in order;
    a refusal is returned as ``{"rejected": code}`` in place of the receipt.
    """
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for batch in [*plan, plan[0]]:
        outcomes = ledger.append([Submission(s) for s in batch])
        for signed, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Receipt):
                out.append((signed.to_json(), outcome.to_json()))
            else:
                assert isinstance(outcome, LedgerError)
                out.append((signed.to_json(), {"rejected": outcome.code, "detail": str(outcome)}))
    return out


def writer_process(
    name: str,
    url: str,
    log_key_file: str,
    skey: str,
    batches: int,
    per_batch: int,
    ready: Any,  # multiprocessing queue
    start: Any,  # multiprocessing event
    results: Any,  # multiprocessing queue
) -> None:
    """A writer in its own process, with its own Ledger (its own engine and pool)."""
    try:
        ledger = Ledger.open(url, log_key_file=Path(log_key_file))
        try:
            plan = make_batches(Signer.from_skey(skey), batches, per_batch)
            ready.put(name)
            if not start.wait(START_TIMEOUT):
                raise TimeoutError("no start signal")
            results.put((name, run_writer(ledger, plan), None))
        finally:
            ledger.close()
    except BaseException:
        ready.put(name)  # never leave the parent waiting
        results.put((name, [], traceback.format_exc()))

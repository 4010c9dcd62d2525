"""What patients' privacy costs (issue 6): sealing, the append path, reads, erasure.

1. The primitives: sealing and opening a typical prescription payload
   (XChaCha20-Poly1305 with its associated data), per operation.
2. The append path, SQLite and PostgreSQL: ``doc.attest`` records in batches
   of 100, without a payload and with one (sealed under the ledger's data key),
   so the difference is the cost of storing and sealing a payload.
3. A patient's payload read through the access check and the access log
   (``ledger.access.read_payload``): p50/p99.
4. Erasure of one patient holding K prescriptions among others: the latency of
   the ``erasure.execute`` append (shredding in its transaction), then a full
   ``verify_database`` with the shredded payloads.

    .venv/bin/python bench/privacy.py            # a few minutes
    .venv/bin/python bench/privacy.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    latency_summary,
    open_new_ledger,
    peak_rss_mb,
    postgres_available,
    postgres_database,
    print_machine,
    sqlite_url,
    table,
    write_results,
)
from ledger.access import read_payload
from ledger.core.note import Signer
from ledger.core.payload import seal
from ledger.core.sealing import new_data_key, open_payload, seal_payload
from ledger.core.statement import format_time, make_statement, now
from ledger.store.audit import verify_database
from ledger.store.sequencer import Receipt, Submission

CONTENT = {
    "items": [
        {
            "drug_code": "C08CA01",
            "drug_name": "Amlodipine 5 mg tablet",
            "quantity": 28,
            "unit": "tablet",
            "days_supply": 28,
            "dose": "1 daily",
        },
        {
            "drug_code": "C10AA05",
            "drug_name": "Atorvastatin 20 mg tablet",
            "quantity": 28,
            "unit": "tablet",
            "days_supply": 28,
            "dose": "1 at night",
        },
    ],
    "diagnosis_codes": ["I10", "E78.5"],
}


def primitives(n: int) -> dict[str, Any]:
    data, digest_hex = seal(CONTENT)
    digest, key = bytes.fromhex(digest_hex), new_data_key()
    sealed_times, open_times = [], []
    sealed = b""
    for i in range(n):
        t0 = time.perf_counter()
        sealed = seal_payload(key, i, digest, data)
        t1 = time.perf_counter()
        open_payload(key, i, digest, sealed)
        t2 = time.perf_counter()
        sealed_times.append(t1 - t0)
        open_times.append(t2 - t1)
    return {
        "payload_bytes": len(data),
        "sealed_bytes": len(sealed),
        "seal": latency_summary(sealed_times),
        "open": latency_summary(open_times),
    }


def _attests(signer: Signer, n: int, *, with_payload: bool) -> list[Submission]:
    out = []
    for _ in range(n):
        body: dict[str, Any] = {"digest": os.urandom(32).hex()}
        payload = None
        if with_payload:
            payload, body["payload_digest"] = seal(CONTENT)
        out.append(Submission(make_statement(signer, "doc.attest", body), payload=payload))
    return out


def append_cost(url: str, key_dir: Path, n: int, batch: int = 100) -> dict[str, Any]:
    bl = open_new_ledger(url, key_dir)
    try:
        rates = {}
        for with_payload in (False, True, False, True):  # alternate: the same warm-up for both
            subs = _attests(bl.registrar, n, with_payload=with_payload)
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                for outcome in bl.ledger.append(subs[i : i + batch]):
                    assert isinstance(outcome, Receipt), outcome
            rate = n / (time.perf_counter() - t0)
            label = "with payload" if with_payload else "without"
            rates[label] = max(rates.get(label, 0.0), rate)
        return {
            "records_per_s": rates,
            "cost_pct": 100 * (1 - rates["with payload"] / rates["without"]),
        }
    finally:
        bl.close()


def erasure_and_reads(url: str, key_dir: Path, k: int, others: int) -> dict[str, Any]:
    bl = open_new_ledger(url, key_dir)
    ledger, registrar = bl.ledger, bl.registrar
    try:
        prescriber = Signer.generate("dr-bench")
        patient = Signer.generate("P-0000000000bench")
        setup = [
            make_statement(
                registrar,
                "actor.register",
                {
                    "actor": "dr-bench",
                    "role": "prescriber",
                    "key": prescriber.vkey,
                    "licence": "L1",
                },
            ),
            make_statement(
                registrar,
                "actor.register",
                {"actor": patient.name, "role": "patient", "key": patient.vkey},
            ),
        ]
        for outcome in ledger.append([Submission(s) for s in setup]):
            assert isinstance(outcome, Receipt), outcome
        until = format_time(now().replace(year=now().year + 1))

        def issue(owner: str, n: int) -> list[int]:
            seqs = []
            for start in range(0, n, 100):
                batch = []
                for _ in range(min(100, n - start)):
                    payload, digest = seal(CONTENT)
                    body = {
                        "rx_id": f"RX-{os.urandom(6).hex()}",
                        "patient": owner,
                        "valid_until": until,
                        "fills_allowed": 1,
                        "payload_digest": digest,
                    }
                    batch.append(
                        Submission(make_statement(prescriber, "rx.issue", body), payload=payload)
                    )
                for outcome in ledger.append(batch):
                    assert isinstance(outcome, Receipt), outcome
                    seqs.append(outcome.seq)
            return seqs

        mine = issue(patient.name, k)
        for j in range(others):
            issue(f"P-{j:016x}", max(1, k // max(others, 1)))
        reader = {"actor_id": patient.name, "role": "patient", "guardian_of": []}
        reads = []
        for seq in mine[: min(len(mine), 500)]:
            t0 = time.perf_counter()
            read_payload(ledger, reader, seq)
            reads.append(time.perf_counter() - t0)
        request = make_statement(patient, "erasure.request", {"patient": patient.name})
        assert isinstance(ledger.append([Submission(request)])[0], Receipt)
        execute = make_statement(
            registrar, "erasure.execute", {"patient": patient.name, "reason": "patient-request"}
        )
        t0 = time.perf_counter()
        (outcome,) = ledger.append([Submission(execute)])
        erase_s = time.perf_counter() - t0
        assert isinstance(outcome, Receipt), outcome
        t0 = time.perf_counter()
        result = verify_database(ledger.engine)
        verify_s = time.perf_counter() - t0
        assert result.shredded == k, result
        return {
            "payload_reads": latency_summary(reads),
            "erasure_ms": erase_s * 1000,
            "payloads_shredded": result.shredded,
            "verify_records": result.size,
            "verify_s": verify_s,
            "verify_records_per_s": result.size / verify_s,
        }
    finally:
        bl.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    info = print_machine()
    n_prim, n_append, k, others = (2000, 500, 100, 5) if args.quick else (50_000, 5000, 2000, 50)
    results: dict[str, Any] = {"machine": info, "primitives": primitives(n_prim)}
    p = results["primitives"]
    table(
        ["op", "payload B", "sealed B", "p50 µs", "p99 µs"],
        [
            [
                "seal",
                p["payload_bytes"],
                p["sealed_bytes"],
                p["seal"]["p50_ms"] * 1000,
                p["seal"]["p99_ms"] * 1000,
            ],
            [
                "open",
                p["payload_bytes"],
                p["sealed_bytes"],
                p["open"]["p50_ms"] * 1000,
                p["open"]["p99_ms"] * 1000,
            ],
        ],
        title=f"\nsealing a prescription payload ({n_prim} operations)",
    )
    backends = ["sqlite", *(["postgres"] if postgres_available() else [])]
    rows_append, rows_erase = [], []
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            if backend == "sqlite":
                a = append_cost(sqlite_url(directory / "a.db"), directory / "ka", n_append)
                e = erasure_and_reads(sqlite_url(directory / "e.db"), directory / "ke", k, others)
            else:
                with postgres_database() as url:
                    a = append_cost(url, directory / "ka", n_append)
                with postgres_database() as url:
                    e = erasure_and_reads(url, directory / "ke", k, others)
        results[backend] = {"append": a, "erasure": e}
        rates = a["records_per_s"]
        rows_append.append([backend, rates["without"], rates["with payload"], a["cost_pct"]])
        rows_erase.append(
            [
                backend,
                e["payload_reads"]["p50_ms"],
                e["payload_reads"]["p99_ms"],
                e["payloads_shredded"],
                e["erasure_ms"],
                e["verify_records"],
                e["verify_records_per_s"],
            ]
        )
    table(
        ["backend", "no payload rec/s", "sealed payload rec/s", "cost %"],
        rows_append,
        title=f"\nappend, batches of 100 ({n_append} records each way, best of 2)",
    )
    table(
        [
            "backend",
            "read p50 ms",
            "read p99 ms",
            "shredded",
            "erasure ms",
            "records",
            "verify rec/s",
        ],
        rows_erase,
        title=f"\nreads through access control; erasing a patient with {k} payloads",
    )
    results["peak_rss_mb"] = peak_rss_mb()
    print(f"\npeak RSS {results['peak_rss_mb']:.0f} MiB")
    write_results("privacy", results)


if __name__ == "__main__":
    main()

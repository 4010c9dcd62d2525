"""Inclusion-proof latency, cold and warm, against the log size.

``LedgerReader.inclusion_proof(leaf_index, tree_size)`` at random leaf
indices with ``tree_size`` = the log's size, on

- SQLite at 10^4, 10^5, 10^6 records (the ledgers bench/verify.py caches
  under bench/results/verify-cache/, built here if missing), and
- PostgreSQL at 10^4 and 10^5 (fresh databases, built here, dropped after).

Each size is measured in a subprocess of its own:

- cold, new engine: ``make_engine`` + ``LedgerReader`` + one proof, timed
  together (connect included), disposed, repeated;
- cold, fresh process: a new interpreter per sample that opens the ledger and
  times its first proof (imports not timed; connect and first queries are);
- warm: one reader, warmed up, then many proofs at random leaves.

The OS page cache is not dropped (shared machine), so "cold" means a cold
process/connection, not a cold disk.

Goal: p99 at 10^6 no more than 2x p99 at 10^4.

    .venv/bin/python bench/proofs.py
    .venv/bin/python bench/proofs.py --quick
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

GOAL_FACTOR = 2.0
PHASE_SECONDS = 40.0


def measure_worker(url: str, warm_n: int, cold_n: int, seed: int) -> dict:
    from ledger.core import merkle
    from ledger.store.db import make_engine
    from ledger.store.reader import LedgerReader

    rng = random.Random(seed)
    engine = make_engine(url)
    reader = LedgerReader(engine)
    head = reader.head()
    size = head.size

    # correctness spot check (untimed): proofs verify against the head root
    for _ in range(5):
        leaf = rng.randrange(size)
        proof = reader.inclusion_proof(leaf, size)
        merkle.verify_inclusion(reader.record(leaf).leaf_hash, leaf, size, proof, head.root_hash)
    engine.dispose()

    # each phase stops after PHASE_SECONDS even if it has fewer samples (a proof
    # that scans a table costs ~n; 5,000 of them at 10^6 would take many minutes)
    cold: list[float] = []
    deadline = time.perf_counter() + PHASE_SECONDS
    for _ in range(cold_n):
        if time.perf_counter() > deadline and len(cold) >= 30:
            break
        leaf = rng.randrange(size)
        t = time.perf_counter()
        eng = make_engine(url)
        LedgerReader(eng).inclusion_proof(leaf, size)
        cold.append(time.perf_counter() - t)
        eng.dispose()

    engine = make_engine(url)
    reader = LedgerReader(engine)
    for _ in range(20):
        reader.inclusion_proof(rng.randrange(size), size)
    warm: list[float] = []
    lengths: list[int] = []
    deadline = time.perf_counter() + PHASE_SECONDS
    for _ in range(warm_n):
        if time.perf_counter() > deadline and len(warm) >= 100:
            break
        leaf = rng.randrange(size)
        t = time.perf_counter()
        proof = reader.inclusion_proof(leaf, size)
        warm.append(time.perf_counter() - t)
        lengths.append(len(proof))
    engine.dispose()
    return {
        "tree_size": size,
        "cold_new_engine": C.latency_summary(cold),
        "warm": C.latency_summary(warm),
        "proof_len_mean": sum(lengths) / len(lengths),
        "peak_rss_mb": C.peak_rss_mb(),
    }


def first_proof_worker(url: str, seed: int) -> dict:
    """One sample of a fresh process: open, first proof."""
    from ledger.store.db import make_engine
    from ledger.store.reader import LedgerReader

    t = time.perf_counter()
    engine = make_engine(url)
    reader = LedgerReader(engine)
    size = reader.head().size
    t_head = time.perf_counter() - t
    leaf = random.Random(seed).randrange(size)
    t1 = time.perf_counter()
    reader.inclusion_proof(leaf, size)
    t2 = time.perf_counter()
    return {"open_and_first_proof_s": t2 - t, "first_proof_s": t2 - t1, "head_s": t_head}


def fresh_process_samples(url: str, n: int, seed: int) -> dict:
    total: list[float] = []
    proof_only: list[float] = []
    for i in range(n):
        r = C.run_worker(Path(__file__), ["first", url, str(seed + i)])
        total.append(r["open_and_first_proof_s"])
        proof_only.append(r["first_proof_s"])
    return {
        "open_and_first": C.latency_summary(total),
        "first_proof": C.latency_summary(proof_only),
    }


def build_postgres(url: str, n: int) -> dict:
    """Fill a fresh PostgreSQL database with a ledger of ``n`` records (a worker)."""
    bl = C.open_new_ledger(url, Path(f"/tmp/rxl-bench-proofs-keys-{time.time_ns()}"))
    t = time.perf_counter()
    # a new actor every 5,000 records: the sequencer's replay check scans every
    # record of the batch's actor on PostgreSQL (see README), so one actor for
    # 10^5 records would make the set-up quadratic
    times = C.fill(
        bl, n, batch=1000, chunk=50_000, label=f"postgres build {n:,}: ", actor_every=5000
    )
    wall = time.perf_counter() - t
    bl.close()
    return {
        "n": n,
        "actors": -(-n // 5000),
        "wall_seconds": wall,
        "append_rate": n / times["append_seconds"],
        "sign_rate": n / times["sign_seconds"],
        "peak_rss_mb": C.peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sqlite-sizes", default=None, help="default 10000,100000,1000000")
    ap.add_argument("--pg-sizes", default=None, help="default 10000,100000")
    ap.add_argument("--warm", type=int, default=None, help="warm samples per size (default 5000)")
    ap.add_argument(
        "--cold", type=int, default=None, help="cold new-engine samples per size (default 500)"
    )
    ap.add_argument(
        "--procs", type=int, default=None, help="fresh-process samples per size (default 20)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        kind, *rest = args.worker
        if kind == "measure":
            res = measure_worker(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        elif kind == "first":
            res = first_proof_worker(rest[0], int(rest[1]))
        else:
            res = build_postgres(rest[0], int(rest[1]))
        print(json.dumps(res))
        return

    info = C.print_machine()
    q = args.quick
    sqlite_sizes = [
        int(s)
        for s in (args.sqlite_sizes or ("1000,10000" if q else "10000,100000,1000000")).split(",")
        if s and s != "none"
    ]
    pg_sizes = [
        int(s)
        for s in (args.pg_sizes or ("1000" if q else "10000,100000")).split(",")
        if s and s != "none"
    ]
    warm_n = args.warm or (300 if q else 5000)
    cold_n = args.cold or (30 if q else 500)
    procs = args.procs or (3 if q else 20)
    if pg_sizes and not C.postgres_available():
        print("skipping PostgreSQL")
        pg_sizes = []

    results = []

    def run(backend: str, n: int, url: str, build: dict) -> None:
        print(f"measuring {backend} at {n:,} ...", flush=True)
        m = C.run_worker(Path(__file__), ["measure", url, str(warm_n), str(cold_n), str(args.seed)])
        m["fresh_process"] = fresh_process_samples(url, procs, args.seed * 1000)
        m.update(backend=backend, n=n, build=build)
        results.append(m)
        print(
            f"  warm p50 {m['warm']['p50_ms']:.2f} ms p99 {m['warm']['p99_ms']:.2f} ms; "
            f"cold(new engine) p50 {m['cold_new_engine']['p50_ms']:.2f} ms p99 "
            f"{m['cold_new_engine']['p99_ms']:.2f} ms",
            flush=True,
        )

    for n in sqlite_sizes:
        build = C.ensure_cached_ledger(n)
        run("sqlite", n, build["url"], build)
    for n in pg_sizes:
        with C.postgres_database("rxl_bench_proofs") as url:
            print(f"building postgres ledger of {n:,} ...", flush=True)
            proc = subprocess.run(
                [C.PYTHON, __file__, "--worker", "build", url, str(n)],
                cwd=C.ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            lines = proc.stdout.splitlines()
            for line in lines[:-1]:
                print(line)
            if proc.returncode != 0:
                raise RuntimeError("postgres build failed")
            build = json.loads(lines[-1])
            print(f"  built at {build['append_rate']:,.0f} rec/s appending", flush=True)
            run("postgres", n, url, build)

    # merge with the previous full run, so that one backend can be re-measured alone
    name = "proofs-quick" if q else "proofs"
    previous = C.RESULTS / f"{name}.json"
    if previous.exists():
        done = {(r["backend"], r["n"]) for r in results}
        kept = [
            r
            for r in json.loads(previous.read_text()).get("results", [])
            if (r["backend"], r["n"]) not in done
        ]
        if kept:
            print(f"(kept from the previous run: {[(r['backend'], r['n']) for r in kept]})")
        results = sorted(kept + results, key=lambda r: (r["backend"] != "sqlite", r["n"]))

    print()
    C.table(
        [
            "backend",
            "size",
            "warm n",
            "warm p50",
            "warm p99",
            "cold n",
            "cold-engine p50",
            "cold-engine p99",
            "fresh-proc first p50",
            "fresh-proc first p99",
            "open+first p50",
            "proof len",
            "RSS MiB",
        ],
        [
            [
                r["backend"],
                r["tree_size"],
                r["warm"]["n"],
                r["warm"]["p50_ms"],
                r["warm"]["p99_ms"],
                r["cold_new_engine"]["n"],
                r["cold_new_engine"]["p50_ms"],
                r["cold_new_engine"]["p99_ms"],
                r["fresh_process"]["first_proof"]["p50_ms"],
                r["fresh_process"]["first_proof"]["p99_ms"],
                r["fresh_process"]["open_and_first"]["p50_ms"],
                r["proof_len_mean"],
                r["peak_rss_mb"],
            ]
            for r in results
        ],
        title=f"inclusion proof latency, ms (each phase capped at {PHASE_SECONDS:.0f}s; "
        f"fresh process n={procs}, so its p99 is ~its max)",
    )

    goals = []
    for backend in ("sqlite", "postgres"):
        rs = sorted((r for r in results if r["backend"] == backend), key=lambda r: r["n"])
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        for kind in ("warm", "cold_new_engine"):
            f = hi[kind]["p99_ms"] / lo[kind]["p99_ms"]
            goals.append(
                {
                    "goal": f"{backend} {kind} p99 at {hi['n']:,} <= {GOAL_FACTOR:.0f}x p99 at "
                    f"{lo['n']:,}",
                    "value": f,
                    "met": f <= GOAL_FACTOR,
                }
            )
    print()
    C.table(
        ["goal", "ratio", "met"],
        [[g["goal"], f"x{g['value']:.2f}", "MET" if g["met"] else "MISSED"] for g in goals],
        title="goals",
    )
    C.write_results(name, {"machine": info, "quick": q, "results": results, "goals": goals})


if __name__ == "__main__":
    main()

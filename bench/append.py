"""Append throughput: the sequencer against plain INSERTs of the same statements.

For each backend (SQLite temp file, fresh PostgreSQL database) and batch size
(1, 100, 1000) a fresh interpreter (so its peak RSS is its own):

- initializes a ledger in a fresh database,
- signs ``doc.attest`` statements in chunks (not timed: signing is the
  client's cost), then, batch by batch, alternating,
- inserts a batch as plain rows (seq, JCS statement bytes, signature) into
  one table ``bench_plain`` with ``executemany``, one transaction per batch
  (the baseline), and
- appends the same batch with ``Ledger.append``,
- checks the same batch's signatures as the sequencer does, and nothing else
  (the ceiling for any append on this machine),
- appends a batch of other statements with the Ed25519 check stubbed out
  (what the ledger's own work allows when the checks have cores of their own),
- verifies the same batch with PyNaCl itself, a slice per core, and nothing
  else (the machine's Ed25519 rate, none of the ledger's code),

timing each. Reported: records/s, ratio to the baseline, p50/p99 batch
latency, peak RSS. Also the CPU time per record of the baseline, the ledger
and PyNaCl's verify (this process's threads and, on this machine, the
PostgreSQL server's processes), and what it implies: with every core busy
all the time, the most the ledger could make at its CPU cost, and the most
any append could that verified each statement and inserted it as the
baseline does. For batches, also ``--clients`` concurrent clients (threads,
as ``rxledger serve`` runs requests), the baseline with as many writers.

Goals: >= 3,000 records/s in batches on PostgreSQL; >= 40% of the baseline.

    .venv/bin/python bench/append.py            # real run (a few minutes)
    .venv/bin/python bench/append.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

BATCHES = (1, 100, 1000)
GOAL_PG_RATE = 3000.0
GOAL_RATIO = 0.40


def _plain_table(conn, sqlite: bool) -> None:  # type: ignore[no-untyped-def]
    blob = "BLOB" if sqlite else "BYTEA"
    conn.exec_driver_sql(
        f"CREATE TABLE bench_plain (seq BIGINT PRIMARY KEY, statement {blob} NOT NULL, "
        f"signature {blob} NOT NULL)"
    )


def _concurrent(bl, engine, insert_sql: str, batch: int, n: int, clients: int, seq: int) -> dict:  # type: ignore[no-untyped-def]
    """``clients`` threads at once, each with its own share of ``n`` fresh
    statements in batches of ``batch``: plain INSERTs first, then the ledger.

    As in ``rxledger serve``, where each request has its own thread: one
    client's signature checks (outside the lock, without the GIL) overlap
    another's locked write. The baseline has as many writers. Wall time from
    the first batch to the last answer.
    """
    import threading

    from ledger.store.db import WRITE
    from ledger.store.sequencer import Submission

    statements = C.sign_attests(bl.registrar, n)
    shares = [statements[i::clients] for i in range(clients)]
    seqs = [list(range(seq + i, seq + n, clients)) for i in range(clients)]
    errors: list[BaseException] = []

    def run(target) -> float:  # type: ignore[no-untyped-def]
        threads = [threading.Thread(target=target, args=(i,)) for i in range(clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - t

    def plain(i: int) -> None:
        try:
            share = shares[i]
            for j in range(0, len(share), batch):
                rows = [
                    (seqs[i][j + k], s.signed_bytes, s.signature)
                    for k, s in enumerate(share[j : j + batch])
                ]
                with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
                    conn.exec_driver_sql(insert_sql, rows)
        except BaseException as e:  # reported by run()
            errors.append(e)

    def ledger(i: int) -> None:
        try:
            share = shares[i]
            for j in range(0, len(share), batch):
                outcomes = bl.ledger.append([Submission(s) for s in share[j : j + batch]])
                if any(not hasattr(o, "seq") for o in outcomes):
                    raise RuntimeError(f"refused: {outcomes[0]}")
        except BaseException as e:  # reported by run()
            errors.append(e)

    # two rounds, each the baseline then the ledger on half of every share, so
    # that both see the same moments of the machine
    halves = [(share[: len(share) // 2], share[len(share) // 2 :]) for share in shares]
    seq_halves = [(s[: len(s) // 2], s[len(s) // 2 :]) for s in seqs]
    plain_s = ledger_s = 0.0
    for half in (0, 1):
        shares = [h[half] for h in halves]
        seqs = [h[half] for h in seq_halves]
        plain_s += run(plain)
        ledger_s += run(ledger)
    return {
        "clients": clients,
        "n": n,
        "ledger_records_per_s": n / ledger_s,
        "baseline_records_per_s": n / plain_s,
        "ratio": plain_s / ledger_s,
    }


def _postgres_pids() -> list[int]:
    """The PostgreSQL server's processes on this machine (none if it runs elsewhere)."""
    pids = []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                if f.read().strip() == "postgres":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time so far of this process (all its threads) and of ``pids``, in seconds
    (``/proc/PID/schedstat``: nanoseconds on a CPU)."""
    total = time.process_time()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return total


def worker(backend: str, batch: int, n: int, warmup: int, clients: int = 0) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import nacl.signing

    from ledger.core.note import Verifier
    from ledger.runtime import tune_collector
    from ledger.store.db import WRITE, is_sqlite
    from ledger.store.sequencer import Submission

    tmp = tempfile.TemporaryDirectory(prefix="rxl-bench-append-")
    pg_url = None
    if backend == "sqlite":
        url = C.sqlite_url(Path(tmp.name) / "ledger.db")
    else:
        pg_url = url = C.create_postgres_database("rxl_bench_append")
    try:
        bl = C.open_new_ledger(url, Path(tmp.name) / "keys")
        engine = bl.ledger.engine
        sqlite = is_sqlite(engine)
        server: dict[str, str] = {}
        with engine.begin() as conn:
            _plain_table(conn, sqlite)
            if not sqlite:
                for name in ("synchronous_commit", "fsync", "shared_buffers", "wal_level"):
                    server[name] = conn.exec_driver_sql(f"SHOW {name}").scalar()
            else:
                server["journal_mode"] = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                server["synchronous"] = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        placeholder = "?" if sqlite else "%s"
        insert_sql = (
            f"INSERT INTO bench_plain (seq, statement, signature) "
            f"VALUES ({placeholder}, {placeholder}, {placeholder})"
        )

        # warm-up (not counted): imports, first connections, statement caches
        if warmup:
            ws = C.sign_attests(bl.registrar, warmup)
            bl.ledger.append([Submission(s) for s in ws[:batch]])
            with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
                conn.exec_driver_sql(
                    insert_sql,
                    [(-1 - i, s.signed_bytes, s.signature) for i, s in enumerate(ws[:batch])],
                )

        # the collector as `rxledger serve` sets it (ledger.runtime), for both the
        # baseline and the ledger
        tune_collector()

        # chunks small enough to be appended well within the 5-minute skew window
        chunk = 500 if batch == 1 else 20_000
        plain_lat: list[float] = []
        ledger_lat: list[float] = []
        plain_s = ledger_s = sign_s = check_s = serial_s = raw_s = 0.0
        plain_cpu = ledger_cpu = raw_cpu = 0.0
        seq = 0
        done = 0
        real_verify = Verifier.verify
        cores = len(os.sched_getaffinity(0))
        raw_pool = ThreadPoolExecutor(max_workers=cores)
        raw_key = nacl.signing.VerifyKey(bl.registrar.public_key)

        def raw_verify(part: list) -> None:  # type: ignore[type-arg]
            for s in part:
                raw_key.verify(s.signed_bytes, s.signature)

        def no_verify(self: Verifier, message: bytes, signature: bytes) -> bool:
            return True

        while done < n:
            k = min(chunk, n - done)
            # PostgreSQL's processes, for the CPU time of each measurement
            pids = [] if sqlite else _postgres_pids()
            t = time.perf_counter()
            statements = C.sign_attests(bl.registrar, k)
            sign_s += time.perf_counter() - t
            serial = C.sign_attests(bl.registrar, k)  # for the appends without checks
            # Batch by batch, five measurements in turn, so that all see the
            # same moments of this VM (its disk and CPU drift by tens of
            # percent within minutes):
            for i in range(0, k, batch):
                # 1. the baseline: plain INSERTs, executemany, one transaction
                rows = [
                    (seq + j, s.signed_bytes, s.signature)
                    for j, s in enumerate(statements[i : i + batch])
                ]
                c = _cpu_seconds(pids)
                t = time.perf_counter()
                with engine.connect().execution_options(**{WRITE: True}) as conn, conn.begin():
                    conn.exec_driver_sql(insert_sql, rows)
                dt = time.perf_counter() - t
                plain_cpu += _cpu_seconds(pids) - c
                plain_lat.append(dt)
                plain_s += dt
                seq += len(rows)

                # 2. the ledger
                subs = [Submission(s) for s in statements[i : i + batch]]
                c = _cpu_seconds(pids)
                t = time.perf_counter()
                outcomes = bl.ledger.append(subs)
                dt = time.perf_counter() - t
                ledger_cpu += _cpu_seconds(pids) - c
                ledger_lat.append(dt)
                ledger_s += dt
                refused = [o for o in outcomes if not hasattr(o, "seq")]
                if refused:
                    raise RuntimeError(f"refused: {refused[0]}")

                # 3. the ceiling: the ledger's own signature checks of the same
                # statements (one thread per core for batches, as the sequencer
                # does) and nothing else: no append can go faster than this
                t = time.perf_counter()
                bl.ledger.sequencer._prechecks(subs)
                check_s += time.perf_counter() - t

                # 4. what the ledger's own code allows when the Ed25519 checks
                # take no time (as with enough cores for them: they run outside
                # the lock and without the GIL): an append of fresh statements
                # with the check stubbed out, in this process only
                part = [Submission(s) for s in serial[i : i + batch]]
                Verifier.verify = no_verify  # type: ignore[method-assign]
                try:
                    t = time.perf_counter()
                    outcomes = bl.ledger.append(part)
                    serial_s += time.perf_counter() - t
                finally:
                    Verifier.verify = real_verify  # type: ignore[method-assign]
                if any(not hasattr(o, "seq") for o in outcomes):
                    raise RuntimeError("refused with signatures stubbed")

                # 5. PyNaCl's own verify of the same statements, a slice per
                # core, with none of the ledger's code: the machine's ceiling
                # for Ed25519 as the ledger must use it
                part = statements[i : i + batch]
                step = -(-len(part) // cores)
                c = time.process_time()
                t = time.perf_counter()
                list(
                    raw_pool.map(
                        raw_verify, [part[j : j + step] for j in range(0, len(part), step)]
                    )
                )
                raw_s += time.perf_counter() - t
                raw_cpu += time.process_time() - c
            done += k
        raw_pool.shutdown()
        size = bl.ledger.reader.head().size
        serial_n = n
        concurrent = None
        if clients > 1:
            concurrent = _concurrent(bl, engine, insert_sql, batch, n, clients, seq)
        bl.close()
        tenth = max(1, len(ledger_lat) // 10)
        return {
            "ledger_rate_first_10pct": batch * tenth / sum(ledger_lat[:tenth]),
            "ledger_rate_last_10pct": batch * tenth / sum(ledger_lat[-tenth:]),
            "backend": backend,
            "batch": batch,
            "n": n,
            "ledger_size_after": size,
            "server": server,
            "sign_seconds": sign_s,
            "sign_rate": n / sign_s if sign_s else None,
            "ledger": {
                "seconds": ledger_s,
                "records_per_s": n / ledger_s,
                "latency": C.latency_summary(ledger_lat),
            },
            "baseline": {
                "seconds": plain_s,
                "records_per_s": n / plain_s,
                "latency": C.latency_summary(plain_lat),
            },
            "ratio": (n / ledger_s) / (n / plain_s),
            "signature_ceiling": {
                "records_per_s": n / check_s,
                "ratio": plain_s / check_s,
            },
            "raw_ed25519": {
                "threads": cores,
                "records_per_s": n / raw_s,
                "ratio": plain_s / raw_s,
                "cpu_us_per_record": raw_cpu / n * 1e6,
            },
            # CPU time (this process, all threads, plus PostgreSQL's processes on
            # this machine) per record, and the most any code with that cost could
            # do with every core busy all the time, as a share of the baseline
            "cpu": {
                "cores": cores,
                # all of the work is counted: SQLite runs in this process; a
                # PostgreSQL server elsewhere is not seen
                "complete": sqlite or bool(pids),
                "counted": "in-process"
                if sqlite
                else ("with PostgreSQL" if pids else "PostgreSQL not seen"),
                "ledger_us_per_record": ledger_cpu / n * 1e6,
                "baseline_us_per_record": plain_cpu / n * 1e6,
                "ledger_ceiling_ratio": (cores * n / ledger_cpu) / (n / plain_s),
                # an append must at least verify the statement and store it as
                # the baseline does: the most that allows on these cores
                "floor_ceiling_ratio": (cores * n / (raw_cpu + plain_cpu)) / (n / plain_s),
            },
            "without_signatures": {
                "n": serial_n,
                "records_per_s": serial_n / serial_s,
                "us_per_record": serial_s / serial_n * 1e6,
                "ratio": (serial_n / serial_s) / (n / plain_s),
            },
            "concurrent": concurrent,
            "peak_rss_mb": C.peak_rss_mb(),
        }
    finally:
        if pg_url:
            C.drop_postgres_database(pg_url)
        tmp.cleanup()


def profile_worker(backend: str, batch: int, n: int) -> dict:
    """cProfile the append calls only (statements signed beforehand)."""
    import cProfile
    import io
    import pstats

    from ledger.store.sequencer import Submission

    tmp = tempfile.TemporaryDirectory(prefix="rxl-bench-append-prof-")
    pg_url = None
    if backend == "sqlite":
        url = C.sqlite_url(Path(tmp.name) / "ledger.db")
    else:
        pg_url = url = C.create_postgres_database("rxl_bench_append_prof")
    try:
        bl = C.open_new_ledger(url, Path(tmp.name) / "keys")
        bl.ledger.append([Submission(s) for s in C.sign_attests(bl.registrar, batch)])  # warm-up
        statements = C.sign_attests(bl.registrar, n)
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        for i in range(0, n, batch):
            bl.ledger.append([Submission(s) for s in statements[i : i + batch]])
        prof.disable()
        wall = time.perf_counter() - t
        bl.close()
        out = C.RESULTS / f"append-profile-{backend}-{batch}.prof"
        C.RESULTS.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(out))
        tops = {}
        for key in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(str(out), stream=buf).strip_dirs().sort_stats(key).print_stats(25)
            text = buf.getvalue()
            tops[key] = text[text.find("   ncalls") :] if "   ncalls" in text else text
        return {
            "backend": backend,
            "batch": batch,
            "n": n,
            "seconds_under_profile": wall,
            "rate_under_profile": n / wall,
            "profile_file": str(out),
            "top": tops,
        }
    finally:
        if pg_url:
            C.drop_postgres_database(pg_url)
        tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    ap.add_argument("--n1", type=int, default=None, help="records for batch size 1 (default 2000)")
    ap.add_argument(
        "--n", type=int, default=None, help="records for batch 100/1000 (default 20000)"
    )
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument(
        "--profile",
        default=None,
        metavar="BACKEND:BATCH[:N]",
        help="cProfile the ledger appends of one case (e.g. postgres:1000:10000)",
    )
    ap.add_argument("--profile-worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument(
        "--clients",
        type=int,
        default=4,
        help="also measure this many concurrent clients for the batched cases, ledger "
        "and baseline alike (default 4; 0 or 1: not)",
    )
    ap.add_argument(
        "--worker",
        nargs=5,
        metavar=("BACKEND", "BATCH", "N", "WARMUP", "CLIENTS"),
        help=argparse.SUPPRESS,
    )
    args = ap.parse_args()

    if args.worker:
        backend, batch, n, warmup, clients = args.worker
        print(json.dumps(worker(backend, int(batch), int(n), int(warmup), int(clients))))
        return

    if args.profile_worker:
        b, bt, n = args.profile_worker
        print(json.dumps(profile_worker(b, int(bt), int(n))))
        return
    if args.profile:
        import subprocess

        info = C.print_machine()
        parts = args.profile.split(":")
        backend, batch = parts[0], int(parts[1])
        n = int(parts[2]) if len(parts) > 2 else (2000 if args.quick else 10_000)
        proc = subprocess.run(
            [C.PYTHON, __file__, "--profile-worker", backend, str(batch), str(n)],
            cwd=C.ROOT,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        text = (
            f"append profile: {backend} batch {batch}, {n:,} records, "
            f"{res['rate_under_profile']:,.0f} rec/s under cProfile\n"
        )
        for key in ("cumulative", "tottime"):
            text += f"\n--- top 25 by {key} ---\n{res['top'][key]}"
        print(text)
        (C.RESULTS / f"append-profile-{backend}-{batch}.txt").write_text(text)
        res["machine"] = info
        C.write_results(f"append-profile-{backend}-{batch}", res)
        return

    info = C.print_machine()
    n1 = args.n1 or (50 if args.quick else 2000)
    nb = args.n or (1000 if args.quick else 20_000)
    backends = [b for b in args.backends.split(",") if b]
    if "postgres" in backends and not C.postgres_available():
        print("skipping PostgreSQL")
        backends.remove("postgres")
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"append: backends {backends}, batch sizes {batches}, N={n1:,} (batch 1) / "
        f"{nb:,} (batched)\n"
    )

    cases = []
    for backend in backends:
        for batch in batches:
            n = n1 if batch == 1 else nb
            print(f"running {backend} batch={batch} n={n:,} ...", flush=True)
            t = time.perf_counter()
            clients = args.clients if batch > 1 else 0
            res = C.run_worker(Path(__file__), [backend, str(batch), str(n), "100", str(clients)])
            res["wall_seconds"] = time.perf_counter() - t
            cases.append(res)
            print(
                f"  ledger {res['ledger']['records_per_s']:,.0f} rec/s, baseline "
                f"{res['baseline']['records_per_s']:,.0f} rec/s, "
                f"ratio {res['ratio']:.0%}; signature checks alone "
                f"{res['signature_ceiling']['records_per_s']:,.0f} rec/s "
                f"({res['signature_ceiling']['ratio']:.0%} of baseline); without them "
                f"{res['without_signatures']['records_per_s']:,.0f} rec/s "
                f"({res['without_signatures']['ratio']:.0%} of baseline)",
                flush=True,
            )
            raw, cpu = res["raw_ed25519"], res["cpu"]
            print(
                f"  PyNaCl verify alone on {raw['threads']} thread(s) "
                f"{raw['records_per_s']:,.0f} rec/s ({raw['ratio']:.0%} of baseline); "
                f"CPU per record: ledger {cpu['ledger_us_per_record']:.0f} us, baseline "
                f"{cpu['baseline_us_per_record']:.0f} us ({cpu['counted']}): at that cost, "
                f"{cpu['cores']} busy cores give the ledger at most "
                f"{cpu['ledger_ceiling_ratio']:.0%} of the baseline; an append that only "
                f"verified ({raw['cpu_us_per_record']:.0f} us) and inserted as the baseline "
                f"does, at most {cpu['floor_ceiling_ratio']:.0%}",
                flush=True,
            )
            if res["concurrent"]:
                cc = res["concurrent"]
                print(
                    f"  {cc['clients']} concurrent clients: ledger "
                    f"{cc['ledger_records_per_s']:,.0f} rec/s, baseline "
                    f"{cc['baseline_records_per_s']:,.0f} rec/s, ratio {cc['ratio']:.0%}",
                    flush=True,
                )

    print()
    rows = []
    for r in cases:
        lg, bs = r["ledger"], r["baseline"]
        rows.append(
            [
                r["backend"],
                r["batch"],
                r["n"],
                lg["records_per_s"],
                bs["records_per_s"],
                f"{r['ratio']:.0%}",
                r["signature_ceiling"]["records_per_s"],
                f"{r['signature_ceiling']['ratio']:.0%}",
                r["without_signatures"]["records_per_s"],
                f"{r['without_signatures']['ratio']:.0%}",
                f"{r['raw_ed25519']['ratio']:.0%}",
                r["cpu"]["ledger_us_per_record"],
                r["cpu"]["baseline_us_per_record"],
                f"{r['cpu']['ledger_ceiling_ratio']:.0%}",
                f"{r['cpu']['floor_ceiling_ratio']:.0%}",
                r["ledger_rate_first_10pct"],
                r["ledger_rate_last_10pct"],
                lg["latency"]["p50_ms"],
                lg["latency"]["p99_ms"],
                bs["latency"]["p50_ms"],
                bs["latency"]["p99_ms"],
                r["peak_rss_mb"],
            ]
        )
    C.table(
        [
            "backend",
            "batch",
            "N",
            "ledger rec/s",
            "plain rec/s",
            "ratio",
            "sig checks alone rec/s",
            "alone % of plain",
            "ledger w/o sig checks rec/s",
            "w/o % of plain",
            "PyNaCl alone % of plain",
            "ledger CPU us/rec",
            "plain CPU us/rec",
            "CPU ceiling % of plain",
            "verify+insert ceiling %",
            "ledger rec/s first 10%",
            "last 10%",
            "ledger p50 ms",
            "ledger p99 ms",
            "plain p50 ms",
            "plain p99 ms",
            "peak RSS MiB",
        ],
        rows,
        title="append throughput (ledger = Ledger.append; plain = executemany INSERT, "
        "1 txn per batch; sig checks alone = the ledger's Ed25519 checks of the same "
        "statements and nothing else, a ceiling for any append; w/o sig checks = the "
        "same appends with Ed25519 stubbed: what the ledger's own work allows when the "
        "checks have cores of their own; PyNaCl alone = nacl.signing verify of the same "
        "statements, a thread per core, nothing else; CPU = this process and the local "
        "PostgreSQL's processes; CPU ceiling = every core busy at the ledger's CPU cost; "
        "verify+insert ceiling = the same for an append that only verified (PyNaCl's CPU) "
        "and inserted (the baseline's CPU))",
    )
    shown = set()
    for r in cases:
        if r["backend"] not in shown:
            shown.add(r["backend"])
            print(f"  {r['backend']} settings: {r['server']}")

    goals = []
    for r in cases:
        if r["batch"] > 1 and r["backend"] == "postgres":
            goals.append(
                {
                    "goal": f">= {GOAL_PG_RATE:,.0f} rec/s, postgres batch {r['batch']}",
                    "value": r["ledger"]["records_per_s"],
                    "met": r["ledger"]["records_per_s"] >= GOAL_PG_RATE,
                }
            )
    for r in cases:
        if r["batch"] > 1:
            goals.append(
                {
                    "goal": f">= {GOAL_RATIO:.0%} of baseline, {r['backend']} batch {r['batch']}",
                    "value": r["ratio"],
                    "met": r["ratio"] >= GOAL_RATIO,
                }
            )
            goals.append(
                {
                    "goal": f">= {GOAL_RATIO:.0%} of baseline without the Ed25519 checks "
                    f"(cores enough for them), {r['backend']} batch {r['batch']}",
                    "value": r["without_signatures"]["ratio"],
                    "met": r["without_signatures"]["ratio"] >= GOAL_RATIO,
                }
            )
            if r["concurrent"]:
                cc = r["concurrent"]
                goals.append(
                    {
                        "goal": f">= {GOAL_RATIO:.0%} of baseline, {cc['clients']} concurrent "
                        f"clients each, {r['backend']} batch {r['batch']}",
                        "value": cc["ratio"],
                        "met": cc["ratio"] >= GOAL_RATIO,
                    }
                )
            floor = r["cpu"]["floor_ceiling_ratio"]
            if floor < GOAL_RATIO and r["cpu"]["complete"]:
                least = r["raw_ed25519"]["cpu_us_per_record"] + r["cpu"]["baseline_us_per_record"]
                print(
                    f"  note: {r['backend']} batch {r['batch']}: verifying a statement with "
                    f"PyNaCl and inserting it as the baseline does costs {least:.0f} us of CPU, "
                    f"so {r['cpu']['cores']} cores allow at most {floor:.0%} of the baseline "
                    "to any append that checks its signatures"
                )
            ceiling = max(r["signature_ceiling"]["ratio"], r["raw_ed25519"]["ratio"])
            if ceiling < GOAL_RATIO:
                print(
                    f"  note: {r['backend']} batch {r['batch']}: checking the signatures alone "
                    f"(the ledger's checks, or PyNaCl's verify with nothing else), on "
                    f"{r['raw_ed25519']['threads']} CPU(s), reaches {ceiling:.1%} of the "
                    f"baseline, so {GOAL_RATIO:.0%} is out of reach on this machine whatever "
                    "else the append does"
                )
    print()
    C.table(
        ["goal", "value", "met"],
        [
            [
                g["goal"],
                g["value"] if g["value"] > 2 else f"{g['value']:.0%}",
                "MET" if g["met"] else "MISSED",
            ]
            for g in goals
        ],
        title="goals",
    )
    C.write_results(
        "append-quick" if args.quick else "append",
        {"machine": info, "quick": args.quick, "cases": cases, "goals": goals},
    )


if __name__ == "__main__":
    main()

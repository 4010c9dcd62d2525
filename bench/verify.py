"""Full verification (`rxledger verify --db URL --json`) against raw Ed25519.

1. Builds SQLite ledgers of N doc.attest records (default 10^5 and 10^6) in
   batches of 1000 (reporting the build rate), cached under
   bench/results/verify-cache/ keyed by N, so reruns skip the build.
2. The goal figure, on ONE core: for each N, R rounds (``--rounds``, default 3)
   alternating
     a. the raw PyNaCl Ed25519 verify rate (nacl.signing.VerifyKey.verify over
        200-byte messages) in a subprocess pinned to one CPU, and
     b. `rxledger verify --db URL --json --jobs 1` pinned to the same CPU,
        under /usr/bin/time -v (wall time, its own reported rate, CPU time,
        peak RSS),
   each round giving a verify/raw ratio (reported rate and CPU-time rate). The
   machine is a noisy shared VM, so a single pair is unreliable: the goal uses
   the MEDIAN of the rounds' ratios at the largest N. The CPU is the lowest in
   this process's affinity set. Verify runs with the ledger's master key
   (RXLEDGER_MASTER_KEY_FILE = the cached ledger's keys dir / master.key) so the
   full rules are replayed; its summary must say "rules": "all".
3. For information only (not the goal): one run of `rxledger verify --db URL
   --json` with the default --jobs (one thread per CPU), not pinned, compared
   with the median one-core raw rate.
4. Profiles verify (--jobs 1, master key) at 10^5 with cProfile: top 15 by
   cumulative and tottime.

Goals: one-core verify >= 70% of the one-core raw Ed25519 rate (median of the
rounds, at the largest N); flat peak RSS of the one-core runs from the smallest
to the largest N.

    .venv/bin/python bench/verify.py             # real run (build ~5 min once, then minutes)
    .venv/bin/python bench/verify.py --quick     # smoke run
    .venv/bin/python bench/verify.py --rounds 1  # one raw/verify pair per size
    .venv/bin/python bench/verify.py --rebuild   # ignore the cache
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

GOAL_RATIO = 0.70
FLAT_FACTOR = 1.25  # peak RSS at the largest size within 25% of the smallest
RXLEDGER = Path(C.PYTHON).parent / "rxledger"


def build_worker(n: int) -> dict:
    """Build a ledger of ``n`` doc.attest records (plus the genesis record)."""
    db, keys, info = C.cache_paths(n)
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), info):
        p.unlink(missing_ok=True)
    shutil.rmtree(keys, ignore_errors=True)
    C.CACHE.mkdir(parents=True, exist_ok=True)
    url = C.sqlite_url(db)
    bl = C.open_new_ledger(url, keys)
    lat: list[float] = []
    sizes: list[int] = []
    t0 = time.perf_counter()
    times = C.fill(
        bl,
        n,
        batch=1000,
        chunk=50_000,
        on_batch=lambda k, dt: (lat.append(dt), sizes.append(k)),
        label=f"build {n:,}: ",
    )
    wall = time.perf_counter() - t0
    size = bl.ledger.reader.head().size
    with bl.ledger.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    bl.close()
    tenth = max(1, len(lat) // 10)
    first = sum(sizes[:tenth]) / sum(lat[:tenth])
    last = sum(sizes[-tenth:]) / sum(lat[-tenth:])
    result = {
        "n": n,
        "tree_size": size,
        "url": url,
        "log_key_file": str(keys / "log.skey"),
        "wall_seconds": wall,
        "sign_seconds": times["sign_seconds"],
        "append_seconds": times["append_seconds"],
        "append_rate": n / times["append_seconds"],
        "sign_rate": n / times["sign_seconds"],
        "overall_rate": n / wall,
        "append_rate_first_10pct": first,
        "append_rate_last_10pct": last,
        "batch_latency": C.latency_summary(lat),
        "db_bytes": db.stat().st_size,
        "peak_rss_mb": C.peak_rss_mb(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    info.write_text(json.dumps(result, indent=2))
    return result


def _ledger_statements(url: str, m: int) -> list[tuple[bytes, bytes, bytes]]:
    """(public key, signed bytes, signature) of the first ``m`` statements of the
    ledger at ``url``: the very messages `rxledger verify` checks."""
    import sqlite3

    from ledger.core.record import Record
    from ledger.core.statement import verifier_for

    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT record_bytes FROM records WHERE seq > 0 ORDER BY seq LIMIT ?", (m,)
        ).fetchall()
    out = []
    for (data,) in rows:
        record = Record.from_bytes(bytes(data))
        key = verifier_for(record.statement().key).public_key
        out.append((key, record.statement_bytes, record.signature))
    return out


def raw_worker(m: int, cpu: int | None = None, url: str | None = None) -> dict:
    """Raw Ed25519 verify rate (``nacl.signing.VerifyKey.verify``), pinned to CPU
    ``cpu`` when given: over the first ``m`` statements of the ledger at ``url``
    (the goal's figure: the same messages and keys verify checks), and over ``m``
    random 200-byte messages under one key (the figure of earlier rounds)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    import nacl.signing

    def timed(checks: list[tuple[nacl.signing.VerifyKey, bytes, bytes]]) -> tuple[float, float]:
        t = time.perf_counter()
        c = time.process_time()
        for vk, msg, sig in checks:
            vk.verify(msg, sig)
        return time.perf_counter() - t, time.process_time() - c

    sk = nacl.signing.SigningKey.generate()
    vk = sk.verify_key
    msgs = [os.urandom(200) for _ in range(m)]
    random_checks = [(vk, msg, sk.sign(msg).signature) for msg in msgs]
    result: dict = {"cpu": cpu, "affinity": sorted(os.sched_getaffinity(0))}
    if url is not None:
        keys: dict[bytes, nacl.signing.VerifyKey] = {}
        same = [
            (keys.setdefault(k, nacl.signing.VerifyKey(k)), msg, sig)
            for k, msg, sig in _ledger_statements(url, m)
        ]
        dt, cpu_s = timed(same)
        result |= {
            "messages": len(same),
            "message_bytes": sum(len(msg) for _, msg, _ in same) / len(same),
            "seconds": dt,
            "cpu_seconds": cpu_s,
            "rate": len(same) / dt,
            "cpu_rate": len(same) / cpu_s,
        }
    dt, cpu_s = timed(random_checks)
    random_rate = {"messages": m, "message_bytes": 200, "rate": m / dt, "cpu_rate": m / cpu_s}
    result["random_200"] = random_rate
    if url is None:
        result |= random_rate | {"seconds": dt, "cpu_seconds": cpu_s}
    result["peak_rss_mb"] = C.peak_rss_mb()
    return result


def profile_worker(url: str, out: str, master_key_file: str) -> dict:
    """cProfile of ``rxledger verify --db URL --json --jobs 1`` with the master key
    (one thread, so the profile sees the signature checks too)."""
    import cProfile
    import io
    import pstats

    from cli.main import main

    os.environ.pop("RXLEDGER_MASTER_KEY", None)
    os.environ["RXLEDGER_MASTER_KEY_FILE"] = master_key_file

    prof = cProfile.Profile()
    sink = io.StringIO()
    real_stdout = sys.stdout
    sys.stdout = sink
    try:
        prof.enable()
        main(["verify", "--db", url, "--json", "--jobs", "1"], standalone_mode=False)
        prof.disable()
    finally:
        sys.stdout = real_stdout
    prof.dump_stats(out)
    summary = json.loads(sink.getvalue().strip().splitlines()[-1])
    tops = {}
    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        pstats.Stats(out, stream=s).strip_dirs().sort_stats(key).print_stats(15)
        tops[key] = s.getvalue()
    return {"verify": summary, "profile_file": out, "top": tops}


def master_key_file(n: int, build: dict) -> Path:
    """The cached ledger's master key: ``master.key`` in its key directory."""
    keys = Path(build["log_key_file"]).parent if "log_key_file" in build else C.cache_paths(n)[1]
    path = keys / "master.key"
    if not path.exists():
        raise RuntimeError(f"no master key at {path}; rebuild the ledger (--rebuild)")
    return path


def time_verify(url: str, key_file: Path, *, jobs: int | None, cpu: int | None) -> dict:
    """Run ``rxledger verify --db URL --json`` under /usr/bin/time -v with the master
    key; ``jobs`` None = the CLI's default; ``cpu`` pins it (and its threads) to one CPU."""
    cmd = ["/usr/bin/time", "-v", str(RXLEDGER), "verify", "--db", url, "--json"]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    env = dict(os.environ)
    env.pop("RXLEDGER_MASTER_KEY", None)  # it would win over the file
    env["RXLEDGER_MASTER_KEY_FILE"] = str(key_file)
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=C.ROOT, capture_output=True, text=True, env=env, preexec_fn=pin)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(
            f"verify failed ({proc.returncode}): {proc.stdout} {proc.stderr[-2000:]}"
        )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    if summary.get("rules") != "all":
        raise RuntimeError(f"verify did not replay all the rules: {summary}")
    if jobs is not None and summary.get("jobs") != jobs:
        raise RuntimeError(f"verify ran with jobs={summary.get('jobs')}, not {jobs}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    return {
        "summary": summary,
        "jobs": summary.get("jobs"),
        "rules": summary["rules"],
        "cpu": cpu,
        "wall_seconds": wall,
        "wall_rate": summary["tree_size"] / wall,
        "reported_rate": summary["records_per_second"],
        "user_seconds": user,
        "system_seconds": system,
        "cpu_percent": 100 * (user + system) / wall,
        "cpu_rate": summary["tree_size"] / (user + system),
        "peak_rss_mb": rss_kb / 1024,
    }


def pct_range(values: list[float]) -> str:
    return f"{min(values):.0%}-{max(values):.0%}" if len(values) > 1 else f"{values[0]:.0%}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 100000,1000000)")
    ap.add_argument("--raw-n", type=int, default=None, help="raw Ed25519 messages (default 200000)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="one-core raw/verify pairs per size; the goal uses their median ratio (default 3)",
    )
    ap.add_argument("--profile-size", type=int, default=None, help="default: 100000")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        kind, *rest = args.worker
        if kind == "build":
            res = build_worker(int(rest[0]))
        elif kind == "raw":
            res = raw_worker(
                int(rest[0]),
                int(rest[1]) if len(rest) > 1 else None,
                rest[2] if len(rest) > 2 else None,
            )
        else:
            res = profile_worker(rest[0], rest[1], rest[2])
        print(json.dumps(res))
        return
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")

    info = C.print_machine()
    sizes = [
        int(s)
        for s in (args.sizes or ("2000,10000" if args.quick else "100000,1000000")).split(",")
    ]
    raw_n = args.raw_n or (5000 if args.quick else 200_000)
    profile_size = args.profile_size or (sizes[0] if args.quick else 100_000)
    rounds = args.rounds
    cpu = min(os.sched_getaffinity(0))
    ncpu = len(os.sched_getaffinity(0))

    builds = {n: C.ensure_cached_ledger(n, args.rebuild) for n in sizes}
    if not args.no_profile and profile_size not in builds:
        builds[profile_size] = C.ensure_cached_ledger(profile_size, args.rebuild)
    key_files = {n: master_key_file(n, b) for n, b in builds.items()}

    print(
        f"\none core (CPU {cpu}): {rounds} round(s) per size of raw PyNaCl Ed25519 verify "
        f"(the ledger's first {raw_n:,} statements, and as many random 200-byte messages) "
        "then `rxledger verify --jobs 1`, both pinned ...",
        flush=True,
    )
    # the machine is shared and noisy: alternate raw and verify on the same CPU,
    # take each round's ratio and the median over the rounds; compare CPU-time
    # rates too (records per CPU-second), which contention distorts less
    raws = []
    runs: dict[int, dict] = {}
    for n in sizes:
        print(f"rxledger verify at {n:,} ...", flush=True)
        rs = []
        for i in range(rounds):
            raw = C.run_worker(Path(__file__), ["raw", str(raw_n), str(cpu), builds[n]["url"]])
            raws.append(raw)
            r = time_verify(builds[n]["url"], key_files[n], jobs=1, cpu=cpu)
            r["round"] = i + 1
            r["raw"] = raw
            r["ratio_reported"] = r["reported_rate"] / raw["rate"]
            r["ratio_wall"] = r["wall_rate"] / raw["rate"]
            r["ratio_cpu"] = r["cpu_rate"] / raw["cpu_rate"]
            r["ratio_reported_random_200"] = r["reported_rate"] / raw["random_200"]["rate"]
            rs.append(r)
            print(
                f"  round {i + 1}: raw {raw['rate']:,.0f}/s ({raw['cpu_rate']:,.0f} per CPU-s; "
                f"{raw['message_bytes']:.0f}-byte statements; 200-byte random "
                f"{raw['random_200']['rate']:,.0f}/s); "
                f"verify {r['reported_rate']:,.0f} rec/s (reported), {r['wall_rate']:,.0f} "
                f"(wall incl. start-up), {r['cpu_rate']:,.0f} per CPU-s; "
                f"{r['ratio_reported']:.0%} of raw (reported), {r['ratio_cpu']:.0%} (CPU-time), "
                f"{r['ratio_reported_random_200']:.0%} of the 200-byte rate; "
                f"peak RSS {r['peak_rss_mb']:.1f} MiB",
                flush=True,
            )
        raw_median = statistics.median(r["raw"]["rate"] for r in rs)
        runs[n] = {
            "rounds": rs,
            "cpu": cpu,
            "rules": rs[0]["rules"],
            "raw_rate_median": raw_median,
            "raw_cpu_rate_median": statistics.median(r["raw"]["cpu_rate"] for r in rs),
            "reported_rate_median": statistics.median(r["reported_rate"] for r in rs),
            "cpu_rate_median": statistics.median(r["cpu_rate"] for r in rs),
            "ratio_reported": statistics.median(r["ratio_reported"] for r in rs),
            "ratio_wall": statistics.median(r["ratio_wall"] for r in rs),
            "ratio_cpu": statistics.median(r["ratio_cpu"] for r in rs),
            "ratio_reported_random_200": statistics.median(
                r["ratio_reported_random_200"] for r in rs
            ),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
        allc = time_verify(builds[n]["url"], key_files[n], jobs=None, cpu=None)
        allc["ratio_reported_vs_one_core_raw"] = allc["reported_rate"] / raw_median
        allc["ratio_wall_vs_one_core_raw"] = allc["wall_rate"] / raw_median
        runs[n]["all_cores"] = allc
        print(
            f"  all cores ({allc['jobs']} jobs, not pinned; information, not the goal): "
            f"{allc['reported_rate']:,.0f} rec/s (reported), "
            f"{allc['ratio_reported_vs_one_core_raw']:.0%} of the median one-core raw rate, "
            f"CPU {allc['cpu_percent']:.0f}%, peak RSS {allc['peak_rss_mb']:.1f} MiB",
            flush=True,
        )

    print()
    C.table(
        ["N", "build rec/s (append)", "sign stmt/s", "build wall s", "db MiB"],
        [
            [n, b["append_rate"], b["sign_rate"], b["wall_seconds"], b["db_bytes"] / 2**20]
            for n, b in sorted(builds.items())
        ],
        title="build (batches of 1000, SQLite WAL synchronous=FULL)",
    )
    print()
    C.table(
        [
            "N",
            "round",
            "raw/s",
            "raw/CPU-s",
            "verify s (reported)",
            "wall s",
            "rec/s (reported)",
            "rec/s (wall)",
            "rec/CPU-s",
            "% of raw (reported)",
            "% of raw (wall)",
            "% of raw (CPU-time)",
            "CPU %",
            "peak RSS MiB",
        ],
        [
            [
                n,
                r["round"],
                r["raw"]["rate"],
                r["raw"]["cpu_rate"],
                r["summary"]["seconds"],
                r["wall_seconds"],
                r["reported_rate"],
                r["wall_rate"],
                r["cpu_rate"],
                f"{r['ratio_reported']:.0%}",
                f"{r['ratio_wall']:.0%}",
                f"{r['ratio_cpu']:.0%}",
                r["cpu_percent"],
                r["peak_rss_mb"],
            ]
            for n, run in runs.items()
            for r in run["rounds"]
        ],
        title=f"one core (CPU {cpu}): raw PyNaCl Ed25519 verify, then `rxledger verify --db "
        "--json --jobs 1` (master key), both pinned, alternated",
    )
    print()
    C.table(
        [
            "N",
            "rounds",
            "rules",
            "raw/s (median)",
            "rec/s (median, reported)",
            "% of raw (median, reported)",
            "range",
            "% of raw (median, CPU-time)",
            "range",
            "peak RSS MiB (max)",
        ],
        [
            [
                n,
                len(run["rounds"]),
                run["rules"],
                run["raw_rate_median"],
                run["reported_rate_median"],
                f"{run['ratio_reported']:.0%}",
                pct_range([r["ratio_reported"] for r in run["rounds"]]),
                f"{run['ratio_cpu']:.0%}",
                pct_range([r["ratio_cpu"] for r in run["rounds"]]),
                run["peak_rss_mb"],
            ]
            for n, run in runs.items()
        ],
        title="one core, median of the rounds' ratios (the goal figure)",
    )
    print()
    jobs_seen = sorted({run["all_cores"]["jobs"] for run in runs.values()})
    C.table(
        [
            "N",
            "jobs",
            "verify s (reported)",
            "wall s",
            "rec/s (reported)",
            "rec/s (wall)",
            "% of one-core raw (reported)",
            "% of one-core raw (wall)",
            "CPU %",
            "peak RSS MiB",
        ],
        [
            [
                n,
                a["jobs"],
                a["summary"]["seconds"],
                a["wall_seconds"],
                a["reported_rate"],
                a["wall_rate"],
                f"{a['ratio_reported_vs_one_core_raw']:.0%}",
                f"{a['ratio_wall_vs_one_core_raw']:.0%}",
                a["cpu_percent"],
                a["peak_rss_mb"],
            ]
            for n, run in runs.items()
            for a in [run["all_cores"]]
        ],
        title=f"all cores ({', '.join(map(str, jobs_seen))} jobs, default --jobs, not pinned; "
        f"{ncpu} CPUs): for information, NOT the goal (vs the median one-core raw rate)",
    )

    prof = None
    previous = C.RESULTS / ("verify-quick.json" if args.quick else "verify.json")
    if args.no_profile and previous.exists():
        prof = json.loads(previous.read_text()).get("profile")  # keep the last profile
        if prof:
            prof["from_previous_run"] = True
    if not args.no_profile:
        out = str(C.RESULTS / f"verify-profile-{profile_size}.prof")
        print(f"\nprofiling verify --jobs 1 at {profile_size:,} (cProfile) ...", flush=True)
        prof = C.run_worker(
            Path(__file__),
            ["profile", builds[profile_size]["url"], out, str(key_files[profile_size])],
        )
        text = ""
        for key in ("cumulative", "tottime"):
            body = prof["top"][key]
            body = body[body.find("   ncalls") :] if "   ncalls" in body else body
            text += f"\n--- top 15 by {key} ---\n{body}"
        print(text)
        (C.RESULTS / f"verify-profile-{profile_size}.txt").write_text(text)
        print(f"(under cProfile: {prof['verify']['records_per_second']:,.0f} rec/s)")

    goals = []
    big = max(runs)
    for kind in ("reported", "cpu"):
        goals.append(
            {
                "goal": f">= {GOAL_RATIO:.0%} of raw Ed25519 rate at {big:,}, one core, "
                f"median of {len(runs[big]['rounds'])} round(s) ({kind} rate)",
                "value": runs[big][f"ratio_{kind}"],
                "met": runs[big][f"ratio_{kind}"] >= GOAL_RATIO,
            }
        )
    small = min(runs)
    if small != big:
        growth = runs[big]["peak_rss_mb"] / runs[small]["peak_rss_mb"]
        goals.append(
            {
                "goal": f"flat peak RSS {small:,} -> {big:,}, one core (within x{FLAT_FACTOR})",
                "value": growth,
                "met": growth <= FLAT_FACTOR,
            }
        )
    print()
    C.table(
        ["goal", "value", "met"],
        [
            [
                g["goal"],
                f"{g['value']:.0%}" if "raw" in g["goal"] else f"x{g['value']:.2f}",
                "MET" if g["met"] else "MISSED",
            ]
            for g in goals
        ],
        title="goals",
    )
    C.write_results(
        "verify-quick" if args.quick else "verify",
        {
            "machine": info,
            "quick": args.quick,
            "method": {
                "cpu": cpu,
                "rounds": rounds,
                "raw_messages": raw_n,
                "one_core": "raw worker and `rxledger verify --jobs 1` pinned to `cpu`, "
                "alternated; goal = median of the rounds' ratios at the largest N",
                "all_cores": "one `rxledger verify` with the default --jobs, not pinned; "
                "information only",
                "master_key": "RXLEDGER_MASTER_KEY_FILE = the cached ledger's master.key "
                '(rules == "all")',
            },
            "builds": builds,
            "raw": raws,
            "verify": runs,
            "profile": prof,
            "goals": goals,
        },
    )


if __name__ == "__main__":
    main()

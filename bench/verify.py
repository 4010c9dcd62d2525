"""Full verification (`rxledger verify --db URL --json`) against raw Ed25519.

1. Builds SQLite ledgers of N doc.attest records (default 10^5 and 10^6) in
   batches of 1000 (reporting the build rate), cached under
   bench/results/verify-cache/ keyed by N, so reruns skip the build.
2. Times `rxledger verify --db URL --json` as a subprocess under
   /usr/bin/time -v (wall time, its own reported rate, peak RSS).
3. Measures the raw PyNaCl Ed25519 verify rate on one core
   (nacl.signing.VerifyKey.verify over 200-byte messages) in a subprocess.
4. Profiles verify at 10^5 with cProfile: top 15 by cumulative and tottime.

Goals: verify >= 70% of the raw Ed25519 rate; flat peak RSS from 10^5 to 10^6.

    .venv/bin/python bench/verify.py             # real run (build ~5 min once, then minutes)
    .venv/bin/python bench/verify.py --quick     # smoke run
    .venv/bin/python bench/verify.py --rebuild   # ignore the cache
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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


def raw_worker(m: int) -> dict:
    """Raw Ed25519 verify rate, one key, ``m`` distinct 200-byte messages."""
    import nacl.signing

    sk = nacl.signing.SigningKey.generate()
    vk = sk.verify_key
    msgs = [os.urandom(200) for _ in range(m)]
    sigs = [sk.sign(msg).signature for msg in msgs]
    t = time.perf_counter()
    c = time.process_time()
    verify = vk.verify
    for msg, sig in zip(msgs, sigs, strict=True):
        verify(msg, sig)
    cpu = time.process_time() - c
    dt = time.perf_counter() - t
    return {
        "messages": m,
        "message_bytes": 200,
        "seconds": dt,
        "cpu_seconds": cpu,
        "rate": m / dt,
        "cpu_rate": m / cpu,
        "peak_rss_mb": C.peak_rss_mb(),
    }


def profile_worker(url: str, out: str) -> dict:
    import cProfile
    import io
    import pstats

    from cli.main import main

    prof = cProfile.Profile()
    sink = io.StringIO()
    real_stdout = sys.stdout
    sys.stdout = sink
    try:
        prof.enable()
        main(["verify", "--db", url, "--json"], standalone_mode=False)
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


def time_verify(url: str) -> dict:
    cmd = ["/usr/bin/time", "-v", str(RXLEDGER), "verify", "--db", url, "--json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=C.ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(
            f"verify failed ({proc.returncode}): {proc.stdout} {proc.stderr[-2000:]}"
        )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    return {
        "summary": summary,
        "wall_seconds": wall,
        "wall_rate": summary["tree_size"] / wall,
        "reported_rate": summary["records_per_second"],
        "user_seconds": user,
        "system_seconds": system,
        "cpu_percent": 100 * (user + system) / wall,
        "cpu_rate": summary["tree_size"] / (user + system),
        "peak_rss_mb": rss_kb / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 100000,1000000)")
    ap.add_argument("--raw-n", type=int, default=None, help="raw Ed25519 messages (default 200000)")
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
            res = raw_worker(int(rest[0]))
        else:
            res = profile_worker(rest[0], rest[1])
        print(json.dumps(res))
        return

    info = C.print_machine()
    sizes = [
        int(s)
        for s in (args.sizes or ("2000,10000" if args.quick else "100000,1000000")).split(",")
    ]
    raw_n = args.raw_n or (5000 if args.quick else 200_000)
    profile_size = args.profile_size or (sizes[0] if args.quick else 100_000)

    builds = {n: C.ensure_cached_ledger(n, args.rebuild) for n in sizes}
    if not args.no_profile and profile_size not in builds:
        builds[profile_size] = C.ensure_cached_ledger(profile_size, args.rebuild)

    print(
        f"\nraw PyNaCl Ed25519 verify, {raw_n:,} x 200-byte messages, one process ...", flush=True
    )
    # the machine is shared: measure raw right before each verify, and compare
    # CPU-time rates too (records per CPU-second), which contention distorts less
    raws = []
    runs = {}
    for n in sizes:
        raws.append(C.run_worker(Path(__file__), ["raw", str(raw_n)]))
        print(
            f"  raw: {raws[-1]['rate']:,.0f} verifies/s wall, "
            f"{raws[-1]['cpu_rate']:,.0f} per CPU-second",
            flush=True,
        )
        print(f"rxledger verify at {n:,} ...", flush=True)
        runs[n] = time_verify(builds[n]["url"])
        r = runs[n]
        r["raw"] = raws[-1]
        r["ratio_reported"] = r["reported_rate"] / raws[-1]["rate"]
        r["ratio_wall"] = r["wall_rate"] / raws[-1]["rate"]
        r["ratio_cpu"] = r["cpu_rate"] / raws[-1]["cpu_rate"]
        print(
            f"  {r['reported_rate']:,.0f} rec/s (reported), {r['wall_rate']:,.0f} rec/s "
            f"(wall incl. start-up), {r['cpu_rate']:,.0f} rec per CPU-second, "
            f"peak RSS {r['peak_rss_mb']:.1f} MiB",
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
            "verify s (reported)",
            "wall s",
            "rec/s (reported)",
            "rec/s (wall)",
            "rec/CPU-s",
            "raw/s (adjacent)",
            "% of raw (reported)",
            "% of raw (wall)",
            "% of raw (CPU-time)",
            "CPU %",
            "peak RSS MiB",
        ],
        [
            [
                n,
                r["summary"]["seconds"],
                r["wall_seconds"],
                r["reported_rate"],
                r["wall_rate"],
                r["cpu_rate"],
                r["raw"]["rate"],
                f"{r['ratio_reported']:.0%}",
                f"{r['ratio_wall']:.0%}",
                f"{r['ratio_cpu']:.0%}",
                r["cpu_percent"],
                r["peak_rss_mb"],
            ]
            for n, r in runs.items()
        ],
        title="rxledger verify --db --json (raw = PyNaCl Ed25519 verify on one core, measured "
        "just before each run)",
    )

    prof = None
    previous = C.RESULTS / ("verify-quick.json" if args.quick else "verify.json")
    if args.no_profile and previous.exists():
        prof = json.loads(previous.read_text()).get("profile")  # keep the last profile
        if prof:
            prof["from_previous_run"] = True
    if not args.no_profile:
        out = str(C.RESULTS / f"verify-profile-{profile_size}.prof")
        print(f"\nprofiling verify at {profile_size:,} (cProfile) ...", flush=True)
        prof = C.run_worker(Path(__file__), ["profile", builds[profile_size]["url"], out])
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
                "goal": f">= {GOAL_RATIO:.0%} of raw Ed25519 rate at {big:,} ({kind} rate)",
                "value": runs[big][f"ratio_{kind}"],
                "met": runs[big][f"ratio_{kind}"] >= GOAL_RATIO,
            }
        )
    small = min(runs)
    if small != big:
        growth = runs[big]["peak_rss_mb"] / runs[small]["peak_rss_mb"]
        goals.append(
            {
                "goal": f"flat peak RSS {small:,} -> {big:,} (within x{FLAT_FACTOR})",
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
            "builds": builds,
            "raw": raws,
            "verify": runs,
            "profile": prof,
            "goals": goals,
        },
    )


if __name__ == "__main__":
    main()

"""Shared helpers for the rxledger benchmarks (bench/*.py).

Nothing here is product code: machine info, tables, JSON results, peak RSS,
throw-away PostgreSQL databases (as tests/conftest.py makes them), and a
builder that fills a ledger with signed ``doc.attest`` statements.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_URL = os.environ.get("RXLEDGER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
POSTGRES_ON = POSTGRES_URL.strip().lower() not in ("", "off", "0", "no", "false")

#: statements are refused when issued_at is further than this from the ledger clock
#: (5 minutes); sign in chunks that are used well within it
SIGN_CHUNK_SECONDS = 60.0


# -- machine and results ---------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        import sqlite3

        sqlite_version = sqlite3.sqlite_version
    except Exception:
        sqlite_version = "?"
    try:
        import nacl

        nacl_version = nacl.__version__
    except Exception:
        nacl_version = "?"
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gb": mem_gb,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite_version,
        "pynacl": nacl_version,
        "loadavg": os.getloadavg(),
    }


def print_machine(info: dict[str, Any] | None = None) -> dict[str, Any]:
    info = info or machine()
    print(
        f"machine: nproc={info['nproc']} (affinity {info['affinity']}), "
        f"CPU {info['cpu_model']}, {info['mem_gb']} GB RAM, "
        f"Python {info['python']} ({info['implementation']}), SQLite {info['sqlite']}, "
        f"PyNaCl {info['pynacl']}, loadavg {', '.join(f'{x:.2f}' for x in info['loadavg'])}"
    )
    print("caveat: shared VM; figures are indicative, compare ratios rather than absolutes")
    return info


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nresults written to {path.relative_to(ROOT)}")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if abs(v) >= 1000:
                return f"{v:,.0f}"
            if abs(v) >= 100:
                return f"{v:.1f}"
            if abs(v) >= 1:
                return f"{v:.2f}"
            return f"{v:.3f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    out = "\n".join(lines)
    print(out)
    return out


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on sorted data with interpolation."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024


# -- subprocess workers ------------------------------------------------------------


def run_worker(
    script: Path, args: Sequence[str], *, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``script --worker ARGS`` in a fresh interpreter; it prints one JSON line last.

    The child's own peak RSS is in its JSON (measured by itself), so it belongs
    to the measured work alone.
    """
    import subprocess

    proc = subprocess.run(
        [PYTHON, str(script), "--worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"worker {script.name} {' '.join(args)} failed ({proc.returncode})")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last)


# -- PostgreSQL ----------------------------------------------------------------------


def postgres_available() -> bool:
    if not POSTGRES_ON:
        return False
    try:
        from sqlalchemy import create_engine, text

        from ledger.store.db import normalize_url

        engine = create_engine(normalize_url(POSTGRES_URL))
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception as e:
        print(f"PostgreSQL not reachable at {POSTGRES_URL}: {e.__class__.__name__}: {e}")
        return False


def create_postgres_database(prefix: str = "rxl_bench") -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from ledger.store.db import normalize_url

    admin_url = normalize_url(POSTGRES_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from ledger.store.db import normalize_url

    name = make_url(url).database
    admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def postgres_database(prefix: str = "rxl_bench") -> Iterator[str]:
    url = create_postgres_database(prefix)
    try:
        yield url
    finally:
        drop_postgres_database(url)


# -- ledgers and statements ------------------------------------------------------------


@dataclass
class BenchLedger:
    url: str
    key_dir: Path
    ledger: Any  # ledger.service.Ledger
    registrar: Any  # ledger.core.note.Signer
    log_key_file: Path

    def close(self) -> None:
        self.ledger.close()


def open_new_ledger(url: str, key_dir: Path) -> BenchLedger:
    from ledger.service import Ledger, init_ledger, read_key_file

    result = init_ledger(url, key_dir=key_dir)
    ledger = Ledger.open(url, log_key_file=result.log_key_file)
    return BenchLedger(
        url, key_dir, ledger, read_key_file(result.registrar_key_file), result.log_key_file
    )


def sign_attests(signer: Any, n: int) -> list[Any]:
    """``n`` signed ``doc.attest`` statements over random digests, issued now."""
    from ledger.core.statement import make_statement

    return [
        make_statement(signer, "doc.attest", {"digest": os.urandom(32).hex()}) for _ in range(n)
    ]


def fill(
    bl: BenchLedger,
    n: int,
    *,
    batch: int = 1000,
    chunk: int = 50_000,
    on_batch: Callable[[int, float], None] | None = None,
    progress_every: float = 15.0,
    label: str = "",
    actor_every: int | None = None,
) -> dict[str, float]:
    """Append ``n`` doc.attest records in batches; statements are signed in chunks
    just before use (each chunk is appended well within the 5-minute skew window).

    Returns seconds spent signing and appending (only the append calls are timed
    as appending). ``on_batch(size, seconds)`` is called per append call.

    ``actor_every``: sign with a freshly registered actor (role auditor) every
    that many records instead of the registrar alone (set-up only: the
    sequencer's replay check costs O(records by the batch's actor) per batch).
    """
    from ledger.core.errors import LedgerError
    from ledger.core.note import Signer
    from ledger.core.statement import make_statement
    from ledger.store.sequencer import Submission

    signer = bl.registrar
    if actor_every:
        chunk = min(chunk, actor_every)

    sign_s = append_s = 0.0
    done = 0
    last_report = time.perf_counter()
    while done < n:
        k = min(chunk, n - done)
        if actor_every and done % actor_every == 0:
            signer = Signer.generate(f"bench-actor-{done // actor_every}")
            reg = make_statement(
                bl.registrar,
                "actor.register",
                {"actor": signer.name, "role": "auditor", "key": signer.vkey},
            )
            (outcome,) = bl.ledger.append([Submission(reg)])
            if isinstance(outcome, LedgerError):
                raise RuntimeError(f"cannot register {signer.name}: {outcome}")
        t = time.perf_counter()
        statements = sign_attests(signer, k)
        sign_s += time.perf_counter() - t
        chunk_start = time.perf_counter()
        for i in range(0, k, batch):
            subs = [Submission(s) for s in statements[i : i + batch]]
            t = time.perf_counter()
            outcomes = bl.ledger.append(subs)
            dt = time.perf_counter() - t
            append_s += dt
            bad = [o for o in outcomes if isinstance(o, LedgerError)]
            if bad:
                raise RuntimeError(f"append refused {len(bad)} statements: {bad[0]}")
            if on_batch is not None:
                on_batch(len(subs), dt)
            if time.perf_counter() - chunk_start > 240:
                raise RuntimeError("a signing chunk took > 240 s to append; lower `chunk`")
        done += k
        if progress_every and time.perf_counter() - last_report > progress_every:
            last_report = time.perf_counter()
            rate = done / append_s if append_s else 0
            print(f"  {label}{done:,}/{n:,} appended ({rate:,.0f} rec/s appending)", flush=True)
    return {"sign_seconds": sign_s, "append_seconds": append_s}


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# -- cached SQLite ledgers (built by bench/verify.py's build worker) ------------------

CACHE = RESULTS / "verify-cache"


def cache_paths(n: int) -> tuple[Path, Path, Path]:
    """(db file, key dir, build-info json) for a cached ledger of ``n`` appended records."""
    return CACHE / f"ledger-{n}.db", CACHE / f"keys-{n}", CACHE / f"ledger-{n}.json"


def ensure_cached_ledger(n: int, rebuild: bool = False) -> dict[str, Any]:
    """The build info of a cached SQLite ledger of ``n`` records; builds it if needed
    (in a subprocess: ``bench/verify.py --worker build N``)."""
    import subprocess

    db, _, info = cache_paths(n)
    if not rebuild and info.exists() and db.exists():
        data = json.loads(info.read_text())
        data["cached"] = True
        print(
            f"ledger of {n:,}: cached ({db.relative_to(ROOT)}, built at "
            f"{data['append_rate']:,.0f} rec/s appending)"
        )
        return data
    print(f"building ledger of {n:,} records (batches of 1000) ...", flush=True)
    proc = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "verify.py"), "--worker", "build", str(n)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = proc.stdout.splitlines()
    for line in lines[:-1]:
        print(line)
    if proc.returncode != 0:
        raise RuntimeError(f"build of {n} failed")
    data = json.loads(lines[-1])
    data["cached"] = False
    print(
        f"  built in {data['wall_seconds']:.0f}s: append {data['append_rate']:,.0f} rec/s, "
        f"signing {data['sign_rate']:,.0f} stmt/s, overall {data['overall_rate']:,.0f} rec/s",
        flush=True,
    )
    return data


# -- named PostgreSQL databases, kept between runs as caches --------------------------


def _admin() -> Any:
    from sqlalchemy import create_engine

    from ledger.store.db import normalize_url

    return create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")


def pg_url(name: str) -> str:
    from sqlalchemy.engine import make_url

    from ledger.store.db import normalize_url

    url = make_url(normalize_url(POSTGRES_URL)).set(database=name)
    return url.render_as_string(hide_password=False)


def pg_exists(name: str) -> bool:
    from sqlalchemy import text

    admin = _admin()
    with admin.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        exists = found.first() is not None
    admin.dispose()
    return exists


def pg_create(name: str, template: str | None = None) -> str:
    """(Re)create database ``name``, optionally as a copy of ``template``; its URL."""
    from sqlalchemy import text

    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        suffix = f' TEMPLATE "{template}"' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{suffix}'))
    admin.dispose()
    return pg_url(name)


def pg_drop(name: str) -> None:
    from sqlalchemy import text

    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pg_version() -> str | None:
    from sqlalchemy import text

    try:
        admin = _admin()
        with admin.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar())
        admin.dispose()
        return version
    except Exception:  # reported as unavailable
        return None

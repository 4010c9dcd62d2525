"""Settlement decision latency: claim submitted -> decision committed.

The service decides a claim inside the append transaction that records it
(``SettlementAgent`` follow-up, docs/settlement.md), so one
``ledger.append([Submission(claim)])`` returning the claim's receipt *is* the
claim -> decision-committed latency. After each one the decision record is
checked (outside the timing): record ``seq + 1`` is the ``settlement.decision``
for that claim, and the receipt's checkpoint already covers it.

Set-up (per backend, not timed; the build rate is reported):

1. a ledger with at least ``--dispenses`` prior dispenses (default 100,000),
   built by a purpose-built loader with the demo's statement types and
   catalogue in batches of up to 1,000 submissions through ``Ledger.append``:
   registrations, three insurers (settlement keys held by the service,
   ``policy.publish``), ``coverage.enroll``, then ``rx.issue`` ->
   ``rx.dispense`` (20-digit traceability codes off a per-pharmacy shelf) ->
   ``claim.submit`` (95% of dispenses; decided by the service, so the history
   holds ``settlement.decision`` records too). ``run_demo`` writes ~4.4
   records per dispense at ~300-450 records/s here (20+ minutes for 10^5), too
   slow for a benchmark; the loader writes ~4 per dispense in bigger batches.
   Built once and cached: SQLite under ``bench/results/settlement-cache/``;
   PostgreSQL as database ``rxl_bench_settlement_<N>`` when ``--keep`` is
   given (reused by later runs; ``--rebuild`` to redo, ``--drop-cache`` to
   drop it). Without ``--keep`` PostgreSQL builds go to a throw-away database.
2. in the measuring process: fresh patients enrolled, then ``--claims`` (M)
   fresh dispenses (1-2 items, ~5% priced above the insurer's cap) appended
   in batches, not timed.

Measured, one claim at a time, each for one of those dispenses:

- ``warm``: the service as a single writer (its sequencer's document cache
  is valid, as in one ``rxledger serve`` process);
- ``cold``: before each claim another ``Ledger`` on the same database (a
  second service process) appends one ``doc.attest`` (untimed), so the
  claim's sequencer must read every document from the database.

Reported: p50/p90/p99/max/mean latency, throughput, peak RSS of the measuring
process, decision outcomes. Goal: p99 < 50 ms on PostgreSQL.

    .venv/bin/python bench/settlement.py --quick                  # smoke run (~1 min)
    .venv/bin/python bench/settlement.py --backend postgres --keep
    .venv/bin/python bench/settlement.py --backend postgres --keep --profile

PostgreSQL: ``RXLEDGER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), as in tests/conftest.py.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    latency_summary,
    machine,
    peak_rss_mb,
    pg_create,
    pg_drop,
    pg_exists,
    pg_url,
)
from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from ledger.core.errors import LedgerError  # noqa: E402
from ledger.core.note import Signer  # noqa: E402
from ledger.core.payload import seal  # noqa: E402
from ledger.core.statement import format_time, make_statement, now  # noqa: E402
from ledger.demo import CATALOGUE, INSURERS, insurer_formulary  # noqa: E402
from ledger.service import Ledger, init_ledger, read_key_file, write_key_file  # noqa: E402
from ledger.store.schema import records  # noqa: E402
from ledger.store.sequencer import Receipt, Submission  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "settlement-cache"
GOAL_P99_MS = 50.0
_DAY = timedelta(days=1)
CASH_SHARE = 0.05  # dispenses paid in cash (not claimed) in the history
OVER_CAP_SHARE = 0.05  # dispenses priced above the insurer's cap (partially approved)
CHAINS_PER_BATCH = 333  # issue + dispense + claim = 999 submissions (MAX_BATCH 1000)


# -- statistics ---------------------------------------------------------------------


def summary(seconds: list[float]) -> dict[str, float]:
    total = sum(seconds)
    return {
        **latency_summary(seconds),
        "claims_per_s": len(seconds) / total if total else float("nan"),
    }


class Cast:
    """The actors of a benchmark ledger and their keys (saved beside a cached ledger)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.prescribers = [Signer.from_skey(s) for s in data["prescribers"]]
        self.pharmacies = [Signer.from_skey(s) for s in data["pharmacies"]]
        self.insurers = [Signer.from_skey(s) for s in data["insurers"]]
        self.formularies = [insurer_formulary(spec) for spec in INSURERS]

    @property
    def tag(self) -> str:
        return str(self.data["tag"])


class Writer:
    """Signs statements as they are added and appends them in batches."""

    def __init__(self, ledger: Any, size: int = 1000) -> None:
        self.ledger = ledger
        self.size = size
        self.items: list[Any] = []
        self.refused: Counter[str] = Counter()
        self.append_seconds = 0.0
        self.submitted = 0

    def add(
        self, signer: Any, kind: str, body: dict[str, Any], payload: dict[str, Any] | None = None
    ) -> None:
        data = None
        if payload is not None:
            data, digest = seal(payload)
            body = {**body, "payload_digest": digest}
        self.items.append(Submission(make_statement(signer, kind, body), data))
        if len(self.items) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        items, self.items = self.items, []
        t = time.perf_counter()
        outcomes = self.ledger.append(items)
        self.append_seconds += time.perf_counter() - t
        self.submitted += len(items)
        for submission, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, LedgerError):
                self.refused[f"{submission.signed.statement.type}: {outcome.code}"] += 1
        if self.refused:
            raise RuntimeError(f"the loader's statements were refused: {dict(self.refused)}")


class Shop:
    """Prescriptions, dispenses (off a per-pharmacy shelf of traceability codes), claims."""

    def __init__(self, cast: Cast, writer: Writer, rng: random.Random, prefix: str) -> None:
        self.cast = cast
        self.writer = writer
        self.rng = rng
        self.prefix = prefix  # unique per run: ids never collide with earlier runs
        self.rx_count = 0
        self.stock: dict[tuple[str, str], list[Any]] = {}

    @staticmethod
    def trace_code(drug: Any) -> str:
        """A 20-digit traceability code: product prefix and a random serial."""
        product = 8_000_000 + int(drug.code.encode().hex(), 16) % 1_000_000
        serial = int(uuid.uuid4().int % 10**13)
        return f"{product:07d}{serial:013d}"

    def take(self, pharmacy: Any, drug: Any, quantity: int) -> list[dict[str, Any]]:
        codes = []
        while quantity > 0:
            pack = self.stock.get((pharmacy.name, drug.code))
            if pack is None or pack[2] == 0:
                pack = [self.trace_code(drug), drug.pack_size, drug.pack_size]
                self.stock[(pharmacy.name, drug.code)] = pack
            units = min(pack[2], quantity)
            pack[2] -= units
            quantity -= units
            codes.append({"code": pack[0], "pack_size": pack[1], "units": units})
        return codes

    def prescribe_and_dispense(
        self,
        patient: str,
        insurer: int,
        drugs: list[Any],
        *,
        claimed: bool,
        over_cap: bool = False,
    ) -> tuple[str, Any]:
        """``rx.issue`` + ``rx.dispense`` (fill 1); returns ``(rx_id, pharmacy)``."""
        rng = self.rng
        self.rx_count += 1
        rx_id = f"{self.prefix}.rx-{self.rx_count:07d}"
        prescriber = rng.choice(self.cast.prescribers)
        pharmacy = rng.choice(self.cast.pharmacies)
        valid_until = format_time(now() + rng.choice((7, 30, 30, 90)) * _DAY)
        self.writer.add(
            prescriber,
            "rx.issue",
            {"rx_id": rx_id, "patient": patient, "valid_until": valid_until, "fills_allowed": 1},
            {
                "items": [
                    {
                        "drug_code": d.code,
                        "drug_name": d.name,
                        "quantity": d.quantity,
                        "unit": d.unit,
                        "days_supply": d.days_supply,
                        "dose": d.dose,
                    }
                    for d in drugs
                ],
                "diagnosis_codes": sorted({d.diagnosis for d in drugs}),
            },
        )
        lines = []
        for i, d in enumerate(drugs):
            price = max(1, d.unit_price * rng.randint(92, 110) // 100)
            if over_cap and i == 0:
                cap = self.cast.formularies[insurer][d.code]["max_unit_price"]
                price = cap * rng.randint(112, 160) // 100 + 1
            lines.append(
                {
                    "item": i,
                    "quantity": d.quantity,
                    "unit_price": price,
                    "trace_codes": self.take(pharmacy, d, d.quantity),
                }
            )
        body: dict[str, Any] = {"rx_id": rx_id, "fill_number": 1, "claimed": claimed}
        if claimed:
            body["insurer"] = self.cast.insurers[insurer].name
        self.writer.add(pharmacy, "rx.dispense", body, {"items": lines})
        return rx_id, pharmacy


def enroll(writer: Writer, cast: Cast, patients: list[tuple[str, int]], rng: random.Random) -> None:
    at = now()
    for pseudonym, insurer in patients:
        since = at - timedelta(days=rng.randrange(30, 1500))
        writer.add(
            cast.insurers[insurer],
            "coverage.enroll",
            {
                "patient": pseudonym,
                "plan": INSURERS[insurer].plan,
                "valid_from": format_time(since),
                "valid_until": format_time(at + 365 * _DAY),
            },
        )


def drugs_for(cast: Cast, insurer: int, rng: random.Random) -> list[Any]:
    """The listed, non-controlled drugs on ``insurer``'s formulary, shuffled."""
    pool = [d for d in CATALOGUE if d.code in cast.formularies[insurer] and not d.controlled]
    rng.shuffle(pool)
    return pool


def pseudonym(tag: str, n: int) -> str:
    return "P-" + hashlib.sha256(f"{tag}:{n}".encode()).hexdigest()[:16]


# -- build (worker) ---------------------------------------------------------------------


def build(url: str, cache_dir: Path, dispenses: int) -> dict[str, Any]:
    """Initialize a ledger at ``url`` and load ``dispenses`` dispenses; keys in ``cache_dir``."""
    started = time.perf_counter()
    key_dir, settle_dir = cache_dir / "keys", cache_dir / "settlement"
    for d in (key_dir, settle_dir):
        if d.exists():
            shutil.rmtree(d)
    settle_dir.mkdir(parents=True)
    result = init_ledger(url, key_dir=key_dir)
    ledger = Ledger.open(url, log_key_file=result.log_key_file, settlement_key_dir=settle_dir)
    registrar = read_key_file(result.registrar_key_file)
    rng = random.Random(0)
    tag = "b"
    writer = Writer(ledger)

    def register(actor: str, role: str, **extra: Any) -> Signer:
        signer = Signer.generate(actor)
        body = {"actor": actor, "role": role, "key": signer.vkey, **extra}
        writer.add(registrar, "actor.register", body)
        return signer

    prescribers = [
        register(f"{tag}.dr-{i:04d}", "prescriber", licence=f"MD-{rng.randrange(10**8):08d}")
        for i in range(max(6, dispenses // 150))
    ]
    pharmacies = [
        register(f"{tag}.ph-{i:04d}", "pharmacy", licence=f"PH-{rng.randrange(10**8):08d}")
        for i in range(max(4, dispenses // 300))
    ]
    insurers = []
    for spec in INSURERS:
        insurer = register(f"{tag}.ins-{spec.name}", "insurer")
        settle = Signer.generate(insurer.name)
        writer.add(
            insurer,
            "actor.add_key",
            {"actor": insurer.name, "key": settle.vkey, "purpose": "settlement"},
        )
        ledger.settlement.add(settle)
        write_key_file(settle_dir / f"{spec.name}.skey", settle.skey)
        insurers.append(insurer)
        writer.add(
            insurer,
            "policy.publish",
            {
                "version": 1,
                "formulary": insurer_formulary(spec),
                "refill_threshold_pct": 75,
                "copay_bp": spec.copay_bp,
                "controlled_allowed": spec.controlled_allowed,
                "controlled_max_days_supply": 7,
            },
        )
    cast = Cast(
        {
            "tag": tag,
            "prescribers": [s.skey for s in prescribers],
            "pharmacies": [s.skey for s in pharmacies],
            "insurers": [s.skey for s in insurers],
        }
    )
    # ~8 prescriptions of 1-2 drugs per patient, every (patient, drug) once: no
    # refill-too-soon (every dispense happens within minutes; see ledger/demo.py)
    per_patient = 8
    weights = [spec.share for spec in INSURERS]
    patients = [
        (pseudonym(tag, i), rng.choices(range(len(insurers)), weights)[0])
        for i in range(-(-dispenses // per_patient))
    ]
    enroll(writer, cast, patients, rng)
    writer.flush()
    setup_seconds = time.perf_counter() - started
    print(f"  set-up: {writer.submitted:,} statements in {setup_seconds:.1f}s", flush=True)

    shop = Shop(cast, writer, rng, f"{tag}.h")
    writer.append_seconds = 0.0
    load_started = time.perf_counter()
    last = load_started
    claims = 0
    outcomes_before = writer.submitted
    for i in range(dispenses):
        pseudo, insurer = patients[i // per_patient]
        if i % per_patient == 0:
            pool = drugs_for(cast, insurer, rng)
        count = min(len(pool), rng.choices((1, 2), (65, 35))[0])
        drugs, pool = pool[:count] or pool[:1], pool[count:]
        claimed = rng.random() >= CASH_SHARE
        rx_id, pharmacy = shop.prescribe_and_dispense(
            pseudo,
            insurer,
            drugs,
            claimed=claimed,
            over_cap=claimed and rng.random() < OVER_CAP_SHARE,
        )
        if claimed:
            claims += 1
            claim_id = rx_id.replace(".rx-", ".cl-") + "-1"
            writer.add(
                pharmacy, "claim.submit", {"claim_id": claim_id, "rx_id": rx_id, "fill_number": 1}
            )
        if len(writer.items) >= 3 * CHAINS_PER_BATCH:
            writer.flush()
        now_ = time.perf_counter()
        if now_ - last > 30:
            last = now_
            rate = (i + 1) / (now_ - load_started)
            print(
                f"  {i + 1:,}/{dispenses:,} dispenses ({rate:,.0f} dispenses/s, "
                f"head {ledger.reader.head().size:,})",
                flush=True,
            )
    writer.flush()
    load_seconds = time.perf_counter() - load_started
    size = ledger.reader.head().size
    info = {
        "dispenses": dispenses,
        "claims": claims,
        "statements": writer.submitted,
        "records": size,
        "load_statements": writer.submitted - outcomes_before,
        "setup_seconds": setup_seconds,
        "load_seconds": load_seconds,
        "load_append_seconds": writer.append_seconds,
        "dispenses_per_s": dispenses / load_seconds,
        "records_per_s": (size - outcomes_before) / load_seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
    }
    (cache_dir / "cast.json").write_text(json.dumps(cast.data) + "\n")
    ledger.close()
    return info


# -- measure (worker) -------------------------------------------------------------------


def measure(
    url: str,
    cache_dir: Path,
    claims: int,
    cold_claims: int,
    profile: Path | None,
) -> dict[str, Any]:
    ledger = Ledger.open(
        url,
        log_key_file=cache_dir / "keys" / "log.skey",
        settlement_key_dir=cache_dir / "settlement",
    )
    cast = Cast(json.loads((cache_dir / "cast.json").read_text()))
    registrar_skey = (cache_dir / "keys" / "registrar.skey").read_text().strip()

    registrar = Signer.from_skey(registrar_skey)
    with ledger.engine.connect() as conn:
        prior = conn.execute(
            select(func.count()).select_from(records).where(records.c.type == "rx.dispense")
        ).scalar_one()
    head = ledger.reader.head().size
    run = f"m{head}"  # ids unique per run on a reused ledger
    rng = random.Random(head)
    print(f"  ledger: {head:,} records, {prior:,} prior dispenses", flush=True)

    # set-up, not timed: patients, then one fresh dispense per claim
    total = claims + cold_claims
    writer = Writer(ledger)
    weights = [spec.share for spec in INSURERS]
    per_patient = 8
    patients = [
        (pseudonym(run, i), rng.choices(range(len(cast.insurers)), weights)[0])
        for i in range(-(-total // per_patient))
    ]
    enroll(writer, cast, patients, rng)
    writer.flush()
    shop = Shop(cast, writer, rng, run)
    todo: list[tuple[str, Any]] = []
    t = time.perf_counter()
    for i in range(total):
        pseudo, insurer = patients[i // per_patient]
        if i % per_patient == 0:
            pool = drugs_for(cast, insurer, rng)
        count = min(len(pool), rng.choices((1, 2), (65, 35))[0])
        drugs, pool = pool[:count] or pool[:1], pool[count:]
        over = rng.random() < OVER_CAP_SHARE
        todo.append(
            shop.prescribe_and_dispense(pseudo, insurer, drugs, claimed=True, over_cap=over)
        )
    writer.flush()
    print(f"  prepared {total:,} dispenses in {time.perf_counter() - t:.1f}s", flush=True)

    other = None
    if cold_claims:
        other = Ledger.open(
            url,
            log_key_file=cache_dir / "keys" / "log.skey",
            settlement_key_dir=cache_dir / "missing",
        )
    outcomes: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    cpu: list[float] = []  # this process's CPU time per append (contention hardly moves it)

    def claim_once(rx_id: str, pharmacy: Any) -> float:
        claim_id = rx_id.replace(".rx-", ".cl-") + "-1"
        body = {"claim_id": claim_id, "rx_id": rx_id, "fill_number": 1}
        submission = Submission(make_statement(pharmacy, "claim.submit", body))
        c0, t0 = time.process_time(), time.perf_counter()
        (outcome,) = ledger.append([submission])
        dt = time.perf_counter() - t0
        cpu.append(time.process_time() - c0)
        if isinstance(outcome, LedgerError) or not isinstance(outcome, Receipt):
            raise RuntimeError(f"claim {claim_id} refused: {outcome}")
        # the decision is committed with the claim: record seq+1, covered by the receipt
        if outcome.tree_size < outcome.seq + 2:
            raise RuntimeError(f"claim {claim_id}: the receipt's checkpoint lacks the decision")
        decision = ledger.reader.record(outcome.seq + 1).fields
        if (
            decision.get("type") != "settlement.decision"
            or decision["body"]["claim_id"] != claim_id
        ):
            raise RuntimeError(f"claim {claim_id}: record {outcome.seq + 1} is not its decision")
        outcomes[decision["body"]["outcome"]] += 1
        rules.update(r["code"] for r in decision["body"]["rules"] if r.get("code"))
        return dt

    def poke() -> None:
        assert other is not None
        statement = make_statement(registrar, "doc.attest", {"digest": os.urandom(32).hex()})
        (outcome,) = other.append([Submission(statement)])
        if isinstance(outcome, LedgerError):
            raise RuntimeError(f"the second writer's attest was refused: {outcome}")

    phases: dict[str, Any] = {}
    profiler = None
    if profile is not None:
        profiler = cProfile.Profile()
    started = time.perf_counter()
    warm = []
    for rx_id, pharmacy in todo[:claims]:
        if profiler is not None:
            profiler.enable()
        warm.append(claim_once(rx_id, pharmacy))
        if profiler is not None:
            profiler.disable()
    phases["warm"] = {
        **summary(warm),
        "client_cpu_ms_mean": statistics.fmean(cpu) * 1000,
        "wall_seconds": time.perf_counter() - started,
    }
    cpu.clear()
    if cold_claims:
        started = time.perf_counter()
        cold = []
        for rx_id, pharmacy in todo[claims:]:
            poke()
            if profiler is not None:
                profiler.enable()
            cold.append(claim_once(rx_id, pharmacy))
            if profiler is not None:
                profiler.disable()
        phases["cold"] = {
            **summary(cold),
            "client_cpu_ms_mean": statistics.fmean(cpu) * 1000,
            "wall_seconds": time.perf_counter() - started,
        }
    if profiler is not None and profile is not None:
        profiler.dump_stats(str(profile.with_suffix(".prof")))
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(40)
        profile.with_suffix(".txt").write_text(out.getvalue())
    result = {
        "prior_dispenses": prior,
        "records_before": head,
        "records_after": ledger.reader.head().size,
        "phases": phases,
        "outcomes": dict(sorted(outcomes.items())),
        "failed_rule_codes": dict(sorted(rules.items())),
        "peak_rss_mb": peak_rss_mb(),
        "server": server_settings(ledger.engine),
    }
    if other is not None:
        other.close()
    ledger.close()
    return result


def server_settings(engine: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            names = ("journal_mode", "synchronous")
            return {n: conn.exec_driver_sql(f"PRAGMA {n}").scalar() for n in names}
        names = ("server_version", "synchronous_commit", "fsync", "shared_buffers")
        return {n: conn.exec_driver_sql(f"SHOW {n}").scalar() for n in names}


# -- orchestration -----------------------------------------------------------------------


def run_worker(args: list[str]) -> dict[str, Any]:
    """``settlement.py --worker ARGS`` in a fresh interpreter; streams its output and
    returns the JSON of its last line (its peak RSS is its own)."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        if line.startswith("{"):
            last = line
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or not last:
        raise RuntimeError(f"worker {' '.join(args)} failed ({proc.returncode})")
    return dict(json.loads(last))


def ledger_for(backend: str, dispenses: int, args: argparse.Namespace) -> dict[str, Any]:
    """A built ledger for ``backend``: cached, or built now. Returns url, dirs, build info."""
    cached = CACHE / f"{backend}-{dispenses}"
    name = f"rxl_bench_settlement_{dispenses}"
    info_path = cached / "build.json"

    def usable() -> bool:
        if not (info_path.exists() and (cached / "cast.json").exists()):
            return False
        if backend == "sqlite":
            return (cached / "ledger.db").exists()
        return pg_exists(name)

    keep = backend == "sqlite" or args.keep
    if not args.rebuild and usable():
        info = json.loads(info_path.read_text())
        url = pg_url(name) if backend == "postgres" else f"sqlite:///{cached / 'ledger.db'}"
        print(
            f"{backend}: cached ledger of {info['dispenses']:,} dispenses "
            f"(built at {info['dispenses_per_s']:,.0f} dispenses/s, "
            f"{info['records_per_s']:,.0f} records/s)",
            flush=True,
        )
        return {"url": url, "dir": cached, "build": {**info, "cached": True}, "temp": None}
    # a throw-away ledger (PostgreSQL without --keep), else the cache, rebuilt
    work = cached if keep else Path(tempfile.mkdtemp(prefix="rxl-bench-settlement-"))
    if keep:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    if backend == "sqlite":
        url = f"sqlite:///{work / 'ledger.db'}"
    else:
        url = pg_create(name if keep else f"rxl_bench_settlement_{uuid.uuid4().hex[:12]}")
    built = {"url": url, "dir": work, "temp": None if keep else url}
    print(f"{backend}: building a ledger of {dispenses:,} dispenses ...", flush=True)
    try:
        info = run_worker(["build", url, str(work), str(dispenses)])
    except BaseException:
        discard(built)
        raise
    if keep:
        info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"  built in {info['wall_seconds']:.0f}s: {info['records']:,} records, "
        f"{info['dispenses_per_s']:,.0f} dispenses/s, {info['records_per_s']:,.0f} records/s "
        f"(loader incl. signing), peak RSS {info['peak_rss_mb']:.0f} MiB",
        flush=True,
    )
    return {**built, "build": {**info, "cached": False}}


def discard(built: dict[str, Any]) -> None:
    """Drop a throw-away ledger (its database and its key directory)."""
    if built["temp"] is None:
        return

    if not built["url"].startswith("sqlite"):
        pg_drop(str(make_url(built["url"]).database))
    shutil.rmtree(built["dir"], ignore_errors=True)


def print_table(rows: list[list[Any]]) -> None:
    headers = ["backend", "phase", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "/s"]
    headers.append("client CPU ms")
    cells = [[f"{v:,.1f}" if isinstance(v, float) else f"{v}" for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 dispenses, 100 claims")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--dispenses", type=int, help="prior dispenses (default 100,000)")
    parser.add_argument("--claims", type=int, help="claims measured warm (default 1,000)")
    parser.add_argument("--cold-claims", type=int, help="claims measured cold (default M/2)")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL ledger cached")
    parser.add_argument("--rebuild", action="store_true", help="rebuild a cached ledger")
    parser.add_argument("--drop-cache", action="store_true", help="drop cached ledgers and exit")
    parser.add_argument("--profile", action="store_true", help="cProfile the timed appends")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, url, directory, *rest = args.worker
        if kind == "build":
            result = build(url, Path(directory), int(rest[0]))
        else:
            profile = Path(rest[2]) if len(rest) > 2 else None
            result = measure(url, Path(directory), int(rest[0]), int(rest[1]), profile)
        print(json.dumps(result, default=str))
        return 0

    dispenses = args.dispenses or (2_000 if args.quick else 100_000)
    claims = args.claims or (100 if args.quick else 1_000)
    cold = claims // 2 if args.cold_claims is None else args.cold_claims
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if args.drop_cache:
        for backend in backends:
            shutil.rmtree(CACHE / f"{backend}-{dispenses}", ignore_errors=True)
            if backend == "postgres":
                pg_drop(f"rxl_bench_settlement_{dispenses}")
        print("dropped")
        return 0

    info = machine()
    print(
        f"machine: nproc={info['nproc']} (affinity {info['affinity']}), CPU {info['cpu_model']}, "
        f"Python {info['python']}, loadavg {', '.join(f'{x:.2f}' for x in info['loadavg'])}"
    )
    print("caveat: a shared 2-vCPU VM (other sessions run on it): figures are indicative")
    print(f"prior dispenses >= {dispenses:,}; claims: {claims:,} warm + {cold:,} cold\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    rows = []
    for backend in backends:
        built = ledger_for(backend, dispenses, args)
        try:
            wargs = ["measure", built["url"], str(built["dir"]), str(claims), str(cold)]
            if args.profile:
                wargs.append(str(RESULTS / f"settlement-profile-{backend}"))
            print(f"{backend}: measuring {claims:,} + {cold:,} claims ...", flush=True)
            measured = run_worker(wargs)
        finally:
            discard(built)
        results[backend] = {"build": built["build"], **measured}
        for phase, s in measured["phases"].items():
            rows.append(
                [
                    backend,
                    phase,
                    s["n"],
                    s["p50_ms"],
                    s["p90_ms"],
                    s["p99_ms"],
                    s["max_ms"],
                    s["mean_ms"],
                    s["claims_per_s"],
                    s["client_cpu_ms_mean"],
                ]
            )
        print(
            f"  {measured['prior_dispenses']:,} prior dispenses; outcomes {measured['outcomes']}; "
            f"peak RSS {measured['peak_rss_mb']:.0f} MiB\n",
            flush=True,
        )
    print("claim -> decision committed (one ledger.append per claim):")
    print_table(rows)
    goal = None
    if "postgres" in results:
        p99 = max(s["p99_ms"] for s in results["postgres"]["phases"].values())
        goal = p99 < GOAL_P99_MS
        verdict = "met" if goal else "NOT met"
        print(f"\ngoal p99 < {GOAL_P99_MS:.0f} ms on PostgreSQL: {verdict} (worst p99 {p99:.1f})")
    name = "settlement-quick" if args.quick else "settlement"
    if args.profile:
        name += "-profile"
    path = RESULTS / f"{name}.json"
    data = {
        "benchmark": "settlement",
        "machine": info,
        "params": {"dispenses": dispenses, "claims": claims, "cold_claims": cold},
        "goal_p99_ms": GOAL_P99_MS,
        "goal_met": goal,
        "results": results,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"results written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

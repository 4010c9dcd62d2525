"""Data-use decision latency: ``data.use`` over a cohort against a ledger of consents.

A data user asks which patients of a cohort it may use (``preview_use``),
signs a ``data.use`` whose body carries the exact result (counts and the
cohort root, :mod:`ledger.core.cohort`), and the sequencer appends it — and
in doing so decides the whole cohort again against the consents in force
and writes the use, its member list and one use-log row per permitted
patient. The *decision* measured here is (a) + (b):

(a) ``preview``: :func:`ledger.wallet_service.preview_use` (read every
    cohort member's consents, decide, compute the cohort root);
(b) ``append``: ``Ledger.append([Submission(data.use, payload)])`` until the
    receipt (re-decide, compare with the signed body, write, commit).

Client-side work between them (sealing the cohort payload, signing) is timed
apart (``client``) and not part of the decision.

Set-up (per backend, not timed; the build rate is reported):
``--patients`` patients (default 100,000) registered in batches of 1,000 (by
sub-registrars of 5,000 patients each: the sequencer's replay check is slow
for an actor with many records on PostgreSQL, bench/README.md), four data
users (accredited non-profit, non-profit, two commercial), then
``--consents`` consents (default 100,000) granted by the patients
themselves in batches of 500 (see ``ACTOR_BATCH``) — each consent goes to a random patient
(about 37% of patients have none, 37% one, 26% more), with a mix of
grantees (classes and named data users), DUO permissions (GRU/HMB/DS/POA),
modifiers (NCU/NPU/TS/PUB), categories and validity windows — then 2% of
them revoked and 1% narrowed. Keys are derived from ``--seed``, so a cached
build needs no key files but the log's. On PostgreSQL the build runs
``ANALYZE`` every 10 batches and at the end (this server has autovacuum off;
see ``Appender``).

Measured: ``--uses`` (K, default 20) uses, each by a random data user for a
random purpose and 1-2 categories over a random cohort of ``--cohort``
patients (default 10,000), in four modes:

- ``cold``: before each use another writer (a second ``Ledger`` on the same
  database, i.e. another service process) appends one ``doc.attest``
  (untimed), so the sequencer's document cache is invalid, and the
  process's consent cache (:mod:`ledger.store.consents`) is emptied, as in a
  process that never saw these patients: the preview reads every consent
  document of the cohort from the database, the sequencer finds them in the
  cache;
- ``split``: as ``cold``, and the consent cache is emptied again between the
  preview and the append (untimed), as if another process had answered the
  preview: both read the whole cohort from the database (the cost of a
  decision before the cache);
- ``other``: another writer appends before each use, the caches are kept
  (the consent cache follows the log: it drops only the patients whose
  consents changed, here none);
- ``warm``: the service as the only writer, caches kept (random cohorts
  overlap, so the consent cache warms up over the run).

Each use is checked (untimed): accepted, and the recorded permitted set
equals the preview's. Reported: p50/p90/p99/max/mean of preview, append and
their sum, the share permitted, a breakdown of the time inside the product
(reads, decisions, cohort root, projection writes: wrappers around those
functions, negligible overhead), the build rate and peak RSS of the
measuring process. Goal: decision (preview + append) p99 < 500 ms.

Caching (``--keep``): the built ledger is kept — SQLite under
``bench/results/wallet-cache/``, PostgreSQL as database
``rxl_bench_wallet_<patients>_<consents>`` — and each run measures on a
copy of it (file copy / ``CREATE DATABASE … TEMPLATE``), so the cache stays
as built. ``--rebuild`` rebuilds it, ``--drop-cache`` deletes it. Without
``--keep`` the build goes to a throw-away database.

    .venv/bin/python bench/wallet.py --quick                     # ~1-2 min
    .venv/bin/python bench/wallet.py --backend sqlite --keep
    .venv/bin/python bench/wallet.py --backend postgres --keep --profile

PostgreSQL: ``RXLEDGER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), as in tests/conftest.py.
Results: ``bench/results/wallet.json`` (``wallet-quick.json`` with
``--quick``), merged per backend.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    POSTGRES_URL,
    latency_summary,
    machine,
    peak_rss_mb,
    pg_create,
    pg_drop,
    pg_exists,
    pg_version,
)
from sqlalchemy import func, select, text  # noqa: E402

import ledger.domain.wallet as wallet_rules  # noqa: E402
import ledger.store.sequencer as sequencer_module  # noqa: E402
from ledger import wallet_service  # noqa: E402
from ledger.core import cohort  # noqa: E402
from ledger.core.note import Signer  # noqa: E402
from ledger.core.payload import seal  # noqa: E402
from ledger.core.statement import format_time, make_statement, now  # noqa: E402
from ledger.domain.state import MemoryState  # noqa: E402
from ledger.domain.wallet import CATEGORIES, DS, GRU, HMB, NCU, NPU, POA, PUB, TS  # noqa: E402
from ledger.service import Ledger, init_ledger  # noqa: E402
from ledger.store.consents import ConsentCache, consent_cache  # noqa: E402
from ledger.store.schema import projections, records  # noqa: E402
from ledger.store.sequencer import MAX_PAYLOAD, Receipt, Submission  # noqa: E402
from ledger.store.state import DbState  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "wallet-cache"
GOAL_P99_MS = 500.0
BATCH = 1000
#: batches signed by many different actors (the patients' own statements) are kept
#: at 500: since 342430c ``pairs_in`` turns the replay check into one OR term per
#: distinct actor, and SQLite refuses ~1,000 of them ("Expression tree is too
#: large (maximum depth 1000)"), so a batch of 1,000 consents by 1,000 patients fails
ACTOR_BATCH = 500
PATIENTS_PER_REGISTRAR = 5000
#: (id, data_user_class)
DATA_USERS = (
    ("uni-research", "accredited-nonprofit"),
    ("charity-lab", "nonprofit"),
    ("pharma-co", "commercial"),
    ("insure-analytics", "commercial"),
)
DISEASES = ("E11", "E10", "C50", "I10", "J45", "F32")
REVOKE_SHARE = 0.02
NARROW_SHARE = 0.01
_DAY = timedelta(days=1)


# -- the world: deterministic ids and keys ----------------------------------------------


def signer_for(seed: int, name: str) -> Signer:
    return Signer(name, hashlib.sha256(f"rxledger-bench-wallet|{seed}|{name}".encode()).digest())


def patient_ids(seed: int, n: int) -> list[str]:
    """``n`` pseudonyms ``P-<16 hex>`` (18 characters, as the demo's)."""
    return [
        "P-" + hashlib.sha256(f"patient|{seed}|{i}".encode()).hexdigest()[:16] for i in range(n)
    ]


def registrar_of(i: int) -> str:
    return f"bench-registrar-{i // PATIENTS_PER_REGISTRAR}"


def consent_body(rng: random.Random, patient: str, consent_id: str, t: datetime) -> dict[str, Any]:
    """One consent with a realistic mix of grantees, purposes, categories, windows."""
    roll = rng.random()
    if roll < 0.45:
        grantee = "class:any"
    elif roll < 0.65:
        grantee = "class:nonprofit"
    elif roll < 0.80:
        grantee = "class:accredited-nonprofit"
    else:
        grantee = rng.choice(DATA_USERS)[0]
    purposes: list[dict[str, Any]] = []
    for _ in range(2 if rng.random() < 0.1 else 1):
        code = rng.choices((GRU, HMB, DS, POA), weights=(35, 40, 20, 5))[0]
        if any(p["code"] == code for p in purposes):
            continue
        purpose: dict[str, Any] = {"code": code}
        if code == DS:
            purpose["disease"] = rng.choice(DISEASES)
        purposes.append(purpose)
    if rng.random() < 0.20:
        purposes.append({"code": NCU})
    if rng.random() < 0.10:
        purposes.append({"code": NPU})
    if rng.random() < 0.15:
        purposes.append({"code": TS, "months": rng.randint(6, 60)})
    if rng.random() < 0.20:
        purposes.append({"code": PUB})
    k = rng.choices((1, 2, 3, 4, 5), weights=(5, 10, 20, 25, 40))[0]
    categories = sorted(rng.sample(CATEGORIES, k))
    window = rng.random()
    if window < 0.88:  # in force
        start, end = t - rng.randint(1, 700) * _DAY, t + rng.randint(365, 3650) * _DAY
    elif window < 0.94:  # expired
        start, end = t - 1500 * _DAY, t - rng.randint(1, 300) * _DAY
    else:  # not yet in force
        start, end = t + rng.randint(30, 300) * _DAY, t + 2000 * _DAY
    return {
        "consent_id": consent_id,
        "patient": patient,
        "grantee": grantee,
        "purposes": purposes,
        "categories": categories,
        "valid_from": format_time(start),
        "valid_until": format_time(end),
        "share_bp": rng.choice((0, 500, 1000, 2500, 5000, 10_000)),
    }


# -- build (a worker process) --------------------------------------------------------------


class Appender:
    """Signs and appends in batches of up to 1,000, timing signing and appending apart."""

    def __init__(self, ledger: Ledger, label: str) -> None:
        self.ledger = ledger
        self.label = label
        self.phases: dict[str, dict[str, float]] = {}
        self._last_report = time.perf_counter()
        self.batches = 0
        # PostgreSQL: this server runs with autovacuum off, so nothing refreshes the
        # planner statistics of tables that grow from empty; without them project()'s
        # DELETE … kind = ? AND key IN (…) scans every row of the kind (build rate fell
        # from ~320 to ~100 rec/s within 16,000 registrations). ANALYZE now and then,
        # as autovacuum would.
        self.analyze_every = 10 if ledger.engine.dialect.name == "postgresql" else 0
        self.analyze_seconds = 0.0

    def analyze(self) -> None:
        if self.ledger.engine.dialect.name != "postgresql":
            return
        t = time.perf_counter()
        with self.ledger.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        self.analyze_seconds += time.perf_counter() - t

    def run(
        self, phase: str, items: list[Any], make: Callable[[Any], Any], batch: int = BATCH
    ) -> None:
        stats = self.phases.setdefault(
            phase, {"records": 0, "sign_seconds": 0.0, "append_seconds": 0.0, "batch": batch}
        )
        for start in range(0, len(items), batch):
            t = time.perf_counter()
            subs = [Submission(make(item)) for item in items[start : start + batch]]
            stats["sign_seconds"] += time.perf_counter() - t
            t = time.perf_counter()
            outcomes = self.ledger.append(subs)
            stats["append_seconds"] += time.perf_counter() - t
            bad = [o for o in outcomes if not isinstance(o, Receipt)]
            if bad:
                raise RuntimeError(f"{phase}: {len(bad)} refused, first: {bad[0]!r}")
            stats["records"] += len(subs)
            self.batches += 1
            if self.analyze_every and self.batches % self.analyze_every == 0:
                self.analyze()
            if time.perf_counter() - self._last_report > 15:
                self._last_report = time.perf_counter()
                done = stats["records"]
                rate = done / stats["append_seconds"]
                print(
                    f"  {self.label}{phase}: {done:,}/{len(items):,} ({rate:,.0f} rec/s appending)",
                    flush=True,
                )


def build(url: str, key_dir: Path, n_patients: int, n_consents: int, seed: int) -> dict[str, Any]:
    """Fill an empty database with the world; returns the build figures."""
    wall = time.perf_counter()
    result = init_ledger(url, key_dir=key_dir)
    ledger = Ledger.open(
        url, log_key_file=result.log_key_file, settlement_key_dir=key_dir / "settlement"
    )
    from ledger.service import read_key_file

    registrar = read_key_file(result.registrar_key_file)
    rng = random.Random(seed)
    t = now()
    app = Appender(ledger, f"{ledger.engine.dialect.name}: ")
    patients = patient_ids(seed, n_patients)

    # the registrar registers the sub-registrars and the data users
    subregs = sorted({registrar_of(i) for i in range(n_patients)})
    actors: list[dict[str, Any]] = [
        {"actor": name, "role": "registrar", "key": signer_for(seed, name).vkey} for name in subregs
    ]
    actors += [
        {
            "actor": name,
            "role": "data_user",
            "key": signer_for(seed, name).vkey,
            "data_user_class": cls,
            "display_name": name,
        }
        for name, cls in DATA_USERS
    ]
    app.run("actors", actors, lambda body: make_statement(registrar, "actor.register", body))

    signers = {name: signer_for(seed, name) for name in subregs}

    def register(i: int) -> Any:
        body = {"actor": patients[i], "role": "patient", "key": signer_for(seed, patients[i]).vkey}
        return make_statement(signers[registrar_of(i)], "actor.register", body)

    app.run("patients", list(range(n_patients)), register)

    # consents: each to a random patient (Poisson-like: ~37% none, ~37% one)
    counts: dict[str, int] = {}
    grants: list[dict[str, Any]] = []
    for _ in range(n_consents):
        patient = patients[rng.randrange(n_patients)]
        counts[patient] = counts.get(patient, 0) + 1
        grants.append(consent_body(rng, patient, f"c{counts[patient]}", t))

    def grant(body: dict[str, Any]) -> Any:
        return make_statement(signer_for(seed, body["patient"]), "consent.grant", body)

    app.run("consents", grants, grant, ACTOR_BATCH)

    chosen = rng.sample(grants, int(n_consents * (REVOKE_SHARE + NARROW_SHARE)))
    revokes = chosen[: int(n_consents * REVOKE_SHARE)]
    # an ended consent cannot be narrowed (consent-ended): only those still running
    narrows = [
        g
        for g in chosen[len(revokes) :]
        if len(g["categories"]) > 1 and g["valid_until"] > format_time(t)
    ]

    def revoke(body: dict[str, Any]) -> Any:
        return make_statement(
            signer_for(seed, body["patient"]),
            "consent.revoke",
            {"consent_id": body["consent_id"], "patient": body["patient"]},
        )

    def narrow(body: dict[str, Any]) -> Any:
        return make_statement(
            signer_for(seed, body["patient"]),
            "consent.narrow",
            {
                "consent_id": body["consent_id"],
                "patient": body["patient"],
                "remove_categories": [body["categories"][-1]],
            },
        )

    app.run("revocations", revokes, revoke, ACTOR_BATCH)
    app.run("narrowings", narrows, narrow, ACTOR_BATCH)
    app.analyze()
    size = ledger.reader.head().size
    ledger.close()
    wall = time.perf_counter() - wall

    histogram: dict[int, int] = {}
    for c in counts.values():
        histogram[c] = histogram.get(c, 0) + 1
    histogram[0] = n_patients - len(counts)
    appended = sum(p["records"] for p in app.phases.values())
    append_s = sum(p["append_seconds"] for p in app.phases.values())
    sign_s = sum(p["sign_seconds"] for p in app.phases.values())
    for phase in app.phases.values():
        phase["append_rate"] = phase["records"] / phase["append_seconds"]
    return {
        "patients": n_patients,
        "consents": n_consents,
        "revoked": len(revokes),
        "narrowed": len(narrows),
        "seed": seed,
        "built_at": format_time(t),
        "log_size": size,
        "consents_per_patient": dict(sorted(histogram.items())),
        "phases": app.phases,
        "append_seconds": append_s,
        "sign_seconds": sign_s,
        "append_rate": appended / append_s,
        "analyze_seconds": app.analyze_seconds,
        "overall_rate": appended / wall,
        "wall_seconds": wall,
        "peak_rss_mb": peak_rss_mb(),
    }


# -- measure (a worker process) ------------------------------------------------------------


class Breakdown:
    """Time spent inside a few product functions, by wrapping them (no product change)."""

    TARGETS = (
        ("DbState.get_many", DbState, "get_many"),
        ("DbState._fetch", DbState, "_fetch"),
        ("ConsentCache.read", ConsentCache, "read"),
        ("MemoryState.get_many", MemoryState, "get_many"),
        ("evaluate_use", wallet_rules, "evaluate_use"),
        ("cohort_root", wallet_rules, "cohort_root"),
        ("cohort_root", cohort, "cohort_root"),
        ("project", sequencer_module, "project"),
    )

    def __init__(self) -> None:
        self.now: dict[str, float] = {}
        for label, owner, name in self.TARGETS:
            setattr(owner, name, self._wrap(label, getattr(owner, name)))

    def _wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.now[label] = self.now.get(label, 0.0) + time.perf_counter() - t

        return timed

    def take(self) -> dict[str, float]:
        out, self.now = self.now, {}
        return out


def random_use(rng: random.Random, patients: list[str], cohort_size: int) -> dict[str, Any]:
    code = rng.choices((HMB, DS, GRU, POA), weights=(40, 30, 20, 10))[0]
    purpose: dict[str, Any] = {"code": code}
    if code == DS:
        purpose["disease"] = rng.choice(("E11", "E11.9", "C50", "I10"))
    k = rng.choice((1, 1, 2))
    return {
        "data_user": rng.choice(DATA_USERS)[0],
        "purpose": purpose,
        "categories": sorted(rng.sample(("prescriptions", "dispenses", "diagnoses", "claims"), k)),
        "patients": rng.sample(patients, cohort_size),
    }


def one_use(
    ledger: Ledger,
    seed: int,
    spec: dict[str, Any],
    *,
    profiles: tuple[cProfile.Profile, cProfile.Profile] | None = None,
    between: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One use: preview, sign, append; ``between`` runs (untimed) before the append."""
    use_id = f"use-{uuid.uuid4().hex[:16]}"
    at = format_time(now())
    cached = len(ledger.sequencer._docs)  # a private field, read as a diagnostic
    stats = consent_cache(ledger.engine).stats
    counts = [(stats.hits, stats.misses)]
    c0 = time.process_time()
    t0 = time.perf_counter()
    if profiles:
        profiles[0].enable()
    preview = wallet_service.preview_use(
        ledger.engine,
        data_user=spec["data_user"],
        use_id=use_id,
        at=at,
        purpose=spec["purpose"],
        categories=spec["categories"],
        patients=spec["patients"],
    )
    if profiles:
        profiles[0].disable()
    t1 = time.perf_counter()
    c1 = time.process_time()
    payload, digest = seal({"patients": spec["patients"]})
    body = {
        "use_id": use_id,
        "purpose": spec["purpose"],
        "categories": spec["categories"],
        **preview["body_fields"],
        "payload_digest": digest,
    }
    signed = make_statement(signer_for(seed, spec["data_user"]), "data.use", body, issued_at=at)
    counts.append((stats.hits, stats.misses))
    if between is not None:
        between()
        counts.append((stats.hits, stats.misses))
    else:
        counts.append(counts[-1])
    c2 = time.process_time()
    t2 = time.perf_counter()
    if profiles:
        profiles[1].enable()
    (outcome,) = ledger.append([Submission(signed, payload=payload)])
    if profiles:
        profiles[1].disable()
    t3 = time.perf_counter()
    c3 = time.process_time()
    counts.append((stats.hits, stats.misses))
    if not isinstance(outcome, Receipt):
        raise RuntimeError(f"data.use refused: {outcome!r}")
    recorded = wallet_service.released(ledger.engine, use_id)
    if recorded["permitted"] != preview["permitted"]:
        raise RuntimeError(f"{use_id}: recorded permitted set differs from the preview")
    fields = preview["body_fields"]
    return {
        "use_id": use_id,
        "seq": outcome.seq,
        "data_user": spec["data_user"],
        "purpose": spec["purpose"],
        "categories": spec["categories"],
        "requested": fields["requested_count"],
        "permitted": fields["permitted_count"],
        "payload_bytes": len(payload),
        "preview_s": t1 - t0,
        "client_s": t2 - t1,
        "append_s": t3 - t2,
        "decision_s": (t1 - t0) + (t3 - t2),
        "preview_cpu_s": c1 - c0,
        "append_cpu_s": c3 - c2,
        "decision_cpu_s": (c1 - c0) + (c3 - c2),
        "sequencer_cache_docs_before": cached,
        # consent documents found in / read past the consent cache
        "preview_cache_hits": counts[1][0] - counts[0][0],
        "preview_cache_misses": counts[1][1] - counts[0][1],
        "append_cache_hits": counts[3][0] - counts[2][0],
        "append_cache_misses": counts[3][1] - counts[2][1],
    }


def summarize_mode(uses: list[dict[str, Any]], breakdowns: list[dict[str, float]]) -> dict:
    labels = sorted({k for b in breakdowns for k in b})
    requested = sum(u["requested"] for u in uses)
    return {
        "preview": latency_summary([u["preview_s"] for u in uses]),
        "append": latency_summary([u["append_s"] for u in uses]),
        "decision": latency_summary([u["decision_s"] for u in uses]),
        "client_sign_seal": latency_summary([u["client_s"] for u in uses]),
        # CPU time of this process: excludes waiting for a CPU on the shared VM,
        # and (PostgreSQL) the server's own work
        "preview_cpu": latency_summary([u["preview_cpu_s"] for u in uses]),
        "append_cpu": latency_summary([u["append_cpu_s"] for u in uses]),
        "decision_cpu": latency_summary([u["decision_cpu_s"] for u in uses]),
        "permitted_share": sum(u["permitted"] for u in uses) / requested,
        "preview_cache_hit_share": sum(u["preview_cache_hits"] for u in uses) / requested,
        "append_cache_hit_share": sum(u["append_cache_hits"] for u in uses) / requested,
        "permitted_range": [min(u["permitted"] for u in uses), max(u["permitted"] for u in uses)],
        "payload_bytes_max": max(u["payload_bytes"] for u in uses),
        "breakdown_mean_ms": {
            label: statistics.fmean(b.get(label, 0.0) for b in breakdowns) * 1000
            for label in labels
        },
        "uses": uses,
    }


def measure(
    url: str, key_dir: Path, info: dict[str, Any], cohort_size: int, k: int, profile: bool
) -> dict[str, Any]:
    seed = info["seed"]
    patients = patient_ids(seed, info["patients"])
    opened = time.perf_counter()
    ledger = Ledger.open(
        url, log_key_file=key_dir / "log.skey", settlement_key_dir=key_dir / "settlement"
    )
    other = Ledger.open(
        url, log_key_file=key_dir / "log.skey", settlement_key_dir=key_dir / "settlement"
    )
    other_signer = signer_for(seed, "uni-research")
    with ledger.engine.connect() as conn:
        size = ledger.reader.head(conn).size
        counted = conn.execute(
            select(func.count()).select_from(projections).where(projections.c.kind == "consents")
        ).scalar_one()
        uses_before = conn.execute(
            select(func.count()).select_from(records).where(records.c.type == "data.use")
        ).scalar_one()
    print(
        f"  ledger: {size:,} records, {counted:,} patients with consents, "
        f"{uses_before} data uses before (opened in {time.perf_counter() - opened:.2f}s)",
        flush=True,
    )
    rss_before = peak_rss_mb()
    breakdown = Breakdown()
    rng = random.Random(seed + 7)
    out: dict[str, Any] = {"log_size_before": size, "rss_before_uses_mb": rss_before, "modes": {}}

    def intervene() -> None:
        """Another writer appends: this sequencer's document cache is no longer valid."""
        (o,) = other.append([Submission(make_statement(other_signer, "doc.attest", {
            "digest": os.urandom(32).hex()}))])  # fmt: skip
        if not isinstance(o, Receipt):
            raise RuntimeError(f"doc.attest refused: {o!r}")

    cache = consent_cache(ledger.engine)
    for mode in ("cold", "split", "other", "warm"):
        uses, breakdowns = [], []
        for i in range(k):
            spec = random_use(rng, patients, cohort_size)
            if mode != "warm":
                intervene()
            if mode in ("cold", "split"):
                cache.clear()
            breakdown.take()
            use = one_use(ledger, seed, spec, between=cache.clear if mode == "split" else None)
            breakdowns.append(breakdown.take())
            use["inside_ms"] = {k: v * 1000 for k, v in breakdowns[-1].items()}
            uses.append(use)
            print(
                f"  {mode} use {i + 1}/{k}: preview {use['preview_s'] * 1000:7.1f} ms  "
                f"append {use['append_s'] * 1000:7.1f} ms  "
                f"decision {use['decision_s'] * 1000:7.1f} ms  "
                f"permitted {use['permitted']:,}/{use['requested']:,} "
                f"({use['data_user']}, {use['purpose']['code']}, {','.join(use['categories'])}); "
                f"cache hits {use['preview_cache_hits']:,} + {use['append_cache_hits']:,}",
                flush=True,
            )
        out["modes"][mode] = summarize_mode(uses, breakdowns)
    out["peak_rss_mb"] = peak_rss_mb()
    out["consent_cache"] = {"patients": len(cache), **vars(cache.stats)}

    if profile:
        profiles = (cProfile.Profile(), cProfile.Profile())
        n = min(k, 5)
        for _ in range(n):
            intervene()
            cache.clear()
            one_use(ledger, seed, random_use(rng, patients, cohort_size), profiles=profiles)
        out["profile"] = {"uses": n, "mode": "cold"}
        for name, prof in zip(("preview", "append"), profiles, strict=True):
            stream = io.StringIO()
            stats = pstats.Stats(prof, stream=stream)
            stats.sort_stats("tottime").print_stats(22)
            stats.sort_stats("cumulative").print_stats(30)
            out["profile"][name] = stream.getvalue()
    other.close()
    ledger.close()
    return out


# -- orchestration ----------------------------------------------------------------------------


def run_worker(args: list[str]) -> dict[str, Any]:
    """Run ``wallet.py --worker ARGS`` in a fresh interpreter, echoing its progress."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        if line.startswith("{"):
            last = line
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or not last:
        raise RuntimeError(f"worker {args[0]} failed ({proc.returncode})")
    return json.loads(last)


@contextmanager
def prepared(backend: str, params: dict[str, Any], opts: argparse.Namespace) -> Iterator[tuple]:
    """Yield ``(url, key_dir, build_info)`` of a database to measure on."""
    p, c, seed = params["patients"], params["consents"], params["seed"]
    label = f"{p}p-{c}c-s{seed}"
    tmp = Path(tempfile.mkdtemp(prefix="rxl-bench-wallet-"))
    build_args = [str(p), str(c), str(seed)]
    cleanup: list[Callable[[], None]] = [lambda: shutil.rmtree(tmp, ignore_errors=True)]
    try:
        if not opts.keep:
            if backend == "sqlite":
                url = f"sqlite:///{tmp / 'ledger.db'}"
            else:
                name = f"rxl_bench_wallet_tmp_{uuid.uuid4().hex[:10]}"
                url = pg_create(name)
                cleanup.append(lambda: pg_drop(name))
            print(f"building {p:,} patients, {c:,} consents on {backend} ...", flush=True)
            info = run_worker(["build", url, str(tmp / "keys"), *build_args])
            info["cached"] = False
            yield url, tmp / "keys", info
            return
        cache = CACHE / f"{backend}-{label}"
        info_file = cache / "build.json"
        pg_name = f"rxl_bench_wallet_{p}_{c}_s{seed}"
        exists = info_file.exists() and (
            (cache / "ledger.db").exists() if backend == "sqlite" else pg_exists(pg_name)
        )
        if opts.rebuild or not exists:
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            db = cache / "ledger.db"
            url = f"sqlite:///{db}" if backend == "sqlite" else pg_create(pg_name)
            print(f"building {p:,} patients, {c:,} consents on {backend} (kept) ...", flush=True)
            info = run_worker(["build", url, str(cache / "keys"), *build_args])
            info_file.write_text(json.dumps(info, indent=2) + "\n")
            info["cached"] = False
        else:
            info = json.loads(info_file.read_text())
            info["cached"] = True
            print(
                f"{backend}: cached build of {p:,} patients / {c:,} consents "
                f"(built {info['built_at']} at {info['append_rate']:,.0f} rec/s appending)",
                flush=True,
            )
        t = time.perf_counter()
        if backend == "sqlite":
            for suffix in ("", "-wal"):
                src = cache / f"ledger.db{suffix}"
                if src.exists():
                    shutil.copyfile(src, tmp / f"ledger.db{suffix}")
            url = f"sqlite:///{tmp / 'ledger.db'}"
        else:
            name = f"rxl_bench_wallet_run_{uuid.uuid4().hex[:10]}"
            url = pg_create(name, template=pg_name)
            cleanup.append(lambda: pg_drop(name))
        print(f"  measuring on a copy (made in {time.perf_counter() - t:.1f}s)", flush=True)
        info["copy_seconds"] = time.perf_counter() - t
        yield url, cache / "keys", info
    finally:
        for step in reversed(cleanup):
            step()


def drop_cache() -> None:
    for path in sorted(CACHE.glob("postgres-*")):
        p, c, s = path.name.removeprefix("postgres-").split("-")
        pg_drop(f"rxl_bench_wallet_{p[:-1]}_{c[:-1]}_{s}")
    shutil.rmtree(CACHE, ignore_errors=True)
    print(f"dropped {CACHE.relative_to(ROOT)} and its PostgreSQL databases")


def report(backend: str, info: dict[str, Any], measured: dict[str, Any]) -> None:
    print(
        f"\n{backend}: build {info['log_size']:,} records "
        f"({info['patients']:,} patients, {info['consents']:,} consents, "
        f"{info['revoked']:,} revoked, {info['narrowed']:,} narrowed): "
        f"{info['append_rate']:,.0f} rec/s appending, {info['overall_rate']:,.0f} rec/s overall "
        f"incl. signing, {info['wall_seconds']:.0f}s" + (" [cached]" if info.get("cached") else "")
    )
    for phase, figures in info["phases"].items():
        print(
            f"  {phase:12} {int(figures['records']):>8,} records in batches of "
            f"{int(figures['batch']):>5,}  "
            f"{figures['append_rate']:>8,.0f} rec/s appending"
        )
    head = f"{'mode':5} {'part':12} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}  ms"
    print(head)
    for mode, m in measured["modes"].items():
        parts = ("preview", "append", "decision", "client_sign_seal")
        for part in (*parts, "preview_cpu", "append_cpu", "decision_cpu"):
            if part not in m:
                continue
            s = m[part]
            print(
                f"{mode:5} {part[:12]:12} {s['p50_ms']:8.1f} {s['p90_ms']:8.1f} "
                f"{s['p99_ms']:8.1f} {s['max_ms']:8.1f} {s['mean_ms']:8.1f}"
            )
        inside = ", ".join(f"{k} {v:.0f}" for k, v in m["breakdown_mean_ms"].items())
        print(
            f"      permitted {m['permitted_share']:.1%}; consent cache hits: preview "
            f"{m['preview_cache_hit_share']:.0%}, append {m['append_cache_hit_share']:.0%}"
        )
        print(f"      mean ms inside: {inside}")
        verdict = "met" if m["decision"]["p99_ms"] < GOAL_P99_MS else "MISSED"
        print(
            f"      goal decision p99 < {GOAL_P99_MS:.0f} ms: {verdict} "
            f"({m['decision']['p99_ms']:.0f} ms)"
        )
    print(
        f"  peak RSS of the measuring process: {measured['peak_rss_mb']:.0f} MiB "
        f"(consent cache at the end: {measured['consent_cache']})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="5,000 consents, cohort 1,000, K=5")
    ap.add_argument("--patients", type=int)
    ap.add_argument("--consents", type=int)
    ap.add_argument("--cohort", type=int)
    ap.add_argument("--uses", "-k", type=int, help="K data uses per mode")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the built ledger and reuse it")
    ap.add_argument("--rebuild", action="store_true", help="with --keep: build again")
    ap.add_argument("--drop-cache", action="store_true", help="delete the kept ledgers and exit")
    ap.add_argument("--profile", action="store_true", help="cProfile 5 extra cold uses")
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    opts = ap.parse_args()

    if opts.worker:
        kind, url, key_dir, *rest = opts.worker
        if kind == "build":
            p, c, seed = (int(x) for x in rest)
            out = build(url, Path(key_dir), p, c, seed)
        else:
            info = json.loads(rest[0])
            out = measure(url, Path(key_dir), info, int(rest[1]), int(rest[2]), rest[3] == "1")
        print(json.dumps(out, default=str))
        return
    if opts.drop_cache:
        drop_cache()
        return

    params = {
        "patients": opts.patients or (5000 if opts.quick else 100_000),
        "consents": opts.consents or (5000 if opts.quick else 100_000),
        "cohort": opts.cohort or (1000 if opts.quick else 10_000),
        "uses": opts.uses or (5 if opts.quick else 20),
        "seed": opts.seed,
    }
    if params["cohort"] > params["patients"]:
        ap.error("--cohort cannot exceed --patients")
    # payload {"patients":[...],"salt":...}: 21 bytes per 18-character pseudonym
    if params["cohort"] * 21 + 100 > MAX_PAYLOAD:
        ap.error(f"a cohort of {params['cohort']:,} exceeds the {MAX_PAYLOAD:,}-byte payload cap")
    info_machine = machine()
    info_machine["postgres"] = pg_version()
    print(
        f"machine: nproc={info_machine['nproc']} (affinity {info_machine['affinity']}), "
        f"CPU {info_machine['cpu_model']}, {info_machine['mem_gb']} GB RAM, "
        f"Python {info_machine['python']}, SQLite {info_machine['sqlite']}, "
        f"PostgreSQL {info_machine['postgres']}, "
        f"loadavg {', '.join(f'{x:.2f}' for x in info_machine['loadavg'])}"
    )
    print("caveat: shared 2-core VM, other jobs running; figures are indicative")
    print(
        f"{params['patients']:,} patients, {params['consents']:,} consents; "
        f"K={params['uses']} uses per mode over cohorts of {params['cohort']:,}",
        flush=True,
    )
    backends = ["sqlite", "postgres"] if opts.backend == "both" else [opts.backend]
    path = RESULTS / ("wallet-quick.json" if opts.quick else "wallet.json")
    results: dict[str, Any] = {}
    if path.exists():
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError:
            results = {}
    results.setdefault("runs", {})
    for backend in backends:
        if backend == "postgres" and info_machine["postgres"] is None:
            raise SystemExit(f"PostgreSQL not reachable at {POSTGRES_URL}")
        started = time.perf_counter()
        with prepared(backend, params, opts) as (url, key_dir, info):
            print(f"{backend}: measuring ...", flush=True)
            worker_info = {"seed": info["seed"], "patients": info["patients"]}
            measured = run_worker(
                [
                    "measure",
                    url,
                    str(key_dir),
                    json.dumps(worker_info),
                    str(params["cohort"]),
                    str(params["uses"]),
                    "1" if opts.profile else "0",
                ]
            )
        report(backend, info, measured)
        profile = measured.pop("profile", None)
        if profile:
            name = f"wallet-profile-{backend}{'-quick' if opts.quick else ''}.txt"
            (RESULTS / name).write_text(
                f"# {profile['uses']} {profile['mode']} uses\n\n## preview\n{profile['preview']}"
                f"\n## append\n{profile['append']}"
            )
            print(f"  profile written to bench/results/{name}")
        results["runs"][backend] = {
            "params": params,
            "machine": {**info_machine, "loadavg_end": os.getloadavg()},
            "build": info,
            "measure": measured,
            "goal_decision_p99_ms": GOAL_P99_MS,
            "goal_met": {
                mode: m["decision"]["p99_ms"] < GOAL_P99_MS for mode, m in measured["modes"].items()
            },
            "wall_seconds": time.perf_counter() - started,
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

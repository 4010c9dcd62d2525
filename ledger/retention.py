"""Retention: shred the clinical payloads of prescriptions kept long enough.

``docs/retention.md``. China's 《处方管理办法》 (Prescription Management
Measures, 2007), article 50, sets how long the dispensing institution keeps a
prescription (处方保存期限): ordinary prescriptions one year; toxic drugs for
medical use (医疗用毒性药品) and class-2 psychotropics two years; narcotics
and class-1 psychotropics three years. The ledger counts those periods from
the prescription's issue date (its ``rx.issue`` statement's ``issued_at``),
the only date every prescription has, and in days (365, 730, 1095).

Article 50 says nothing of radioactive drugs (放射性药品, 《放射性药品管理办法》
names no prescription period): they are kept like narcotics, the longest
period of the article (a conservative default; configure it if your counsel
says otherwise).

The periods are configurable (:meth:`RetentionPolicy.configured`): the
defaults, then ``RXLEDGER_RETENTION``, then an explicit spec, each a comma
separated list of ``CLASS=DAYS`` (``ordinary=400,narcotic=1200``).

:func:`due` lists what may be shredded now, from the projections only (the
public fields and the class the prescription's rules recorded; no payload is
opened). :func:`run` signs ``retention.shred`` statements as the registrar,
grouped by retention period, at most :data:`MAX_RX` prescriptions each, and
says what it did. The ledger re-checks every condition when it decides the
statement (``ledger.domain.privacy.decide_shred``): a run is only a proposal.
A second run finds nothing due: a shredded prescription's status is ``erased``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Self

from sqlalchemy import Engine, func, select

from ledger.core.errors import LedgerError, RejectionError
from ledger.core.note import Signer
from ledger.core.statement import format_time, instant, make_statement, parse_time
from ledger.domain import prescriptions, privacy
from ledger.service import Ledger
from ledger.store.schema import payloads, projections
from ledger.store.sequencer import Receipt, Submission

ENV = "RXLEDGER_RETENTION"
ORDINARY = "ordinary"
#: the classes a period is set for: ``ordinary`` (no controlled drug) and the
#: controlled classes a prescription's payload may name
CLASSES = (ORDINARY, "toxic", "psychotropic-2", "narcotic", "psychotropic-1", "radioactive")
DEFAULT_DAYS: Mapping[str, int] = {
    ORDINARY: 365,  # 普通处方: 1 year
    "toxic": 730,  # 医疗用毒性药品: 2 years
    "psychotropic-2": 730,  # 第二类精神药品: 2 years
    "narcotic": 1095,  # 麻醉药品: 3 years
    "psychotropic-1": 1095,  # 第一类精神药品: 3 years
    "radioactive": 1095,  # not in article 50: kept like narcotics
}
#: the longest period ``retention.shred`` accepts (``privacy.decide_shred``)
MAX_DAYS = 100 * 366
#: prescriptions per ``retention.shred`` statement (the statement's own limit)
MAX_RX = 1000
PAGE = 1000
#: refusals that name one prescription of a statement: the others are tried alone
PER_RX_CODES = frozenset(
    {"unknown-rx", "rx-erased", "rx-active", "retention-not-due", "legal-hold", "malformed"}
)


class RetentionPolicyError(LedgerError):
    """A retention policy that names an unknown class or a period that is not a
    whole number of days from 1 to :data:`MAX_DAYS`."""

    code = "bad-retention-policy"


@dataclass(frozen=True)
class RetentionPolicy:
    """Days a prescription of each class is kept, counted from its issue date."""

    days: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_DAYS))

    def __post_init__(self) -> None:
        unknown = sorted(set(self.days) - set(CLASSES))
        if unknown:
            raise RetentionPolicyError(
                f"retention policy: unknown class {unknown[0]!r}; expected {', '.join(CLASSES)}"
            )
        missing = [c for c in CLASSES if c not in self.days]
        if missing:
            raise RetentionPolicyError(f"retention policy: no period for {', '.join(missing)}")
        for name, days in self.days.items():
            if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
                raise RetentionPolicyError(
                    f"retention policy: {name}: expected a whole number of days from 1 to "
                    f"{MAX_DAYS}, got {days!r}"
                )

    @classmethod
    def parse(cls, spec: str, *, base: RetentionPolicy | None = None, source: str = "") -> Self:
        """``base`` (default: the defaults) with the periods of ``CLASS=DAYS,...``."""
        where = f"{source}: " if source else ""
        days = dict((base or cls()).days)
        seen: set[str] = set()
        parts = [p.strip() for p in spec.split(",")]
        if not any(parts):
            raise RetentionPolicyError(f"{where}expected CLASS=DAYS[,CLASS=DAYS...], got nothing")
        for part in parts:
            name, sep, value = (s.strip() for s in part.partition("="))
            if not sep or not name:
                raise RetentionPolicyError(f"{where}expected CLASS=DAYS, got {part!r}")
            if name not in CLASSES:
                raise RetentionPolicyError(
                    f"{where}unknown class {name!r}; expected one of {', '.join(CLASSES)}"
                )
            if name in seen:
                raise RetentionPolicyError(f"{where}{name} is given twice")
            seen.add(name)
            if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_DAYS:
                raise RetentionPolicyError(
                    f"{where}{name}={value}: expected a whole number of days from 1 to {MAX_DAYS}"
                )
            days[name] = int(value)
        return cls(days)

    @classmethod
    def configured(cls, spec: str | None = None) -> Self:
        """The defaults, overridden by ``RXLEDGER_RETENTION``, then by ``spec``."""
        policy = cls()
        from_env = os.environ.get(ENV, "").strip()
        if from_env:
            policy = cls.parse(from_env, base=policy, source=ENV)
        if spec is not None:
            policy = cls.parse(spec, base=policy, source="retention policy")
        return policy

    def days_for(self, controlled_class: str | None) -> int:
        """The period of a prescription whose recorded class is ``controlled_class``.

        A class the policy does not know (the prescription's payload was
        replayed without its content) gets the longest period.
        """
        name = controlled_class or ORDINARY
        if name in self.days:
            return int(self.days[name])
        return max(self.days.values())

    def to_json(self) -> dict[str, int]:
        return {name: int(self.days[name]) for name in CLASSES}


@dataclass(frozen=True)
class DueRx:
    """A prescription whose retention period is over."""

    rx_id: str
    controlled_class: str  # ``ordinary`` for none
    issued_at: str
    retention_days: int
    due_at: str
    status: str

    def to_json(self) -> dict[str, Any]:
        return {
            "rx_id": self.rx_id,
            "class": self.controlled_class,
            "issued_at": self.issued_at,
            "retention_days": self.retention_days,
            "due_at": self.due_at,
            "status": self.status,
        }


@dataclass(frozen=True)
class Scan:
    """What a scan found: due and free, and due but held (rx id -> hold ids)."""

    due: list[DueRx]
    held: dict[str, tuple[DueRx, list[str]]]


def _due_at(issued_at: str, days: int) -> datetime:
    return parse_time(issued_at, field="issued_at") + timedelta(days=days)


def _rx_docs(engine: Engine) -> Iterator[dict[str, Any]]:
    """Every prescription not already erased, by key, in pages (keyset)."""
    after = ""
    while True:
        query = (
            select(projections.c.key, projections.c.value)
            .where(
                projections.c.kind == prescriptions.RX,
                projections.c.status != "erased",
                projections.c.key > after,
            )
            .order_by(projections.c.key)
            .limit(PAGE)
        )
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            yield dict(json.loads(row.value))
        if len(rows) < PAGE:
            return
        after = str(rows[-1].key)


def _holds(engine: Engine) -> dict[str, list[str]]:
    """Targets (``rx:R``, ``patient:P``) -> the holds in force on them."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(projections.c.key, projections.c.value).where(
                projections.c.kind == privacy.HOLDS
            )
        ).all()
    found: dict[str, list[str]] = {}
    for row in rows:
        holds = list(json.loads(row.value).get("holds") or [])
        if holds:
            found[str(row.key)] = holds
    return found


def scan(engine: Engine, policy: RetentionPolicy, now: datetime) -> Scan:
    """Prescriptions whose period is over at ``now``: free ones and held ones.

    Due: ``issued_at + days <= now``, not active and still valid, not erased
    or shredded already. Read from the projections (no payload is opened).
    """
    at = parse_time(instant(format_time(now)))
    holds = _holds(engine)
    due: list[DueRx] = []
    held: dict[str, tuple[DueRx, list[str]]] = {}
    for rx in _rx_docs(engine):
        if rx.get("erased_seq") is not None or rx["status"] == "erased":
            continue
        if rx["status"] == "active" and at < parse_time(rx["valid_until"]):
            continue  # can still be dispensed: it is the pharmacy's, not the archive's
        days = policy.days_for(rx.get("controlled_class"))
        when = _due_at(rx["issued_at"], days)
        if when > at:
            continue
        item = DueRx(
            rx_id=str(rx["rx_id"]),
            controlled_class=str(rx.get("controlled_class") or ORDINARY),
            issued_at=str(rx["issued_at"]),
            retention_days=days,
            due_at=format_time(when),
            status=prescriptions.status_at(rx, instant(format_time(now))),
        )
        hold_ids = holds.get(f"rx:{item.rx_id}", []) + holds.get(f"patient:{rx['patient']}", [])
        if hold_ids:
            held[item.rx_id] = (item, hold_ids)
        else:
            due.append(item)
    return Scan(due=due, held=held)


def due(engine: Engine, policy: RetentionPolicy, now: datetime) -> list[DueRx]:
    """Prescriptions that may be shredded at ``now`` (due and under no legal hold)."""
    return scan(engine, policy, now).due


@dataclass(frozen=True)
class Shredding:
    """One accepted ``retention.shred`` statement."""

    seq: int
    retention_days: int
    rx_ids: list[str]
    payloads_destroyed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "retention_days": self.retention_days,
            "rx_ids": self.rx_ids,
            "payloads_destroyed": self.payloads_destroyed,
        }


@dataclass(frozen=True)
class Refusal:
    rx_ids: list[str]
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"rx_ids": self.rx_ids, "code": self.code, "message": self.message}


@dataclass
class Report:
    """What a run did (or, dry, would do)."""

    at: str
    dry_run: bool
    policy: dict[str, int]
    due: list[DueRx] = field(default_factory=list)
    statements: list[Shredding] = field(default_factory=list)
    held: dict[str, list[str]] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)

    @property
    def shredded(self) -> list[str]:
        return [rx for s in self.statements for rx in s.rx_ids]

    @property
    def payloads_destroyed(self) -> int:
        return sum(s.payloads_destroyed for s in self.statements)

    def by_class(self) -> dict[str, int]:
        """Prescriptions shredded (dry: due) per class, in the policy's order."""
        done = set(self.shredded) if not self.dry_run else {d.rx_id for d in self.due}
        counts = dict.fromkeys(CLASSES, 0)
        for item in self.due:
            if item.rx_id in done:
                counts[item.controlled_class] = counts.get(item.controlled_class, 0) + 1
        return {k: v for k, v in counts.items() if v}

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "dry_run": self.dry_run,
            "policy": self.policy,
            "due": [d.to_json() for d in self.due],
            "by_class": self.by_class(),
            "shredded": self.shredded,
            "payloads_destroyed": self.payloads_destroyed,
            "statements": [s.to_json() for s in self.statements],
            "held": self.held,
            "refused": [r.to_json() for r in self.refused],
        }


def run(
    ledger: Ledger,
    registrar: Signer,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> Report:
    """Shred what is due at ``now`` (default: the ledger's clock) and not held.

    One ``retention.shred`` per retention period and :data:`MAX_RX`
    prescriptions, signed by ``registrar`` and appended one at a time. A
    statement refused because of one of its prescriptions (a hold placed or a
    fill recorded since the scan) is retried one prescription at a time, so
    that the others are shredded and each refusal names its prescription.
    """
    moment = now or ledger.sequencer.clock()
    at = format_time(moment)
    found = scan(ledger.engine, policy, moment)
    report = Report(
        at=at,
        dry_run=dry_run,
        policy=policy.to_json(),
        due=found.due,
        held={rx_id: holds for rx_id, (_, holds) in sorted(found.held.items())},
    )
    if dry_run:
        return report
    groups: dict[int, list[DueRx]] = {}
    for item in found.due:
        groups.setdefault(item.retention_days, []).append(item)
    for days in sorted(groups):
        rx_ids = sorted(d.rx_id for d in groups[days])
        for start in range(0, len(rx_ids), MAX_RX):
            _shred(
                ledger, registrar, rx_ids[start : start + MAX_RX], days=days, at=at, report=report
            )
    return report


def _shred(
    ledger: Ledger, registrar: Signer, rx_ids: list[str], *, days: int, at: str, report: Report
) -> None:
    signed = make_statement(
        registrar, "retention.shred", {"rx_ids": rx_ids, "retention_days": days}, issued_at=at
    )
    (outcome,) = ledger.append([Submission(signed)])
    if isinstance(outcome, Receipt):
        with ledger.engine.connect() as conn:
            destroyed = conn.execute(
                select(func.count())
                .select_from(payloads)
                .where(payloads.c.erased_seq == outcome.seq)
            ).scalar_one()
        report.statements.append(Shredding(outcome.seq, days, rx_ids, int(destroyed)))
        return
    code = outcome.code if isinstance(outcome, RejectionError) else "error"
    if len(rx_ids) > 1 and code in PER_RX_CODES:
        for rx_id in rx_ids:
            _shred(ledger, registrar, [rx_id], days=days, at=at, report=report)
        return
    report.refused.append(Refusal(rx_ids, code, str(outcome)))

"""``rxledger demo``: a realistic synthetic world run through a real ledger.

:func:`run_demo` registers prescribers (some licensed for controlled drug
classes), pharmacies and two or three insurers, each with a published policy
and a settlement key that it hands to the service; enrols pseudonymous
patients (a few are not covered); then issues N prescriptions, dispenses them
in one or more fills with 20-digit traceability codes, and claims most of
them. The service decides every claim as it is sequenced. Then the data
wallet (``docs/wallet.md``): most patients register with their own key and
grant consents of a dozen kinds (DUO purposes, grantees, categories, times),
some narrow or revoke them, a guardian acts for a ward; three data users (an
accredited nonprofit, a nonprofit, a company) preview and sign data uses over
cohorts of patients, and pay proceeds. The demo predicts every patient's
decision in every use from its own model of the consents, with the reason
for a denial, and counts any disagreement with the rules as unexpected.

A share of the world goes wrong on purpose, so that every rule is exercised
(the categories and their codes are in ``docs/demo.md``): refused statements
(``over-quantity``, ``trace-code-used-up``, ``rx-cancelled``, ``rx-rejected``,
``rx-expired``, ``prescriber-not-licensed``) and decisions that fail a rule
(``refill-too-soon``, ``not-in-formulary``, ``not-covered``,
``duplicate-claim``, ``price-capped``, ``quantity-limit``,
``days-supply-limit``, ``controlled-not-covered``), and refused wallet
statements (``unknown-grantee``, ``not-your-consent``, ``consent-revoked``,
``consent-broadened``, ``cohort-mismatch``, ``payment-exists``,
``no-one-to-pay``).

The world is a function of the seed and of the ledger's size when the run
starts (which goes into every id, so that runs on one ledger never collide):
the same seed on a fresh ledger gives the same actors, patients, drugs,
quantities, prices, traceability codes and outcomes. Keys, nonces and payload
salts stay random, as they must; the patients' pseudonyms depend on the
master key too.

Time cannot be simulated: the ledger refuses statements more than five
minutes off its clock, so every dispense of a run happens within minutes of
every other. Consequently a second paid fill of the same drug for the same
patient is always "too soon"; the demo uses that for its refill-too-soon
cases and otherwise gives each patient a drug only once. Expiry is modelled
with prescriptions valid for one second, whose dispense is attempted at the
end of the run. Consents carry their own dates, so ended, not yet valid and
time-limited consents are simply dated in the past or the future.

Every patient has a synthetic identity (:class:`Identity`): an 18-character
resident identity number of the PRC (GB 11643-1999: a GB/T 2260 region code,
the birth date, a sequence number, odd for a man, and a valid check
character) and a name, both a function of the seed and the run tag. The demo
registers patients as an operator would: their pseudonym is
``ledger.vault.master.pseudonym(id_number)`` (``P-`` and 32 hex digits of an
HMAC under the master key, ADR 0010), so the demo runs where the master key
is, on a :class:`~ledger.service.Ledger` it opened (there is no remote mode).
A pseudonym the ledger already knows (an earlier run's) is drawn again. The
identities stay in memory: ``DemoReport.identities`` (pseudonym -> identity)
is for tests that scan the database and the bundles for them
(``tests/test_privacy_scan.py``), and is never recorded, printed or in
:meth:`DemoReport.to_json`.

Patients appear only as pseudonyms, also as registered actors (never with a
name); drug names, doses and diagnosis codes appear only in the salted
clinical payloads, which the ledger stores sealed under the patient's data
key, and a data use's cohort only in its payload.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ledger.core.errors import LedgerError
from ledger.core.note import Signer
from ledger.core.payload import seal
from ledger.core.statement import format_time, make_statement, now, parse_time
from ledger.domain.registry import KIND as ACTOR
from ledger.domain.settlement import CLAIM, OUTCOMES
from ledger.domain.wallet import DS, GRU, HMB, MEMBERS, NCU, NPU, PAYMENT, POA, PUB, TS
from ledger.service import Ledger, write_key_file
from ledger.store.reader import ProjectionReader
from ledger.store.schema import data_keys, projections
from ledger.store.sequencer import MAX_BATCH, Receipt, Submission
from ledger.wallet_service import preview_use

Progress = Callable[[int, int], None]


# -- the world's fixed parts ----------------------------------------------------------


@dataclass(frozen=True)
class Drug:
    """A product in the catalogue: what a prescription names and a pharmacy sells."""

    code: str  # ATC code: public (it is in the formularies)
    name: str  # only ever in a clinical payload
    unit: str
    pack_size: int
    unit_price: int  # typical price per unit, in fen
    quantity: int  # a typical prescribed quantity
    days_supply: int
    dose: str
    diagnosis: str  # ICD-10
    controlled: str | None = None  # a controlled class (registry.CONTROLLED_CLASSES)

    @property
    def listed(self) -> bool:
        """On the formularies (else a "lifestyle" drug no insurer covers)."""
        return self.code not in UNLISTED


PSY2, NARC = "psychotropic-2", "narcotic"
CATALOGUE: tuple[Drug, ...] = (
    Drug("C08CA01", "Amlodipine 5 mg tablet", "tablet", 28, 35, 28, 28, "1 daily", "I10"),
    Drug("C09AA05", "Ramipril 5 mg capsule", "capsule", 28, 48, 28, 28, "1 daily", "I10"),
    Drug("C09CA01", "Losartan 50 mg tablet", "tablet", 30, 62, 30, 30, "1 daily", "I10"),
    Drug("C07AB07", "Bisoprolol 5 mg tablet", "tablet", 30, 40, 30, 30, "1 daily", "I48"),
    Drug("C10AA05", "Atorvastatin 20 mg tablet", "tablet", 28, 85, 28, 28, "1 at night", "E78.5"),
    Drug("A10BA02", "Metformin 500 mg tablet", "tablet", 60, 12, 60, 30, "1 twice daily", "E11"),
    Drug("H03AA01", "Levothyroxine 50 mcg tablet", "tablet", 100, 9, 30, 30, "1 daily", "E03.9"),
    Drug("A02BC01", "Omeprazole 20 mg capsule", "capsule", 14, 55, 28, 28, "1 daily", "K21.9"),
    Drug("B01AC06", "Aspirin 100 mg tablet", "tablet", 30, 8, 30, 30, "1 daily", "I25.1"),
    Drug("C03CA01", "Furosemide 40 mg tablet", "tablet", 28, 15, 28, 28, "1 morning", "I50.0"),
    Drug("N06AB06", "Sertraline 50 mg tablet", "tablet", 28, 120, 28, 28, "1 daily", "F32.1"),
    Drug("R06AE07", "Cetirizine 10 mg tablet", "tablet", 10, 30, 10, 10, "1 daily", "J30.4"),
    Drug("M01AE01", "Ibuprofen 400 mg tablet", "tablet", 24, 18, 24, 8, "1 three times", "M54.5"),
    Drug("N02BE01", "Paracetamol 500 mg tablet", "tablet", 20, 6, 20, 5, "2 four times", "R52"),
    Drug("J01CA04", "Amoxicillin 500 mg capsule", "capsule", 21, 40, 21, 7, "1 every 8 h", "J02.9"),
    Drug("J01FA10", "Azithromycin 250 mg tablet", "tablet", 6, 210, 6, 5, "2 then 1", "J18.9"),
    Drug("R03AC02", "Salbutamol 100 mcg inhaler", "inhaler", 1, 2800, 1, 30, "2 puffs prn", "J45"),
    Drug("R03BA02", "Budesonide 200 mcg inhaler", "inhaler", 1, 9500, 1, 30, "1 twice", "J45"),
    Drug("A10AE04", "Insulin glargine 100 U/ml pen", "pen", 5, 6400, 5, 30, "20 U night", "E10"),
    Drug("C01AA05", "Digoxin 250 mcg tablet", "tablet", 28, 22, 28, 28, "1 daily", "I48"),
    Drug("N05BA01", "Diazepam 5 mg tablet", "tablet", 14, 25, 14, 7, "1 at night", "F41.1", PSY2),
    Drug("N05CF02", "Zolpidem 10 mg tablet", "tablet", 7, 90, 7, 7, "1 at night", "G47.0", PSY2),
    Drug("N02AA01", "Morphine 10 mg tablet", "tablet", 10, 150, 10, 5, "1 q4h", "C79.5", NARC),
    Drug("A08AB01", "Orlistat 120 mg capsule", "capsule", 42, 180, 42, 14, "1 tid", "E66.9"),
    Drug("G04BE03", "Sildenafil 50 mg tablet", "tablet", 4, 450, 4, 30, "1 prn", "N52.9"),
    Drug("D11AX01", "Minoxidil 5% solution", "bottle", 1, 9800, 1, 30, "1 ml bid", "L64.9"),
)  # fmt: skip
UNLISTED = frozenset({"A08AB01", "G04BE03", "D11AX01"})
BY_CODE = {d.code: d for d in CATALOGUE}


@dataclass(frozen=True)
class InsurerSpec:
    """One insurer: its plan, market share, copay, price caps and exclusions."""

    name: str
    plan: str
    share: int  # weight among the covered patients
    copay_bp: int
    cap_pct: int  # price cap as a percentage of the typical unit price
    controlled_allowed: bool
    excluded: tuple[str, ...]  # listed drugs this insurer leaves off its formulary


INSURERS: tuple[InsurerSpec, ...] = (
    InsurerSpec("basic", "basic-medical", 60, 3000, 115, True, ("R03BA02", "N05CF02")),
    InsurerSpec("mutual", "mutual-standard", 25, 2000, 120, True, ("A10AE04", "N02AA01")),
    InsurerSpec("plus", "plus-gold", 15, 1000, 130, False, ("C01AA05",)),
)

#: categories of prescriptions that go wrong on purpose, per mille of the prescriptions
#: (at least one of each), with the code they are made to produce
CATEGORIES: dict[str, tuple[int, str]] = {
    "over-quantity": (15, "over-quantity"),
    "same-box": (10, "trace-code-used-up"),
    "cancelled": (15, "rx-cancelled"),
    "expired": (5, "rx-expired"),
    "pharmacy-reject": (5, "rx-rejected"),
    "unlicensed-controlled": (3, "prescriber-not-licensed"),
    "refill-too-soon": (25, "refill-too-soon"),
    "not-in-formulary": (30, "not-in-formulary"),
    "not-covered": (30, "not-covered"),
    "duplicate-claim": (15, "duplicate-claim"),
    "price-capped": (40, "price-capped"),
    "controlled": (20, "controlled"),
    "over-limit": (20, "days-supply-limit"),
    "suspended-prescriber": (3, "prescriber-not-authorised"),
    "cash": (40, "unclaimed"),
}
REFUSAL_CODES = (
    "over-quantity",
    "trace-code-used-up",
    "rx-cancelled",
    "rx-rejected",
    "rx-expired",
    "prescriber-not-licensed",
)
DECISION_CODES = (
    "refill-too-soon",
    "not-in-formulary",
    "not-covered",
    "duplicate-claim",
    "price-capped",
    "quantity-limit",
    "days-supply-limit",
    "controlled-not-covered",
    "prescriber-not-authorised",
)
EXPIRY_SECONDS = 1.0
#: the reason an example claim of each outcome preferably shows
EXAMPLE_REASONS = {"partially-approved": "price-capped", "rejected": "refill-too-soon"}


#: county-level division codes (GB/T 2260) the synthetic patients are registered in
REGIONS = (
    "110101", "110108", "120101", "310104", "310115", "320106", "330106", "350203",
    "370102", "420106", "430104", "440106", "440305", "500103", "510107", "610113",
)  # fmt: skip
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹"
GIVEN_FEMALE = "秀英华丽芳娟敏静燕玲桂兰霞梅婷雪颖琳"
GIVEN_MALE = "伟强磊军勇杰涛明超刚平辉鹏飞斌宇浩峰"
#: GB 11643-1999: the weight of each of the first 17 digits (2^(17-i) mod 11), and
#: the check character for each remainder of the weighted sum modulo 11
ID_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
ID_CHECK = "10X98765432"
BORN_FROM, BORN_DAYS = date(1935, 1, 1), (date(2020, 12, 31) - date(1935, 1, 1)).days


@dataclass(frozen=True)
class Identity:
    """A synthetic patient: the real identity the demo's pseudonyms stand for.

    Made up, but shaped like the real thing, so that a scan for it is a scan
    for what a real deployment must never store: an 18-character resident
    identity number with a valid check character, and a name.
    """

    id_number: str
    name: str


def id_check_character(first17: str) -> str:
    """The GB 11643-1999 check character (ISO 7064 MOD 11-2) of 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("want the 17 digits before the check character")
    total = sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS, strict=True))
    return ID_CHECK[total % 11]


def make_identity(seed: str) -> Identity:
    """A synthetic identity, a function of ``seed``: region, birth date, sequence
    number (odd for a man, even for a woman), check character; a name to match."""
    rng = random.Random(seed)  # noqa: S311 - synthetic people, not secrets
    born = BORN_FROM + timedelta(days=rng.randrange(BORN_DAYS + 1))
    sequence = rng.randrange(1, 1000)
    first17 = f"{rng.choice(REGIONS)}{born:%Y%m%d}{sequence:03d}"
    given = GIVEN_MALE if sequence % 2 else GIVEN_FEMALE
    name = rng.choice(SURNAMES) + "".join(rng.choices(given, k=rng.choice((1, 2, 2))))
    return Identity(first17 + id_check_character(first17), name)


def _known_patients(ledger: Ledger, pseudonyms: list[str]) -> set[str]:
    """Those of ``pseudonyms`` that this ledger already knows: as a patient of a
    document, a registered actor, or the owner of a data key (shredded or not)."""
    known: set[str] = set()
    with ledger.engine.connect() as conn:
        for start in range(0, len(pseudonyms), 500):
            chunk = pseudonyms[start : start + 500]
            for query in (
                select(projections.c.patient).where(projections.c.patient.in_(chunk)),
                select(projections.c.key).where(
                    projections.c.kind == ACTOR, projections.c.key.in_(chunk)
                ),
                select(data_keys.c.owner).where(data_keys.c.owner.in_(chunk)),
            ):
                known.update(str(v) for v in conn.execute(query).scalars())
    return known


@dataclass
class DemoReport:
    """What a demo run did, and how fast."""

    seed: int
    prescriptions: int
    run_tag: str
    actors: dict[str, int]
    patients: dict[str, int]
    categories: dict[str, int]
    statements_submitted: int
    accepted_by_type: dict[str, int]
    refused_by_code: dict[str, int]
    decisions_by_outcome: dict[str, int]
    failed_rules_by_code: dict[str, int]
    records_written: int
    first_seq: int
    tree_size: int
    seconds: float
    example_claims: dict[str, str]
    settlement_key_files: list[str] = field(default_factory=list)
    #: outcomes the demo did not plan for (``type: expected X, got Y``): should be empty
    unexpected: dict[str, int] = field(default_factory=dict)
    #: the data wallet: consents, data uses (permitted and denied, by reason), proceeds
    wallet: dict[str, Any] = field(default_factory=dict)
    wallet_key_files: list[str] = field(default_factory=list)
    #: pseudonym -> the patient's synthetic identity (ID number, name): for tests
    #: that scan for them; never recorded, never in :meth:`to_json`, never shown
    identities: dict[str, Identity] = field(default_factory=dict, repr=False)

    @property
    def statements_accepted(self) -> int:
        return sum(self.accepted_by_type.values())

    @property
    def statements_refused(self) -> int:
        return sum(self.refused_by_code.values())

    @property
    def decisions(self) -> int:
        return sum(self.decisions_by_outcome.values())

    @property
    def records_per_second(self) -> float:
        return self.records_written / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "prescriptions": self.prescriptions,
            "run_tag": self.run_tag,
            "actors": self.actors,
            "patients": self.patients,
            "categories": self.categories,
            "statements": {
                "submitted": self.statements_submitted,
                "accepted": self.statements_accepted,
                "refused": self.statements_refused,
                "accepted_by_type": self.accepted_by_type,
                "refused_by_code": self.refused_by_code,
            },
            "decisions": {
                "total": self.decisions,
                "by_outcome": self.decisions_by_outcome,
                "failed_rules_by_code": self.failed_rules_by_code,
            },
            "records_written": self.records_written,
            "first_seq": self.first_seq,
            "tree_size": self.tree_size,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records_per_second, 1),
            "example_claims": self.example_claims,
            "settlement_key_files": self.settlement_key_files,
            "wallet": self.wallet,
            "wallet_key_files": self.wallet_key_files,
            "unexpected": self.unexpected,
        }


# -- submitting -----------------------------------------------------------------------


class _Batcher:
    """Signs statements as they are made and appends them in batches, in order."""

    def __init__(self, ledger: Ledger, size: int, on_flush: Callable[[], None]) -> None:
        self.ledger = ledger
        self.size = size
        self.on_flush = on_flush
        self.items: list[tuple[Submission, str, str | None]] = []
        self.submitted = 0
        self.accepted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()

    def add(
        self,
        signer: Signer,
        kind: str,
        body: Mapping[str, Any],
        *,
        payload: Mapping[str, Any] | None = None,
        expect: str | None = None,
        issued_at: str | None = None,
    ) -> None:
        """Queue a statement; ``expect`` is the refusal code it is meant to get."""
        data = None
        if payload is not None:
            data, digest = seal(payload)
            body = {**body, "payload_digest": digest}
        signed = make_statement(signer, kind, body, issued_at=issued_at)
        self.items.append((Submission(signed, data), kind, expect))
        if len(self.items) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        items, self.items = self.items, []
        outcomes = self.ledger.append([s for s, _, _ in items])
        self.submitted += len(items)
        for (_, kind, expect), outcome in zip(items, outcomes, strict=True):
            got = None
            if isinstance(outcome, Receipt):
                self.accepted[kind] += 1
            else:
                got = outcome.code
                self.refused[got] += 1
            if got != expect:
                self.unexpected[
                    f"{kind}: expected {expect or 'accepted'}, got {got or 'accepted'}"
                ] += 1
        self.on_flush()


# -- the world --------------------------------------------------------------------------


@dataclass
class _Rx:
    rx_id: str
    patient: str
    prescriber: Signer
    items: list[tuple[Drug, int]]  # (drug, prescribed quantity)


@dataclass
class _Patient:
    pseudonym: str
    insurer: int | None  # index of the insurer covering them, None when not covered
    claim_insurer: int  # the insurer a pharmacy claims against
    drugs: set[str] = field(default_factory=set)


def insurer_formulary(spec: InsurerSpec) -> dict[str, dict[str, int]]:
    """An insurer's formulary over :data:`CATALOGUE` (the benchmarks build the same)."""
    out = {}
    for drug in CATALOGUE:
        if not drug.listed or drug.code in spec.excluded:
            continue
        if drug.controlled and not spec.controlled_allowed:
            continue
        out[drug.code] = {
            "max_unit_price": drug.unit_price * spec.cap_pct // 100,
            "max_quantity": drug.quantity * 2,
            "max_days_supply": 7 if drug.controlled else (30 if drug.days_supply > 10 else 14),
        }
    return out


class _World:
    def __init__(
        self,
        ledger: Ledger,
        registrar: Signer,
        rng: random.Random,
        tag: str,
        batch: _Batcher,
    ) -> None:
        self.ledger = ledger
        self.registrar = registrar
        self.rng = rng
        self.tag = tag
        self.batch = batch
        self.prescribers: list[Signer] = []
        self.licensed: list[Signer] = []  # prescribers licensed for every controlled class used
        self.unlicensed: list[Signer] = []
        self.pharmacies: list[Signer] = []
        self.insurers: list[Signer] = []
        self.settlement_keys: list[Signer] = []
        self.formularies: list[dict[str, dict[str, int]]] = []
        self.covered: list[_Patient] = []
        self.uncovered: list[_Patient] = []
        #: pseudonym -> the patient's synthetic identity: in memory only, never recorded
        self.identities: dict[str, Identity] = {}
        self.stock: dict[tuple[str, str], list[Any]] = {}  # (pharmacy, drug) -> [code, pack, left]
        self.used_up: dict[str, list[tuple[str, int]]] = {}  # drug -> packs fully dispensed
        self.paid: list[tuple[_Patient, Drug]] = []  # lines expected paid, for refills
        self.serial = 0
        self.rx_count = 0
        self.claim_count: Counter[str] = Counter()
        self.deferred_same_box = 0
        self.expires_at = 0.0
        self.suspended = 0

    # -- ids ----------------------------------------------------------------------

    def ident(self, kind: str, n: int, width: int = 3) -> str:
        return f"{self.tag}.{kind}-{n:0{width}d}"

    def people(self, count: int) -> list[str]:
        """``count`` new patients: their pseudonyms, their identities in ``self.identities``.

        A patient's identity (:func:`make_identity`) is a function of the seed
        and the run tag; their pseudonym is the master key's of their ID
        number. Pseudonyms this ledger already knows (an earlier run's
        patients, an erased patient's shredded key) are drawn again.
        """
        chosen: list[str] = []
        while len(chosen) < count:
            fresh: dict[str, Identity] = {}
            while len(chosen) + len(fresh) < count:
                person = make_identity(f"{self.tag}:{self.rng.getrandbits(64)}")
                pseudonym = self.ledger.vault.master.pseudonym(person.id_number)
                if pseudonym not in self.identities and pseudonym not in fresh:
                    fresh[pseudonym] = person
            known = _known_patients(self.ledger, list(fresh))
            for pseudonym, person in fresh.items():
                if pseudonym not in known:
                    self.identities[pseudonym] = person
                    chosen.append(pseudonym)
        return chosen

    def trace_code(self, drug: Drug) -> str:
        """A 20-digit drug traceability code: product prefix, serial, check digits."""
        self.serial += 1
        product = 8_000_000 + CATALOGUE.index(drug) * 37_117 % 1_000_000
        serial = int.from_bytes(hashlib.sha256(f"{self.tag}:{self.serial}".encode()).digest()[:8])
        return f"{product:07d}{serial % 10**13:013d}"

    # -- set-up -------------------------------------------------------------------

    def register(self, actor_id: str, role: str, **extra: Any) -> Signer:
        signer = Signer.generate(actor_id)
        body = {"actor": actor_id, "role": role, "key": signer.vkey, **extra}
        self.batch.add(self.registrar, "actor.register", body)
        return signer

    def setup(self, prescriptions: int) -> None:
        rng = self.rng
        for i in range(max(6, prescriptions // 150)):
            actor_id = self.ident("dr", i + 1)
            licence = f"MD-{rng.randrange(10**8):08d}"
            if i % 3 == 0:
                classes = ["narcotic", "psychotropic-2"]
                signer = self.register(
                    actor_id, "prescriber", licence=licence, controlled_classes=classes
                )
                self.licensed.append(signer)
            else:
                signer = self.register(actor_id, "prescriber", licence=licence)
                self.unlicensed.append(signer)
            self.prescribers.append(signer)
        for i in range(max(4, prescriptions // 300)):
            licence = f"PH-{rng.randrange(10**8):08d}"
            self.pharmacies.append(
                self.register(self.ident("ph", i + 1), "pharmacy", licence=licence)
            )
        for spec in INSURERS:
            insurer = self.register(f"{self.tag}.ins-{spec.name}", "insurer")
            settle = Signer.generate(insurer.name)
            self.batch.add(
                insurer,
                "actor.add_key",
                {"actor": insurer.name, "key": settle.vkey, "purpose": "settlement"},
            )
            self.insurers.append(insurer)
            self.settlement_keys.append(settle)
            formulary = insurer_formulary(spec)
            self.formularies.append(formulary)
            self.batch.add(
                insurer,
                "policy.publish",
                {
                    "version": 1,
                    "formulary": formulary,
                    "refill_threshold_pct": 75,
                    "copay_bp": spec.copay_bp,
                    "controlled_allowed": spec.controlled_allowed,
                    "controlled_max_days_supply": 7,
                },
            )
        self.enrol(prescriptions)

    def enrol(self, prescriptions: int) -> None:
        rng, at = self.rng, now()
        weights = [spec.share for spec in INSURERS]
        n_covered = max(40, prescriptions // 2)
        n_uncovered = max(4, n_covered // 25)
        people = iter(self.people(n_covered + n_uncovered))
        for _ in range(n_covered):
            index = rng.choices(range(len(INSURERS)), weights)[0]
            self.covered.append(_Patient(next(people), index, index))
        # never enrolled, and enrolled but left the plan (coverage.end)
        for i in range(n_uncovered):
            index = rng.choices(range(len(INSURERS)), weights)[0]
            self.uncovered.append(_Patient(next(people), None, index))
            if i % 3 == 0:
                self.enrol_one(self.uncovered[-1].pseudonym, index, at)
                self.batch.add(
                    self.insurers[index], "coverage.end", {"patient": self.uncovered[-1].pseudonym}
                )
        for patient in self.covered:
            assert patient.insurer is not None
            self.enrol_one(patient.pseudonym, patient.insurer, at)

    def enrol_one(self, patient: str, index: int, at: datetime) -> None:
        since = at - timedelta(days=self.rng.randrange(30, 1500))
        self.batch.add(
            self.insurers[index],
            "coverage.enroll",
            {
                "patient": patient,
                "plan": INSURERS[index].plan,
                "valid_from": format_time(since),
                "valid_until": format_time(at + timedelta(days=365)),
            },
        )

    # -- building blocks -----------------------------------------------------------

    def pick_drugs(self, patient: _Patient, count: int, *, formulary: int | None) -> list[Drug]:
        """Drugs new to the patient, non-controlled, on ``formulary`` if given."""
        pool = [
            d
            for d in CATALOGUE
            if d.listed
            and not d.controlled
            and d.code not in patient.drugs
            and (formulary is None or d.code in self.formularies[formulary])
        ]
        return self.rng.sample(pool, min(count, len(pool)))

    def issue(
        self,
        patient: _Patient,
        drugs: list[tuple[Drug, int, int]],
        *,
        fills: int = 1,
        prescriber: Signer | None = None,
        valid_for: timedelta | None = None,
        expect: str | None = None,
    ) -> _Rx:
        """``rx.issue`` of ``(drug, quantity, days_supply)`` items."""
        self.rx_count += 1
        rx_id = self.ident("rx", self.rx_count, 6)
        prescriber = prescriber or self.rng.choice(self.prescribers)
        valid_for = valid_for or timedelta(days=self.rng.choice((7, 30, 30, 90)))
        controlled = next((d.controlled for d, _, _ in drugs if d.controlled), None)
        content: dict[str, Any] = {
            "items": [
                {
                    "drug_code": d.code,
                    "drug_name": d.name,
                    "quantity": q,
                    "unit": d.unit,
                    "days_supply": days,
                    "dose": d.dose,
                }
                for d, q, days in drugs
            ],
            "diagnosis_codes": sorted({d.diagnosis for d, _, _ in drugs}),
        }
        if controlled:
            content["controlled_class"] = controlled
        self.batch.add(
            prescriber,
            "rx.issue",
            {
                "rx_id": rx_id,
                "patient": patient.pseudonym,
                "valid_until": format_time(now() + valid_for),
                "fills_allowed": fills,
            },
            payload=content,
            expect=expect,
        )
        patient.drugs.update(d.code for d, _, _ in drugs)
        return _Rx(rx_id, patient.pseudonym, prescriber, [(d, q) for d, q, _ in drugs])

    def take(self, pharmacy: Signer, drug: Drug, quantity: int) -> list[dict[str, Any]]:
        """Units off the pharmacy's shelf: the open pack first, then new packs."""
        codes = []
        while quantity > 0:
            pack = self.stock.get((pharmacy.name, drug.code))
            if pack is None or pack[2] == 0:
                pack = self.stock[(pharmacy.name, drug.code)] = [
                    self.trace_code(drug),
                    drug.pack_size,
                    drug.pack_size,
                ]
            units = min(pack[2], quantity)
            pack[2] -= units
            quantity -= units
            codes.append({"code": pack[0], "pack_size": pack[1], "units": units})
            if pack[2] == 0:
                self.used_up.setdefault(drug.code, []).append((pack[0], pack[1]))
        return codes

    def price(self, drug: Drug) -> int:
        return max(1, drug.unit_price * self.rng.randint(92, 110) // 100)

    def dispense(
        self,
        rx: _Rx,
        fill: int,
        pharmacy: Signer,
        lines: list[tuple[int, int, int, list[dict[str, Any]]]],
        *,
        insurer: int | None,
        expect: str | None = None,
    ) -> None:
        """``rx.dispense`` of ``(item, quantity, unit_price, trace_codes)`` lines."""
        body: dict[str, Any] = {
            "rx_id": rx.rx_id,
            "fill_number": fill,
            "claimed": insurer is not None,
        }
        if insurer is not None:
            body["insurer"] = self.insurers[insurer].name
        content = {
            "items": [
                {"item": i, "quantity": q, "unit_price": p, "trace_codes": tcs}
                for i, q, p, tcs in lines
            ]
        }
        self.batch.add(pharmacy, "rx.dispense", body, payload=content, expect=expect)

    def sell(
        self,
        rx: _Rx,
        fill: int,
        pharmacy: Signer,
        items: list[int],
        *,
        insurer: int | None,
        quantities: dict[int, int] | None = None,
        prices: dict[int, int] | None = None,
    ) -> str | None:
        """Dispense ``items`` of ``rx`` from stock and claim it; returns the claim id."""
        lines = []
        for i in items:
            drug, prescribed = rx.items[i]
            q = (quantities or {}).get(i, prescribed)
            price = (prices or {}).get(i) or self.price(drug)
            lines.append((i, q, price, self.take(pharmacy, drug, q)))
        self.dispense(rx, fill, pharmacy, lines, insurer=insurer)
        if insurer is None:
            return None
        return self.claim(rx, fill, pharmacy)

    def claim(self, rx: _Rx, fill: int, pharmacy: Signer) -> str:
        base = f"{rx.rx_id.replace('.rx-', '.cl-')}-{fill}"
        self.claim_count[base] += 1
        n = self.claim_count[base]
        claim_id = base if n == 1 else f"{base}r{n - 1}"  # a resubmission
        self.batch.add(
            pharmacy, "claim.submit", {"claim_id": claim_id, "rx_id": rx.rx_id, "fill_number": fill}
        )
        return claim_id

    def items_for(self, drugs: list[Drug]) -> list[tuple[Drug, int, int]]:
        return [(d, d.quantity, d.days_supply) for d in drugs]

    def other(self, pool: list[Signer], not_this: Signer) -> Signer:
        choices = [s for s in pool if s is not not_this] or pool
        return self.rng.choice(choices)

    # -- scenarios ------------------------------------------------------------------

    def scenario(self, category: str) -> None:
        getattr(self, "s_" + category.replace("-", "_"))()

    def covered_patient(self) -> _Patient:
        return self.rng.choice(self.covered)

    def patient_with(self, count: int, *, on_formulary: bool = True) -> tuple[_Patient, list[Drug]]:
        """A covered patient and up to ``count`` drugs new to them."""
        while True:
            patient = self.covered_patient()
            formulary = patient.insurer if on_formulary else None
            drugs = self.pick_drugs(patient, count, formulary=formulary)
            if drugs:
                return patient, drugs

    def s_normal(self, *, claimed: bool = True) -> None:
        if self.deferred_same_box and self.used_up:
            self.deferred_same_box -= 1
            self.s_same_box()
            return
        rng = self.rng
        patient, drugs = self.patient_with(rng.choices((1, 2, 3), (55, 30, 15))[0])
        insurer = patient.insurer if claimed and rng.random() > 0.03 else None
        pharmacy = rng.choice(self.pharmacies)
        if len(drugs) > 1 and rng.random() < 0.25:
            # part of the prescription was out of stock: the rest in a second fill,
            # possibly at another pharmacy
            rx = self.issue(patient, self.items_for(drugs), fills=2)
            split = rng.randrange(1, len(drugs))
            self.sell(rx, 1, pharmacy, list(range(split)), insurer=insurer)
            second = pharmacy if rng.random() < 0.6 else self.other(self.pharmacies, pharmacy)
            self.sell(rx, 2, second, list(range(split, len(drugs))), insurer=insurer)
        else:
            fills = rng.choices((1, 2, 3), (70, 20, 10))[0]  # repeats left for later
            rx = self.issue(patient, self.items_for(drugs), fills=fills)
            self.sell(rx, 1, pharmacy, list(range(len(drugs))), insurer=insurer)
        if insurer is not None:
            self.paid.extend((patient, d) for d in drugs)

    def s_cash(self) -> None:
        self.s_normal(claimed=False)

    def s_over_quantity(self) -> None:
        patient, drugs = self.patient_with(self.rng.choice((1, 2)))
        rx = self.issue(patient, self.items_for(drugs))
        pharmacy = self.rng.choice(self.pharmacies)
        drug, prescribed = rx.items[0]
        too_many = prescribed + self.rng.randint(1, max(1, prescribed // 2))
        code = self.trace_code(drug)  # a box off the shelf; the dispense is refused
        pack = max(drug.pack_size, too_many)
        lines = [
            (0, too_many, self.price(drug), [{"code": code, "pack_size": pack, "units": too_many}])
        ]
        self.dispense(rx, 1, pharmacy, lines, insurer=patient.insurer, expect="over-quantity")
        # the pharmacy corrects the quantity and dispenses what was prescribed
        self.sell(rx, 1, pharmacy, list(range(len(drugs))), insurer=patient.insurer)
        self.paid.extend((patient, d) for d in drugs)

    def s_same_box(self) -> None:
        if not self.used_up:
            self.deferred_same_box += 1
            self.s_normal()
            return
        patient = self.covered_patient()
        assert patient.insurer is not None
        formulary = self.formularies[patient.insurer]
        codes = [
            c
            for c in sorted(self.used_up)
            if c not in patient.drugs and c in formulary and not BY_CODE[c].controlled
        ]
        if not codes:
            self.s_normal()
            return
        drug = BY_CODE[self.rng.choice(codes)]
        rx = self.issue(patient, self.items_for([drug]))
        pharmacy = self.rng.choice(self.pharmacies)
        code, pack = self.rng.choice(self.used_up[drug.code])
        units = min(pack, drug.quantity)
        traces = [{"code": code, "pack_size": pack, "units": units}]
        if drug.quantity > units:  # and a box off the shelf for the rest (not recorded)
            rest = drug.quantity - units
            traces.append({"code": self.trace_code(drug), "pack_size": rest, "units": rest})
        insurer = patient.insurer
        lines = [(0, drug.quantity, self.price(drug), traces)]
        self.dispense(rx, 1, pharmacy, lines, insurer=insurer, expect="trace-code-used-up")
        # the scan is refused: the box was sold before; a fresh box is taken instead
        self.sell(rx, 1, pharmacy, [0], insurer=insurer)
        self.paid.append((patient, drug))

    def s_cancelled(self) -> None:
        patient, drugs = self.patient_with(1, on_formulary=False)
        rx = self.issue(patient, self.items_for(drugs))
        reason = self.rng.choice(("prescribing-error", "patient-request", "interaction"))
        self.batch.add(rx.prescriber, "rx.cancel", {"rx_id": rx.rx_id, "reason": reason})
        pharmacy = self.rng.choice(self.pharmacies)
        drug = drugs[0]
        traces = [{"code": self.trace_code(drug), "pack_size": drug.pack_size, "units": 1}]
        lines = [(0, 1, self.price(drug), traces)]
        self.dispense(rx, 1, pharmacy, lines, insurer=patient.insurer, expect="rx-cancelled")

    def s_pharmacy_reject(self) -> None:
        patient, drugs = self.patient_with(1, on_formulary=False)
        rx = self.issue(patient, self.items_for(drugs))
        first = self.rng.choice(self.pharmacies)
        reason = self.rng.choice(("interaction", "allergy", "invalid-prescription"))
        self.batch.add(first, "rx.reject", {"rx_id": rx.rx_id, "reason": reason})
        drug = drugs[0]
        traces = [{"code": self.trace_code(drug), "pack_size": drug.pack_size, "units": 1}]
        lines = [(0, 1, self.price(drug), traces)]
        second = self.other(self.pharmacies, first)
        self.dispense(rx, 1, second, lines, insurer=patient.insurer, expect="rx-rejected")

    def s_unlicensed_controlled(self) -> None:
        patient = self.covered_patient()
        drug = self.rng.choice([d for d in CATALOGUE if d.controlled])
        prescriber = self.rng.choice(self.unlicensed)
        self.issue(
            patient,
            self.items_for([drug]),
            prescriber=prescriber,
            expect="prescriber-not-licensed",
        )

    def s_controlled(self) -> None:
        patient = self.covered_patient()
        pool = [d for d in CATALOGUE if d.controlled and d.code not in patient.drugs]
        if not pool:
            self.s_normal()
            return
        drug = self.rng.choice(pool)
        rx = self.issue(patient, self.items_for([drug]), prescriber=self.rng.choice(self.licensed))
        self.sell(rx, 1, self.rng.choice(self.pharmacies), [0], insurer=patient.insurer)

    def s_refill_too_soon(self) -> None:
        rng = self.rng
        candidates = [
            (p, d) for p, d in self.paid[-500:] if d.code in self.formularies[p.claim_insurer]
        ]
        if candidates and rng.random() < 0.5:
            # the patient gets the same drug again the same day from another prescriber
            patient, drug = rng.choice(candidates)
            rx = self.issue(patient, self.items_for([drug]))
            self.sell(rx, 1, rng.choice(self.pharmacies), [0], insurer=patient.insurer)
            return
        # a repeat prescription whose second fill is claimed right after the first
        patient, (drug,) = self.patient_with(1)
        rx = self.issue(patient, [(drug, drug.quantity * 2, drug.days_supply)], fills=2)
        pharmacy = rng.choice(self.pharmacies)
        half = {0: drug.quantity}
        self.sell(rx, 1, pharmacy, [0], insurer=patient.insurer, quantities=half)
        self.sell(rx, 2, pharmacy, [0], insurer=patient.insurer, quantities=half)
        self.paid.append((patient, drug))

    def s_not_in_formulary(self) -> None:
        rng = self.rng
        patient = self.covered_patient()
        assert patient.insurer is not None
        formulary = self.formularies[patient.insurer]
        off = [
            d
            for d in CATALOGUE
            if d.code not in formulary and not d.controlled and d.code not in patient.drugs
        ]
        drugs = [rng.choice(off)] if off else []
        if rng.random() < 0.5:
            drugs += self.pick_drugs(patient, 1, formulary=patient.insurer)
        if not drugs:
            self.s_normal()
            return
        rx = self.issue(patient, self.items_for(drugs))
        self.sell(
            rx, 1, rng.choice(self.pharmacies), list(range(len(drugs))), insurer=patient.insurer
        )

    def s_not_covered(self) -> None:
        patient = self.rng.choice(self.uncovered)
        drugs = self.pick_drugs(patient, self.rng.choice((1, 2)), formulary=patient.claim_insurer)
        if not drugs:
            self.s_normal()
            return
        rx = self.issue(patient, self.items_for(drugs))
        pharmacy = self.rng.choice(self.pharmacies)
        self.sell(rx, 1, pharmacy, list(range(len(drugs))), insurer=patient.claim_insurer)

    def s_duplicate_claim(self) -> None:
        patient, drugs = self.patient_with(1)
        rx = self.issue(patient, self.items_for(drugs))
        pharmacy = self.rng.choice(self.pharmacies)
        self.sell(rx, 1, pharmacy, [0], insurer=patient.insurer)
        self.claim(rx, 1, pharmacy)  # the same fill claimed again
        self.paid.extend((patient, d) for d in drugs)

    def s_price_capped(self) -> None:
        patient, drugs = self.patient_with(self.rng.choice((1, 1, 2)))
        assert patient.insurer is not None
        rx = self.issue(patient, self.items_for(drugs))
        cap = self.formularies[patient.insurer][drugs[0].code]["max_unit_price"]
        prices = {0: cap * self.rng.randint(112, 160) // 100 + 1}
        pharmacy = self.rng.choice(self.pharmacies)
        self.sell(rx, 1, pharmacy, list(range(len(drugs))), insurer=patient.insurer, prices=prices)
        self.paid.extend((patient, d) for d in drugs)

    def s_over_limit(self) -> None:
        patient = self.covered_patient()
        chronic = [
            d for d in self.pick_drugs(patient, 5, formulary=patient.insurer) if d.days_supply >= 28
        ]
        if not chronic:
            self.s_normal()
            return
        drug = chronic[0]
        items = [(drug, drug.quantity * 3, drug.days_supply * 3)]  # a 90-day supply at once
        rx = self.issue(patient, items)
        self.sell(rx, 1, self.rng.choice(self.pharmacies), [0], insurer=patient.insurer)

    def s_suspended_prescriber(self) -> None:
        """A prescriber writes a prescription, then is suspended; it is filled and claimed."""
        self.suspended += 1
        licence = f"MD-{self.rng.randrange(10**8):08d}"
        prescriber = self.register(
            self.ident("dr-s", self.suspended), "prescriber", licence=licence
        )
        patient, drugs = self.patient_with(1)
        rx = self.issue(patient, self.items_for(drugs), prescriber=prescriber)
        self.batch.add(
            self.registrar,
            "actor.revoke",
            {"actor": prescriber.name, "reason": "licence-suspended"},
        )
        self.sell(rx, 1, self.rng.choice(self.pharmacies), [0], insurer=patient.insurer)

    # -- expiry ---------------------------------------------------------------------

    def issue_expiring(self) -> tuple[_Rx, _Patient]:
        patient, drugs = self.patient_with(1)
        valid_for = timedelta(seconds=EXPIRY_SECONDS)
        self.expires_at = time.time() + EXPIRY_SECONDS
        rx = self.issue(patient, self.items_for(drugs), valid_for=valid_for)
        return rx, patient

    def dispense_expired(self, rx: _Rx, patient: _Patient) -> None:
        drug, _ = rx.items[0]
        traces = [{"code": self.trace_code(drug), "pack_size": drug.pack_size, "units": 1}]
        lines = [(0, 1, self.price(drug), traces)]
        pharmacy = self.rng.choice(self.pharmacies)
        self.dispense(rx, 1, pharmacy, lines, insurer=patient.insurer, expect="rx-expired")


# -- the data wallet --------------------------------------------------------------------


@dataclass(frozen=True)
class DataUserSpec:
    """A data user: who may be granted data, and what kind of organisation it is."""

    name: str
    data_user_class: str  # registry.DATA_USER_CLASSES
    about: str


DATA_USERS: tuple[DataUserSpec, ...] = (
    DataUserSpec("uni", "accredited-nonprofit", "a university's accredited research group"),
    DataUserSpec("registry", "nonprofit", "a patient charity's disease registry"),
    DataUserSpec("pharma", "commercial", "a pharmaceutical company"),
)


@dataclass(frozen=True)
class ConsentProfile:
    """A kind of consent patients give: to whom, for what, on which data, when."""

    name: str
    weight: int
    grantee: str  # a class, or the short name of one of DATA_USERS
    purposes: tuple[str, ...]  # DUO short names: "GRU", "DS:E11", "TS:12"
    categories: tuple[str, ...]
    timing: str = "current"  # or "expired", "future", "ts-over" (a TS limit run out)


RX, DISP, DIAG, CLAIMS, DEMO = "prescriptions", "dispenses", "diagnoses", "claims", "demographics"
EVERYTHING = (RX, DISP, DIAG, CLAIMS, DEMO)
PROFILES: tuple[ConsentProfile, ...] = (
    ConsentProfile("open-research", 18, "class:any", ("GRU",), (RX, DISP, DIAG, CLAIMS)),
    ConsentProfile("non-commercial", 14, "class:any", ("GRU", "NCU", "PUB"), (RX, DISP, DIAG)),
    ConsentProfile("health-nonprofit", 12, "class:nonprofit", ("HMB",), (RX, DIAG, DISP)),
    ConsentProfile("accredited-only", 8, "class:accredited-nonprofit", ("GRU", "NPU"), EVERYTHING),
    ConsentProfile("diabetes", 8, "class:any", ("DS:E11",), (RX, DIAG, CLAIMS)),
    ConsentProfile("hypertension", 7, "class:any", ("DS:I10",), (RX, CLAIMS)),
    ConsentProfile("named-university", 6, "uni", ("HMB", "POA"), (RX, DISP, DIAG, DEMO)),
    ConsentProfile("one-year", 6, "class:any", ("HMB", "TS:12"), (RX, DISP, CLAIMS)),
    ConsentProfile("year-over", 4, "class:any", ("HMB", "TS:12"), (RX, DISP, CLAIMS), "ts-over"),
    ConsentProfile("prescriptions-only", 6, "class:any", ("GRU",), (RX,)),
    ConsentProfile("origins", 3, "class:any", ("POA",), (DEMO, RX)),
    ConsentProfile("ended", 4, "class:any", ("GRU",), (RX, DISP, DIAG, CLAIMS), "expired"),
    ConsentProfile("not-yet", 3, "class:nonprofit", ("HMB",), (RX, DISP), "future"),
)  # fmt: skip


@dataclass(frozen=True)
class UseSpec:
    """A data use: who, for what purpose, on which data, over how much of the population."""

    user: str  # short name of one of DATA_USERS
    purpose: str  # DUO short name of a permission, "DS:E11.9"
    categories: tuple[str, ...]
    cohort_per_mille: int  # of all patients (every patient in a small run)
    rate: int  # paid per permitted patient, in fen (0: not paid)
    payments: int


USES: tuple[UseSpec, ...] = (
    UseSpec("uni", "GRU", (RX, DISP), 400, 120, 1),
    UseSpec("uni", "DS:E11.9", (DIAG, RX), 250, 250, 1),
    UseSpec("registry", "HMB", (RX,), 350, 80, 1),
    UseSpec("pharma", "DS:I10", (CLAIMS, RX), 400, 1500, 2),
    UseSpec("pharma", "POA", (DEMO,), 100, 0, 0),
)
#: a use's cohort is every patient up to this many, else its share of them
WHOLE_COHORT = 200
#: why a patient's data was not released: no consent, or why their latest consent did not cover
DENIAL_REASONS = (
    "no-consent",
    "revoked",
    "not-yet-valid",
    "expired",
    "grantee",
    "purpose",
    "non-commercial",
    "time-limit",
    "categories",
)
#: wallet statements refused on purpose, once each
WALLET_REFUSALS = (
    "unknown-grantee",
    "not-your-consent",
    "consent-revoked",
    "consent-broadened",
    "cohort-mismatch",
    "payment-exists",
    "no-one-to-pay",
)
_DUO = {"GRU": GRU, "HMB": HMB, "DS": DS, "POA": POA, "NCU": NCU, "NPU": NPU, "TS": TS, "PUB": PUB}
#: which use purposes each permission covers (DUO's hierarchy), written out for the model
_COVERS = {GRU: {GRU, HMB, DS, POA}, HMB: {HMB, DS}, DS: {DS}, POA: {POA}}


def duo(term: str) -> dict[str, Any]:
    """``"DS:E11"`` -> ``{"code": "DUO:0000007", "disease": "E11"}``; ``"TS:12"`` -> months."""
    name, _, setting = term.partition(":")
    out: dict[str, Any] = {"code": _DUO[name]}
    if name == "DS":
        out["disease"] = setting
    elif name == "TS":
        out["months"] = int(setting)
    return out


@dataclass
class _Consent:
    """The demo's own model of a consent, to predict every use's decision."""

    consent_id: str
    profile: str
    grantee: str
    purposes: list[dict[str, Any]]
    categories: list[str]
    valid_from: datetime
    valid_until: datetime
    share_bp: int
    revoked: bool = False

    def why_not(
        self,
        user: str,
        user_class: str,
        purpose: dict[str, Any],
        categories: list[str],
        at: datetime,
    ) -> str | None:
        """Why this consent does not cover the use (a DENIAL_REASONS entry), or None."""
        if self.revoked:
            return "revoked"
        if at < self.valid_from:
            return "not-yet-valid"
        if at >= self.valid_until:
            return "expired"
        allowed = {
            "class:any": True,
            "class:nonprofit": user_class != "commercial",
            "class:accredited-nonprofit": user_class == "accredited-nonprofit",
        }.get(self.grantee, self.grantee == user)
        if not allowed:
            return "grantee"
        wanted = purpose["code"]
        if not any(
            wanted in _COVERS.get(p["code"], set())
            and (p["code"] != DS or str(purpose.get("disease", "")).startswith(p["disease"]))
            for p in self.purposes
        ):
            return "purpose"
        codes = {p["code"] for p in self.purposes}
        if user_class == "commercial" and codes & {NCU, NPU}:
            return "non-commercial"
        for p in self.purposes:  # TS: months from valid_from (the profiles keep off the edge)
            if p["code"] == TS and at >= self.valid_from + timedelta(days=30 * p["months"]):
                return "time-limit"
        if not set(categories) <= set(self.categories):
            return "categories"
        return None


@dataclass
class _Holder:
    """A patient with a wallet: registered with their own key, or a ward whose guardian acts."""

    patient: str
    signer: Signer  # the patient's key, or the guardian's for a ward
    consents: list[_Consent] = field(default_factory=list)
    ward_of: str | None = None  # the guardian, for a ward
    pinned: bool = False  # carries one profile for sure: never narrowed, revoked or given a second


class _Wallets:
    """Consents, narrowings, revocations, data uses and proceeds over the world's patients.

    The demo keeps its own model of every consent and predicts, per patient,
    each use's decision and its reason; a preview that disagrees is an
    ``unexpected`` outcome.
    """

    def __init__(self, world: _World, wallet_key_dir: Path | None) -> None:
        self.world = world
        self.batch = world.batch
        self.rng = world.rng
        self.tag = world.tag
        self.wallet_key_dir = wallet_key_dir
        self.users: dict[str, tuple[Signer, str]] = {}  # short name -> (signer, class)
        self.patients = [p.pseudonym for p in world.covered + world.uncovered]
        self.holders: dict[str, _Holder] = {}
        self.granted: Counter[str] = Counter()
        self.narrowed = 0
        self.revoked = 0
        self.uses: list[dict[str, Any]] = []
        self.denied_by_reason: Counter[str] = Counter()
        self.payments = 0
        self.paid = 0
        self.key_files: list[str] = []

    # -- consents --------------------------------------------------------------------

    def setup(self) -> None:
        rng, tag = self.rng, self.tag
        for spec in DATA_USERS:
            actor_id = f"{tag}.du-{spec.name}"
            signer = self.world.register(
                actor_id, "data_user", data_user_class=spec.data_user_class
            )
            self.users[spec.name] = (signer, spec.data_user_class)
        order = list(self.patients)
        rng.shuffle(order)
        n_holders = max(len(PROFILES) + 4, len(order) * 7 // 10)
        registered, others = order[:n_holders], order[n_holders:]
        wards = others[: max(1, n_holders // 100)]
        guardians = dict(zip(registered[len(PROFILES) :], wards, strict=False))
        for i, patient in enumerate(registered):
            ward = guardians.get(patient)
            extra = {"guardian_of": [ward]} if ward else {}
            signer = self.world.register(patient, "patient", **extra)
            self.holders[patient] = _Holder(patient, signer, pinned=i < len(PROFILES))
            if ward:
                self.holders[ward] = _Holder(ward, signer, ward_of=patient)
        weights = [p.weight for p in PROFILES]
        for i, holder in enumerate(self.holders.values()):
            profile = PROFILES[i] if holder.pinned else rng.choices(PROFILES, weights)[0]
            self.grant(holder, profile)
            if not holder.pinned and rng.random() < 0.15:
                other = rng.choices(PROFILES, weights)[0]
                if other.timing == "current" and other is not profile:
                    self.grant(holder, other)
        self.batch.flush()

    def grant(self, holder: _Holder, profile: ConsentProfile) -> None:
        rng, at = self.rng, now()
        timing = profile.timing
        if timing == "expired":
            start = at - timedelta(days=rng.randrange(800, 1500))
            end = at - timedelta(days=rng.randrange(1, 300))
        elif timing == "future":
            start = at + timedelta(days=rng.randrange(7, 90))
            end = start + timedelta(days=365)
        elif timing == "ts-over":
            start = at - timedelta(days=rng.randrange(420, 600))
            end = at + timedelta(days=rng.randrange(180, 720))
        else:
            start = at - timedelta(
                days=rng.randrange(1, 180 if "TS:12" in profile.purposes else 700)
            )
            end = at + timedelta(days=rng.randrange(180, 1800))
        grantee = profile.grantee
        if not grantee.startswith("class:"):
            grantee = self.users[grantee][0].name
        consent = _Consent(
            consent_id=f"c{len(holder.consents) + 1}",
            profile=profile.name,
            grantee=grantee,
            purposes=[duo(p) for p in profile.purposes],
            categories=sorted(profile.categories),
            valid_from=start,
            valid_until=end,
            share_bp=rng.choice((0, 500, 1000, 2500, 5000, 10000)),
        )
        holder.consents.append(consent)
        self.granted[profile.name] += 1
        self.batch.add(
            holder.signer,
            "consent.grant",
            {
                "consent_id": consent.consent_id,
                "patient": holder.patient,
                "grantee": consent.grantee,
                "purposes": consent.purposes,
                "categories": consent.categories,
                "valid_from": format_time(start),
                "valid_until": format_time(end),
                "share_bp": consent.share_bp,
            },
        )

    def change(self) -> None:
        """Some patients narrow a consent, some revoke one; a few try what is refused."""
        rng = self.rng
        free = [h for h in self.holders.values() if not h.pinned]
        for holder in free:
            consent = holder.consents[-1]
            roll = rng.random()
            if roll < 0.08:
                self.revoke(holder, consent)
            elif roll < 0.2:
                self.narrow(holder, consent)
        if not self.revoked:  # at least one of each, however small the run
            self.revoke(free[0], free[0].consents[-1])
        # refused on purpose
        first, second = [h for h in free if h.ward_of is None][:2]
        body = {"consent_id": "c1", "patient": second.patient}
        self.batch.add(first.signer, "consent.revoke", body, expect="not-your-consent")
        revoked = next(h for h in free if any(c.revoked for c in h.consents))
        gone = next(c for c in revoked.consents if c.revoked)
        self.batch.add(
            revoked.signer,
            "consent.narrow",
            {"consent_id": gone.consent_id, "patient": revoked.patient, "remove_categories": [RX]},
            expect="consent-revoked",
        )
        live = next(h for h in free if not h.consents[-1].revoked)
        later = live.consents[-1].valid_until + timedelta(days=365)
        self.batch.add(
            live.signer,
            "consent.narrow",
            {
                "consent_id": live.consents[-1].consent_id,
                "patient": live.patient,
                "valid_until": format_time(later),
            },
            expect="consent-broadened",
        )
        self.batch.add(
            first.signer,
            "consent.grant",
            {
                "consent_id": "c9",
                "patient": first.patient,
                "grantee": f"{self.tag}.du-nobody",
                "purposes": [duo("GRU")],
                "categories": [RX],
                "valid_from": format_time(now()),
                "valid_until": format_time(now() + timedelta(days=365)),
                "share_bp": 100,
            },
            expect="unknown-grantee",
        )
        self.batch.flush()

    def revoke(self, holder: _Holder, consent: _Consent) -> None:
        consent.revoked = True
        self.revoked += 1
        body = {"consent_id": consent.consent_id, "patient": holder.patient}
        self.batch.add(holder.signer, "consent.revoke", body)

    def narrow(self, holder: _Holder, consent: _Consent) -> None:
        """Drop a category or a permission, or end the consent earlier (some of them now)."""
        rng = self.rng
        if consent.valid_until <= now():
            return  # an ended consent is not narrowed (consent-ended)
        body: dict[str, Any] = {"consent_id": consent.consent_id, "patient": holder.patient}
        permissions = [p["code"] for p in consent.purposes if p["code"] in _COVERS]
        choice = rng.random()
        if choice < 0.45 and len(consent.categories) > 1:
            drop = rng.choice(consent.categories)
            consent.categories = [c for c in consent.categories if c != drop]
            body["remove_categories"] = [drop]
        elif choice < 0.6 and len(set(permissions)) > 1:
            drop = rng.choice(sorted(set(permissions)))
            consent.purposes = [p for p in consent.purposes if p["code"] != drop]
            body["remove_purposes"] = [drop]
        else:
            at = now()
            if consent.valid_until <= at:
                return  # an ended consent cannot end earlier
            if rng.random() < 0.5:  # ends now: a narrowing is never retroactive
                consent.valid_until = at
                body["valid_until"] = format_time(at - timedelta(hours=1))
            else:
                end = at + timedelta(days=rng.randrange(30, 120))
                if end >= consent.valid_until:
                    return
                consent.valid_until = end
                body["valid_until"] = format_time(end)
        self.narrowed += 1
        self.batch.add(holder.signer, "consent.narrow", body)

    # -- uses ------------------------------------------------------------------------

    def expected(
        self, user: str, spec: UseSpec, cohort: list[str], at: datetime
    ) -> tuple[dict[str, int], dict[str, str]]:
        """The model's decision: ``({permitted patient: weight}, {denied patient: reason})``."""
        signer, user_class = self.users[user]
        purpose, categories = duo(spec.purpose), sorted(spec.categories)
        permitted: dict[str, int] = {}
        denied: dict[str, str] = {}
        for patient in cohort:
            holder = self.holders.get(patient)
            if holder is None:
                denied[patient] = "no-consent"
                continue
            reasons = [
                c.why_not(signer.name, user_class, purpose, categories, at) for c in holder.consents
            ]
            shares = [
                c.share_bp for c, r in zip(holder.consents, reasons, strict=True) if r is None
            ]
            if shares:
                permitted[patient] = max(shares)
            else:
                denied[patient] = str(reasons[-1])
        return permitted, denied

    def preview(self, use_id: str, spec: UseSpec, cohort: list[str]) -> tuple[str, dict[str, Any]]:
        """Preview a use as its data user would, and compare it with the model."""
        moment = now()
        at = format_time(moment)
        signer, _ = self.users[spec.user]
        result = preview_use(
            self.world.ledger.engine,
            data_user=signer.name,
            use_id=use_id,
            at=at,
            purpose=duo(spec.purpose),
            categories=sorted(spec.categories),
            patients=cohort,
        )
        permitted, denied = self.expected(spec.user, spec, cohort, parse_time(at))
        if set(result["permitted"]) != set(permitted):
            for patient in set(result["permitted"]) ^ set(permitted):
                got = "permitted" if patient in result["permitted"] else "denied"
                want = "permitted" if patient in permitted else f"denied ({denied[patient]})"
                self.batch.unexpected[f"data.use preview: expected {want}, got {got}"] += 1
        return at, result

    def use(self, n: int, spec: UseSpec, cohort: list[str], *, mismatch: bool = False) -> None:
        use_id = f"{self.tag}.use-{n:02d}"
        signer, _ = self.users[spec.user]
        body = {
            "use_id": use_id,
            "purpose": duo(spec.purpose),
            "categories": sorted(spec.categories),
        }
        at, result = self.preview(use_id, spec, cohort)
        if mismatch and self.narrow_one(spec, result["permitted"]):
            # a patient narrowed their consent between the preview and the use: refused
            self.batch.add(
                signer,
                "data.use",
                {**body, **result["body_fields"]},
                payload={"patients": cohort},
                issued_at=at,
                expect="cohort-mismatch",
            )
            self.batch.flush()
            at, result = self.preview(use_id, spec, cohort)  # preview again
        self.batch.add(
            signer,
            "data.use",
            {**body, **result["body_fields"]},
            payload={"patients": cohort},
            issued_at=at,
        )
        self.batch.flush()
        weights, denied = self.expected(spec.user, spec, cohort, parse_time(at))
        self.denied_by_reason.update(denied.values())
        fields = result["body_fields"]
        self.uses.append(
            {
                "use_id": use_id,
                "data_user": signer.name,
                "purpose": spec.purpose,
                "categories": sorted(spec.categories),
                "requested": fields["requested_count"],
                "permitted": fields["permitted_count"],
                "denied": fields["denied_count"],
                "weights": weights,
                "paid": 0,
            }
        )

    def narrow_one(self, spec: UseSpec, permitted: list[str]) -> bool:
        """A permitted patient drops one of the use's categories from the consent covering it."""
        for patient in permitted:
            holder = self.holders[patient]
            if holder.pinned or len(holder.consents) != 1:
                continue
            consent = holder.consents[0]
            drop = spec.categories[0]
            if len(consent.categories) < 2 or drop not in consent.categories:
                continue
            if consent.valid_until <= now():
                continue
            consent.categories = [c for c in consent.categories if c != drop]
            self.narrowed += 1
            body = {
                "consent_id": consent.consent_id,
                "patient": patient,
                "remove_categories": [drop],
            }
            self.batch.add(holder.signer, "consent.narrow", body)
            return True
        return False

    def run_uses(self) -> None:
        rng = self.rng
        for n, spec in enumerate(USES, start=1):
            if len(self.patients) <= WHOLE_COHORT:
                cohort = list(self.patients)
            else:
                cohort = rng.sample(
                    self.patients, len(self.patients) * spec.cohort_per_mille // 1000
                )
            self.use(n, spec, cohort, mismatch=spec.user == "registry")
        # a use over patients none of whom consented: recorded, permitting no one
        nobody = [p for p in self.patients if p not in self.holders][:20]
        self.use(len(USES) + 1, UseSpec("pharma", "GRU", (RX,), 0, 0, 0), nobody)

    # -- proceeds --------------------------------------------------------------------

    def proceeds(self) -> None:
        rng = self.rng
        for n, (spec, use) in enumerate(zip(USES, self.uses, strict=False), start=1):
            signer, _ = self.users[spec.user]
            for k in range(spec.payments):
                amount = use["permitted"] * spec.rate // (k + 1) + rng.randrange(1, 100)
                payment_id = f"{self.tag}.pay-{n:02d}{'abcdefgh'[k]}"
                body = {"use_id": use["use_id"], "payment_id": payment_id, "amount": amount}
                if use["permitted"] == 0:
                    self.batch.add(signer, "data.proceeds", body, expect="no-one-to-pay")
                    continue
                self.batch.add(signer, "data.proceeds", body)
                use["paid"] += amount
                self.payments += 1
                self.paid += amount
        # the same payment again, and a payment for the use that permitted no one: refused
        first, empty = self.uses[0], self.uses[-1]
        signer = self.users[USES[0].user][0]
        again = {"use_id": first["use_id"], "payment_id": f"{self.tag}.pay-01a", "amount": 100}
        self.batch.add(signer, "data.proceeds", again, expect="payment-exists")
        pharma = self.users["pharma"][0]
        none = {"use_id": empty["use_id"], "payment_id": f"{self.tag}.pay-99a", "amount": 5000}
        self.batch.add(pharma, "data.proceeds", none, expect="no-one-to-pay")
        self.batch.flush()

    # -- the outcome -----------------------------------------------------------------

    def check(self) -> int:
        """Compare the recorded weights and credits with the model's; the total credited."""
        credited: Counter[str] = Counter()
        views = ProjectionReader(self.world.ledger.engine)
        for use in self.uses:
            members = views.get(MEMBERS, use["use_id"]) or {"weights": {}}
            if members["weights"] != use["weights"]:
                self.batch.unexpected["data.use: recorded weights differ from the model's"] += 1
        query = select(projections.c.value).where(
            projections.c.kind == PAYMENT,
            projections.c.key.startswith(f"{self.tag}.", autoescape=True),
        )
        with self.world.ledger.engine.connect() as conn:
            for value in conn.execute(query).scalars():
                row = json.loads(value)
                credited[row["use_id"]] += int(row["amount"])
        for use in self.uses:
            if credited[use["use_id"]] != use["paid"]:
                self.batch.unexpected["data.proceeds: credited differs from paid"] += 1
        return sum(credited.values())

    def examples(self) -> dict[str, dict[str, str]]:
        """A patient who revoked a consent, one who was paid, and a guardian with a ward."""
        out: dict[str, dict[str, str]] = {}
        signers: list[Signer] = []
        paid = {p for u in self.uses if u["paid"] for p in u["weights"]}
        for holder in self.holders.values():
            if holder.ward_of is not None:
                if "guardian" not in out:
                    out["guardian"] = {"guardian": holder.ward_of, "patient": holder.patient}
                    signers.append(holder.signer)
                continue
            revoked = [c for c in holder.consents if c.revoked]
            if "revoked" not in out and revoked and len(holder.consents) == 1:
                out["revoked"] = {"patient": holder.patient, "consent_id": revoked[0].consent_id}
                signers.append(holder.signer)
            elif "paid" not in out and holder.patient in paid:
                out["paid"] = {"patient": holder.patient}
                signers.append(holder.signer)
        if self.wallet_key_dir is not None:
            # a guardian's key is its ward's too: write each key once
            for signer in {s.name: s for s in signers}.values():
                path = self.wallet_key_dir / f"{signer.name}.skey"
                write_key_file(path, signer.skey)
                self.key_files.append(str(path))
        return out

    def report(self) -> dict[str, Any]:
        credited = self.check()
        examples = self.examples()
        permitted = sum(u["permitted"] for u in self.uses)
        return {
            "data_users": {signer.name: cls for signer, cls in self.users.values()},
            "patients_with_wallet": sum(1 for h in self.holders.values() if h.ward_of is None),
            "wards": sum(1 for h in self.holders.values() if h.ward_of is not None),
            "consents": {
                "granted": sum(self.granted.values()),
                "narrowed": self.narrowed,
                "revoked": self.revoked,
                "by_profile": dict(sorted(self.granted.items())),
            },
            "uses": {
                "recorded": len(self.uses),
                "requested": sum(u["requested"] for u in self.uses),
                "permitted": permitted,
                "denied": sum(u["denied"] for u in self.uses),
                "denied_by_reason": {r: self.denied_by_reason[r] for r in DENIAL_REASONS},
                "each": [{k: v for k, v in u.items() if k != "weights"} for u in self.uses],
            },
            "proceeds": {
                "payments": self.payments,
                "paid": self.paid,
                "credited": credited,
                "patients_paid": len({p for u in self.uses if u["paid"] for p in u["weights"]}),
            },
            "example_wallets": examples,
        }


def plan_categories(prescriptions: int, rng: random.Random) -> list[str]:
    """Which scenario each prescription follows: the error categories, then normal."""
    special: list[str] = []
    for name, (per_mille, _) in CATEGORIES.items():
        special += [name] * max(1, round(prescriptions * per_mille / 1000))
    rng.shuffle(special)
    expired = [c for c in special if c == "expired"]
    rest = [c for c in special if c != "expired"]
    rest += ["normal"] * max(0, prescriptions - len(special))
    rng.shuffle(rest)
    return (expired + rest)[:prescriptions]


def run_demo(
    ledger: Ledger,
    registrar: Signer,
    *,
    prescriptions: int,
    seed: int = 0,
    key_dir: Path | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
    wallet_key_dir: Path | None = None,
) -> DemoReport:
    """Build the synthetic world in ``ledger`` and run ``prescriptions`` prescriptions.

    ``registrar`` signs the registrations. The insurers' settlement keys are
    given to ``ledger.settlement`` (so that the service decides the claims),
    and written to ``key_dir`` as ``<insurer>.skey`` (mode 0600) when given, so
    that a later ``rxledger serve`` holds them too. ``progress(done, total)``
    is called after every batch.
    """
    if prescriptions < 1:
        raise ValueError("prescriptions must be at least 1")
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be from 1 to {MAX_BATCH}")
    started = time.perf_counter()
    first_seq = ledger.reader.head().size
    tag = f"d{first_seq}"
    rng = random.Random(seed)  # noqa: S311 - a synthetic world, not secrets
    done = 0

    def report_progress() -> None:
        if progress is not None:
            progress(done, prescriptions)

    batch = _Batcher(ledger, batch_size, report_progress)
    world = _World(ledger, registrar, rng, tag, batch)
    world.setup(prescriptions)
    batch.flush()
    if batch.unexpected:
        raise LedgerError(f"the demo's set-up was refused: {dict(batch.unexpected)}")
    for settle in world.settlement_keys:
        ledger.settlement.add(settle)
    key_files = []
    if key_dir is not None:
        for settle in world.settlement_keys:
            path = key_dir / f"{settle.name}.skey"
            write_key_file(path, settle.skey)
            key_files.append(str(path))

    categories = plan_categories(prescriptions, rng)
    expiring = []
    for category in categories:
        if category == "expired":
            expiring.append(world.issue_expiring())
        else:
            world.scenario(category)
        done += 1
    batch.flush()
    if expiring:
        # valid for a second from issue: wait (in a short run) until they have expired
        time.sleep(max(0.0, world.expires_at + 0.01 - time.time()))
        for rx, patient in expiring:
            world.dispense_expired(rx, patient)
        batch.flush()
    report_progress()

    # the data wallet: patients' consents, data uses over cohorts, proceeds
    wallets = _Wallets(world, wallet_key_dir)
    wallets.setup()
    wallets.change()
    wallets.run_uses()
    wallets.proceeds()
    wallet = wallets.report()

    decisions, failed, examples = _decisions(ledger, tag)
    head = ledger.reader.head().size
    return DemoReport(
        seed=seed,
        prescriptions=prescriptions,
        run_tag=tag,
        actors={
            "prescribers": len(world.prescribers),
            "prescribers_licensed_for_controlled": len(world.licensed),
            "prescribers_suspended": world.suspended,
            "pharmacies": len(world.pharmacies),
            "insurers": len(world.insurers),
        },
        patients={"covered": len(world.covered), "not_covered": len(world.uncovered)},
        categories=dict(sorted(Counter(categories).items())),
        statements_submitted=batch.submitted,
        accepted_by_type=dict(sorted(batch.accepted.items())),
        refused_by_code=dict(sorted(batch.refused.items())),
        decisions_by_outcome=decisions,
        failed_rules_by_code=failed,
        records_written=head - first_seq,
        first_seq=first_seq,
        tree_size=head,
        seconds=time.perf_counter() - started,
        example_claims=examples,
        settlement_key_files=key_files,
        unexpected=dict(sorted(batch.unexpected.items())),
        wallet=wallet,
        wallet_key_files=wallets.key_files,
        identities=dict(world.identities),
    )


def _decisions(ledger: Ledger, tag: str) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """Outcomes and failed rule codes of this run's claims, and an example of each outcome."""
    outcomes: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    examples: dict[str, tuple[int, str]] = {}
    query = (
        select(projections.c.key, projections.c.value)
        .where(
            projections.c.kind == CLAIM, projections.c.key.startswith(f"{tag}.", autoescape=True)
        )
        .order_by(projections.c.key)
    )
    with ledger.engine.connect() as conn:
        for row in conn.execute(query):
            claim = json.loads(row.value)
            decision = claim.get("decision")
            if not decision:
                outcomes["pending"] += 1
                continue
            outcome = decision["outcome"]
            outcomes[outcome] += 1
            codes = sorted({r["code"] for r in decision["rules"] if r.get("code")})
            failed.update(codes)
            # the first of each outcome, preferring one that shows a typical reason
            score = int(EXAMPLE_REASONS.get(outcome) in codes)
            if outcome not in examples or score > examples[outcome][0]:
                examples[outcome] = (score, str(row.key))
    by_outcome = {o: outcomes[o] for o in (*OUTCOMES, "pending") if outcomes[o]}
    chosen = {o: examples[o][1] for o in OUTCOMES if o in examples}
    return by_outcome, dict(sorted(failed.items())), chosen

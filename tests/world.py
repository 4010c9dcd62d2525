"""A small world for the prescription and settlement tests, so that tests read like sentences.

``World.build(env)`` registers a prescriber licensed for a controlled class
(``dr-li``) and one who is not (``dr-wu``), two pharmacies, an insurer whose
settlement key the service holds (``insurer-a``) and one whose key it does not
(``insurer-b``: its claims stay pending), publishes a policy for both and
enrolls a patient. Each action (``issue``, ``dispense``, ``claim``, ``cancel``,
``reject``, ``decide``) signs a statement at the world's time, submits it and
returns the outcome: a receipt, or the :class:`RejectionError` saying why not.
``make_*`` give the submission without sending it, for tests that need the
exact bytes (snapshots around a refusal, races, hand-built logs).

Time: by default the world follows the real clock. ``travel(days=...)`` moves
the ledger's clock (``sequencer.clock``) and the time statements are signed at
together, so that tests can put days between two fills; the ledger's time
never goes back, so a world only ever travels forward.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ledger.core.canonical import canonicalize
from ledger.core.errors import LedgerError, RejectionError
from ledger.core.note import Signer
from ledger.core.payload import payload_digest, seal
from ledger.core.statement import SignedStatement, format_time, make_statement, now
from ledger.domain import prescriptions, settlement
from ledger.store.reader import ProjectionReader
from ledger.store.sequencer import Submission
from tests.conftest import (
    LedgerEnv,
    create_postgres_database,
    drop_postgres_database,
    make_ledger_env,
)

#: drug codes of the default policy's formulary
DRUG_A = "DRUG-A"  # cap 500 per unit, at most 60 units, 30 days
DRUG_B = "DRUG-B"  # cap 200 per unit, at most 100 units, 90 days
DRUG_C = "CTRL-1"  # a controlled (psychotropic-2) drug in the formulary
NOT_LISTED = "DRUG-Z"  # in no formulary
CONTROLLED_CLASS = "psychotropic-2"


def default_policy(version: int = 1, **override: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": version,
        "formulary": {
            DRUG_A: {"max_unit_price": 500, "max_quantity": 60, "max_days_supply": 30},
            DRUG_B: {"max_unit_price": 200, "max_quantity": 100, "max_days_supply": 90},
            DRUG_C: {"max_unit_price": 900, "max_quantity": 30, "max_days_supply": 30},
        },
        "refill_threshold_pct": 75,
        "copay_bp": 2000,
        "controlled_allowed": False,
        "controlled_max_days_supply": 7,
    }
    body.update(override)
    return body


def item(drug: str = DRUG_A, quantity: int = 60, days: int = 30, unit: str = "tablet") -> dict:
    """A prescribed item (clinical payload of ``rx.issue``)."""
    return {"drug_code": drug, "quantity": quantity, "unit": unit, "days_supply": days}


def box(pack_size: int, units: int | None = None, code: str | None = None) -> dict[str, Any]:
    """A traceability code line: a fresh 20-digit code unless one is given."""
    return {
        "code": code or new_box_code(),
        "pack_size": pack_size,
        "units": pack_size if units is None else units,
    }


def new_box_code() -> str:
    return f"{secrets.randbelow(10**20):020d}"


def line(
    index: int, quantity: int, price: int = 400, boxes: Sequence[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A dispensed line (clinical payload of ``rx.dispense``); one fresh box by default."""
    return {
        "item": index,
        "quantity": quantity,
        "unit_price": price,
        "trace_codes": list(boxes) if boxes is not None else [box(quantity)],
    }


def unsalted(content: dict[str, Any]) -> tuple[bytes, str]:
    """A payload with no salt, and its (correct) digest."""
    data = canonicalize(content)
    return data, payload_digest(data)


Outcome = Any  # Receipt | VerifiedReceipt | RejectionError (RejectedError through the API)
Send = Callable[[Submission], Outcome]


def is_accepted(outcome: Outcome) -> bool:
    return not isinstance(outcome, LedgerError)


def accepted(outcome: Outcome) -> Outcome:
    assert is_accepted(outcome), f"refused: {getattr(outcome, 'code', '?')}: {outcome}"
    return outcome


def refused(outcome: Outcome, code: str) -> RejectionError:
    assert isinstance(outcome, RejectionError), f"expected a refusal {code}, got {outcome}"
    assert outcome.code == code, f"expected {code}, got {outcome.code}: {outcome}"
    return outcome


@dataclass
class World:
    env: LedgerEnv
    prescribers: dict[str, Signer] = field(default_factory=dict)
    pharmacies: dict[str, Signer] = field(default_factory=dict)
    insurers: dict[str, Signer] = field(default_factory=dict)
    settlement_keys: dict[str, Signer] = field(default_factory=dict)
    #: how submissions reach the ledger (default: in process; the API tests send over HTTP)
    send: Send | None = None
    _now: datetime | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    #: while building: submissions collected for one batch instead of sent
    _batch: list[Submission] | None = None

    # -- building -----------------------------------------------------------------

    @classmethod
    def build(
        cls,
        env: LedgerEnv,
        *,
        patients: Sequence[str] = ("P-1",),
        policy: dict[str, Any] | None = None,
    ) -> World:
        """The default cast, registered in one batch (one transaction)."""
        world = cls(env)
        batch: list[Submission] = []
        world._batch = batch
        try:
            world.add_prescriber("dr-li", controlled_classes=[CONTROLLED_CLASS])
            world.add_prescriber("dr-wu")
            world.add_pharmacy("pharmacy-1")
            world.add_pharmacy("pharmacy-2")
            world.add_insurer("insurer-a", hold_settlement_key=True, policy=policy)
            world.add_insurer("insurer-b", hold_settlement_key=False, policy=policy)
            for patient in patients:
                world.enroll(patient)
        finally:
            world._batch = None
        for outcome in env.ledger.append(batch, atomic=True):
            accepted(outcome)
        return world

    @property
    def engine(self) -> Any:
        return self.env.ledger.engine

    def now(self) -> datetime:
        return self._now if self._now is not None else now()

    def travel(self, *, days: float = 0, seconds: float = 0) -> datetime:
        """Move the world's time and the ledger's clock forward together."""
        self._now = self.now() + timedelta(days=days, seconds=seconds)
        moment = self._now
        self.env.ledger.sequencer.clock = lambda: moment
        return moment

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}-{secrets.token_hex(3)}"

    def sign(
        self, signer: Signer, kind: str, body: dict[str, Any], *, at: datetime | None = None
    ) -> SignedStatement:
        return make_statement(signer, kind, body, issued_at=at or self.now())

    def submit(self, submission: Submission) -> Outcome:
        if self.send is not None:
            return self.send(submission)
        (outcome,) = self.env.ledger.append([submission])
        return outcome

    def must(self, submission: Submission) -> Outcome:
        if self._batch is not None:
            self._batch.append(submission)
            return None
        return accepted(self.submit(submission))

    def register(self, actor_id: str, role: str, **body: Any) -> Signer:
        signer = Signer.generate(actor_id)
        statement = self.sign(
            self.env.registrar,
            "actor.register",
            {"actor": actor_id, "role": role, "key": signer.vkey, **body},
        )
        self.must(Submission(statement))
        return signer

    def add_prescriber(self, actor_id: str, *, controlled_classes: Sequence[str] = ()) -> Signer:
        extra: dict[str, Any] = {"controlled_classes": list(controlled_classes)}
        signer = self.register(actor_id, "prescriber", licence=f"MD-{actor_id}", **extra)
        self.prescribers[actor_id] = signer
        return signer

    def add_pharmacy(self, actor_id: str) -> Signer:
        signer = self.register(actor_id, "pharmacy", licence=f"PH-{actor_id}")
        self.pharmacies[actor_id] = signer
        return signer

    def add_insurer(
        self,
        actor_id: str,
        *,
        hold_settlement_key: bool = True,
        policy: dict[str, Any] | None = None,
        publish: bool = True,
    ) -> Signer:
        """An insurer with a settlement key (given to the service or not) and a policy."""
        signer = self.register(actor_id, "insurer")
        self.insurers[actor_id] = signer
        settle = Signer.generate(actor_id)
        self.must(
            Submission(
                self.sign(
                    signer,
                    "actor.add_key",
                    {"actor": actor_id, "key": settle.vkey, "purpose": "settlement"},
                )
            )
        )
        self.settlement_keys[actor_id] = settle
        if hold_settlement_key:
            self.env.ledger.settlement.add(settle)
        if publish:
            self.must(Submission(self.sign(signer, "policy.publish", policy or default_policy())))
        return signer

    def publish(self, insurer: str, policy: dict[str, Any]) -> Outcome:
        return self.submit(Submission(self.sign(self.insurers[insurer], "policy.publish", policy)))

    def enroll(self, patient: str, *, insurer: str = "insurer-a", days: int = 365) -> str:
        t = self.now()
        self.must(
            Submission(
                self.sign(
                    self.insurers[insurer],
                    "coverage.enroll",
                    {
                        "patient": patient,
                        "plan": "basic",
                        "valid_from": format_time(t - timedelta(days=1)),
                        "valid_until": format_time(t + timedelta(days=days)),
                    },
                )
            )
        )
        return patient

    def new_patient(self, *, insurers: Sequence[str] = ("insurer-a",)) -> str:
        """A fresh pseudonym enrolled with ``insurers`` (none: not covered)."""
        patient = self.new_id("P")
        for insurer in insurers:
            self.enroll(patient, insurer=insurer)
        return patient

    # -- prescriptions --------------------------------------------------------------

    def make_issue(
        self,
        rx_id: str,
        *,
        items: Sequence[dict[str, Any]] | None = None,
        patient: str = "P-1",
        fills: int = 2,
        by: str = "dr-li",
        signer: Signer | None = None,
        valid_for: timedelta = timedelta(days=90),
        controlled_class: str | None = None,
        payload: tuple[bytes, str] | None = None,
        at: datetime | None = None,
    ) -> Submission:
        at = at or self.now()
        content: dict[str, Any] = {
            "items": list(items) if items is not None else [item()],
            "diagnosis_codes": ["I10"],
        }
        if controlled_class is not None:
            content["controlled_class"] = controlled_class
        data, digest = payload or seal(content)
        body = {
            "rx_id": rx_id,
            "patient": patient,
            "valid_until": format_time(at + valid_for),
            "fills_allowed": fills,
            "payload_digest": digest,
        }
        who = signer or self.prescribers.get(by) or self.pharmacies[by]
        return Submission(self.sign(who, "rx.issue", body, at=at), payload=data)

    def issue(self, rx_id: str, **kwargs: Any) -> Outcome:
        return self.submit(self.make_issue(rx_id, **kwargs))

    def make_dispense(
        self,
        rx_id: str,
        fill: int,
        lines: Sequence[dict[str, Any]] | None = None,
        *,
        by: str = "pharmacy-1",
        claimed: bool = True,
        insurer: str | None = "insurer-a",
        payload: tuple[bytes, str] | None = None,
        at: datetime | None = None,
    ) -> Submission:
        data, digest = payload or seal({"items": list(lines) if lines else [line(0, 30)]})
        body: dict[str, Any] = {
            "rx_id": rx_id,
            "fill_number": fill,
            "claimed": claimed,
            "payload_digest": digest,
        }
        if insurer is not None:
            body["insurer"] = insurer
        return Submission(self.sign(self.pharmacies[by], "rx.dispense", body, at=at), payload=data)

    def dispense(
        self, rx_id: str, fill: int, lines: Sequence[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Outcome:
        return self.submit(self.make_dispense(rx_id, fill, lines, **kwargs))

    def make_end(
        self, kind: str, rx_id: str, *, by: str, reason: str, at: datetime | None = None
    ) -> Submission:
        signer = self.prescribers.get(by) or self.pharmacies[by]
        return Submission(self.sign(signer, kind, {"rx_id": rx_id, "reason": reason}, at=at))

    def cancel(
        self, rx_id: str, *, by: str = "dr-li", reason: str = "prescribing-error"
    ) -> Outcome:
        return self.submit(self.make_end("rx.cancel", rx_id, by=by, reason=reason))

    def reject(self, rx_id: str, *, by: str = "pharmacy-1", reason: str = "interaction") -> Outcome:
        return self.submit(self.make_end("rx.reject", rx_id, by=by, reason=reason))

    # -- claims ---------------------------------------------------------------------

    def make_claim(
        self, claim_id: str, rx_id: str, fill: int = 1, *, by: str = "pharmacy-1"
    ) -> Submission:
        body = {"claim_id": claim_id, "rx_id": rx_id, "fill_number": fill}
        return Submission(self.sign(self.pharmacies[by], "claim.submit", body))

    def claim(self, claim_id: str, rx_id: str, fill: int = 1, **kwargs: Any) -> Outcome:
        return self.submit(self.make_claim(claim_id, rx_id, fill, **kwargs))

    def make_decision(
        self, body: dict[str, Any], *, insurer: str = "insurer-b", general_key: bool = False
    ) -> Submission:
        signer = self.insurers[insurer] if general_key else self.settlement_keys[insurer]
        return Submission(self.sign(signer, "settlement.decision", body))

    def decide(self, body: dict[str, Any], **kwargs: Any) -> Outcome:
        return self.submit(self.make_decision(body, **kwargs))

    # -- reads ----------------------------------------------------------------------

    def rx(self, rx_id: str) -> dict[str, Any]:
        found = ProjectionReader(self.engine).get(prescriptions.RX, rx_id)
        assert found is not None, f"no prescription {rx_id}"
        return found

    def claim_doc(self, claim_id: str) -> dict[str, Any]:
        found = ProjectionReader(self.engine).get(settlement.CLAIM, claim_id)
        assert found is not None, f"no claim {claim_id}"
        return found

    def decision(self, claim_id: str) -> dict[str, Any]:
        """The recorded decision on a claim (without its ``seq``)."""
        decision = self.claim_doc(claim_id)["decision"]
        assert decision is not None, f"claim {claim_id} is not decided"
        return {k: v for k, v in decision.items() if k != "seq"}

    def expected_decision(self, claim_id: str) -> dict[str, Any]:
        """What the policy gives for a claim, on the current projections."""
        return settlement.evaluate(ProjectedState(self.engine), self.claim_doc(claim_id))

    def size(self) -> int:
        return int(self.env.ledger.reader.head().size)

    # -- whole stories ----------------------------------------------------------------

    def dispensed_and_claimed(
        self,
        *,
        items: Sequence[dict[str, Any]] | None = None,
        lines: Sequence[dict[str, Any]] | None = None,
        patient: str | None = None,
        prescriber: str = "dr-li",
        insurer: str = "insurer-a",
        controlled_class: str | None = None,
    ) -> tuple[str, str]:
        """Issue, dispense fill 1 and claim it; returns ``(rx_id, claim_id)``."""
        rx_id, claim_id = self.new_id("RX"), self.new_id("C")
        patient = patient or self.new_patient()
        self.must(
            self.make_issue(
                rx_id,
                items=items,
                patient=patient,
                by=prescriber,
                controlled_class=controlled_class,
            )
        )
        self.must(self.make_dispense(rx_id, 1, lines, insurer=insurer))
        self.must(self.make_claim(claim_id, rx_id, 1))
        return rx_id, claim_id


class ProjectedState:
    """The projections as the domain's read-only ``State``."""

    def __init__(self, engine: Any) -> None:
        self.reader = ProjectionReader(engine)

    @property
    def size(self) -> int:
        raise NotImplementedError

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.reader.get(kind, key)


@contextmanager
def ledger_on(backend: str, directory: Path) -> Iterator[LedgerEnv]:
    """A fresh ledger on ``backend`` for a module-scoped fixture (dropped afterwards)."""
    postgres = backend == "postgres"
    url = create_postgres_database() if postgres else f"sqlite:///{directory / 'ledger.db'}"
    try:
        env = make_ledger_env(url, directory / "keys")
        try:
            yield env
        finally:
            env.ledger.close()
    finally:
        if postgres:
            drop_postgres_database(url)

"""A small world for the data-wallet tests, so that tests read like sentences.

``WalletWorld.build(env)`` registers three data users, one of each class:
``uni`` (accredited non-profit), ``charity`` (a plain non-profit) and
``pharma`` (commercial). Patients and guardians are made on demand, each with a
fresh pseudonym (patients register with no display name). Each action signs a
statement at the world's time; ``make_*`` give the submission without sending
it (for snapshots around a refusal), the plain verbs send it and insist that it
is accepted.

A data use is made as a data user makes it: preview first (the service's
``preview_use``, or ``POST /v1/uses/preview`` when ``previewer`` is set), then
sign ``data.use`` with the preview's body fields, at the SAME ``issued_at``,
with the cohort sealed in the payload.

Time: by default the world follows the real clock. ``travel(...)`` moves the
ledger's clock (``sequencer.clock``) and the time statements are signed at
together, and pins it (to the millisecond, as statements carry it); the
ledger's time never goes back, so a world only ever travels forward.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ledger.core.note import Signer
from ledger.core.payload import seal
from ledger.core.statement import SignedStatement, format_time, make_statement, now
from ledger.domain import wallet
from ledger.store.reader import ProjectionReader
from ledger.store.sequencer import Submission
from ledger.wallet_service import preview_use, released
from tests.conftest import LedgerEnv
from tests.world import Outcome, accepted

GRU, HMB, DS, POA = wallet.GRU, wallet.HMB, wallet.DS, wallet.POA
NPU, NCU, TS, PUB = wallet.NPU, wallet.NCU, wallet.TS, wallet.PUB

#: data users of the default cast, and their class
DATA_USERS = {"uni": "accredited-nonprofit", "charity": "nonprofit", "pharma": "commercial"}

Send = Callable[[Submission], Outcome]
#: (data user's signer, preview request body) -> preview answer
Previewer = Callable[[Signer, dict[str, Any]], dict[str, Any]]


def duo(code: str, **extra: Any) -> dict[str, Any]:
    """A DUO term: ``duo(DS, disease="E11")``, ``duo(TS, months=6)``."""
    return {"code": code, **extra}


def pinned(moment: datetime) -> datetime:
    """``moment`` to the millisecond, as a statement's ``issued_at`` carries it."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@dataclass
class WalletWorld:
    env: LedgerEnv
    signers: dict[str, Signer] = field(default_factory=dict)
    #: how submissions reach the ledger (default: in process; the API tests send over HTTP)
    send: Send | None = None
    #: how previews are made (default: the service; the API tests ask over HTTP)
    previewer: Previewer | None = None
    _now: datetime | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def build(cls, env: LedgerEnv) -> WalletWorld:
        """The three data users, registered in one batch (one transaction)."""
        world = cls(env)
        batch = []
        for actor_id, user_class in DATA_USERS.items():
            signer = Signer.generate(actor_id)
            body = {
                "actor": actor_id,
                "role": "data_user",
                "key": signer.vkey,
                "data_user_class": user_class,
                # keys valid from yesterday, so that a use may be signed minutes back
                "valid_from": format_time(world.now() - timedelta(days=1)),
            }
            batch.append(Submission(world.sign(env.registrar, "actor.register", body)))
            world.signers[actor_id] = signer
        for outcome in env.ledger.append(batch, atomic=True):
            accepted(outcome)
        return world

    @property
    def engine(self) -> Any:
        return self.env.ledger.engine

    # -- time and ids -----------------------------------------------------------------

    def now(self) -> datetime:
        return self._now if self._now is not None else now()

    def travel(self, *, days: float = 0, seconds: float = 0) -> datetime:
        """Move the world's time and the ledger's clock forward together (and pin them)."""
        moment = pinned(self.now() + timedelta(days=days, seconds=seconds))
        self._now = moment
        self.env.ledger.sequencer.clock = lambda: moment
        return moment

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}-{secrets.token_hex(3)}"

    # -- sending ----------------------------------------------------------------------

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
        return accepted(self.submit(submission))

    def register(self, actor_id: str, role: str, **body: Any) -> Signer:
        signer = Signer.generate(actor_id)
        statement = self.sign(
            self.env.registrar,
            "actor.register",
            {"actor": actor_id, "role": role, "key": signer.vkey, **body},
        )
        self.must(Submission(statement))
        self.signers[actor_id] = signer
        return signer

    def new_patient(self) -> str:
        """A fresh pseudonym, registered as a patient (no name: patients have none)."""
        patient = self.new_id("P")
        self.register(patient, "patient")
        return patient

    def new_patients(self, count: int) -> list[str]:
        """``count`` fresh patients, registered in one batch."""
        patients, batch = [], []
        for _ in range(count):
            patient = self.new_id("P")
            signer = Signer.generate(patient)
            body = {"actor": patient, "role": "patient", "key": signer.vkey}
            batch.append(Submission(self.sign(self.env.registrar, "actor.register", body)))
            self.signers[patient] = signer
            patients.append(patient)
        for outcome in self.env.ledger.append(batch, atomic=True):
            accepted(outcome)
        return patients

    def new_guardian(self, *wards: str) -> str:
        """A guardian: registered as a patient, with ``guardian_of`` naming the wards."""
        guardian = self.new_id("G")
        self.register(guardian, "patient", guardian_of=list(wards))
        return guardian

    # -- consents ---------------------------------------------------------------------

    def make_grant(
        self,
        patient: str,
        consent_id: str | None = None,
        *,
        by: str | None = None,
        grantee: str = "class:any",
        purposes: Sequence[dict[str, Any]] = (duo(HMB),),
        categories: Sequence[str] = ("prescriptions",),
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        share_bp: int = 1000,
        at: datetime | None = None,
        **override: Any,
    ) -> Submission:
        """A ``consent.grant``; by default valid from yesterday for a year, HMB, prescriptions."""
        t = at or self.now()
        body: dict[str, Any] = {
            "consent_id": consent_id or self.new_id("c"),
            "patient": patient,
            "grantee": grantee,
            "purposes": [dict(p) for p in purposes],
            "categories": list(categories),
            "valid_from": format_time(valid_from or t - timedelta(days=1)),
            "valid_until": format_time(valid_until or t + timedelta(days=365)),
            "share_bp": share_bp,
            **override,
        }
        return Submission(self.sign(self.signers[by or patient], "consent.grant", body, at=at))

    def grant(self, patient: str, consent_id: str | None = None, **kwargs: Any) -> str:
        """Grant a consent (it must be accepted); returns its id."""
        submission = self.make_grant(patient, consent_id, **kwargs)
        self.must(submission)
        return str(submission.signed.statement.body["consent_id"])

    def make_narrow(
        self, patient: str, consent_id: str, *, by: str | None = None, **changes: Any
    ) -> Submission:
        """A ``consent.narrow``: ``remove_purposes``, ``remove_categories``, ``valid_until``."""
        body: dict[str, Any] = {"consent_id": consent_id, "patient": patient}
        for name, value in changes.items():
            body[name] = format_time(value) if isinstance(value, datetime) else value
        return Submission(self.sign(self.signers[by or patient], "consent.narrow", body))

    def narrow(self, patient: str, consent_id: str, **changes: Any) -> Outcome:
        return self.must(self.make_narrow(patient, consent_id, **changes))

    def make_revoke(self, patient: str, consent_id: str, *, by: str | None = None) -> Submission:
        body = {"consent_id": consent_id, "patient": patient}
        return Submission(self.sign(self.signers[by or patient], "consent.revoke", body))

    def revoke(self, patient: str, consent_id: str, **kwargs: Any) -> Outcome:
        return self.must(self.make_revoke(patient, consent_id, **kwargs))

    def consent(self, patient: str, consent_id: str) -> dict[str, Any]:
        doc = ProjectionReader(self.engine).get(wallet.CONSENTS, patient) or {"consents": []}
        found = [c for c in doc["consents"] if c["consent_id"] == consent_id]
        assert found, f"patient {patient} has no consent {consent_id}"
        return dict(found[0])

    # -- data uses ----------------------------------------------------------------------

    def preview(
        self,
        user: str,
        use_id: str,
        *,
        patients: Sequence[str],
        purpose: dict[str, Any],
        categories: Sequence[str],
        at: datetime,
    ) -> dict[str, Any]:
        request = {
            "use_id": use_id,
            "issued_at": format_time(at),
            "purpose": dict(purpose),
            "categories": list(categories),
            "patients": list(patients),
        }
        if self.previewer is not None:
            return self.previewer(self.signers[user], request)
        return preview_use(
            self.engine,
            data_user=user,
            use_id=use_id,
            at=request["issued_at"],
            purpose=request["purpose"],
            categories=request["categories"],
            patients=request["patients"],
        )

    def make_use(
        self,
        user: str,
        patients: Sequence[str],
        *,
        purpose: dict[str, Any] | None = None,
        categories: Sequence[str] = ("prescriptions",),
        use_id: str | None = None,
        by: str | None = None,
        at: datetime | None = None,
        **override: Any,
    ) -> Submission:
        """Preview a use as ``user``, then sign its ``data.use`` (as ``by``, default ``user``).

        ``override`` replaces body fields after the preview (a wrong root, wrong counts).
        """
        use_id = use_id or self.new_id("use")
        purpose = purpose or duo(HMB)
        at = at or self.now()
        shown = self.preview(
            user, use_id, patients=patients, purpose=purpose, categories=categories, at=at
        )
        payload, digest = seal({"patients": list(patients)})
        body = {
            "use_id": use_id,
            "purpose": dict(purpose),
            "categories": list(categories),
            **shown["body_fields"],
            "payload_digest": digest,
            **override,
        }
        return Submission(self.sign(self.signers[by or user], "data.use", body, at=at), payload)

    def use(self, user: str, patients: Sequence[str], **kwargs: Any) -> dict[str, Any]:
        """Make a data use (it must be accepted); returns the recorded use (``released``)."""
        submission = self.make_use(user, patients, **kwargs)
        self.must(submission)
        return released(self.engine, str(submission.signed.statement.body["use_id"]))

    def permitted(self, user: str, patients: Sequence[str], **kwargs: Any) -> list[str]:
        """The patients a recorded use by ``user`` permitted."""
        return list(self.use(user, patients, **kwargs)["permitted"])

    def make_proceeds(
        self, user: str, use_id: str, amount: int, *, payment_id: str | None = None
    ) -> Submission:
        body = {"use_id": use_id, "payment_id": payment_id or self.new_id("pay"), "amount": amount}
        return Submission(self.sign(self.signers[user], "data.proceeds", body))

    def proceeds(self, user: str, use_id: str, amount: int, **kwargs: Any) -> Outcome:
        return self.must(self.make_proceeds(user, use_id, amount, **kwargs))

    def size(self) -> int:
        return int(self.env.ledger.reader.head().size)

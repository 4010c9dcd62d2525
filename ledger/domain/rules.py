"""The one entry point of the domain: decide a statement against the state.

``decide`` is what both the sequencer and the auditor's replay call. It
returns the effects to apply, or raises :class:`RejectionError` with a stable
code. ``payload`` is the statement's payload bytes (clinical detail committed
by ``body.payload_digest``), for the types whose rules read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger.core.canonical import parse_json
from ledger.core.errors import EncodingError, RejectionError
from ledger.core.frozen import make_frozen
from ledger.core.statement import Statement, instant
from ledger.domain import attest, prescriptions, privacy, registry, settlement, wallet
from ledger.domain.privacy import ERASED, Payload
from ledger.domain.state import ROLES, Effect, State

#: statement type -> roles that may make it
PERMISSIONS: dict[str, frozenset[str]] = {
    "actor.register": frozenset({registry.REGISTRAR}),
    "actor.add_key": frozenset(ROLES),
    "actor.rotate_key": frozenset(ROLES),
    "actor.revoke": frozenset(ROLES),
    "doc.attest": frozenset(ROLES),
    "rx.issue": frozenset({"prescriber"}),
    "rx.dispense": frozenset({"pharmacy"}),
    "rx.cancel": frozenset({"prescriber"}),
    "rx.reject": frozenset({"pharmacy"}),
    "coverage.enroll": frozenset({"insurer"}),
    "coverage.end": frozenset({"insurer"}),
    "policy.publish": frozenset({"insurer"}),
    "claim.submit": frozenset({"pharmacy"}),
    "settlement.decision": frozenset({"insurer"}),
    "consent.grant": frozenset({"patient"}),
    "consent.narrow": frozenset({"patient"}),
    "consent.revoke": frozenset({"patient"}),
    "data.use": frozenset({"data_user"}),
    "data.proceeds": frozenset({"data_user"}),
    "erasure.request": frozenset({"patient"}),
    "erasure.execute": frozenset({registry.REGISTRAR}),
    "retention.shred": frozenset({registry.REGISTRAR}),
    "hold.place": frozenset({registry.REGISTRAR, "auditor"}),
    "hold.release": frozenset({registry.REGISTRAR, "auditor"}),
    "audit.grant": frozenset({registry.REGISTRAR}),
    "audit.revoke": frozenset({registry.REGISTRAR}),
}

#: the statements that make the actor registry (who holds which key, in which role)
REGISTRY_TYPES = frozenset({"actor.register", "actor.add_key", "actor.rotate_key", "actor.revoke"})

#: types whose rules read the payload
PAYLOAD_TYPES = frozenset({"rx.issue", "rx.dispense", "data.use"})


#: the rules of the types decided from (state, statement, seq) alone
_DECIDERS: dict[str, Callable[..., list[Effect]]] = {
    "rx.cancel": prescriptions.decide_end,
    "rx.reject": prescriptions.decide_end,
    "coverage.enroll": settlement.decide_enroll,
    "coverage.end": settlement.decide_end_coverage,
    "policy.publish": settlement.decide_publish,
    "claim.submit": settlement.decide_claim,
    "settlement.decision": settlement.decide_decision,
    "consent.grant": wallet.decide_grant,
    "consent.narrow": wallet.decide_narrow,
    "consent.revoke": wallet.decide_revoke,
    "data.proceeds": wallet.decide_proceeds,
    "erasure.request": privacy.decide_request,
    "erasure.execute": privacy.decide_execute,
    "retention.shred": privacy.decide_shred,
    "hold.place": privacy.decide_hold,
    "hold.release": privacy.decide_hold,
    "audit.grant": privacy.decide_grant,
    "audit.revoke": privacy.decide_grant,
}


def parse_payload(payload: Payload) -> Any:
    if payload is None or not isinstance(payload, bytes):
        return payload  # nothing, or ERASED
    try:
        return parse_json(payload)
    except EncodingError as e:
        raise RejectionError("malformed-payload", f"payload: {e}") from e


def _normalized(statement: Statement) -> Statement:
    return make_frozen(  # once per record replayed: see ledger.core.frozen
        Statement,
        {
            "type": statement.type,
            "actor": statement.actor,
            "key": statement.key,
            "issued_at": instant(statement.issued_at),
            "nonce": statement.nonce,
            "body": statement.body,
        },
    )


def decide_signer(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    """Only the signer checks of :func:`decide`, for a verifier holding part of a log.

    Registry statements are decided in full (their effects are the registry);
    any other statement only has its key and role checked against the
    registry: was the key registered to the actor, valid when the statement
    was issued, of the right purpose, and may the actor's role make it. The
    flow rules (prescriptions, settlement, wallet) need the whole log.
    """
    statement = _normalized(statement)
    if statement.type in REGISTRY_TYPES:
        return decide(state, statement, seq=seq)
    roles = PERMISSIONS.get(statement.type)
    if roles is None:
        raise RejectionError("unknown-type", f"statement type {statement.type!r} is not known")
    purpose = "settlement" if statement.type == "settlement.decision" else "general"
    registry.authorize(state, statement, allowed_roles=roles, purpose=purpose)
    return []


def decide(
    state: State, statement: Statement, *, seq: int, payload: Payload = None
) -> list[Effect]:
    """Effects of ``statement`` as record ``seq``, or raise :class:`RejectionError`.

    ``payload`` is :data:`~ledger.domain.privacy.ERASED` in a replay of a
    record whose payload was shredded (``ledger.domain.privacy``).

    The rules see ``issued_at`` normalized (:func:`instant`), as every time
    they store, so that comparing times as strings is comparing instants.
    """
    statement = _normalized(statement)
    kind = statement.type
    # Registry statements authorize themselves: who may sign depends on the target.
    if kind == "actor.register":
        return registry.decide_register(state, statement, seq=seq)
    if kind == "actor.add_key":
        return registry.decide_add_key(state, statement, seq=seq)
    if kind == "actor.rotate_key":
        return registry.decide_rotate_key(state, statement, seq=seq)
    if kind == "actor.revoke":
        return registry.decide_revoke(state, statement, seq=seq)
    roles = PERMISSIONS.get(kind)
    if roles is None:
        raise RejectionError("unknown-type", f"statement type {kind!r} is not known")
    purpose = "settlement" if kind == "settlement.decision" else "general"
    actor = registry.authorize(state, statement, allowed_roles=roles, purpose=purpose)
    if kind in PAYLOAD_TYPES:
        clinical = parse_payload(payload)
        if kind == "rx.issue":
            return prescriptions.decide_issue(state, statement, actor, clinical, seq=seq)
        if kind == "data.use":
            if clinical is ERASED:  # never: a use's cohort belongs to no patient
                raise RejectionError("inputs-erased", "a data use's payload is never shredded")
            return wallet.decide_use(state, statement, actor, clinical, seq=seq)
        return prescriptions.decide_dispense(state, statement, clinical, seq=seq)
    if kind == "doc.attest":
        return attest.decide_attest(state, statement)
    return _DECIDERS[kind](state, statement, seq=seq)

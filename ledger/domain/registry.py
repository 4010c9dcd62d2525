"""The actor registry: who may sign what (the registry "personality").

- ``actor.register`` — signed by the registrar: ``{"actor", "role", "key",
  "display_name", "licence", "valid_from", "valid_until"}``. The very first
  record of a ledger is the registrar registering itself (genesis); after
  that only a registrar may register actors.
- Every statement must be signed by a key registered to its actor, valid at
  the statement's ``issued_at`` (revocation and expiry apply from their time
  on, so history signed before stays valid), and the actor's role must be
  allowed to make that statement type.
"""

from __future__ import annotations

from typing import Any

from ledger.core.errors import EncodingError, KeyFormatError, RejectionError
from ledger.core.note import Verifier
from ledger.core.statement import Statement, parse_time
from ledger.domain.state import ROLES, Actor, ActorRegistered, Effect, KeyGrant, State

REGISTRAR = "registrar"


def authorize(state: State, statement: Statement, *, allowed_roles: frozenset[str]) -> Actor:
    """The actor behind ``statement`` if its key and role may make it; else reject."""
    actor = state.actor(statement.actor)
    if actor is None:
        raise RejectionError("unknown-actor", f"actor {statement.actor!r} is not registered")
    grant = actor.key(statement.key)
    if grant is None:
        raise RejectionError(
            "unknown-key", f"key {statement.key} is not registered to actor {actor.actor_id!r}"
        )
    at = statement.issued_at
    if at < grant.valid_from:
        raise RejectionError(
            "key-not-yet-valid", f"key is valid from {grant.valid_from}, statement issued {at}"
        )
    if grant.valid_until is not None and at >= grant.valid_until:
        raise RejectionError(
            "key-expired", f"key was valid until {grant.valid_until}, statement issued {at}"
        )
    if grant.revoked_at is not None and at >= grant.revoked_at:
        raise RejectionError(
            "key-revoked", f"key was revoked at {grant.revoked_at}, statement issued {at}"
        )
    if actor.role not in allowed_roles:
        raise RejectionError(
            "wrong-role",
            f"{statement.type} may be made by {', '.join(sorted(allowed_roles))}; "
            f"actor {actor.actor_id!r} is a {actor.role}",
        )
    return actor


def _string(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise RejectionError("malformed-body", f"body.{name}: expected a non-empty string")
    return value


def decide_register(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = dict(statement.body)
    allowed = {"actor", "role", "key", "display_name", "licence", "valid_from", "valid_until"}
    extra = sorted(set(body) - allowed)
    if extra:
        raise RejectionError("malformed-body", f"body: unknown field(s) {', '.join(extra)}")
    actor_id = _string(body, "actor")
    role = _string(body, "role")
    vkey = _string(body, "key")
    assert actor_id is not None
    assert role is not None
    assert vkey is not None
    if role not in ROLES:
        raise RejectionError("malformed-body", f"body.role: expected one of {', '.join(ROLES)}")
    try:
        verifier = Verifier.from_vkey(vkey)
    except KeyFormatError as e:
        raise RejectionError("malformed-body", f"body.key: {e}") from e
    if verifier.name != actor_id:
        raise RejectionError(
            "malformed-body", f"body.key: key name must be the actor id {actor_id!r}"
        )
    valid_from = _string(body, "valid_from", required=False) or statement.issued_at
    valid_until = _string(body, "valid_until", required=False)
    try:
        parse_time(valid_from, field="body.valid_from")
        if valid_until is not None:
            parse_time(valid_until, field="body.valid_until")
    except EncodingError as e:
        raise RejectionError("malformed-body", str(e)) from e
    if valid_until is not None and valid_until <= valid_from:
        raise RejectionError("malformed-body", "body.valid_until must be after valid_from")

    genesis = state.size == 0
    if genesis:
        if not (role == REGISTRAR and actor_id == statement.actor and vkey == statement.key):
            raise RejectionError(
                "genesis-required",
                "the first record must be the registrar registering its own key",
            )
    else:
        authorize(state, statement, allowed_roles=frozenset({REGISTRAR}))
        if state.actor(actor_id) is not None:
            raise RejectionError("actor-exists", f"actor {actor_id!r} is already registered")
    actor = Actor(
        actor_id=actor_id,
        role=role,
        keys=(KeyGrant(vkey=vkey, valid_from=valid_from, valid_until=valid_until),),
        display_name=str(body.get("display_name") or ""),
        licence=_string(body, "licence", required=False),
        registered_seq=seq,
    )
    return [ActorRegistered(actor)]

"""The actor registry: who may sign what (the registry "personality").

Statements:

- ``actor.register`` (registrar): ``{actor, role, key, display_name?,
  licence?, controlled_classes?, valid_from?, valid_until?}``. Record 0 of a
  ledger is the registrar registering itself (genesis); after that only a
  registrar registers actors. Prescribers and pharmacies must have a
  ``licence``; ``controlled_classes`` lists the controlled-drug classes a
  prescriber is licensed for.
- ``actor.add_key`` (the actor itself, or the registrar): ``{actor, key,
  purpose, valid_from?, valid_until?}``; ``purpose`` is ``general`` or
  ``settlement`` (an insurer's key that the service holds to sign
  settlement decisions, and that signs nothing else).
- ``actor.rotate_key`` (the old key itself, or the registrar): ``{actor,
  old_key, new_key}``: the old key stops at the statement's ``issued_at``,
  the new one starts then, with the same purpose.
- ``actor.revoke`` (registrar; or an actor for its own key): ``{actor, key?,
  reason}``: that key, or every key of the actor, is revoked from
  ``issued_at`` on.

A statement is accepted only when signed by a key registered to its actor,
of the right purpose, valid at the statement's ``issued_at`` — revocation and
expiry apply from their time on, so what a key signed before stays valid —
and when the actor's role may make that statement type.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from ledger.core.errors import KeyFormatError, RejectionError
from ledger.core.note import Verifier
from ledger.core.statement import Statement
from ledger.domain import fields as f
from ledger.domain.state import ROLES, Document, Effect, Put, State

REGISTRAR = "registrar"
KIND = "actor"
PURPOSES = ("general", "settlement")
LICENSED_ROLES = ("prescriber", "pharmacy")
#: who a data user is, for consent classes and DUO's non-commercial modifiers
DATA_USER_CLASSES = ("accredited-nonprofit", "nonprofit", "commercial")
#: bidirectional embeddings, overrides and isolates: a name must not reorder
#: the text shown around it
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
CONTROLLED_CLASSES = ("narcotic", "psychotropic-1", "psychotropic-2", "toxic", "radioactive")


def get_actor(state: State, actor_id: str) -> Document | None:
    return state.get(KIND, actor_id)


def key_grant(actor: Document, vkey: str) -> dict[str, Any] | None:
    for grant in actor["keys"]:
        if grant["vkey"] == vkey:
            return dict(grant)
    return None


def key_valid_at(grant: dict[str, Any], at: str) -> str | None:
    """Why the key was not valid at ``at``, or ``None`` when it was."""
    if at < grant["valid_from"]:
        return "key-not-yet-valid"
    if grant.get("valid_until") and at >= grant["valid_until"]:
        return "key-expired"
    if grant.get("revoked_at") and at >= grant["revoked_at"]:
        return "key-revoked"
    return None


def authorize(
    state: State,
    statement: Statement,
    *,
    allowed_roles: frozenset[str],
    purpose: str = "general",
) -> Document:
    """The actor behind ``statement`` if its key and role may make it; else reject.

    The returned document is shared with the state: read it, never change it.
    """
    actor = state.peek(KIND, statement.actor)  # read only: no copy on the hot path
    if actor is None:
        raise RejectionError("unknown-actor", f"actor {statement.actor!r} is not registered")
    grant = key_grant(actor, statement.key)
    if grant is None:
        raise RejectionError(
            "unknown-key", f"key {statement.key} is not registered to actor {actor['actor_id']!r}"
        )
    at = statement.issued_at
    problem = key_valid_at(grant, at)
    if problem == "key-not-yet-valid":
        raise RejectionError(
            problem, f"key is valid from {grant['valid_from']}, statement issued {at}"
        )
    if problem == "key-expired":
        raise RejectionError(
            problem, f"key was valid until {grant['valid_until']}, statement issued {at}"
        )
    if problem == "key-revoked":
        raise RejectionError(
            problem, f"key was revoked at {grant['revoked_at']}, statement issued {at}"
        )
    if grant.get("purpose", "general") != purpose:
        raise RejectionError(
            "wrong-key-purpose",
            f"{statement.type} needs a {purpose} key; key {statement.key} is a "
            f"{grant.get('purpose', 'general')} key",
        )
    if actor["role"] not in allowed_roles:
        raise RejectionError(
            "wrong-role",
            f"{statement.type} may be made by {', '.join(sorted(allowed_roles))}; "
            f"actor {actor['actor_id']!r} is a {actor['role']}",
        )
    return actor


def _vkey_for(body: dict[str, Any], name: str, actor_id: str, where: str) -> str:
    vkey = f.str_field(body, name, where, max_len=300)
    try:
        verifier = Verifier.from_vkey(vkey)
    except KeyFormatError as e:
        raise f.malformed(f"{where}.{name}", str(e)) from e
    if verifier.name != actor_id:
        raise f.malformed(f"{where}.{name}", f"key name must be the actor id {actor_id!r}")
    return vkey


def _put(actor: Document, seq: int) -> Put:
    return Put(
        KIND, actor["actor_id"], actor, party=actor["actor_id"], status=actor["role"], seq=seq
    )


def decide_register(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = dict(statement.body)
    where = "body"
    if state.size > 0:  # who may register comes before what is registered
        authorize(state, statement, allowed_roles=frozenset({REGISTRAR}))
    f.only(
        body,
        {
            "actor",
            "role",
            "key",
            "display_name",
            "licence",
            "controlled_classes",
            "valid_from",
            "valid_until",
            "data_user_class",
            "guardian_of",
        },
        where,
    )
    actor_id = f.id_field(body, "actor", where)
    role = f.str_field(body, "role", where)
    if role not in ROLES:
        raise f.malformed(f"{where}.role", f"expected one of {', '.join(ROLES)}")
    vkey = _vkey_for(body, "key", actor_id, where)
    valid_from = f.time_field(body, "valid_from", where, optional=True) or statement.issued_at
    valid_until = f.time_field(body, "valid_until", where, optional=True) or None
    if valid_until is not None and valid_until <= valid_from:
        raise f.malformed(f"{where}.valid_until", "must be after valid_from")
    licence = f.str_field(body, "licence", where, optional=True, max_len=64) or None
    if role in LICENSED_ROLES and licence is None:
        raise f.malformed(
            f"{where}.licence", f"a {role} must be registered with its licence number"
        )
    classes = body.get("controlled_classes", [])
    if not isinstance(classes, list) or any(c not in CONTROLLED_CLASSES for c in classes):
        raise f.malformed(
            f"{where}.controlled_classes", f"expected a list of {', '.join(CONTROLLED_CLASSES)}"
        )
    if classes and role != "prescriber":
        raise f.malformed(f"{where}.controlled_classes", "only prescribers hold such licences")
    if role == "patient" and "display_name" in body:
        raise f.malformed(
            f"{where}.display_name", "patients appear only by pseudonym: no name in a record"
        )
    display_name = f.str_field(body, "display_name", where, optional=True, max_len=200)
    if any(unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS for c in display_name):
        raise f.malformed(
            f"{where}.display_name", "no control characters (line breaks, NUL, bidi overrides)"
        )
    user_class = body.get("data_user_class")
    if role == "data_user":
        if user_class is None:
            user_class = "commercial"  # fail closed: unknown means commercial
        if user_class not in DATA_USER_CLASSES:
            raise f.malformed(
                f"{where}.data_user_class", f"expected one of {', '.join(DATA_USER_CLASSES)}"
            )
    elif user_class is not None:
        raise f.malformed(f"{where}.data_user_class", "only data users have a class")
    wards = body.get("guardian_of", [])
    if not isinstance(wards, list) or len(wards) > 20:
        raise f.malformed(f"{where}.guardian_of", "expected a list of patient pseudonyms")
    for i, ward in enumerate(wards):
        f.id_field({"ward": ward}, "ward", f"{where}.guardian_of[{i}]")
    if wards and role != "patient":
        raise f.malformed(f"{where}.guardian_of", "a guardian is registered as a patient")

    if state.size == 0:
        if not (role == REGISTRAR and actor_id == statement.actor and vkey == statement.key):
            raise RejectionError(
                "genesis-required", "the first record must be the registrar registering its own key"
            )
    elif get_actor(state, actor_id) is not None:
        raise RejectionError("actor-exists", f"actor {actor_id!r} is already registered")
    actor: Document = {
        "actor_id": actor_id,
        "role": role,
        "display_name": display_name,
        "licence": licence,
        "controlled_classes": sorted(set(classes)),
        "data_user_class": user_class,
        "guardian_of": sorted(set(wards)),
        "registered_seq": seq,
        "keys": [
            {
                "vkey": vkey,
                "purpose": "general",
                "valid_from": valid_from,
                "valid_until": valid_until,
                "revoked_at": None,
            }
        ],
    }
    return [_put(actor, seq)]


def _actor_for_change(
    state: State, statement: Statement, actor_id: str, *, purpose: str = "general"
) -> Document:
    """The target actor of a key change, when the signer may change it.

    ``purpose`` is the purpose of the key an actor signs its own change with
    (rotating a settlement key is signed by that settlement key).
    """
    target = get_actor(state, actor_id)
    if target is None:
        raise RejectionError("unknown-actor", f"actor {actor_id!r} is not registered")
    if statement.actor == actor_id:
        authorize(state, statement, allowed_roles=frozenset(ROLES), purpose=purpose)
    else:
        authorize(state, statement, allowed_roles=frozenset({REGISTRAR}))
    return target


def decide_add_key(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = dict(statement.body)
    f.only(body, {"actor", "key", "purpose", "valid_from", "valid_until"}, "body")
    actor_id = f.id_field(body, "actor", "body")
    actor = _actor_for_change(state, statement, actor_id)
    vkey = _vkey_for(body, "key", actor_id, "body")
    purpose = f.str_field(body, "purpose", "body")
    if purpose not in PURPOSES:
        raise f.malformed("body.purpose", f"expected one of {', '.join(PURPOSES)}")
    if purpose == "settlement" and actor["role"] != "insurer":
        raise f.malformed("body.purpose", "only insurers hold settlement keys")
    if key_grant(actor, vkey) is not None:
        raise RejectionError("key-exists", f"key {vkey} is already registered to {actor_id!r}")
    valid_from = f.time_field(body, "valid_from", "body", optional=True) or statement.issued_at
    valid_until = f.time_field(body, "valid_until", "body", optional=True) or None
    if valid_until is not None and valid_until <= valid_from:
        raise f.malformed("body.valid_until", "must be after valid_from")
    actor["keys"] = [
        *actor["keys"],
        {
            "vkey": vkey,
            "purpose": purpose,
            "valid_from": valid_from,
            "valid_until": valid_until,
            "revoked_at": None,
        },
    ]
    return [_put(actor, seq)]


def decide_rotate_key(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = dict(statement.body)
    f.only(body, {"actor", "old_key", "new_key"}, "body")
    actor_id = f.id_field(body, "actor", "body")
    old_key = f.str_field(body, "old_key", "body", max_len=300)
    target = get_actor(state, actor_id)
    old_grant = key_grant(target, old_key) if target is not None else None
    purpose = old_grant.get("purpose", "general") if old_grant is not None else "general"
    actor = _actor_for_change(state, statement, actor_id, purpose=purpose)
    new_key = _vkey_for(body, "new_key", actor_id, "body")
    if statement.actor == actor_id and statement.key != old_key:
        raise RejectionError(
            "wrong-key", "an actor rotates a key by signing with that key (or asks the registrar)"
        )
    old = key_grant(actor, old_key)
    if old is None:
        raise RejectionError("unknown-key", f"key {old_key} is not registered to {actor_id!r}")
    if key_valid_at(old, statement.issued_at) is not None:
        raise RejectionError("key-revoked", f"key {old_key} is no longer valid")
    if key_grant(actor, new_key) is not None:
        raise RejectionError("key-exists", f"key {new_key} is already registered to {actor_id!r}")
    at = statement.issued_at
    keys = []
    for grant in actor["keys"]:
        keys.append({**grant, "valid_until": at} if grant["vkey"] == old_key else grant)
    keys.append(
        {
            "vkey": new_key,
            "purpose": old.get("purpose", "general"),
            "valid_from": at,
            "valid_until": None,
            "revoked_at": None,
        }
    )
    actor["keys"] = keys
    return [_put(actor, seq)]


def decide_revoke(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = dict(statement.body)
    f.only(body, {"actor", "key", "reason"}, "body")
    actor_id = f.id_field(body, "actor", "body")
    f.str_field(body, "reason", "body", max_len=200)
    vkey = body.get("key")
    target = get_actor(state, actor_id)
    if target is None:
        raise RejectionError("unknown-actor", f"actor {actor_id!r} is not registered")
    own_key = statement.actor == actor_id and vkey is not None
    authorize(state, statement, allowed_roles=frozenset(ROLES if own_key else {REGISTRAR}))
    if vkey is not None and key_grant(target, str(vkey)) is None:
        raise RejectionError("unknown-key", f"key {vkey} is not registered to {actor_id!r}")
    at = statement.issued_at
    target["keys"] = [
        {**g, "revoked_at": at}
        if (vkey is None or g["vkey"] == vkey) and not g.get("revoked_at")
        else g
        for g in target["keys"]
    ]
    return [_put(target, seq)]

"""The one entry point of the domain: decide a statement against the state.

``decide`` is what both the sequencer and the auditor's replay call. It
returns the effects to apply, or raises :class:`RejectionError` with a stable
code. Statement types are added here as their flows are built.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger.core.errors import RejectionError
from ledger.core.statement import Statement
from ledger.domain import attest, registry
from ledger.domain.state import ROLES, Effect, State

Handler = Callable[[State, Statement], list[Effect]]

#: statement type -> roles that may make it (``actor.register`` is checked by its rule)
PERMISSIONS: dict[str, frozenset[str]] = {
    "actor.register": frozenset({registry.REGISTRAR}),
    "doc.attest": frozenset(ROLES),
}


def decide(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    """Effects of ``statement`` as record ``seq``, or raise :class:`RejectionError`."""
    kind = statement.type
    if kind == "actor.register":
        return registry.decide_register(state, statement, seq=seq)
    roles = PERMISSIONS.get(kind)
    if roles is None:
        raise RejectionError("unknown-type", f"statement type {kind!r} is not known")
    registry.authorize(state, statement, allowed_roles=roles)
    if kind == "doc.attest":
        return attest.decide_attest(state, statement)
    raise RejectionError("unknown-type", f"statement type {kind!r} is not known")

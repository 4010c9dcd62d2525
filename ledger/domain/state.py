"""What the domain rules may read and what they may change.

Rules are pure functions ``(state, statement) -> effects`` or a
:class:`~ledger.core.errors.RejectionError` (STYLE "Personalities"). The same
rules run in the sequencer (``state`` backed by the database, with the batch's
own effects overlaid) and in the auditor's replay (``state`` entirely in
memory), so both arrive at the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

ROLES = (
    "registrar",
    "prescriber",
    "pharmacy",
    "insurer",
    "patient",
    "data_user",
    "auditor",
    "witness",
)


@dataclass(frozen=True)
class KeyGrant:
    """One key of an actor and when it may sign (RFC 3339 strings, end exclusive)."""

    vkey: str
    valid_from: str
    valid_until: str | None = None
    revoked_at: str | None = None


@dataclass(frozen=True)
class Actor:
    actor_id: str
    role: str
    keys: tuple[KeyGrant, ...]
    display_name: str = ""
    licence: str | None = None
    registered_seq: int = 0

    def key(self, vkey: str) -> KeyGrant | None:
        for grant in self.keys:
            if grant.vkey == vkey:
                return grant
        return None


@dataclass(frozen=True)
class ActorRegistered:
    actor: Actor


Effect = ActorRegistered


class State(Protocol):
    """The read side the rules see."""

    @property
    def size(self) -> int:
        """How many records the ledger holds before the statement being decided."""
        ...

    def actor(self, actor_id: str) -> Actor | None: ...


@dataclass
class MemoryState:
    """State held in memory, optionally in front of another state (an overlay).

    The auditor's replay uses it alone; the sequencer puts it in front of the
    database-backed state, so that statements later in a batch see the
    effects of earlier ones before anything is written.
    """

    base: State | None = None
    records: int = 0
    actors: dict[str, Actor] = field(default_factory=dict)
    pending: list[Effect] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.records

    def actor(self, actor_id: str) -> Actor | None:
        found = self.actors.get(actor_id)
        if found is None and self.base is not None:
            found = self.base.actor(actor_id)
            if found is not None:
                self.actors[actor_id] = found
        return found

    def apply(self, effects: list[Effect], *, record: bool = True) -> None:
        """Apply the effects of one accepted statement (and count its record)."""
        for effect in effects:
            if isinstance(effect, ActorRegistered):
                self.actors[effect.actor.actor_id] = effect.actor
            self.pending.append(effect)
        if record:
            self.records += 1

    def take_pending(self) -> list[Effect]:
        out, self.pending = self.pending, []
        return out


def with_key(actor: Actor, grant: KeyGrant) -> Actor:
    return replace(actor, keys=(*actor.keys, grant))

"""What the domain rules may read and what they may change.

Rules are pure functions ``(state, statement, payload) -> effects`` or a
:class:`~ledger.core.errors.RejectionError` (STYLE "Personalities"). The same
rules run in the sequencer (``state`` backed by the database, with the batch's
own effects overlaid) and in the auditor's replay (``state`` entirely in
memory), so both arrive at the same decisions and the same projections.

The state is a set of JSON documents addressed by ``(kind, key)`` — an
actor, a prescription, a claim, a policy... Rules read them with
:meth:`State.get` and change them only by returning :class:`Put` effects with
the whole new document. The store writes each ``Put`` as one row of the
``projections`` table (with a few indexed columns for queries); the replay
keeps them in a dict. Dropping the table and replaying the records gives it
back, row for row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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

Document = dict[str, Any]


@dataclass(frozen=True)
class Put:
    """Set document ``(kind, key)`` to ``value``; the rest are query columns."""

    kind: str
    key: str
    value: Document
    #: the patient pseudonym the document is about, if any
    patient: str | None = None
    #: the other party it belongs to (prescriber, pharmacy, insurer, data user)
    party: str | None = None
    #: a status to filter by (``active``, ``approved``, ``rejected``…)
    status: str | None = None
    #: space-separated codes to filter by (e.g. the rule codes of a decision)
    tags: str | None = None
    #: the seq of the record that wrote it
    seq: int = -1
    #: the document is new under a key that cannot exist yet (a fresh use's
    #: members, a new payment): the store may insert it without looking
    fresh: bool = False
    #: remove the document instead (``value`` is ignored): an erasure's effects
    delete: bool = False


Effect = Put


class State(Protocol):
    """The read side the rules see."""

    @property
    def size(self) -> int:
        """How many records the ledger holds before the statement being decided."""
        ...

    def get(self, kind: str, key: str) -> Document | None:
        """The document, or ``None``."""
        ...

    def get_many(self, kind: str, keys: list[str]) -> dict[str, Document | None]:
        """Several documents of one kind at once (one query, not one per key)."""
        ...

    def peek(self, kind: str, key: str) -> Document | None:
        """Like :meth:`get`, for a caller that only reads: it may share the
        stored document, so it must never be changed."""
        ...

    def peek_many(self, kind: str, keys: list[str]) -> dict[str, Document | None]:
        """Like :meth:`get_many`, read-only (shared documents, never changed)."""
        ...


def clone(value: Any) -> Any:
    """A deep copy of a JSON-like value (dicts, lists, scalars): several times
    faster than :func:`copy.deepcopy`, which matters on the append path."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


@dataclass
class MemoryState:
    """State held in memory, optionally in front of another state (an overlay).

    The auditor's replay uses it alone; the sequencer puts it in front of the
    database-backed state, so that statements later in a batch see the
    effects of earlier ones before anything is written.
    """

    base: State | None = None
    records: int = 0
    data: dict[tuple[str, str], Document | None] = field(default_factory=dict)
    pending: list[Put] = field(default_factory=list)
    #: the sequencer writes ``pending`` out; the replay does not need it
    keep_pending: bool = True
    #: the last Put per document, for comparing a replay with the projections
    puts: dict[tuple[str, str], Put] = field(default_factory=dict)
    keep_puts: bool = False

    @property
    def size(self) -> int:
        return self.records

    def get(self, kind: str, key: str) -> Document | None:
        address = (kind, key)
        if address in self.data:
            found = self.data[address]
        elif self.base is not None:
            found = self.data[address] = self.base.get(kind, key)
        else:
            return None
        return clone(found) if found is not None else None

    def peek(self, kind: str, key: str) -> Document | None:
        address = (kind, key)
        if address not in self.data:
            if self.base is None:
                return None
            self.data[address] = self.base.peek(kind, key)
        return self.data[address]

    def get_many(self, kind: str, keys: list[str]) -> dict[str, Document | None]:
        return {
            k: clone(v) if v is not None else None for k, v in self.peek_many(kind, keys).items()
        }

    def peek_many(self, kind: str, keys: list[str]) -> dict[str, Document | None]:
        missing = [k for k in keys if (kind, k) not in self.data]
        if missing and self.base is not None:
            for key, found in self.base.peek_many(kind, missing).items():
                self.data[(kind, key)] = found
        return {key: self.data.get((kind, key)) for key in keys}

    def apply(self, effects: list[Effect]) -> None:
        """Apply the effects of one accepted statement and count its record."""
        for effect in effects:
            address = (effect.kind, effect.key)
            self.data[address] = None if effect.delete else effect.value
            if self.keep_pending:
                self.pending.append(effect)
            if self.keep_puts:
                self.puts[address] = effect
        self.records += 1

    def take_pending(self) -> list[Put]:
        out, self.pending = self.pending, []
        return out

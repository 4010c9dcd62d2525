"""The auditor's replay: the domain rules run again over a stream of records.

Plugged into :class:`ledger.core.verify.StreamVerifier` as its ``replay``
callback.

:class:`Replayer` runs exactly the function the sequencer ran
(:func:`decide`), on state rebuilt in memory from the records before, so a
record the rules would have refused — including a settlement decision that
differs from what the insurer's published policy gives — is named by its
``seq``. It needs the payloads (prescriptions' and uses' clinical content):
``verify --db`` has them.

:class:`SignerReplayer` is what a verifier without payloads can check — an
auditor reading the public API, a bundle, part of a log: the registry in
full (who holds which key, in which role, from when to when) and, for every
other record, that its signer was allowed to make it at that time
(:func:`~ledger.domain.rules.decide_signer`).

Both keep their state as JSON documents, so a long verification can be saved
(:meth:`snapshot`) and continued later (:meth:`restore`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from ledger.core.errors import EncodingError, RecordError, RejectionError
from ledger.core.payload import Payload
from ledger.core.statement import Statement
from ledger.domain.rules import decide, decide_signer
from ledger.domain.state import Effect, MemoryState, State


class _Replay:
    #: what a refusal is called in the error message
    checks = "the rules"

    def __init__(self, *, registrar_key: str | None = None, keep_puts: bool = False) -> None:
        self.registrar_key = registrar_key
        self.state = MemoryState(keep_pending=False, keep_puts=keep_puts)

    def _decide(
        self, state: State, statement: Statement, seq: int, payload: Payload
    ) -> list[Effect]:
        raise NotImplementedError

    def __call__(self, seq: int, statement: Statement, payload: Payload = None) -> None:
        if seq == 0 and self.registrar_key is not None and statement.key != self.registrar_key:
            raise RecordError(
                f"genesis: expected the registrar key {self.registrar_key}, found {statement.key}",
                seq=seq,
            )
        self.state.records = seq  # the rules read the log's size before this record
        try:
            effects = self._decide(self.state, statement, seq, payload)
        except RejectionError as e:
            raise RecordError(f"{self.checks} refuse this statement: {e.code}: {e}", seq=seq) from e
        self.state.apply(effects)

    def snapshot(self) -> dict[str, Any]:
        """The replayed state as JSON, to :meth:`restore` a later replay from."""
        return {
            "records": self.state.records,
            "documents": [
                [kind, key, value]
                for (kind, key), value in sorted(self.state.data.items())
                if value is not None
            ],
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any], *, registrar_key: str | None = None) -> Self:
        """A replay that continues from a :meth:`snapshot`."""
        replay = cls(registrar_key=registrar_key)
        try:
            records = snapshot["records"]
            data = {
                (str(kind), str(key)): dict(value) for kind, key, value in snapshot["documents"]
            }
        except (KeyError, TypeError, ValueError) as e:
            raise EncodingError(f"replay snapshot does not parse: {e}") from e
        if not isinstance(records, int) or isinstance(records, bool) or records < 0:
            raise EncodingError(f"replay snapshot records: expected a count, got {records!r}")
        replay.state.records = records
        replay.state.data.update(data)
        return replay


class Replayer(_Replay):
    """Replays records through every domain rule; call it with ``(seq, statement, payload)``."""

    def _decide(
        self, state: State, statement: Statement, seq: int, payload: Payload
    ) -> list[Effect]:
        return decide(state, statement, seq=seq, payload=payload)


class SignerReplayer(_Replay):
    """The registry in full, and for every other record only who signed it.

    Fed every record of a log — or, for part of a log, the registry records
    from before the part and then every record of the part — it checks that
    each statement was signed by a key registered to its actor, valid at the
    time, in a role that may make it. The flow rules (quantities, consents,
    settlement) read payloads and state it does not have, and are not checked.
    """

    checks = "the signer checks"

    def _decide(
        self, state: State, statement: Statement, seq: int, payload: Payload
    ) -> list[Effect]:
        return decide_signer(state, statement, seq=seq)

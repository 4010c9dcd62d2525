"""The auditor's replay: the domain rules run again over a stream of records.

Plugged into :class:`ledger.core.verify.StreamVerifier` as its ``replay``
callback. It runs exactly the function the sequencer ran (:func:`decide`), on
state rebuilt in memory from the records before, so a record the rules would
have refused — including a settlement decision that differs from what the
insurer's published policy gives — is named by its ``seq``.
"""

from __future__ import annotations

from ledger.core.errors import RecordError, RejectionError
from ledger.core.statement import Statement
from ledger.domain.rules import decide
from ledger.domain.state import MemoryState


class Replayer:
    """Replays records through the domain rules; call it with ``(seq, statement, payload)``."""

    def __init__(self, *, registrar_key: str | None = None, keep_puts: bool = False) -> None:
        self.registrar_key = registrar_key
        self.state = MemoryState(keep_pending=False, keep_puts=keep_puts)

    def __call__(self, seq: int, statement: Statement, payload: bytes | None = None) -> None:
        if seq == 0 and self.registrar_key is not None and statement.key != self.registrar_key:
            raise RecordError(
                f"genesis: expected the registrar key {self.registrar_key}, found {statement.key}",
                seq=seq,
            )
        try:
            effects = decide(self.state, statement, seq=seq, payload=payload)
        except RejectionError as e:
            raise RecordError(f"the rules refuse this statement: {e.code}: {e}", seq=seq) from e
        self.state.apply(effects)

"""The patients' consent terms, worked out once and shared by every reader of a database.

A data use is decided over its whole cohort twice: when the data user previews
it (:func:`ledger.wallet_service.preview_use`) and when the sequencer records
it. Each decision needs one ``consents`` document per patient — 10,000 for a
cohort of 10,000 — and reading and parsing them is most of what a decision
costs. :class:`ConsentCache` keeps what the decision needs of them (their
:data:`ledger.domain.wallet.Terms`, from :func:`ledger.domain.wallet.consent_terms`),
one cache per engine for every thread of the process, so that the sequencer's
decision reads what the preview's just read, and a later use what an earlier
one read. Terms are plain tuples of strings and numbers: under a kilobyte a
patient, never changed, and ignored by Python's cycle collector (parsed
documents by the ten thousand would make each of its full passes take
hundreds of ms: 300 ms with 50,000 cached, measured).

It follows the log, not a clock. It is valid for a log size ``size``; a reader
at a larger size first asks the log which consent statements were recorded
since (``consent.grant``, ``consent.narrow`` and ``consent.revoke`` are the
only statements that change a patient's document, the patient named in their
body: :data:`ledger.domain.wallet.CONSENT_TYPES`). The ``(type, seq)`` index
answers in time proportional to their number, not to the log's size or the
cohort's. Those patients are dropped and read again. It also checks that the
record at ``size - 1`` is still the one it saw: a database restored or
replaced under the same engine empties it.

What it relies on:

- A document changes only when a record is committed (projections are
  written in the record's transaction) — so not behind the sequencer's back.
  ``rebuild_projections`` writes the same documents again.
- A reader fills it only from a transaction that has written nothing yet (a
  preview; the sequencer, which decides a whole batch before writing it), so
  that everything it adds was committed. The batch's own changes stay in
  the sequencer's overlay (:class:`ledger.store.state.OverlayState`), which
  is asked first.

A reader whose snapshot is older than the cache (a preview that read the head
just before a commit) gets the newer terms, as it would from the table.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select

from ledger.core.errors import RecordError
from ledger.core.record import Record
from ledger.domain import wallet
from ledger.domain.wallet import Terms
from ledger.store.schema import records

#: patients kept: a patient with consents takes about 800 bytes (measured on the
#: benchmark's consents), one without about 100, so at most some 80 MiB; a
#: cohort may be as large (``ledger.domain.wallet.MAX_COHORT``)
MAX_PATIENTS = 100_000
#: more consent statements than this since the last read: start again empty
MAX_CATCH_UP = 20_000

#: reads the terms of patients' documents from the database (``()``: no consents)
Fetch = Callable[[list[str]], dict[str, Terms]]


@dataclass
class CacheStats:
    """Counters since the cache was made (for benchmarks and diagnostics)."""

    hits: int = 0
    misses: int = 0
    dropped: int = 0  # patients dropped because a consent statement changed them
    resets: int = 0  # emptied: another log, or too much to catch up


class ConsentCache:
    """The patients' consent :data:`~ledger.domain.wallet.Terms` in one database,
    valid at a log size."""

    def __init__(
        self, *, max_patients: int = MAX_PATIENTS, max_catch_up: int = MAX_CATCH_UP
    ) -> None:
        self.max_patients = max_patients
        self.max_catch_up = max_catch_up
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._terms: OrderedDict[str, Terms] = OrderedDict()  # least recently used first
        self._size = 0  # valid for the log of this size
        self._anchor: bytes | None = None  # the hash of record size - 1
        self._generation = 0  # changes whenever _size, _anchor or the log do

    def read(
        self, conn: Connection, patients: list[str], size: int, fetch: Fetch
    ) -> dict[str, Terms]:
        """The patients' terms for a reader at log ``size`` on ``conn``.

        ``fetch`` reads the terms the cache does not hold
        (:func:`ledger.domain.wallet.consent_terms` of their documents); they
        are kept unless the cache moved on meanwhile.
        """
        generation = self._follow(conn, size)
        found: dict[str, Terms] = {}
        missing: list[str] = []
        with self._lock:
            if generation == self._generation:
                kept = self._terms
                for patient in patients:
                    terms = kept.get(patient)
                    if terms is None:
                        missing.append(patient)
                    else:
                        found[patient] = terms
                        kept.move_to_end(patient)
            else:
                missing = list(patients)
            self.stats.hits += len(found)
            self.stats.misses += len(missing)
        if not missing:
            return found
        fetched = fetch(missing)
        with self._lock:
            if generation == self._generation:  # else: read at another size, not kept
                self._terms.update(fetched)
                while len(self._terms) > self.max_patients:
                    self._terms.popitem(last=False)
        found.update(fetched)
        return found

    def clear(self) -> None:
        """Forget everything (the next reader reads the whole cohort from the database)."""
        with self._lock:
            self._reset()

    def __len__(self) -> int:
        return len(self._terms)

    def _follow(self, conn: Connection, size: int) -> int | None:
        """Bring the cache to log ``size``; the generation to read at, or ``None``."""
        for _ in range(3):  # another thread may move it while we look
            with self._lock:
                known, anchor, generation = self._size, self._anchor, self._generation
                empty = not self._terms
            if known and _record_hash(conn, known - 1) != anchor:  # not the log we followed
                with self._lock:
                    if generation == self._generation:
                        self._reset()
                        self.stats.resets += 1
                continue
            if size <= known:
                return generation
            changed: set[str] | None = set()
            if not empty:
                changed = self._changed(conn, known, size)
            head = _record_hash(conn, size - 1)
            with self._lock:
                if generation != self._generation:
                    continue
                if changed is None or head is None:
                    self._reset()
                    self.stats.resets += 1
                    continue
                for patient in changed:
                    if self._terms.pop(patient, None) is not None:
                        self.stats.dropped += 1
                self._size, self._anchor = size, head
                self._generation += 1
                return self._generation
        return None

    def _changed(self, conn: Connection, start: int, end: int) -> set[str] | None:
        """The patients whose consents changed in records ``[start, end)``; ``None``: too many."""
        rows = conn.execute(
            select(records.c.seq, records.c.record_bytes)
            .where(
                records.c.type.in_(wallet.CONSENT_TYPES),
                records.c.seq >= start,
                records.c.seq < end,
            )
            .limit(self.max_catch_up + 1)
        ).all()
        if len(rows) > self.max_catch_up:
            return None
        try:
            return {
                wallet.consents_key(
                    Record.from_bytes(bytes(r.record_bytes), expected_seq=r.seq).fields
                )
                for r in rows
            }
        except (RecordError, KeyError, TypeError):  # unreadable: the verifier's business
            return None

    def _reset(self) -> None:
        """Empty, valid for no log (call with the lock held)."""
        self._terms.clear()
        self._size, self._anchor = 0, None
        self._generation += 1


def _record_hash(conn: Connection, seq: int) -> bytes | None:
    found = conn.execute(select(records.c.record_hash).where(records.c.seq == seq)).scalar()
    return bytes(found) if found is not None else None


_CACHES: weakref.WeakKeyDictionary[Engine, ConsentCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def consent_cache(engine: Engine) -> ConsentCache:
    """The cache shared by every reader of ``engine`` in this process."""
    with _CACHES_LOCK:
        cache = _CACHES.get(engine)
        if cache is None:
            cache = _CACHES[engine] = ConsentCache()
        return cache

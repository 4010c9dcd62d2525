"""Process settings for rxledger's long-running commands (``serve``, ``verify``, ``demo``).

CPython collects its youngest generation of container objects every 700
allocations, and promotes what survives; the older generations follow. An
append of a batch of 1,000 statements allocates tens of thousands of objects
(statements, rows, nodes, receipts) that all live until the batch is
committed, so the collector traverses and promotes them dozens of times per
batch and finds nothing to free; the full collections that follow traverse
everything the process holds. A verification of a large log is the same,
record after record. Measured on the append with its Ed25519 checks taken out
(``bench/append.py``), that was about a fifth of its time.

:func:`tune_collector` is for a process that serves (``rxledger serve``);
:func:`collector_tuned`, for one long command (``verify``, ``demo``), puts the
thresholds back when it ends. Neither is called by the library: the collector
is a setting of the whole process, and a program that embeds the ledger
chooses its own.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: allocations between collections of the youngest generation (CPython: 700)
YOUNG_THRESHOLD = 50_000
#: collections of a generation between collections of the next (CPython: 10, 10)
OLDER_THRESHOLDS = (20, 100)


def tune_collector() -> None:
    """Fewer collections of cyclic garbage, for a process that makes many objects.

    Everything made so far (modules, SQLAlchemy's tables and caches) is
    frozen, so full collections no longer traverse it; the youngest
    generation is collected every :data:`YOUNG_THRESHOLD` allocations.
    Reference counting frees everything as before: only garbage in cycles
    waits a little longer, and the collector still runs.
    """
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


@contextmanager
def collector_tuned() -> Iterator[None]:
    """The youngest generation collected every :data:`YOUNG_THRESHOLD`
    allocations while the block runs; the thresholds as they were after it.
    Nothing is frozen (so a process that runs many commands, a test suite,
    keeps collecting everything)."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)

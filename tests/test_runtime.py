"""The collector settings of the long-running commands (ledger.runtime)."""

from __future__ import annotations

import gc

import pytest

from ledger.runtime import OLDER_THRESHOLDS, YOUNG_THRESHOLD, collector_tuned, tune_collector


def test_a_tuned_command_puts_the_thresholds_back_even_when_it_fails() -> None:
    before = gc.get_threshold()
    with collector_tuned():
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), collector_tuned():
        raise RuntimeError("the command failed")
    assert gc.get_threshold() == before


def test_a_serving_process_freezes_what_start_up_made_and_collects_less_often() -> None:
    before = gc.get_threshold()
    made_at_start_up = [object() for _ in range(10)], {"a": []}
    try:
        tune_collector()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
        assert before[0] < YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
        # frozen: in no generation the collector traverses
        assert not any(o is made_at_start_up for o in gc.get_objects())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

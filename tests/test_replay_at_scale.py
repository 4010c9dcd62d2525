"""Replay equivalence at scale: after a demo of 10,000 prescriptions, the
projections dropped and rebuilt from the records equal the live ones, row for
row, and the whole ledger verifies (every settlement decision re-run).

SQLite only: the same property is tested on both databases at a smaller
scale in test_demo.py and test_settlement.py; building 10,000 prescriptions
on PostgreSQL takes minutes on this machine (see docs/demo.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.demo import run_demo
from ledger.store.audit import rebuild_projections, replayed_projections, verify_database
from ledger.store.reader import ProjectionReader
from tests.conftest import make_ledger_env

PRESCRIPTIONS = 10_000


@pytest.mark.slow
def test_projections_rebuilt_from_10000_prescriptions_equal_the_live_ones(tmp_path: Path) -> None:
    env = make_ledger_env(f"sqlite:///{tmp_path / 'demo.db'}", tmp_path / "keys")
    try:
        report = run_demo(env.ledger, env.registrar, prescriptions=PRESCRIPTIONS, seed=7)
        engine = env.ledger.engine
        assert report.records_written > 3 * PRESCRIPTIONS
        assert not report.unexpected

        live = ProjectionReader(engine).all_rows()
        replayed = replayed_projections(engine)
        assert len(live) > 4 * PRESCRIPTIONS
        assert replayed == live

        assert rebuild_projections(engine) == len(live)
        assert ProjectionReader(engine).all_rows() == live

        result = verify_database(engine)
        assert result.size == env.ledger.reader.head().size
    finally:
        env.ledger.close()

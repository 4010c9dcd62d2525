"""The vault's data keys under failure, and payloads stored before sealing existed."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, select, update

import ledger.store.sequencer as sequencer_module
from ledger.store.audit import verify_database
from ledger.store.reader import LedgerReader
from ledger.store.schema import data_keys, payloads
from ledger.store.vault import Vault
from tests.conftest import LedgerEnv
from tests.world import World, accepted


def test_a_data_key_made_in_a_rolled_back_batch_is_never_used(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = World.build(ledger_env)
    patient = w.new_patient()
    real_project = sequencer_module.project
    calls = {"n": 0}

    def failing_once(conn: Any, effects: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the database went away mid-batch")
        real_project(conn, effects)

    monkeypatch.setattr(sequencer_module, "project", failing_once)
    submission = w.make_issue(w.new_id("RX"), patient=patient)
    with pytest.raises(RuntimeError):
        ledger_env.ledger.append([submission])
    receipt = accepted(ledger_env.ledger.append([submission])[0])
    # a new process (a fresh vault) opens it: its key was stored with it
    fresh = LedgerReader(ledger_env.ledger.engine, vault=Vault(ledger_env.ledger.vault.master))
    assert fresh.payload(receipt.seq) == submission.payload
    with ledger_env.ledger.engine.connect() as conn:
        owners = set(conn.execute(select(data_keys.c.owner)).scalars())
    assert patient in owners
    verify_database(ledger_env.ledger.engine)


def test_payloads_stored_in_clear_before_sealing_are_sealed_on_open(ledger_env: LedgerEnv) -> None:
    w = World.build(ledger_env)
    rx_id = w.new_id("RX")
    issued = accepted(w.issue(rx_id, patient="P-legacy"))
    dispensed = accepted(w.dispense(rx_id, 1))
    ledger = ledger_env.ledger
    plain = {s: ledger.reader.payload(s) for s in (issued.seq, dispensed.seq)}
    with ledger.engine.begin() as conn:  # as a database from before migration 0003
        for seq, data in plain.items():
            conn.execute(
                update(payloads).where(payloads.c.seq == seq).values(content=data, owner=None)
            )
        conn.execute(delete(data_keys).where(data_keys.c.owner == "P-legacy"))
    vault = Vault(ledger.vault.master)
    with ledger.engine.begin() as conn:
        vault.bind(conn)
    with ledger.engine.connect() as conn:
        rows = {r.seq: r for r in conn.execute(select(payloads))}
    for seq, data in plain.items():
        assert rows[seq].owner == "P-legacy"
        assert data is not None
        assert bytes(rows[seq].content) != data
        assert b"salt" not in bytes(rows[seq].content)
    reader = LedgerReader(ledger.engine, vault=vault)
    assert {s: reader.payload(s) for s in plain} == plain
    assert verify_database(ledger.engine).rules == "all"

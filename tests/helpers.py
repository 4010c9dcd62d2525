"""Small builders shared by tests: actors, statements, snapshots of a database."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from sqlalchemy import Engine, MetaData, select

from ledger.core.note import Signer
from ledger.core.statement import SignedStatement, make_statement
from ledger.store.sequencer import Receipt, Submission
from tests.conftest import LedgerEnv


def attest(signer: Signer, **kwargs: Any) -> SignedStatement:
    """A ``doc.attest`` statement over a random digest."""
    digest = hashlib.sha256(os.urandom(16)).hexdigest()
    return make_statement(signer, "doc.attest", {"digest": digest}, **kwargs)


def register(env: LedgerEnv, actor_id: str, role: str, **body: Any) -> Signer:
    """Register a new actor with a fresh key; returns its signer."""
    signer = Signer.generate(actor_id)
    if role in ("prescriber", "pharmacy"):
        body.setdefault("licence", f"LIC-{actor_id}")
    statement = make_statement(
        env.registrar,
        "actor.register",
        {"actor": actor_id, "role": role, "key": signer.vkey, **body},
    )
    (outcome,) = env.ledger.append([Submission(statement)])
    assert isinstance(outcome, Receipt), outcome
    return signer


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to show that a refused request changed nothing."""
    meta = MetaData()
    meta.reflect(engine)
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name, table in sorted(meta.tables.items()):
            if name == "alembic_version":
                continue
            rows = conn.execute(select(table)).all()
            out[name] = sorted((tuple(r) for r in rows), key=repr)
    return out

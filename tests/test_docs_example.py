"""The docs' "statement from any language" example works against a real ledger."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ledger.core.statement import SignedStatement
from ledger.service import REGISTRAR_KEY_FILE
from ledger.store.sequencer import Receipt, Submission
from tests.conftest import LedgerEnv

EXAMPLE = (
    Path(__file__).resolve().parents[1] / "docs" / "examples" / "statement_without_rxledger.py"
)


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("statement_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["statement_example"] = module
    spec.loader.exec_module(module)
    return module


def test_example_statement_is_accepted(ledger_env: LedgerEnv) -> None:
    example = load_example()
    skey = (ledger_env.key_dir / REGISTRAR_KEY_FILE).read_text()
    name, _, vkey = example.load_key(skey)
    assert (name, vkey) == ("registrar", ledger_env.registrar_vkey)
    submission = example.make_statement(skey, "doc.attest", {"digest": "ab" * 32})
    signed = SignedStatement.from_json(submission)
    signed.verify_signature()
    (outcome,) = ledger_env.ledger.append([Submission(signed)])
    assert isinstance(outcome, Receipt)
    assert outcome.seq == 1

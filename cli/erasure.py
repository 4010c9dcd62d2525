"""``rxledger erasure execute``: the operator carries out a patient's erasure."""

from __future__ import annotations

import json
from pathlib import Path

import click
from sqlalchemy import func, select

from cli.common import Failure, db_option
from ledger.core.errors import LedgerError
from ledger.core.statement import make_statement
from ledger.domain.privacy import ERASURE_REASONS
from ledger.store.db import default_database_url
from ledger.store.schema import data_keys, payloads


@click.group()
def erasure() -> None:
    """Erase a patient's clinical data (crypto-shredding; docs/privacy.md)."""


@erasure.command("execute")
@db_option
@click.option("--patient", required=True, help="The patient's pseudonym (P-...).")
@click.option(
    "--reason",
    type=click.Choice(ERASURE_REASONS),
    default="patient-request",
    show_default=True,
    help="patient-request needs the patient's erasure.request on record.",
)
@click.option(
    "--key-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the log and registrar keys are (default RXLEDGER_HOME/keys).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def execute(
    database_url: str | None, patient: str, reason: str, key_dir: Path | None, as_json: bool
) -> None:
    """Destroy PATIENT's data key and payloads, and record the erasure.

    Signed by the registrar (the operator). The records, proofs and
    checkpoints stay valid; `rxledger verify` still passes.
    """
    from ledger.service import (  # noqa: PLC0415
        REGISTRAR_KEY_FILE,
        Ledger,
        read_key_file,
    )
    from ledger.store.db import home_dir  # noqa: PLC0415
    from ledger.store.sequencer import Receipt, Submission  # noqa: PLC0415

    keys = key_dir or home_dir() / "keys"
    registrar = read_key_file(keys / REGISTRAR_KEY_FILE)
    ledger = Ledger.open(
        database_url or default_database_url(),
        log_key_file=key_dir / "log.skey" if key_dir else None,
    )
    try:
        signed = make_statement(
            registrar, "erasure.execute", {"patient": patient, "reason": reason}
        )
        (outcome,) = ledger.append([Submission(signed)])
        if not isinstance(outcome, Receipt):
            raise Failure(f"erasure refused: {outcome.code}: {outcome}")
        with ledger.engine.connect() as conn:
            shredded = conn.execute(
                select(func.count())
                .select_from(payloads)
                .where(payloads.c.erased_seq == outcome.seq)
            ).scalar_one()
            key_gone = conn.execute(
                select(func.count())
                .select_from(data_keys)
                .where(data_keys.c.owner == patient, data_keys.c.erased_seq == outcome.seq)
            ).scalar_one()
    except LedgerError as e:
        raise Failure(str(e)) from None
    finally:
        ledger.close()
    report = {
        "patient": patient,
        "reason": reason,
        "seq": outcome.seq,
        "data_key_destroyed": bool(key_gone),
        "payloads_shredded": int(shredded),
        "tree_size": outcome.tree_size,
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"erased {patient} at record {outcome.seq}: "
        + ("data key destroyed, " if key_gone else "no data key held, ")
        + f"{shredded} payload(s) shredded; the records and proofs stay valid"
    )

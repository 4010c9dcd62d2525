"""``rxledger retention run`` and ``rxledger hold place|release``: the operator's
retention of prescriptions and the legal holds that stop it (``docs/retention.md``).

Both sign as the registrar (``registrar.skey`` in the key directory) and append
to the database directly, like ``rxledger init``. Exit codes as the rest of
the CLI: 0 done, 1 a run in which the ledger refused something (the summary
says what), 2 usage, input or I/O error or a refused hold; errors are one line
on stderr.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.common import EXIT_FAILED, Failure, db_option, open_existing
from ledger.core.note import Signer
from ledger.core.statement import format_time, make_statement, now
from ledger.domain.privacy import HOLD_REASONS

if TYPE_CHECKING:  # imported when used: keeps start-up light
    from ledger.retention import Report
    from ledger.service import Ledger


def clock() -> datetime:
    """The time the commands sign at and the ledger records at (tests move it)."""
    return now()


def _key_dir_option(f: Any) -> Any:
    return click.option(
        "--key-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where log.skey, registrar.skey (and master.key) are (default RXLEDGER_HOME/keys).",
    )(f)


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


@contextmanager
def _registrar_ledger(
    database_url: str | None, key_dir: Path | None
) -> Iterator[tuple[Ledger, Signer]]:
    """The ledger opened with its log key and master key, and the registrar's key."""
    from ledger.service import (  # noqa: PLC0415 - keep start-up light
        LOG_KEY_FILE,
        REGISTRAR_KEY_FILE,
        Ledger,
        default_log_key_file,
        read_key_file,
    )
    from ledger.store.db import configured_master_key, home_dir  # noqa: PLC0415

    keys = key_dir or home_dir() / "keys"
    registrar = read_key_file(keys / REGISTRAR_KEY_FILE)
    log_signer = read_key_file(keys / LOG_KEY_FILE if key_dir else default_log_key_file())
    engine = open_existing(database_url)
    try:
        ledger = Ledger(engine, log_signer, master_key=configured_master_key(keys))
    except BaseException:
        engine.dispose()
        raise
    ledger.sequencer.clock = clock
    try:
        if registrar.vkey != ledger.registrar_vkey:
            raise Failure(
                f"{keys / REGISTRAR_KEY_FILE} holds another key than this ledger's registrar"
            )
        yield ledger, registrar
    finally:
        ledger.close()


# -- retention ---------------------------------------------------------------------------


@click.group()
def retention() -> None:
    """Shred the clinical payloads of prescriptions kept long enough (docs/retention.md)."""


@retention.command("run")
@db_option
@_key_dir_option
@click.option("--dry-run", is_flag=True, help="Say what is due; record nothing.")
@click.option(
    "--policy",
    "policy_spec",
    default=None,
    metavar="SPEC",
    help="Periods in days, e.g. ordinary=400,narcotic=1200 (over RXLEDGER_RETENTION "
    "and the defaults: ordinary 365, toxic and psychotropic-2 730, narcotic, "
    "psychotropic-1 and radioactive 1095).",
)
@_json_option
def run(
    *,
    database_url: str | None,
    key_dir: Path | None,
    dry_run: bool,
    policy_spec: str | None,
    as_json: bool,
) -> None:
    """Shred what is due and under no legal hold; say what was done.

    A prescription is due when its retention period, counted from its issue
    date, is over and it can no longer be dispensed. Safe to re-run.
    """
    from ledger import retention as rules  # noqa: PLC0415

    policy = rules.RetentionPolicy.configured(policy_spec)  # before any I/O: fail fast
    with _registrar_ledger(database_url, key_dir) as (ledger, registrar):
        report = rules.run(ledger, registrar, policy, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        _summary(report)
    if report.refused:
        raise click.exceptions.Exit(EXIT_FAILED)


def _summary(report: Report) -> None:
    policy = ", ".join(f"{name} {days}d" for name, days in report.policy.items())
    click.echo(f"retention run at {report.at} (policy: {policy})")
    count = len(report.due) if report.dry_run else len(report.shredded)
    if report.dry_run:
        click.echo(f"dry run: {count} prescription(s) due; nothing recorded")
    else:
        seqs = ", ".join(str(s.seq) for s in report.statements)
        click.echo(
            f"shredded {count} prescription(s) in {len(report.statements)} statement(s)"
            + (f" (seq {seqs})" if seqs else "")
            + f"; {report.payloads_destroyed} payload(s) destroyed"
        )
    for name, n in report.by_class().items():
        click.echo(f"  {name:<16} {n}")
    if report.held:
        click.echo(f"kept under legal hold: {len(report.held)} prescription(s)")
        for rx_id, holds in report.held.items():
            click.echo(f"  {rx_id}  hold {', '.join(holds)}")
    if report.refused:
        click.echo(f"refused by the ledger: {sum(len(r.rx_ids) for r in report.refused)}")
        for refusal in report.refused:
            click.echo(f"  {', '.join(refusal.rx_ids)}: {refusal.code}: {refusal.message}")
    if not count and not report.held and not report.refused:
        click.echo("nothing is due")


# -- holds -------------------------------------------------------------------------------


@click.group()
def hold() -> None:
    """Legal holds: keep a patient's or a prescription's data from retention and erasure."""


def _append(ledger: Ledger, registrar: Signer, kind: str, body: dict[str, Any]) -> int:
    from ledger.store.sequencer import Receipt, Submission  # noqa: PLC0415

    signed = make_statement(registrar, kind, body, issued_at=format_time(clock()))
    (outcome,) = ledger.append([Submission(signed)])
    if not isinstance(outcome, Receipt):
        raise Failure(f"the ledger refused the {kind}: {outcome.code}: {outcome}")
    return outcome.seq


@hold.command("place")
@db_option
@_key_dir_option
@click.option("--patient", default=None, help="Hold everything of this patient (pseudonym).")
@click.option("--rx", "rx_id", default=None, help="Hold this prescription.")
@click.option("--reason", type=click.Choice(HOLD_REASONS), required=True, help="Why.")
@click.option("--hold-id", default=None, help="The hold's id (default: a new H-… id).")
@_json_option
def place(
    *,
    database_url: str | None,
    key_dir: Path | None,
    patient: str | None,
    rx_id: str | None,
    reason: str,
    hold_id: str | None,
    as_json: bool,
) -> None:
    """Place a legal hold on a patient (--patient) or a prescription (--rx)."""
    if bool(patient) == bool(rx_id):
        raise Failure("name exactly one of --patient or --rx")
    hold_id = hold_id or f"H-{clock():%Y%m%d}-{secrets.token_hex(4)}"
    body: dict[str, Any] = {"hold_id": hold_id, "reason": reason}
    body.update({"patient": patient} if patient else {"rx_id": rx_id})
    with _registrar_ledger(database_url, key_dir) as (ledger, registrar):
        seq = _append(ledger, registrar, "hold.place", body)
    target = f"patient {patient}" if patient else f"prescription {rx_id}"
    if as_json:
        click.echo(json.dumps({**body, "placed": True, "seq": seq}, indent=2))
    else:
        click.echo(f"hold {hold_id} placed on {target} ({reason}), record seq {seq}")


@hold.command("release")
@db_option
@_key_dir_option
@click.argument("hold_id")
@_json_option
def release(database_url: str | None, key_dir: Path | None, hold_id: str, as_json: bool) -> None:
    """Release the legal hold HOLD_ID."""
    with _registrar_ledger(database_url, key_dir) as (ledger, registrar):
        seq = _append(ledger, registrar, "hold.release", {"hold_id": hold_id})
    if as_json:
        click.echo(json.dumps({"hold_id": hold_id, "released": True, "seq": seq}, indent=2))
    else:
        click.echo(f"hold {hold_id} released, record seq {seq}")

"""``rxledger``: the command line.

Exit codes: 0 success (for ``verify``: everything verified), 1 verification
failed, 2 usage, input or I/O error. Errors are one line on stderr; there is
never a traceback (one handler for :class:`LedgerError`, as sigstore's CLI).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Failure,
    VerificationFailure,
    db_option,
    open_existing,
)
from ledger.core.errors import LedgerError, VerificationError
from ledger.core.note import Signer
from ledger.runtime import collector_tuned, tune_collector
from ledger.store.db import default_database_url, make_engine

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "Failure", "VerificationFailure", "main", "open_existing"]


class LedgerGroup(click.Group):
    """Turns every LedgerError and database error into a one-line message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VerificationError as e:
            raise VerificationFailure(str(e)) from None
        except LedgerError as e:
            raise Failure(str(e)) from None
        except BrokenPipeError:  # the reader went away (``| head``): not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except httpx.HTTPError as e:
            raise Failure(f"cannot reach the ledger: {type(e).__name__}: {e}") from None
        except SQLAlchemyError as e:
            cause = getattr(e, "orig", None) or e
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise Failure(f"database error: {first}") from None
        except OSError as e:
            raise Failure(f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")) from None


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rxledger")
def main() -> None:
    """rxledger: a verifiable audit ledger for e-prescriptions, settlement and consent."""


@main.command()
@db_option
@click.option(
    "--key-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write log.skey and registrar.skey (default: RXLEDGER_HOME/keys).",
)
@click.option(
    "--origin",
    default="rxledger.local/log",
    show_default=True,
    help="The log's origin line in checkpoints (and its key name).",
)
def init(database_url: str | None, key_dir: Path | None, origin: str) -> None:
    """Create the schema, the log signing key, the registrar key and the genesis record."""
    from ledger.service import init_ledger  # noqa: PLC0415 - keep start-up light

    result = init_ledger(database_url, key_dir=key_dir, origin=origin)
    verb = "initialized" if result.created else "already initialized"
    click.echo(f"ledger {verb}: {result.database_url}")
    click.echo(f"origin:        {result.origin}")
    click.echo(f"log key:       {result.log_vkey}")
    click.echo(f"registrar key: {result.registrar_vkey}")
    if result.created:
        click.echo(
            f"private keys written (mode 0600): {result.log_key_file}, {result.registrar_key_file}"
        )
    if result.master_key_file is not None:
        click.echo(
            f"master key written (mode 0600): {result.master_key_file}: it seals patients' "
            "data; back it up apart from the database (docs/privacy.md)"
        )


@main.command()
@click.argument("name")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write the private key to (mode 0600; never overwritten).",
)
def keygen(name: str, out: Path) -> None:
    """Make an Ed25519 key pair for NAME; print the public (verifier) key."""
    from ledger.service import write_key_file  # noqa: PLC0415

    signer = Signer.generate(name)
    try:
        write_key_file(out, signer.skey)
    except FileExistsError:
        raise Failure(f"{out} exists; refusing to overwrite a key") from None
    click.echo(signer.vkey)


@main.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--log-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="RXLEDGER_LOG_KEY_FILE",
    help="The log's private key file.",
)
def serve(database_url: str | None, host: str, port: int, log_key_file: Path | None) -> None:
    """Run the HTTP API."""
    import uvicorn  # noqa: PLC0415

    from ledger.service import Ledger  # noqa: PLC0415

    # The API is another adapter: the CLI hands it its settings through the
    # environment and names it by import string, rather than importing it.
    if database_url:
        os.environ["RXLEDGER_DATABASE_URL"] = database_url
    if log_key_file:
        os.environ["RXLEDGER_LOG_KEY_FILE"] = str(log_key_file)
    from ledger.witnessing import parse_witnesses  # noqa: PLC0415

    witnesses = parse_witnesses(os.environ.get("RXLEDGER_WITNESSES", ""))  # fail fast, one line
    ledger = Ledger.open(database_url or default_database_url(), log_key_file=log_key_file)
    origin = ledger.origin
    ledger.close()  # opened only to fail fast with a clear message
    click.echo(f"rxledger serving {origin} on http://{host}:{port}", err=True)
    for endpoint in witnesses:
        click.echo(f"checkpoints are sent to witness {endpoint.verifier.name}", err=True)
    tune_collector()  # docs/design/sequencing.md
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, log_level="warning")


@main.command()
@db_option
@click.option(
    "--prescriptions",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="How many prescriptions to issue.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="The world's random seed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def demo(database_url: str | None, prescriptions: int, seed: int, as_json: bool) -> None:
    """Fill a ledger with a realistic synthetic world: prescriptions, dispenses, claims.

    Initializes the ledger first when the database holds none (keys in
    RXLEDGER_HOME/keys). The insurers' settlement keys are written to the
    settlement key directory, so that `rxledger serve` decides their claims too.
    """

    from ledger.demo import run_demo  # noqa: PLC0415
    from ledger.service import (  # noqa: PLC0415
        REGISTRAR_KEY_FILE,
        Ledger,
        default_settlement_key_dir,
        init_ledger,
        is_initialized,
        read_key_file,
    )
    from ledger.store.db import home_dir  # noqa: PLC0415

    url = database_url or default_database_url()
    key_dir = home_dir() / "keys"
    engine = make_engine(url)
    try:
        initialized = is_initialized(engine)
    finally:
        engine.dispose()
    if not initialized:
        init_ledger(url, key_dir=key_dir)
    registrar_file = key_dir / REGISTRAR_KEY_FILE
    if not registrar_file.is_file():
        raise Failure(
            f"the demo signs registrations as the registrar, but {registrar_file} does not exist"
        )
    registrar = read_key_file(registrar_file)
    settlement_dir = default_settlement_key_dir()
    ledger = Ledger.open(url, settlement_key_dir=settlement_dir)
    try:
        if registrar.vkey != ledger.registrar_vkey:
            raise Failure(f"{registrar_file} holds another key than this ledger's registrar")
        on_terminal = not as_json and sys.stderr.isatty()
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - started, 1e-9)
            filled = 30 * done // total
            click.echo(
                f"\rdemo [{'#' * filled}{'-' * (30 - filled)}] {done}/{total} prescriptions "
                f"{rate:,.0f}/s ",
                nl=False,
                err=True,
            )

        with collector_tuned():  # thousands of appends (ledger.runtime)
            report = run_demo(
                ledger,
                registrar,
                prescriptions=prescriptions,
                seed=seed,
                key_dir=settlement_dir,
                progress=progress if on_terminal else None,
            )
        if on_terminal:
            click.echo("", err=True)
    finally:
        ledger.close()
    shown_url = make_url(url).render_as_string(hide_password=True)
    if as_json:
        click.echo(json.dumps({"database_url": shown_url, **report.to_json()}, indent=2))
        return
    decided = max(report.decisions, 1)
    click.echo(
        f"demo: {report.prescriptions} prescriptions (seed {seed}), "
        f"{report.records_written} records in {report.seconds:.1f}s "
        f"({report.records_per_second:,.0f} records/s); tree size {report.tree_size}"
    )
    click.echo(
        f"statements: {report.statements_accepted} accepted, {report.statements_refused} refused"
    )
    for code, count in report.refused_by_code.items():
        click.echo(f"  refused {code:<26} {count}")
    click.echo(f"decisions: {report.decisions}")
    for outcome, count in report.decisions_by_outcome.items():
        click.echo(f"  {outcome:<34} {count:>6}  {100 * count / decided:5.1f}%")
    for code, count in report.failed_rules_by_code.items():
        click.echo(f"  rule {code:<29} {count:>6}")
    for path in report.settlement_key_files:
        click.echo(f"settlement key written (mode 0600): {path}")
    if report.unexpected:
        click.echo(f"unexpected outcomes: {report.unexpected}", err=True)
    click.echo("audit an example claim:")
    for outcome, claim_id in report.example_claims.items():
        click.echo(f"  {outcome:<19} rxledger audit claim {claim_id} --db {shown_url}")


@main.group()
def audit() -> None:
    """Penetrating audit: follow a claim back to the prescriber, with proofs."""


@audit.command("claim")
@click.argument("claim_id")
@db_option
@click.option("--url", default=None, help="Audit through a ledger's HTTP API instead of --db.")
@click.option(
    "--log-key",
    default=None,
    help="The log's verifier key (default: the one stored in the database).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit_claim(
    claim_id: str, database_url: str | None, url: str | None, log_key: str | None, as_json: bool
) -> None:
    """Print and check the trail settlement -> claim -> dispense -> prescription -> prescriber."""
    from ledger.client import LedgerClient, check_trail  # noqa: PLC0415
    from ledger.core.note import Verifier  # noqa: PLC0415

    if url:
        if not log_key:
            raise Failure("--url needs --log-key: the log's public key is what you trust")
        with LedgerClient(url) as client:
            trail = client.get(f"/v1/claims/{claim_id}/trail")
    else:
        from ledger.service import claim_trail  # noqa: PLC0415
        from ledger.store.reader import LedgerReader  # noqa: PLC0415

        engine = open_existing(database_url)
        try:
            log_key = log_key or LedgerReader(engine).meta()["log_vkey"]
            trail = claim_trail(engine, claim_id)
        finally:
            engine.dispose()
    verifier = Verifier.from_vkey(log_key)
    checkpoint = check_trail(trail, log_key=verifier, origin=verifier.name)
    if as_json:
        click.echo(json.dumps({"verified": True, **trail}, indent=2))
        return
    decision = trail.get("decision") or {}
    click.echo(
        f"claim {claim_id}: {trail['status']}"
        + (
            f", approved {decision.get('approved_amount')} of {decision.get('claimed_amount')}"
            if decision
            else ""
        )
    )
    for rule in decision.get("rules", []):
        if rule["result"] != "pass":
            item = f" (item {rule['item']})" if "item" in rule else ""
            ncpdp = f" NCPDP {rule['ncpdp']}" if rule.get("ncpdp") else ""
            click.echo(f"  {rule['result']}: {rule['rule']}{item} -> {rule['code']}{ncpdp}")
    for step in trail["steps"]:
        click.echo(
            f"  {step['step']:<24} seq {step['seq']:<8} {step['type']:<20} by "
            f"{step['actor']:<16} {step['record_hash'][:16]}…  included"
        )
    click.echo(
        f"every record is included in the checkpoint of size {checkpoint.size} "
        f"signed by {verifier.name}"
    )


# The auditor's commands (cli/verify.py) and the patient's wallet (cli/wallet.py),
# which fail with this module's Failure.
from cli.operator import pseudonym  # noqa: E402
from cli.verify import export, prove, verify  # noqa: E402
from cli.wallet import wallet  # noqa: E402

main.add_command(verify)
main.add_command(export)
main.add_command(prove)
main.add_command(wallet)
main.add_command(pseudonym)

# The witness commands (cli/witness.py), which fail with this module's Failure.
from cli.witness import witness  # noqa: E402

main.add_command(witness)

# The operator's erasure (cli/erasure.py).
from cli.erasure import erasure  # noqa: E402

main.add_command(erasure)

# Retention and legal holds (cli/retention.py).
from cli.retention import hold, retention  # noqa: E402

main.add_command(retention)
main.add_command(hold)

if __name__ == "__main__":  # pragma: no cover
    main()

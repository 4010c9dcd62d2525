"""What every command shares: exit codes, one-line failures, the database option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from ledger.store.db import default_database_url, make_engine, normalize_url

EXIT_FAILED = 1
EXIT_USAGE = 2


class Failure(click.ClickException):
    """A one-line usage, input or I/O error (exit 2)."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"rxledger: error: {self.format_message()}", err=True)


class VerificationFailure(Failure):
    """Something did not verify (exit 1)."""

    exit_code = EXIT_FAILED


def open_existing(database_url: str | None) -> Engine:
    """An engine on a database that must already hold a ledger (never creates one)."""
    from ledger.service import is_initialized  # noqa: PLC0415

    url = normalize_url(database_url or default_database_url())
    parsed = make_url(url)
    database = parsed.database or ""
    is_file = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if is_file and not Path(database).exists():
        raise Failure(f"no database at {database}: run `rxledger init` first")
    engine = make_engine(url)
    if not is_initialized(engine):
        engine.dispose()
        raise Failure("the database holds no ledger: run `rxledger init` first")
    return engine


db_option = click.option(
    "--db",
    "database_url",
    envvar="RXLEDGER_DATABASE_URL",
    default=None,
    show_envvar=True,
    help="Database URL (default: SQLite file in RXLEDGER_HOME).",
)

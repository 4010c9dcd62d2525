"""``rxledger pseudonym``: the operator's pseudonym lookup, on the ledger's host.

The operator holds the master key (``RXLEDGER_MASTER_KEY`` or its file,
:func:`ledger.store.db.configured_master_key`) and derives a patient's
pseudonym from their identifier with it, as ``POST /v1/operator/pseudonyms``
does for the registrar through the API. With a database (``--db`` or
``RXLEDGER_DATABASE_URL``) the lookup is written to that ledger's access log
(action ``E``, basis ``pseudonym-lookup``, the pseudonym as the patient, the
local user as the actor) after checking that the key is that ledger's; the
identifier is never stored or logged. Without a database nothing is logged:
whoever holds the master key on the host can derive pseudonyms anyway.
"""

from __future__ import annotations

import getpass
import sys

import click
from sqlalchemy import select

from cli.common import Failure, db_option, open_existing


def _local_user() -> str:
    try:
        return getpass.getuser()[:100] or "unknown"
    except (KeyError, OSError):
        return "unknown"


@click.command("pseudonym")
@click.argument("identifier", required=False, default="-")
@db_option
def pseudonym(identifier: str, database_url: str | None) -> None:
    """Print the pseudonym of a patient's IDENTIFIER.

    Without IDENTIFIER (or with "-") it is read from stdin, without echo on a
    terminal, so that a real ID number stays out of the shell history and the
    process list.
    """
    from ledger.access import PSEUDONYM_LOOKUP, log_access  # noqa: PLC0415
    from ledger.store.db import configured_master_key  # noqa: PLC0415
    from ledger.store.schema import ledger_meta  # noqa: PLC0415
    from ledger.store.vault import MASTER_KEY_META  # noqa: PLC0415

    if identifier == "-":
        if sys.stdin.isatty():
            identifier = getpass.getpass("identifier: ").strip()
        else:
            identifier = sys.stdin.readline().strip()
    master = configured_master_key()
    try:
        found = master.pseudonym(identifier)
    except ValueError:
        raise Failure("an empty identifier has no pseudonym") from None
    if database_url:
        engine = open_existing(database_url)
        try:
            with engine.connect() as conn:
                stored = conn.execute(
                    select(ledger_meta.c.value).where(ledger_meta.c.name == MASTER_KEY_META)
                ).scalar()
            if stored is not None and stored != master.key_id:
                raise Failure(
                    f"the master key (id {master.key_id}) is not this ledger's (id {stored}): "
                    "its pseudonyms would not be this ledger's"
                )
            log_access(
                engine,
                action="E",
                actor=f"host:{_local_user()}",
                role="operator",
                patient=found,
                seq=None,
                what=f"pseudonym/{found}",
                basis=PSEUDONYM_LOOKUP,
            )
        finally:
            engine.dispose()
    click.echo(found)

"""``rxledger witness``: run a C2SP tlog-witness, make its key.

``rxledger witness keygen NAME --out FILE`` writes an Ed25519 key and prints the
witness's verifier key (signature type 0x04, c2sp.org/tlog-cosignature): give
that to whoever checks cosignatures (``RXLEDGER_WITNESSES`` on the ledger,
``--witness`` for an auditor).

``rxledger witness serve --key FILE --log-key VKEY`` serves
``POST /add-checkpoint`` (c2sp.org/tlog-witness) for the logs whose keys are
given (each key's name is its log's origin), keeping the last checkpoint it
cosigned per log in a SQLite state file (``--state``, default
``RXLEDGER_HOME/witness/witness.db``). Everything is checked before the server
starts; a bad key or state file is a one-line error and exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ledger.core.cosignature import witness_vkey
from ledger.core.errors import LedgerError
from ledger.core.note import Signer, Verifier
from ledger.service import read_key_file, write_key_file
from ledger.witness import Witness, default_state_file, logs_from_verifiers


def _failure(message: str) -> click.ClickException:
    """cli.main's one-line error (exit 2), imported when raised (cli.main imports this)."""
    from cli.main import Failure  # noqa: PLC0415

    return Failure(message)


@click.group()
def witness() -> None:
    """A witness that cosigns checkpoints of logs it keeps consistent (C2SP tlog-witness)."""


@witness.command()
@click.argument("name")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write the private key to (mode 0600; never overwritten).",
)
def keygen(name: str, out: Path) -> None:
    """Make a witness key named NAME; print its verifier key (type 0x04)."""
    signer = Signer.generate(name)
    try:
        write_key_file(out, signer.skey)
    except FileExistsError:
        raise _failure(f"{out} exists; refusing to overwrite a key") from None
    click.echo(witness_vkey(signer))


@witness.command()
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The witness's private key file.",
)
def vkey(key_file: Path) -> None:
    """Print the witness verifier key (type 0x04) of a key file."""
    click.echo(witness_vkey(read_key_file(key_file)))


@witness.command()
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The witness's private key file (rxledger witness keygen).",
)
@click.option(
    "--log-key",
    "log_keys",
    multiple=True,
    required=True,
    help="A log's verifier key; its name is the log's origin. Repeat for more logs.",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The witness's state (default: RXLEDGER_HOME/witness/witness.db).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8100, show_default=True, type=click.IntRange(1, 65535))
def serve(
    key_file: Path, log_keys: tuple[str, ...], state_file: Path | None, host: str, port: int
) -> None:
    """Serve POST /add-checkpoint for the logs of --log-key."""
    import uvicorn  # noqa: PLC0415

    try:
        signer = read_key_file(key_file)
        verifiers = [Verifier.from_vkey(v) for v in log_keys]
        state = state_file or default_state_file()
        # Opened here only to fail fast with a clear message; the app opens its own.
        opened = Witness(signer, logs_from_verifiers(verifiers), state)
    except LedgerError as e:
        raise _failure(str(e)) from None
    # The API is another adapter: hand it the configuration through the
    # environment and name it by import string, as `rxledger serve` does.
    os.environ["RXLEDGER_WITNESS_KEY_FILE"] = str(key_file)
    os.environ["RXLEDGER_WITNESS_LOG_KEYS"] = " ".join(v.vkey for v in verifiers)
    os.environ["RXLEDGER_WITNESS_STATE"] = str(state)
    click.echo(f"witness {opened.vkey}", err=True)
    for origin in sorted(opened.logs):
        click.echo(f"witnessing {origin}", err=True)
    click.echo(f"serving on http://{host}:{port} (state: {state})", err=True)
    uvicorn.run(
        "api.witness:create_witness_app", factory=True, host=host, port=port, log_level="warning"
    )

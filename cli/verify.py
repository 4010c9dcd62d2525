"""``rxledger verify``, ``export`` and ``prove``: the auditor's commands.

``verify`` reads one source: a database (``--db``, the default), a ledger's
HTTP API (``--url``, incremental with ``--state``), an exported bundle
(``--bundle``) or a single-record proof file (``--proof``). Exit codes: 0
verified, 1 verification failed (the first bad record or checkpoint is
named; an inconsistency also writes its evidence), 2 usage or I/O error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from cli.common import EXIT_FAILED, Failure, db_option, open_existing
from ledger.core.errors import (
    InconsistencyError,
    LedgerError,
    MerkleNodeError,
    RecordError,
    VerificationError,
)
from ledger.runtime import collector_tuned


class Progress:
    """A progress line with rate and ETA on a terminal; nothing otherwise."""

    def __init__(self, total: int, enabled: bool, *, verb: str = "verifying") -> None:
        self.total = total
        self.enabled = enabled
        self.verb = verb
        self.start = time.perf_counter()
        self.first: int | None = None
        self.last = 0.0

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        if total is not None:
            self.total = total
        if self.first is None:
            self.first = done - 1  # a resumed run counts its rate from where it resumed
        t = time.perf_counter()
        if done < self.total and t - self.last < 0.2:
            return
        self.last = t
        elapsed = max(t - self.start, 1e-9)
        rate = (done - self.first) / elapsed
        width = 30
        filled = int(width * done / self.total) if self.total else width
        eta = (self.total - done) / rate if rate > 0 else 0.0
        click.echo(
            f"\r{self.verb} [{'#' * filled}{'-' * (width - filled)}] {done}/{self.total} "
            f"{rate:,.0f} rec/s ETA {eta:,.0f}s ",
            nl=False,
            err=True,
        )

    def close(self) -> None:
        if self.enabled and self.first is not None:
            click.echo("", err=True)


def error_json(error: LedgerError) -> dict[str, Any]:
    out: dict[str, Any] = {"code": error.code, "message": str(error)}
    if isinstance(error, RecordError) and error.seq is not None:
        out["seq"] = error.seq
    if isinstance(error, MerkleNodeError):
        out["seq"] = error.first_seq
        out["node"] = {"level": error.level, "index": error.index}
    if isinstance(error, InconsistencyError):
        evidence = error.evidence
        out["evidence"] = {
            "old_checkpoint": evidence.old_checkpoint,
            "new_checkpoint": evidence.new_checkpoint,
            "proof": [h.hex() for h in evidence.proof],
        }
    return out


def _from_command_line(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def _quorum(witnesses: tuple[str, ...], quorum: int | None) -> int:
    if quorum is None:
        return len(witnesses)
    if not witnesses:
        raise Failure("--quorum needs the witnesses' keys: give them with --witness VKEY")
    if quorum > len(witnesses):
        raise Failure(f"--quorum {quorum}: only {len(witnesses)} --witness key(s) given")
    return quorum


@click.command()
@db_option
@click.option("--url", default=None, help="Verify a ledger through its HTTP API.")
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --url: the file keeping the last verified checkpoint (next run: new records only).",
)
@click.option(
    "--bundle",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Verify an exported bundle, offline.",
)
@click.option(
    "--proof",
    "proof_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Verify a single-record proof file, offline.",
)
@click.option("--log-key", default=None, help="Pin the log's verifier key (vkey string).")
@click.option("--registrar-key", default=None, help="Pin the registrar's verifier key.")
@click.option(
    "--witness",
    "witnesses",
    multiple=True,
    help="A witness's cosignature key (vkey); repeat for several.",
)
@click.option(
    "--quorum",
    type=click.IntRange(min=1),
    default=None,
    help="How many of the --witness keys must have cosigned (default: all of them).",
)
@click.option(
    "--evidence",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write evidence of an inconsistent log (default: next to --state).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="With --db: threads checking signatures beside the one reading and replaying "
    "(default: one per CPU; 1 checks them in line).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(
    ctx: click.Context,
    *,
    database_url: str | None,
    url: str | None,
    state_file: Path | None,
    bundle: Path | None,
    proof_file: Path | None,
    log_key: str | None,
    registrar_key: str | None,
    witnesses: tuple[str, ...],
    quorum: int | None,
    evidence: Path | None,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Verify a ledger: every record, signature, rule, Merkle node and checkpoint.

    Exit 0 when everything holds, 1 when something does not (the first bad
    record or checkpoint is named), 2 on usage or I/O errors.
    """
    sources = [
        name
        for name, given in (
            ("--db", _from_command_line(ctx, "database_url")),
            ("--url", url is not None),
            ("--bundle", bundle is not None),
            ("--proof", proof_file is not None),
        )
        if given
    ]
    if len(sources) > 1:
        raise Failure(f"give one source to verify, not {' and '.join(sources)}")
    if state_file is not None and url is None:
        raise Failure("--state goes with --url (remote, incremental verification)")
    if jobs is not None and sources and sources != ["--db"]:
        raise Failure(f"--jobs goes with --db, not {sources[0]}")
    needed = _quorum(witnesses, quorum)
    progress = Progress(0, enabled=not as_json and sys.stderr.isatty())
    try:
        with collector_tuned():  # many short-lived objects per record (ledger.runtime)
            if url is not None:
                summary, text = _verify_url(
                    url=url,
                    state_file=state_file,
                    log_key=log_key,
                    registrar_key=registrar_key,
                    witnesses=witnesses,
                    quorum=needed,
                    progress=progress,
                )
            elif bundle is not None:
                summary, text = _verify_bundle(
                    bundle=bundle,
                    log_key=log_key,
                    registrar_key=registrar_key,
                    witnesses=witnesses,
                    quorum=needed,
                    progress=progress,
                )
            elif proof_file is not None:
                summary, text = _verify_proof(proof_file, log_key, witnesses, needed)
            else:
                summary, text = _verify_db(
                    database_url=database_url,
                    log_key=log_key,
                    registrar_key=registrar_key,
                    witnesses=witnesses,
                    quorum=needed,
                    progress=progress,
                    jobs=jobs if jobs is not None else (os.cpu_count() or 1),
                )
    except VerificationError as e:
        progress.close()
        message = str(e)
        if isinstance(e, InconsistencyError):
            path = evidence or (
                state_file.with_name(state_file.name + ".evidence.json") if state_file else None
            )
            if path is not None:
                path.write_text(json.dumps(error_json(e)["evidence"], indent=2) + "\n")
                message += f"; evidence written to {path}"
        if as_json:
            click.echo(json.dumps({"verified": False, "error": error_json(e)}))
            sys.exit(EXIT_FAILED)
        raise VerificationError(message) from None
    progress.close()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(text)


def _verify_db(
    *,
    database_url: str | None,
    log_key: str | None,
    registrar_key: str | None,
    witnesses: tuple[str, ...],
    quorum: int,
    progress: Progress,
    jobs: int,
) -> tuple[dict[str, Any], str]:
    from ledger.bundle import check_quorum  # noqa: PLC0415
    from ledger.store.audit import verify_database  # noqa: PLC0415
    from ledger.store.reader import LedgerReader  # noqa: PLC0415

    engine = open_existing(database_url)
    try:
        reader = LedgerReader(engine)
        progress.total = reader.count_records()
        result = verify_database(
            engine,
            log_key=log_key,
            registrar_key=registrar_key,
            on_progress=progress,
            workers=jobs,
        )
        valid = check_quorum(reader.latest_checkpoint_cosigned(), witnesses, quorum)
    finally:
        engine.dispose()
    summary: dict[str, Any] = {
        "verified": True,
        "tree_size": result.size,
        "root_hash": result.root.hex(),
        "head_hash": result.head.hex(),
        "checkpoints_verified": result.checkpoints_verified,
        "seconds": round(result.seconds, 3),
        "records_per_second": round(result.rate, 1),
        "rules": result.rules,
        "payloads_shredded": result.shredded,
        "jobs": jobs,
    }
    if witnesses:
        summary["witnesses"] = valid
    text = (
        f"verified {result.size} records and {result.checkpoints_verified} checkpoints "
        f"in {result.seconds:.2f}s ({result.rate:,.0f} records/s); root {result.root.hex()}"
        + _witness_text(valid, witnesses)
    )
    if result.rules != "all":
        text += (
            "\nno master key: the payloads stay sealed, so the flow rules were checked for "
            "signers only (docs/privacy.md)"
        )
    if result.shredded:
        text += (
            f"\n{result.shredded} records' payloads were shredded (erasure, retention): "
            "checked by their public fields only (docs/privacy.md)"
        )
    return summary, text


def _witness_text(valid: list[str] | tuple[str, ...], witnesses: tuple[str, ...]) -> str:
    if not witnesses:
        return ""
    return f"\ncosigned by {len(valid)} of {len(witnesses)} witnesses: {', '.join(valid)}"


def _verify_url(
    *,
    url: str,
    state_file: Path | None,
    log_key: str | None,
    registrar_key: str | None,
    witnesses: tuple[str, ...],
    quorum: int,
    progress: Progress,
) -> tuple[dict[str, Any], str]:
    from ledger.auditing import HttpSource, verify_remote  # noqa: PLC0415

    if log_key is None and (state_file is None or not state_file.exists()):
        raise Failure("--url needs --log-key: the log's public key is what you trust")
    source = HttpSource(url)
    try:
        result = verify_remote(
            source,
            state_path=state_file,
            log_key=log_key,
            registrar_key=registrar_key,
            witnesses=witnesses,
            quorum=quorum,
            on_progress=progress,
        )
    finally:
        source.close()
    summary = result.to_json()
    if result.previous_size:
        what = (
            f"consistent with the checkpoint of size {result.previous_size} verified before; "
            f"{result.fetched} new records verified"
        )
    else:
        what = f"{result.fetched} records verified"
    text = (
        f"verified {url} up to tree size {result.tree_size}: {what} in "
        f"{result.seconds:.2f}s; root {result.root.hex()}"
        + _witness_text(result.witnesses, witnesses)
    )
    if state_file is not None:
        text += f"\nstate saved to {state_file}"
    return summary, text


def _verify_bundle(
    *,
    bundle: Path,
    log_key: str | None,
    registrar_key: str | None,
    witnesses: tuple[str, ...],
    quorum: int,
    progress: Progress,
) -> tuple[dict[str, Any], str]:
    from ledger.bundle import read_manifest, verify_bundle  # noqa: PLC0415

    manifest = read_manifest(bundle)
    progress.total = manifest.records
    result = verify_bundle(
        bundle,
        log_key=log_key,
        registrar_key=registrar_key,
        witnesses=witnesses,
        quorum=quorum,
        on_progress=progress,
    )
    text = (
        f"verified bundle {bundle}: records {result.first}..{result.end - 1} "
        f"({result.end - result.first}), {result.checkpoints_verified} checkpoints, anchored "
        f"to the checkpoint of size {result.tree_size}; every signer checked against the "
        "registry (the flow rules need the payloads: verify --db)"
        + _witness_text(result.witnesses, witnesses)
    )
    if not result.log_key_pinned:
        text += (
            f"\nwarning: the log key came from the bundle itself ({manifest.log_vkey}); "
            "pin it with --log-key"
        )
    return result.to_json(), text


def _verify_proof(
    proof_file: Path, log_key: str | None, witnesses: tuple[str, ...], quorum: int
) -> tuple[dict[str, Any], str]:
    from ledger.bundle import verify_proof_document  # noqa: PLC0415

    if log_key is None:
        raise Failure("--proof needs --log-key: the log's public key is what you trust")
    try:
        document = json.loads(proof_file.read_text())
    except ValueError as e:
        raise Failure(f"{proof_file}: not a proof file (not JSON): {e}") from None
    if not isinstance(document, dict):
        raise Failure(f"{proof_file}: not a proof file")
    result = verify_proof_document(document, log_key=log_key, witnesses=witnesses, quorum=quorum)
    text = (
        f"record {result.seq} ({result.statement_type} by {result.actor}, hash "
        f"{result.record_hash.hex()[:16]}…) is in the log: included in the checkpoint of "
        f"size {result.tree_size} signed by the log key"
        + _witness_text(result.witnesses, witnesses)
    )
    return result.to_json(), text


@click.command()
@db_option
@click.option("--url", default=None, help="Export from a ledger's HTTP API instead of --db.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The bundle file to write (replaced only once complete).",
)
@click.option("--from", "first", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--to", "last", type=click.IntRange(min=0), default=None, help="Last seq (default: latest)."
)
@click.option(
    "--log-key",
    default=None,
    help="The log's verifier key (required with --url; default with --db: the stored one).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def export(
    ctx: click.Context,
    *,
    database_url: str | None,
    url: str | None,
    out: Path,
    first: int,
    last: int | None,
    log_key: str | None,
    as_json: bool,
) -> None:
    """Write records, checkpoints and proofs to a single-file bundle for offline audit.

    Payload contents (clinical data) are never exported, only their digests.
    Check the bundle with `rxledger verify --bundle FILE --log-key VKEY`.
    """
    from ledger.auditing import DbSource, HttpSource, LogSource, export_bundle  # noqa: PLC0415
    from ledger.store.reader import LedgerReader  # noqa: PLC0415

    if url is not None and _from_command_line(ctx, "database_url"):
        raise Failure("give one source to export, not --db and --url")
    if last is not None and last < first:
        raise Failure(f"--to {last} is before --from {first}")
    progress = Progress(0, enabled=not as_json and sys.stderr.isatty(), verb="exporting")
    engine = None
    source: LogSource
    if url is not None:
        if log_key is None:
            raise Failure("--url needs --log-key: the log's public key is what you trust")
        source = HttpSource(url)
        registrar = None
    else:
        engine = open_existing(database_url)
        meta = LedgerReader(engine).meta()
        log_key = log_key or meta["log_vkey"]
        registrar = meta["registrar_vkey"]
        source = DbSource(engine)
    try:
        result = export_bundle(
            source,
            out,
            first=first,
            last=last,
            log_vkey=log_key,
            registrar_vkey=registrar,
            on_progress=progress,
        )
    finally:
        progress.close()
        source.close()
        if engine is not None:
            engine.dispose()
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    click.echo(
        f"exported records {result.first}..{result.end - 1} ({result.end - result.first}), "
        f"{result.checkpoints} checkpoints"
        + (f", {result.registry_records} registry records" if result.first else "")
        + f", anchored to tree size {result.tree_size}: {result.path} ({result.bytes:,} bytes)"
    )


@click.group()
def prove() -> None:
    """Make inclusion and consistency proofs."""


@prove.command("inclusion")
@db_option
@click.option("--url", default=None, help="Prove through a ledger's HTTP API instead of --db.")
@click.option("--seq", type=click.IntRange(min=0), required=True, help="The record (leaf index).")
@click.option(
    "--tree-size",
    type=click.IntRange(min=1),
    default=None,
    help="Prove against this tree size (default: the latest checkpoint; --db only).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the proof file here (check it with `rxledger verify --proof`); else print it.",
)
@click.pass_context
def prove_inclusion(
    ctx: click.Context,
    *,
    database_url: str | None,
    url: str | None,
    seq: int,
    tree_size: int | None,
    out: Path | None,
) -> None:
    """A proof that record SEQ is in the log, checkable offline with the log's key."""
    from ledger.auditing import DbSource, HttpSource, inclusion_proof_file  # noqa: PLC0415
    from ledger.bundle import proof_document  # noqa: PLC0415
    from ledger.core.checkpoint import note_size  # noqa: PLC0415
    from ledger.store.reader import LedgerReader  # noqa: PLC0415

    if url is not None and _from_command_line(ctx, "database_url"):
        raise Failure("give one source, not --db and --url")
    if url is not None:
        if tree_size is not None:
            raise Failure("--tree-size goes with --db; --url proves against the latest checkpoint")
        source = HttpSource(url)
        try:
            note = source.latest_checkpoint()
            document = inclusion_proof_file(source, seq, origin=note.split("\n", 1)[0])
        finally:
            source.close()
    else:
        engine = open_existing(database_url)
        try:
            reader = LedgerReader(engine)
            meta = reader.meta()
            if tree_size is None:
                document = inclusion_proof_file(DbSource(engine), seq, origin=meta["origin"])
            else:
                note = reader.checkpoint(tree_size)
                document = proof_document(
                    record_bytes=reader.record(seq).record_bytes,
                    leaf_index=seq,
                    tree_size=note_size(note),
                    hashes=reader.inclusion_proof(seq, tree_size),
                    checkpoint=note,
                    origin=meta["origin"],
                )
        finally:
            engine.dispose()
    text = json.dumps(document, indent=2)
    if out is None:
        click.echo(text)
        return
    out.write_text(text + "\n")
    click.echo(f"proof of record {seq} in tree size {document['tree_size']} written to {out}")


@prove.command("consistency")
@db_option
@click.option("--first", type=click.IntRange(min=1), required=True)
@click.option(
    "--second",
    type=click.IntRange(min=0),
    default=None,
    help="Default: the latest checkpoint's size.",
)
def prove_consistency(database_url: str | None, first: int, second: int | None) -> None:
    """Print a consistency proof between two tree sizes as JSON."""
    from ledger.core.checkpoint import note_size  # noqa: PLC0415
    from ledger.store.reader import LedgerReader  # noqa: PLC0415

    engine = open_existing(database_url)
    try:
        reader = LedgerReader(engine)
        second_note = reader.latest_checkpoint() if second is None else reader.checkpoint(second)
        second = note_size(second_note)
        first_note = reader.checkpoint(first)
        proof = reader.consistency_proof(first, second)
    finally:
        engine.dispose()
    click.echo(
        json.dumps(
            {
                "first": first,
                "second": second,
                "hashes": [h.hex() for h in proof],
                "first_checkpoint": first_note,
                "second_checkpoint": second_note,
            },
            indent=2,
        )
    )

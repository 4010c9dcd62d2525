"""Offline bundles and proof files: exported from a database or over HTTP,
checked with the log's key and nothing else."""

from __future__ import annotations

import base64
import json
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from ledger.auditing import DbSource, HttpSource, LogSource, export_bundle, inclusion_proof_file
from ledger.bundle import (
    ANCHOR,
    CHECKPOINTS,
    MANIFEST,
    RECORDS,
    REGISTRY,
    BundleError,
    verify_bundle,
    verify_proof_document,
)
from ledger.core.errors import (
    CheckpointError,
    LedgerError,
    RangeError,
    RecordError,
    VerificationError,
)
from ledger.core.note import Signer
from ledger.core.statement import format_time, parse_time
from ledger.demo import run_demo
from ledger.store.schema import payloads
from tests.conftest import LedgerEnv


@pytest.fixture
def demo_env(ledger_env: LedgerEnv, tmp_path: Path) -> LedgerEnv:
    run_demo(
        ledger_env.ledger,
        ledger_env.registrar,
        prescriptions=10,
        seed=3,
        key_dir=tmp_path / "settlement",
        batch_size=25,
    )
    return ledger_env


def db_source(env: LedgerEnv) -> DbSource:
    return DbSource(env.ledger.engine)


@pytest.fixture
def http_source(demo_env: LedgerEnv) -> Iterator[HttpSource]:
    with TestClient(create_app(demo_env.ledger)) as http:
        yield HttpSource("http://testserver", http=http, page=40)


def export(env: LedgerEnv, source: LogSource, out: Path, **kwargs: Any) -> Path:
    export_bundle(source, out, log_vkey=env.log_vkey, registrar_vkey=env.registrar_vkey, **kwargs)
    return out


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def rewrite(path: Path, out: Path, change: dict[str, bytes], *, fix_manifest: bool = True) -> Path:
    """A copy of a bundle with some members replaced; by default the manifest's
    hashes are updated too, as a forger would."""
    import hashlib  # noqa: PLC0415

    files = members(path) | change
    manifest = json.loads(files[MANIFEST])
    if fix_manifest:
        for name in change:
            if name != MANIFEST:
                manifest["files"][name] = {
                    "sha256": hashlib.sha256(files[name]).hexdigest(),
                    "bytes": len(files[name]),
                }
        files[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out


def lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def unlines(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_a_whole_log_exported_from_the_database_verifies(
    demo_env: LedgerEnv, tmp_path: Path
) -> None:
    size = demo_env.ledger.reader.head().size
    bundle = export(demo_env, db_source(demo_env), tmp_path / "all.zip")

    result = verify_bundle(bundle, log_key=demo_env.log_vkey, registrar_key=demo_env.registrar_vkey)

    assert (result.first, result.end, result.tree_size) == (0, size, size)
    assert result.log_key_pinned
    manifest = json.loads(members(bundle)[MANIFEST])
    assert manifest["records"] == size
    stored = [s for s, _ in demo_env.ledger.reader.iter_checkpoints() if s > 0]
    assert manifest["checkpoints"] == result.checkpoints_verified == len(stored)
    assert "never exported" in manifest["payloads"]


def test_a_whole_log_exported_over_http_verifies(
    demo_env: LedgerEnv, http_source: HttpSource, tmp_path: Path
) -> None:
    bundle = export(demo_env, http_source, tmp_path / "http.zip")

    result = verify_bundle(bundle, log_key=demo_env.log_vkey)

    assert result.end == demo_env.ledger.reader.head().size
    assert result.checkpoints_verified == 1  # the API serves the latest checkpoint


@pytest.mark.parametrize("over_http", [False, True], ids=["db", "http"])
def test_a_range_verifies_and_is_tied_to_the_full_checkpoint(
    demo_env: LedgerEnv, tmp_path: Path, request: pytest.FixtureRequest, over_http: bool
) -> None:
    size = demo_env.ledger.reader.head().size
    source = request.getfixturevalue("http_source") if over_http else db_source(demo_env)
    first, last = size // 3, 2 * size // 3
    bundle = export(demo_env, source, tmp_path / "range.zip", first=first, last=last)

    result = verify_bundle(bundle, log_key=demo_env.log_vkey)

    assert (result.first, result.end, result.tree_size) == (first, last + 1, size)
    registry = lines(members(bundle)[REGISTRY])
    assert result.registry_records == len(registry) > 0
    assert all(r["seq"] < first for r in registry)
    # a range ending at the log's end is tied by the checkpoint itself
    tail = export(demo_env, source, tmp_path / "tail.zip", first=size - 5)
    assert verify_bundle(tail, log_key=demo_env.log_vkey).end == size


def test_payload_contents_are_never_exported(demo_env: LedgerEnv, tmp_path: Path) -> None:
    with demo_env.ledger.engine.connect() as conn:
        contents = [bytes(c) for c in conn.execute(select(payloads.c.content)).scalars() if c]
    assert contents
    bundle = export(demo_env, db_source(demo_env), tmp_path / "all.zip")
    everything = b"".join(members(bundle).values())
    records = b"".join(base64.b64decode(r["record"]) for r in lines(members(bundle)[RECORDS]))
    for content in contents:
        assert content not in everything
        assert content not in records


def test_a_forged_record_is_named(demo_env: LedgerEnv, tmp_path: Path) -> None:
    bundle = export(demo_env, db_source(demo_env), tmp_path / "all.zip")
    rows = lines(members(bundle)[RECORDS])
    victim = rows[7]
    data = base64.b64decode(victim["record"])
    victim["record"] = base64.b64encode(
        data.replace(b'"received_at":"2', b'"received_at":"1')
    ).decode()
    forged = rewrite(bundle, tmp_path / "forged.zip", {RECORDS: unlines(rows)})

    with pytest.raises(RecordError) as caught:
        verify_bundle(forged, log_key=demo_env.log_vkey)
    assert caught.value.seq == 7


def test_a_dropped_record_or_a_changed_member_fails(demo_env: LedgerEnv, tmp_path: Path) -> None:
    bundle = export(demo_env, db_source(demo_env), tmp_path / "all.zip")
    rows = lines(members(bundle)[RECORDS])
    dropped = rewrite(bundle, tmp_path / "dropped.zip", {RECORDS: unlines(rows[:5] + rows[6:])})
    with pytest.raises(LedgerError, match="expected seq 5"):
        verify_bundle(dropped, log_key=demo_env.log_vkey)
    # changed without fixing the manifest: the member's hash gives it away
    swapped = rewrite(
        bundle, tmp_path / "swapped.zip", {RECORDS: unlines(rows[:-1])}, fix_manifest=False
    )
    with pytest.raises(VerificationError):
        verify_bundle(swapped, log_key=demo_env.log_vkey)


def test_a_forged_range_is_not_the_logs(demo_env: LedgerEnv, tmp_path: Path) -> None:
    """The operator re-signs nothing here: the range's records are changed and
    one record re-timed, but no consistency proof ties the range to the signed checkpoint."""
    size = demo_env.ledger.reader.head().size
    signed = {s for s, _ in demo_env.ledger.reader.iter_checkpoints()}
    end = next(n for n in range(size - 10, 20, -1) if n not in signed)  # no checkpoint there
    bundle = export(demo_env, db_source(demo_env), tmp_path / "r.zip", first=10, last=end - 1)
    rows = lines(members(bundle)[RECORDS])
    last = rows[-1]
    data = base64.b64decode(last["record"])
    stamp = json.loads(data)["received_at"]
    later = format_time(parse_time(stamp) + timedelta(milliseconds=1))
    assert later != stamp
    last["record"] = base64.b64encode(data.replace(stamp.encode(), later.encode())).decode()
    forged = rewrite(bundle, tmp_path / "forged.zip", {RECORDS: unlines(rows)})

    with pytest.raises(VerificationError, match="not the log's records"):
        verify_bundle(forged, log_key=demo_env.log_vkey)


def test_a_registry_record_not_in_the_log_is_refused(demo_env: LedgerEnv, tmp_path: Path) -> None:
    size = demo_env.ledger.reader.head().size
    bundle = export(demo_env, db_source(demo_env), tmp_path / "r.zip", first=size // 2)
    registry = lines(members(bundle)[REGISTRY])
    registry[1]["inclusion"] = registry[1]["inclusion"][::-1]
    forged = rewrite(bundle, tmp_path / "forged.zip", {REGISTRY: unlines(registry)})

    with pytest.raises(RecordError) as caught:
        verify_bundle(forged, log_key=demo_env.log_vkey)
    assert caught.value.seq == registry[1]["seq"]
    # and a range whose signers' registrations were left out fails on the first one
    thin = rewrite(bundle, tmp_path / "thin.zip", {REGISTRY: b""})
    with pytest.raises(RecordError, match="unknown-actor"):
        verify_bundle(thin, log_key=demo_env.log_vkey)


def test_the_anchor_must_tie_the_range(demo_env: LedgerEnv, tmp_path: Path) -> None:
    size = demo_env.ledger.reader.head().size
    bundle = export(demo_env, db_source(demo_env), tmp_path / "r.zip", first=20, last=size - 20)
    anchor = json.loads(members(bundle)[ANCHOR])
    anchor["consistency"] = anchor["consistency"][:-1]
    bad = rewrite(bundle, tmp_path / "bad.zip", {ANCHOR: json.dumps(anchor).encode()})
    with pytest.raises(VerificationError):
        verify_bundle(bad, log_key=demo_env.log_vkey)


def test_the_log_key_is_pinned_or_said_to_be_the_bundles(
    demo_env: LedgerEnv, tmp_path: Path
) -> None:
    bundle = export(demo_env, db_source(demo_env), tmp_path / "all.zip")
    assert not verify_bundle(bundle).log_key_pinned
    other = Signer.generate(demo_env.origin)
    with pytest.raises(VerificationError, match="bundle is of the log"):
        verify_bundle(bundle, log_key=other.vkey)
    # a bundle that claims another key in its manifest does not verify under it either
    manifest = json.loads(members(bundle)[MANIFEST])
    manifest["log_vkey"] = other.vkey
    claimed = rewrite(bundle, tmp_path / "claimed.zip", {MANIFEST: json.dumps(manifest).encode()})
    with pytest.raises(LedgerError):
        verify_bundle(claimed)


def test_witness_quorum_on_the_anchor(demo_env: LedgerEnv, tmp_path: Path) -> None:
    from ledger.core.cosignature import witness_vkey  # noqa: PLC0415

    bundle = export(demo_env, db_source(demo_env), tmp_path / "all.zip")
    witness = Signer.generate("witness.example/w1")
    with pytest.raises(CheckpointError, match="0 valid witness cosignature"):
        verify_bundle(
            bundle, log_key=demo_env.log_vkey, witnesses=[witness_vkey(witness)], quorum=1
        )


def test_bad_files_are_clear_errors(demo_env: LedgerEnv, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a ZIP"):
        verify_bundle(junk)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(BundleError, match=f"no {MANIFEST}"):
        verify_bundle(empty)
    bundle = export(demo_env, db_source(demo_env), tmp_path / "all.zip")
    no_checkpoints = rewrite(bundle, tmp_path / "nocp.zip", {CHECKPOINTS: b""})
    with pytest.raises(BundleError, match="no checkpoint of the anchor size"):
        verify_bundle(no_checkpoints)


def test_export_refuses_bad_ranges_and_leaves_nothing_behind(
    demo_env: LedgerEnv, tmp_path: Path
) -> None:
    size = demo_env.ledger.reader.head().size
    out = tmp_path / "out" / "b.zip"
    out.parent.mkdir()
    for first, last in ((5, size), (size, None)):
        with pytest.raises(RangeError):
            export(demo_env, db_source(demo_env), out, first=first, last=last)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("over_http", [False, True], ids=["db", "http"])
def test_a_proof_file_checks_offline(
    demo_env: LedgerEnv, request: pytest.FixtureRequest, over_http: bool
) -> None:
    source = request.getfixturevalue("http_source") if over_http else db_source(demo_env)
    document = inclusion_proof_file(source, 9, origin=demo_env.origin)
    document = json.loads(json.dumps(document))  # as read back from the file

    result = verify_proof_document(document, log_key=demo_env.log_vkey)

    assert result.seq == 9
    assert result.tree_size == demo_env.ledger.reader.head().size
    other = Signer.generate(demo_env.origin)
    with pytest.raises(CheckpointError):
        verify_proof_document(document, log_key=other.vkey)
    moved = document | {"leaf_index": 8}
    with pytest.raises(RecordError):
        verify_proof_document(moved, log_key=demo_env.log_vkey)
    flipped = document | {"hashes": [h[::-1] for h in document["hashes"]]}
    with pytest.raises(RecordError, match="not included"):
        verify_proof_document(flipped, log_key=demo_env.log_vkey)
    record = base64.b64decode(document["record"]).replace(b'"seq":9', b'"seq":9 ')
    with pytest.raises(LedgerError):
        verify_proof_document(
            document | {"record": base64.b64encode(record).decode()}, log_key=demo_env.log_vkey
        )
    with pytest.raises(BundleError, match="format"):
        verify_proof_document(document | {"format": "x"}, log_key=demo_env.log_vkey)

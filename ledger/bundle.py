"""Offline evidence: bundles of records and single-record proof files.

Both are checked with the log's public key and nothing else: no database, no
network, no operator software but this module, the pure core and the domain
replay (ARCHITECTURE §2). Only the standard library's ``zipfile`` and
``json`` read them, so an auditor can also take them apart by hand.

A **bundle** is a ZIP file (``docs/verification.md`` describes every member):

``manifest.json``
    what the bundle holds: the log (origin, log and registrar keys), the
    records ``[first, end)``, the checkpoint it is anchored to (``tree_size``),
    how many records, checkpoints and registry records, and the SHA-256 and
    length of every other member. Written last.
``records.jsonl``
    one line per record: ``seq``, the exact record bytes (base64) and the
    digest of the payload stored beside it, if any. Payloads themselves are
    never exported: they hold patients' clinical data.
``checkpoints.jsonl``
    the signed checkpoints (with witness cosignatures) whose size falls in
    ``(first, end]``, and the anchor checkpoint of size ``tree_size``.
``anchor.json`` (ranged bundles only)
    what ties the records to the anchor checkpoint: record ``first - 1``
    with its inclusion proof in the tree of size ``first`` (which gives the
    Merkle frontier the range continues, and the hash its first ``prev``
    must be), and a consistency proof from ``end`` to ``tree_size``.
``registry.jsonl`` (ranged bundles only)
    every registry record (``actor.*``) before ``first``, each with its
    inclusion proof against the anchor checkpoint, so that every signature
    in the range can be checked against the keys registered at the time.

Verifying a bundle checks the chain, signatures and times of its records,
every checkpoint in it, that the records are the log's records
``first..end-1`` under the anchor checkpoint, and that every signer's key was
registered to it, valid at the time, in a role that may make the statement
(:class:`~ledger.domain.replay.SignerReplayer`). The flow rules (quantities,
consents, settlement) read the clinical payloads, which are never exported:
``verify --db`` replays them where the payloads are.

A **proof file** (``rxledger prove inclusion --out``) is one JSON document: a
record's exact bytes, its inclusion proof and the signed checkpoint it is
proved against.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint, note_size, open_checkpoint
from ledger.core.cosignature import WitnessVerifier, verify_cosignatures
from ledger.core.errors import (
    CheckpointError,
    EncodingError,
    KeyFormatError,
    LedgerError,
    ProofError,
    RecordError,
    VerificationError,
)
from ledger.core.note import Verifier
from ledger.core.record import Record, leaf_hash
from ledger.core.statement import format_time, now, verifier_for
from ledger.core.verify import Position, RecordItem, StreamVerifier
from ledger.domain.replay import SignerReplayer
from ledger.domain.rules import REGISTRY_TYPES

BUNDLE_FORMAT = "rxledger-bundle/1"
PROOF_FORMAT = "rxledger-inclusion-proof/1"
MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
CHECKPOINTS = "checkpoints.jsonl"
ANCHOR = "anchor.json"
REGISTRY = "registry.jsonl"

Progress = Callable[[int], None]


class BundleError(EncodingError):
    """A bundle or proof file that is not what its format says."""

    code = "bad-bundle"


class BundleMismatchError(VerificationError):
    """A bundle member that is not what the manifest says it is (altered or swapped)."""

    code = "bundle-mismatch"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise BundleError(f"{what}: expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:
        raise BundleError(f"{what}: not base64: {e}") from e


def _hashes(values: Any, what: str) -> list[bytes]:
    if not isinstance(values, list):
        raise BundleError(f"{what}: expected a list of hex hashes")
    out = []
    for i, value in enumerate(values):
        try:
            digest = bytes.fromhex(value)
        except (TypeError, ValueError) as e:
            raise BundleError(f"{what}[{i}]: not hex") from e
        if len(digest) != merkle.HASH_SIZE:
            raise BundleError(f"{what}[{i}]: expected {merkle.HASH_SIZE} bytes")
        out.append(digest)
    return out


# -- witnesses ---------------------------------------------------------------------


def check_quorum(note: str, witnesses: Sequence[str], quorum: int) -> list[str]:
    """The names of the listed witnesses whose cosignature on ``note`` verifies.

    Raises :class:`CheckpointError` when fewer than ``quorum`` do (``quorum``
    0 checks nothing). ``witnesses`` are cosignature vkey strings.
    """
    if quorum <= 0 and not witnesses:
        return []
    try:
        verifiers = [WitnessVerifier.from_vkey(vkey) for vkey in witnesses]
    except KeyFormatError as e:
        raise KeyFormatError(f"--witness: {e}") from e
    valid = sorted({c.name for c in verify_cosignatures(note, verifiers)})
    if len(valid) < quorum:
        size = note_size(note)
        raise CheckpointError(
            f"checkpoint at size {size}: {len(valid)} valid witness cosignature(s) "
            f"({', '.join(valid) or 'none'}), at least {quorum} required"
        )
    return valid


# -- writing -----------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    count: int = 0


class BundleWriter:
    """Writes a bundle member by member; :meth:`close` adds the manifest and
    moves the file into place (a failed export leaves no bundle behind)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_DEFLATED)
        self._members: dict[str, _Member] = {}

    def lines(self, name: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Write ``rows`` as JSON lines to member ``name``; returns how many."""
        member = self._members[name] = _Member(name)
        with self._zip.open(name, "w", force_zip64=True) as stream:
            for row in rows:
                data = json.dumps(row, separators=(",", ":"), sort_keys=True).encode() + b"\n"
                stream.write(data)
                member.sha256.update(data)
                member.size += len(data)
                member.count += 1
        return member.count

    def document(self, name: str, value: Mapping[str, Any]) -> None:
        data = json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"
        member = self._members[name] = _Member(name, size=len(data), count=1)
        member.sha256.update(data)
        self._zip.writestr(name, data)

    def close(self, manifest: Mapping[str, Any]) -> Path:
        files = {
            m.name: {"sha256": m.sha256.hexdigest(), "bytes": m.size}
            for m in self._members.values()
        }
        self._zip.writestr(
            MANIFEST, json.dumps({**manifest, "files": files}, indent=2, sort_keys=True) + "\n"
        )
        self._zip.close()
        os.replace(self._tmp, self.out)
        return self.out

    def abort(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)


def record_line(item: RecordItem, seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "record": _b64(item.record_bytes),
        "payload_digest": None if item.payload_digest is None else item.payload_digest.hex(),
    }


# -- reading -----------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    origin: str
    log_vkey: str
    registrar_vkey: str | None
    first: int
    end: int
    tree_size: int
    records: int
    checkpoints: int
    registry_records: int
    files: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any]

    @property
    def ranged(self) -> bool:
        return self.first > 0

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
        except ValueError as e:
            raise BundleError(f"{MANIFEST}: not JSON: {e}") from e
        if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise BundleError(f"{MANIFEST}: format: expected {BUNDLE_FORMAT!r}, found {found!r}")
        try:
            manifest = cls(
                origin=str(raw["origin"]),
                log_vkey=str(raw["log_vkey"]),
                registrar_vkey=raw.get("registrar_vkey"),
                first=_count(raw["first"], "first"),
                end=_count(raw["end"], "end"),
                tree_size=_count(raw["tree_size"], "tree_size"),
                records=_count(raw["records"], "records"),
                checkpoints=_count(raw["checkpoints"], "checkpoints"),
                registry_records=_count(raw.get("registry_records", 0), "registry_records"),
                files=dict(raw["files"]),
                raw=raw,
            )
        except KeyError as e:
            raise BundleError(f"{MANIFEST}: missing field {e}") from e
        except (TypeError, ValueError) as e:
            raise BundleError(f"{MANIFEST}: {e}") from e
        if not manifest.first <= manifest.end <= manifest.tree_size or manifest.end == 0:
            raise BundleError(
                f"{MANIFEST}: range: want 0 <= first ({manifest.first}) < end ({manifest.end}) "
                f"<= tree_size ({manifest.tree_size})"
            )
        if manifest.records != manifest.end - manifest.first:
            raise BundleError(
                f"{MANIFEST}: records: {manifest.records}, but the range holds "
                f"{manifest.end - manifest.first}"
            )
        return manifest


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleError(f"{MANIFEST}: {what}: expected a count, got {value!r}")
    return value


class _Bundle:
    """Read access to a bundle's members, each checked against the manifest."""

    def __init__(self, path: Path) -> None:
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise BundleError(f"{path}: not a bundle (not a ZIP file): {e}") from e
        try:
            self.manifest = Manifest.parse(self.zip.read(MANIFEST))
        except KeyError as e:
            raise BundleError(f"{path}: not a bundle: no {MANIFEST}") from e

    def close(self) -> None:
        self.zip.close()

    def _open(self, name: str) -> IO[bytes]:
        if name not in self.manifest.files:
            raise BundleError(f"{MANIFEST} does not list {name}")
        try:
            return self.zip.open(name)
        except KeyError as e:
            raise BundleError(f"{name}: listed in the manifest but missing") from e

    def lines(self, name: str) -> Iterator[dict[str, Any]]:
        """The JSON lines of a member; its hash and length are checked at the end."""
        expected = self.manifest.files.get(name)
        digest = hashlib.sha256()
        size = 0
        with self._open(name) as stream:
            for number, line in enumerate(stream, start=1):
                digest.update(line)
                size += len(line)
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise BundleError(f"{name} line {number}: not JSON: {e}") from e
                if not isinstance(row, dict):
                    raise BundleError(f"{name} line {number}: expected an object")
                yield row
        self._check_member(name, expected, digest.hexdigest(), size)

    def document(self, name: str) -> dict[str, Any]:
        with self._open(name) as stream:
            data = stream.read()
        self._check_member(
            name, self.manifest.files.get(name), hashlib.sha256(data).hexdigest(), len(data)
        )
        try:
            value = json.loads(data)
        except ValueError as e:
            raise BundleError(f"{name}: not JSON: {e}") from e
        if not isinstance(value, dict):
            raise BundleError(f"{name}: expected an object")
        return value

    @staticmethod
    def _check_member(
        name: str, expected: Mapping[str, Any] | None, sha256: str, size: int
    ) -> None:
        if expected is None:
            return
        if expected.get("sha256") != sha256 or expected.get("bytes") != size:
            raise BundleMismatchError(
                f"{name}: expected sha256 {expected.get('sha256')} ({expected.get('bytes')} "
                f"bytes) as the manifest says, found {sha256} ({size} bytes)"
            )


@dataclass(frozen=True)
class BundleResult:
    first: int
    end: int
    tree_size: int
    root: bytes
    checkpoints_verified: int
    registry_records: int
    #: whether the log key came from the caller (True) or from the bundle itself
    log_key_pinned: bool
    witnesses: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": True,
            "first": self.first,
            "end": self.end,
            "records": self.end - self.first,
            "tree_size": self.tree_size,
            "root_hash": self.root.hex(),
            "checkpoints_verified": self.checkpoints_verified,
            "registry_records": self.registry_records,
            "rules_checked": "signers",
            "log_key_pinned": self.log_key_pinned,
            "witnesses": list(self.witnesses),
            "seconds": round(self.seconds, 3),
        }


def read_manifest(path: Path) -> Manifest:
    bundle = _Bundle(path)
    bundle.close()
    return bundle.manifest


def verify_bundle(
    path: Path,
    *,
    log_key: str | None = None,
    registrar_key: str | None = None,
    witnesses: Sequence[str] = (),
    quorum: int = 0,
    on_progress: Progress | None = None,
) -> BundleResult:
    """Verify a bundle offline. ``log_key`` pins the log's key (else the
    manifest's own is used, and the result says so)."""
    started = time.perf_counter()
    bundle = _Bundle(path)
    try:
        manifest = bundle.manifest
        verifier = Verifier.from_vkey(log_key or manifest.log_vkey)
        if log_key and manifest.log_vkey != verifier.vkey:
            raise VerificationError(
                f"the bundle is of the log {manifest.log_vkey}, not of {verifier.vkey}"
            )
        registrar = registrar_key or manifest.registrar_vkey
        notes = [_note(row) for row in bundle.lines(CHECKPOINTS)]
        anchor_note = next((n for n in notes if note_size(n) == manifest.tree_size), None)
        if anchor_note is None:
            raise BundleError(
                f"{CHECKPOINTS}: no checkpoint of the anchor size {manifest.tree_size}"
            )
        anchor, _ = open_checkpoint(anchor_note, origin=manifest.origin, verifier=verifier)
        valid_witnesses = check_quorum(anchor_note, witnesses, quorum)

        replay = SignerReplayer(registrar_key=registrar)
        if manifest.ranged:
            stream, registry_count = _resume_range(bundle, manifest, anchor, verifier, replay)
        else:
            stream = StreamVerifier(log_key=verifier, origin=manifest.origin, replay=replay)
            registry_count = 0
        pending = sorted(
            (note_size(n), n) for n in notes if manifest.first < note_size(n) <= manifest.end
        )
        cursor = 0
        for row in bundle.lines(RECORDS):
            seq = row.get("seq")
            if seq != stream.size:
                raise RecordError(f"{RECORDS}: expected seq {stream.size}, found {seq!r}")
            digest = row.get("payload_digest")
            stream.add(
                RecordItem(
                    _unb64(row.get("record"), f"{RECORDS} seq {seq}"),
                    payload_digest=None if digest is None else bytes.fromhex(str(digest)),
                )
            )
            while cursor < len(pending) and pending[cursor][0] == stream.size:
                stream.check_checkpoint(pending[cursor][1])
                cursor += 1
            if on_progress is not None:
                on_progress(stream.size - manifest.first)
        if stream.size != manifest.end:
            raise BundleError(
                f"{RECORDS}: the manifest says records up to {manifest.end - 1}, "
                f"the bundle ends at {stream.size - 1}"
            )
        root = stream.root()
        if manifest.end == manifest.tree_size:
            if stream.last_checkpoint_size != manifest.end:
                stream.check_checkpoint(anchor_note)
        else:
            proof = _hashes(bundle.document(ANCHOR).get("consistency"), f"{ANCHOR} consistency")
            try:
                merkle.verify_consistency(
                    manifest.end, manifest.tree_size, proof, root, anchor.root_hash
                )
            except ProofError as e:
                raise VerificationError(
                    f"records {manifest.first}..{manifest.end - 1} are not the log's records "
                    f"under the checkpoint of size {manifest.tree_size}: {e}"
                ) from e
        return BundleResult(
            first=manifest.first,
            end=manifest.end,
            tree_size=manifest.tree_size,
            root=anchor.root_hash,
            checkpoints_verified=stream.checkpoints_verified,
            registry_records=registry_count,
            log_key_pinned=bool(log_key),
            witnesses=tuple(valid_witnesses),
            seconds=time.perf_counter() - started,
        )
    finally:
        bundle.close()


def _check_signature(record: Record) -> None:
    """The actor's signature on the record's statement, over the exact bytes."""
    key = record.statement().key
    try:
        valid = verifier_for(key).verify(record.statement_bytes, record.signature)
    except KeyFormatError as e:
        raise RecordError(f"statement.key: {e}", seq=record.seq) from e
    if not valid:
        raise RecordError(f"statement signature does not verify under key {key}", seq=record.seq)


def _note(row: Mapping[str, Any]) -> str:
    note = row.get("note")
    if not isinstance(note, str):
        raise BundleError(f"{CHECKPOINTS}: expected a signed note per line")
    return note


def _resume_range(
    bundle: _Bundle,
    manifest: Manifest,
    anchor: Checkpoint,
    verifier: Verifier,
    replay: SignerReplayer,
) -> tuple[StreamVerifier, int]:
    """Replay the registry records before the range and place the stream at ``first``."""
    count = 0
    last = -1
    for row in bundle.lines(REGISTRY):
        seq = row.get("seq")
        if not isinstance(seq, int) or not last < seq < manifest.first:
            raise BundleError(
                f"{REGISTRY}: seq {seq!r}: want ascending seqs before {manifest.first}"
            )
        last = seq
        data = _unb64(row.get("record"), f"{REGISTRY} seq {seq}")
        proof = _hashes(row.get("inclusion"), f"{REGISTRY} seq {seq} inclusion")
        try:
            merkle.verify_inclusion(
                leaf_hash(data), seq, manifest.tree_size, proof, anchor.root_hash
            )
        except ProofError as e:
            raise RecordError(
                f"registry record is not in the checkpoint of size {manifest.tree_size}: {e}",
                seq=seq,
            ) from e
        record = Record.from_bytes(data, expected_seq=seq)
        statement = record.statement()
        if statement.type not in REGISTRY_TYPES:
            raise RecordError(
                f"{REGISTRY}: a {statement.type} record is not a registry record", seq=seq
            )
        _check_signature(record)
        replay(seq, statement)
        count += 1
    doc = bundle.document(ANCHOR)
    data = _unb64(doc.get("record"), f"{ANCHOR} record")
    record = Record.from_bytes(data, expected_seq=manifest.first - 1)
    proof = _hashes(doc.get("inclusion"), f"{ANCHOR} inclusion")
    try:
        frontier = merkle.frontier_from_inclusion(leaf_hash(data), manifest.first, proof)
    except ProofError as e:
        raise BundleError(f"{ANCHOR}: inclusion proof of record {manifest.first - 1}: {e}") from e
    position = Position(
        size=manifest.first,
        frontier=tuple(frontier),
        head=hashlib.sha256(data).digest(),
        last_received=record.received_at,
    )
    stream = StreamVerifier.resume(
        position, log_key=verifier, origin=manifest.origin, replay=replay
    )
    return stream, count


# -- proof files --------------------------------------------------------------------


def proof_document(
    *,
    record_bytes: bytes,
    leaf_index: int,
    tree_size: int,
    hashes: Sequence[bytes],
    checkpoint: str,
    origin: str,
) -> dict[str, Any]:
    """A self-contained inclusion proof for one record (``rxledger verify --proof``)."""
    return {
        "format": PROOF_FORMAT,
        "origin": origin,
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "record": _b64(record_bytes),
        "record_hash": hashlib.sha256(record_bytes).hexdigest(),
        "leaf_hash": leaf_hash(record_bytes).hex(),
        "hashes": [h.hex() for h in hashes],
        "checkpoint": checkpoint,
        "created_at": format_time(now()),
    }


@dataclass(frozen=True)
class ProofResult:
    seq: int
    tree_size: int
    record_hash: bytes
    statement_type: str
    actor: str
    witnesses: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": True,
            "seq": self.seq,
            "tree_size": self.tree_size,
            "record_hash": self.record_hash.hex(),
            "type": self.statement_type,
            "actor": self.actor,
            "witnesses": list(self.witnesses),
        }


def verify_proof_document(
    document: Mapping[str, Any],
    *,
    log_key: str,
    witnesses: Sequence[str] = (),
    quorum: int = 0,
) -> ProofResult:
    """Check a proof file: the record's own signature, its leaf in the signed tree."""
    if document.get("format") != PROOF_FORMAT:
        raise BundleError(
            f"proof file format: expected {PROOF_FORMAT!r}, found {document.get('format')!r}"
        )
    verifier = Verifier.from_vkey(log_key)
    origin = document.get("origin")
    if not isinstance(origin, str):
        raise BundleError("proof file: origin: expected a string")
    note = document.get("checkpoint")
    if not isinstance(note, str):
        raise BundleError("proof file: checkpoint: expected a signed note")
    try:
        checkpoint, _ = open_checkpoint(note, origin=origin, verifier=verifier)
    except LedgerError as e:
        raise CheckpointError(f"proof file checkpoint: {e}") from e
    seq = document.get("leaf_index")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BundleError("proof file: leaf_index: expected an integer")
    if document.get("tree_size") != checkpoint.size:
        raise BundleError(
            f"proof file: tree_size {document.get('tree_size')!r}, but its checkpoint is of "
            f"size {checkpoint.size}"
        )
    data = _unb64(document.get("record"), "proof file record")
    record = Record.from_bytes(data, expected_seq=seq)
    statement = record.statement()
    _check_signature(record)
    proof = _hashes(document.get("hashes"), "proof file hashes")
    try:
        merkle.verify_inclusion(leaf_hash(data), seq, checkpoint.size, proof, checkpoint.root_hash)
    except ProofError as e:
        raise RecordError(
            f"not included in the checkpoint of size {checkpoint.size}: {e}", seq=seq
        ) from e
    valid = check_quorum(note, witnesses, quorum)
    return ProofResult(
        seq=seq,
        tree_size=checkpoint.size,
        record_hash=record.hash,
        statement_type=statement.type,
        actor=statement.actor,
        witnesses=tuple(valid),
    )

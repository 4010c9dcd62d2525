"""The auditor's side: logs read from a database or over HTTP, incremental
remote verification with a state file, and exports to offline bundles.

An auditor who does not trust the operator pins the log's public key and
keeps, in a state file, the last checkpoint they verified. Each later run
asks the log for a consistency proof from that checkpoint to the newest one
before it reads anything else: a rewritten, forked or shrunk history fails
there, with both signed checkpoints and the proof as evidence
(:class:`~ledger.core.errors.InconsistencyError`), whatever the operator did
to its own database and however well it re-signed it.

What a run checks of each record is what the offline verifier checks without
payloads (:class:`~ledger.domain.replay.SignerReplayer`): its chain link,
signature and times, its place in the Merkle tree, and that its signer's key
was registered to it, valid at the time, in a role that may make it. The flow
rules read patients' clinical payloads, which the public API never serves:
``verify --db`` replays them where the payloads are.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy import Engine, select

from ledger.bundle import (
    ANCHOR,
    BUNDLE_FORMAT,
    CHECKPOINTS,
    RECORDS,
    REGISTRY,
    BundleWriter,
    check_quorum,
    proof_document,
    record_line,
)
from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint, note_size, open_checkpoint
from ledger.core.errors import (
    EncodingError,
    InconsistencyError,
    InconsistencyEvidence,
    LedgerError,
    NotFoundError,
    ProofError,
    RangeError,
)
from ledger.core.note import Verifier
from ledger.core.record import Record
from ledger.core.statement import format_time, now
from ledger.core.verify import Position, RecordItem, StreamVerifier
from ledger.domain.replay import SignerReplayer
from ledger.domain.rules import REGISTRY_TYPES
from ledger.store.reader import LedgerReader
from ledger.store.schema import records

STATE_FORMAT = "rxledger-auditor-state/1"
PAGE = 1000

Progress = Callable[[int, int], None]


class SourceError(LedgerError):
    """The log could not be read (network, HTTP error, a reply of the wrong shape)."""

    code = "source-unavailable"


# -- where a log is read from ------------------------------------------------------


class LogSource(Protocol):
    """A log as the auditor reads it; nothing read from it is trusted unchecked."""

    name: str

    def latest_checkpoint(self) -> str: ...

    def checkpoints(self, after: int, upto: int) -> Iterator[str]:
        """Signed checkpoints with ``after < size <= upto``, ascending (may be none)."""
        ...

    def records(self, start: int, end: int) -> Iterator[RecordItem]: ...

    def registry_records(self, before: int) -> Iterator[tuple[int, bytes]]: ...

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]: ...

    def consistency_proof(self, first: int, second: int) -> list[bytes]: ...

    def close(self) -> None: ...


class HttpSource:
    """A log read through its HTTP API (``/v1/...``), with retries on transient errors."""

    def __init__(
        self,
        url: str,
        *,
        http: httpx.Client | None = None,
        page: int = PAGE,
        retries: int = 4,
        timeout: float = 60.0,
    ) -> None:
        self.name = url
        self.http = http or httpx.Client(base_url=url, timeout=timeout)
        self.page = page
        self.retries = retries

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, **params: Any) -> httpx.Response:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = self.http.get(path, params=params)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise SourceError(f"cannot reach {self.name}: {type(e).__name__}: {e}") from e
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                if attempt == self.retries:
                    raise SourceError(f"{self.name}{path}: HTTP {response.status_code}")
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, path: str, **params: Any) -> Any:
        response = self._get(path, **params)
        try:
            body = response.json()
        except ValueError as e:
            raise SourceError(
                f"{self.name}{path}: HTTP {response.status_code} with no JSON body"
            ) from e
        if response.status_code == 404:
            raise NotFoundError(str(body.get("detail") if isinstance(body, dict) else body))
        if response.status_code != 200:
            detail = body.get("detail") if isinstance(body, dict) else None
            raise SourceError(f"{self.name}{path}: HTTP {response.status_code}: {detail}")
        if not isinstance(body, dict):
            raise SourceError(f"{self.name}{path}: expected a JSON object")
        return body

    def latest_checkpoint(self) -> str:
        response = self._get("/v1/checkpoint")
        if response.status_code != 200:
            raise SourceError(f"{self.name}/v1/checkpoint: HTTP {response.status_code}")
        return response.text

    def checkpoints(self, after: int, upto: int) -> Iterator[str]:
        return iter(())  # the API serves the latest checkpoint and proofs, not every one

    def records(self, start: int, end: int) -> Iterator[RecordItem]:
        seq = start
        while seq < end:
            body = self._json("/v1/records", start=seq, limit=min(self.page, end - seq))
            page = body.get("records")
            if not isinstance(page, list) or not page:
                raise SourceError(f"{self.name}: no records from {seq}, expected up to {end - 1}")
            for entry in page:
                data = _record_bytes(entry, self.name)
                yield RecordItem(data)
                seq += 1
                if seq >= end:
                    return

    def registry_records(self, before: int) -> Iterator[tuple[int, bytes]]:
        start = 0
        while start < before:
            body = self._json(
                "/v1/records",
                start=start,
                limit=self.page,
                type=sorted(REGISTRY_TYPES),
                before=before,
            )
            page = body.get("records")
            if not isinstance(page, list):
                raise SourceError(f"{self.name}/v1/records: expected a records list")
            for entry in page:
                yield int(entry["seq"]), _record_bytes(entry, self.name)
            following = body.get("next_start")
            if not page or not isinstance(following, int):
                return
            start = following

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        body = self._json("/v1/proofs/inclusion", leaf_index=leaf_index, tree_size=tree_size)
        return _hex_list(body.get("hashes"), self.name)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        body = self._json("/v1/proofs/consistency", first=first, second=second)
        return _hex_list(body.get("hashes"), self.name)


def _record_bytes(entry: Any, where: str) -> bytes:
    try:
        return base64.b64decode(entry["record_bytes"], validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{where}: a record without valid record_bytes") from e


def _hex_list(values: Any, where: str) -> list[bytes]:
    try:
        return [bytes.fromhex(v) for v in values]
    except (TypeError, ValueError) as e:
        raise SourceError(f"{where}: a proof that is not a list of hex hashes") from e


class DbSource:
    """A log read from its database (the operator's own view, or a replica)."""

    def __init__(self, engine: Engine, *, name: str = "database") -> None:
        self.name = name
        self.engine = engine
        self.reader = LedgerReader(engine)

    def close(self) -> None:
        pass  # the caller owns the engine

    def latest_checkpoint(self) -> str:
        return self.reader.latest_checkpoint_cosigned()

    def checkpoints(self, after: int, upto: int) -> Iterator[str]:
        for size, note in self.reader.iter_checkpoints(after=after):
            if size > upto:
                return
            yield note

    def records(self, start: int, end: int) -> Iterator[RecordItem]:
        for item in self.reader.iter_records(start=start):
            seq = int(item.columns[0]) if item.columns else -1  # RECORD_COLUMNS[0]
            if seq >= end:
                return
            yield item

    def registry_records(self, before: int) -> Iterator[tuple[int, bytes]]:
        query = (
            select(records.c.seq, records.c.record_bytes)
            .where(records.c.type.in_(sorted(REGISTRY_TYPES)), records.c.seq < before)
            .order_by(records.c.seq)
        )
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield int(row.seq), bytes(row.record_bytes)

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> list[bytes]:
        return self.reader.inclusion_proof(leaf_index, tree_size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.reader.consistency_proof(first, second)


# -- the auditor's state ------------------------------------------------------------


@dataclass
class AuditorState:
    """What an auditor keeps between runs (a gzip-compressed JSON file).

    ``checkpoint`` is the last checkpoint verified end to end: the next run
    demands consistency from it. ``position`` and ``replay`` say where the
    verified stream stands, which is the checkpoint's size, or further when
    a run was interrupted on its way to ``target`` (resumed next time).
    """

    origin: str
    log_vkey: str
    registrar_vkey: str | None
    source: str
    checkpoint: str | None
    position: Position
    replay: dict[str, Any]
    target: str | None = None
    verified_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "origin": self.origin,
            "log_vkey": self.log_vkey,
            "registrar_vkey": self.registrar_vkey,
            "source": self.source,
            "checkpoint": self.checkpoint,
            "target": self.target,
            "verified_at": self.verified_at,
            "position": self.position.to_json(),
            "replay": self.replay,
        }

    @classmethod
    def load(cls, path: Path) -> AuditorState:
        try:
            with gzip.open(path, "rt", encoding="utf-8") as stream:
                raw = json.load(stream)
        except (OSError, EOFError, ValueError) as e:
            raise EncodingError(f"state file {path} does not parse: {e}") from e
        if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
            raise EncodingError(f"state file {path}: not an rxledger auditor state")
        try:
            return cls(
                origin=str(raw["origin"]),
                log_vkey=str(raw["log_vkey"]),
                registrar_vkey=raw.get("registrar_vkey"),
                source=str(raw.get("source", "")),
                checkpoint=raw.get("checkpoint"),
                position=Position.from_json(raw["position"]),
                replay=dict(raw["replay"]),
                target=raw.get("target"),
                verified_at=raw.get("verified_at"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EncodingError(f"state file {path}: {e}") from e

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old state or the new, never half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as stream:
                stream.write(json.dumps(self.to_json(), separators=(",", ":")).encode())
            with open(tmp, "rb") as check:
                os.fsync(check.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class RemoteResult:
    tree_size: int
    root: bytes
    previous_size: int
    fetched: int
    witnesses: tuple[str, ...]
    seconds: float
    checkpoint: str

    @property
    def rate(self) -> float:
        return self.fetched / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": True,
            "tree_size": self.tree_size,
            "root_hash": self.root.hex(),
            "previous_size": self.previous_size,
            "records_fetched": self.fetched,
            "witnesses": list(self.witnesses),
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.rate, 1),
        }


def _inconsistent(
    message: str, old: str, new: str, proof: Sequence[bytes] = ()
) -> InconsistencyError:
    return InconsistencyError(
        message,
        evidence=InconsistencyEvidence(old_checkpoint=old, new_checkpoint=new, proof=tuple(proof)),
    )


def check_consistent(
    source: LogSource, old_note: str, old: Checkpoint, new_note: str, new: Checkpoint
) -> None:
    """Raise :class:`InconsistencyError` unless ``new`` extends ``old``."""
    if new.size < old.size:
        raise _inconsistent(
            f"the log shrank: it was verified at size {old.size}, it now claims size {new.size}",
            old_note,
            new_note,
        )
    if new.size == old.size:
        if new.root_hash != old.root_hash:
            raise _inconsistent(
                f"two checkpoints of size {new.size} with different roots "
                f"({old.root_hash.hex()} verified before, {new.root_hash.hex()} now): "
                "the log forked",
                old_note,
                new_note,
            )
        return
    proof = source.consistency_proof(old.size, new.size)
    try:
        merkle.verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash)
    except ProofError as e:
        raise _inconsistent(
            f"the checkpoint of size {new.size} is not consistent with the one verified "
            f"before (size {old.size}): history was rewritten ({e})",
            old_note,
            new_note,
            proof,
        ) from e


def verify_remote(
    source: LogSource,
    *,
    state_path: Path | None,
    log_key: str | None,
    registrar_key: str | None = None,
    witnesses: Sequence[str] = (),
    quorum: int = 0,
    on_progress: Progress | None = None,
    save_every: float = 60.0,
) -> RemoteResult:
    """Verify ``source`` from where ``state_path`` left off (or from record 0).

    The state is saved every ``save_every`` seconds of downloading and when
    the run is interrupted, so a long first run resumes where it stopped; it
    only moves its verified checkpoint once the new one checks out.
    """
    started = time.perf_counter()
    state = AuditorState.load(state_path) if state_path and state_path.exists() else None
    if state is not None and log_key and Verifier.from_vkey(log_key).vkey != state.log_vkey:
        raise EncodingError(
            f"the state file is for the log key {state.log_vkey}, not {log_key}: "
            "use another --state file"
        )
    pinned = log_key or (state.log_vkey if state else None)
    if not pinned:
        raise EncodingError("--log-key is required: the log's public key is what you trust")
    verifier = Verifier.from_vkey(pinned)
    origin = state.origin if state else verifier.name
    latest_note = source.latest_checkpoint()
    latest, _ = open_checkpoint(latest_note, origin=origin, verifier=verifier)
    if state is not None and state.checkpoint is not None:
        old, _ = open_checkpoint(state.checkpoint, origin=origin, verifier=verifier)
        check_consistent(source, state.checkpoint, old, latest_note, latest)
    if state is not None and state.target is not None:
        target, _ = open_checkpoint(state.target, origin=origin, verifier=verifier)
        check_consistent(source, state.target, target, latest_note, latest)

    if state is not None:
        registrar = registrar_key or state.registrar_vkey
        replay = SignerReplayer.restore(state.replay, registrar_key=registrar)
        stream = StreamVerifier.resume(
            state.position, log_key=verifier, origin=origin, replay=replay
        )
        previous = note_size(state.checkpoint) if state.checkpoint else 0
    else:
        registrar = registrar_key
        replay = SignerReplayer(registrar_key=registrar)
        stream = StreamVerifier(log_key=verifier, origin=origin, replay=replay)
        previous = 0
    if stream.size > latest.size:
        raise _inconsistent(
            f"the log shrank: records up to {stream.size - 1} were read before, "
            f"it now claims size {latest.size}",
            (state.target or state.checkpoint or "") if state else "",
            latest_note,
        )

    genesis = [registrar]

    def snapshot(target: str | None, verified: str | None) -> AuditorState:
        return AuditorState(
            origin=origin,
            log_vkey=verifier.vkey,
            registrar_vkey=genesis[0],
            source=source.name,
            checkpoint=verified,
            position=stream.position(),
            replay=replay.snapshot(),
            target=target,
            verified_at=format_time(now()),
        )

    start = stream.size
    fetched = 0
    last_save = time.monotonic()
    verified_before = state.checkpoint if state else None
    try:
        for item in source.records(start, latest.size):
            record = stream.add(item)
            if record.seq == 0 and genesis[0] is None:
                genesis[0] = record.statement().key  # trusted from here on
            fetched += 1
            if on_progress is not None:
                on_progress(stream.size, latest.size)
            if state_path and time.monotonic() - last_save > save_every:
                snapshot(latest_note, verified_before).save(state_path)
                last_save = time.monotonic()
    except KeyboardInterrupt:
        if state_path:
            snapshot(latest_note, verified_before).save(state_path)
        raise
    if stream.size != latest.size:
        raise SourceError(
            f"{source.name} served records up to {stream.size - 1}, its checkpoint "
            f"claims {latest.size}"
        )
    stream.check_checkpoint(latest_note)
    valid = check_quorum(latest_note, witnesses, quorum)
    if state_path:
        snapshot(None, latest_note).save(state_path)
    return RemoteResult(
        tree_size=latest.size,
        root=latest.root_hash,
        previous_size=previous,
        fetched=fetched,
        witnesses=tuple(valid),
        seconds=time.perf_counter() - started,
        checkpoint=latest_note,
    )


def evidence_json(error: InconsistencyError) -> dict[str, Any]:
    evidence = error.evidence
    return {
        "error": error.code,
        "message": str(error),
        "old_checkpoint": evidence.old_checkpoint,
        "new_checkpoint": evidence.new_checkpoint,
        "proof": [h.hex() for h in evidence.proof],
    }


# -- exports ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    path: Path
    first: int
    end: int
    tree_size: int
    checkpoints: int
    registry_records: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": str(self.path),
            "first": self.first,
            "end": self.end,
            "records": self.end - self.first,
            "tree_size": self.tree_size,
            "checkpoints": self.checkpoints,
            "registry_records": self.registry_records,
            "bytes": self.bytes,
        }


def export_bundle(
    source: LogSource,
    out: Path,
    *,
    first: int = 0,
    last: int | None = None,
    log_vkey: str,
    registrar_vkey: str | None = None,
    on_progress: Progress | None = None,
) -> ExportResult:
    """Write records ``first..last`` (inclusive; default: up to the latest
    checkpoint) with what ties them to the latest checkpoint, to ``out``."""
    verifier = Verifier.from_vkey(log_vkey)
    anchor_note = source.latest_checkpoint()
    anchor = Checkpoint.from_text(_note_text(anchor_note), strict=True)
    size = anchor.size
    end = size if last is None else last + 1
    if not 0 <= first < end <= size:
        raise RangeError(
            f"--from {first} --to {end - 1}: want 0 <= from <= to < {size} "
            "(the latest checkpoint's size)"
        )
    writer = BundleWriter(out)
    try:
        count = writer.lines(
            RECORDS,
            (
                record_line(item, seq)
                for seq, item in _progress(source.records(first, end), first, end, on_progress)
            ),
        )
        if count != end - first:
            raise SourceError(f"{source.name} served {count} records, expected {end - first}")
        # the anchor as served: with the witness cosignatures collected for it
        notes = [n for n in source.checkpoints(first, end) if note_size(n) != size]
        notes.append(anchor_note)
        checkpoints = writer.lines(CHECKPOINTS, ({"note": n} for n in notes))
        registry = 0
        if first > 0:
            anchor_record = next(source.records(first - 1, first)).record_bytes
            writer.document(
                ANCHOR,
                {
                    "record": _b64(anchor_record),
                    "inclusion": [h.hex() for h in source.inclusion_proof(first - 1, first)],
                    "consistency": [
                        h.hex() for h in (source.consistency_proof(end, size) if end < size else [])
                    ],
                },
            )
            registry = writer.lines(
                REGISTRY,
                (
                    {
                        "seq": seq,
                        "record": _b64(data),
                        "inclusion": [h.hex() for h in source.inclusion_proof(seq, size)],
                    }
                    for seq, data in source.registry_records(first)
                ),
            )
        elif end < size:
            writer.document(
                ANCHOR,
                {"consistency": [h.hex() for h in source.consistency_proof(end, size)]},
            )
        path = writer.close(
            {
                "format": BUNDLE_FORMAT,
                "origin": anchor.origin,
                "log_vkey": verifier.vkey,
                "registrar_vkey": registrar_vkey,
                "first": first,
                "end": end,
                "tree_size": size,
                "records": count,
                "checkpoints": checkpoints,
                "registry_records": registry,
                "payloads": "digests only: payload contents are never exported",
                "source": source.name,
                "created_at": format_time(now()),
                "rules_checkable": "signers: the flow rules need the payloads",
            }
        )
    except BaseException:
        writer.abort()
        raise
    return ExportResult(
        path=path,
        first=first,
        end=end,
        tree_size=size,
        checkpoints=checkpoints,
        registry_records=registry,
        bytes=path.stat().st_size,
    )


def _progress(
    items: Iterator[RecordItem], first: int, end: int, on_progress: Progress | None
) -> Iterator[tuple[int, RecordItem]]:
    for seq, item in enumerate(items, start=first):
        yield seq, item
        if on_progress is not None:
            on_progress(seq + 1 - first, end - first)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _note_text(note: str) -> str:
    """The text of a signed note (up to the blank line), not yet verified."""
    text, sep, _ = note.partition("\n\n")
    if not sep:
        raise EncodingError("a checkpoint that is not a signed note")
    return text + "\n"


def inclusion_proof_file(source: LogSource, seq: int, *, origin: str) -> dict[str, Any]:
    """A proof file for record ``seq`` against the latest checkpoint."""
    note = source.latest_checkpoint()
    size = note_size(note)
    if not 0 <= seq < size:
        raise RangeError(f"--seq {seq}: the latest checkpoint covers records 0..{size - 1}")
    data = next(source.records(seq, seq + 1)).record_bytes
    Record.from_bytes(data, expected_seq=seq)
    return proof_document(
        record_bytes=data,
        leaf_index=seq,
        tree_size=size,
        hashes=source.inclusion_proof(seq, size),
        checkpoint=note,
        origin=origin,
    )

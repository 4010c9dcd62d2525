"""Getting the ledger's checkpoints cosigned by its witnesses (c2sp.org/tlog-witness).

A :class:`WitnessSubmitter` runs beside the API in a background thread. Every
``interval`` seconds it reads the latest checkpoint and, for each configured
witness that has not cosigned it yet, sends it with a consistency proof from
the size that witness holds (``POST <url>/add-checkpoint``). It learns that size
from the cosignatures it stored, from a ``409`` (the witness tells its size in
the body) or, with nothing known, by starting from ``old 0``. A valid
cosignature (checked against the witness's key) is stored in the
``cosignatures`` table; ``GET /v1/checkpoint`` serves the checkpoint with them.

Submission is asynchronous: appends never wait for a witness, and a witness that
is down, slow or refusing only delays its cosignatures. Failures are logged and
retried with exponential backoff per witness. A witness that answers a fork (it
holds another root at the size we sent) or a size larger than the log's is
reporting misbehaviour or a rollback: that is logged as an error, and retried at
the slowest pace, never worked around.

Witnesses are configured as ``VKEY@URL`` entries (the witness's cosignature/v1
verifier key, type 0x04, and the URL prefix its ``add-checkpoint`` is under),
separated by commas or white space: :func:`parse_witnesses`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Engine, delete, func, insert, select

from ledger.core.checkpoint import note_size
from ledger.core.cosignature import (
    WitnessVerifier,
    add_cosignatures,
    format_add_checkpoint_request,
    verify_cosignatures,
)
from ledger.core.errors import KeyFormatError, LedgerError
from ledger.store.reader import LedgerReader
from ledger.store.schema import cosignatures

__all__ = [
    "SubmissionResult",
    "WitnessEndpoint",
    "WitnessSubmitter",
    "parse_witnesses",
]

log = logging.getLogger("rxledger.witnessing")

_MAX_409_ROUNDS = 3


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness: its verifier key and the URL prefix of its ``add-checkpoint``."""

    verifier: WitnessVerifier
    url: str

    @property
    def add_checkpoint_url(self) -> str:
        return self.url.rstrip("/") + "/add-checkpoint"


def parse_witnesses(config: str) -> list[WitnessEndpoint]:
    """Parse ``VKEY@URL`` entries separated by commas or white space.

    The URL is what follows the ``@`` after a complete witness verifier key (the
    key's name may itself contain ``@``); it must be ``http://`` or ``https://``.
    Raises :class:`~ledger.core.errors.KeyFormatError` naming the bad entry.
    """
    endpoints: list[WitnessEndpoint] = []
    for entry in (e for e in re.split(r"[\s,]+", config.strip()) if e):
        parsed = None
        for at in (m.start() for m in re.finditer("@", entry)):
            try:
                verifier = WitnessVerifier.from_vkey(entry[:at])
            except KeyFormatError:
                continue
            parsed = (verifier, entry[at + 1 :])
            break
        if parsed is None:
            raise KeyFormatError(
                f"witness {entry[:60]!r}: expected VKEY@URL with a witness verifier key "
                "(type 0x04, as `rxledger witness keygen` prints it)"
            )
        verifier, url = parsed
        if re.fullmatch(r"https?://[^\s/]+(/\S*)?", url) is None:
            raise KeyFormatError(
                f"witness {verifier.name}: URL must start with http:// or https://, got {url!r}"
            )
        if any(e.verifier == verifier for e in endpoints):
            raise KeyFormatError(f"witness {verifier.name} is configured twice")
        endpoints.append(WitnessEndpoint(verifier, url))
    return endpoints


@dataclass(frozen=True)
class SubmissionResult:
    """What happened when a checkpoint was offered to one witness."""

    witness: str
    size: int
    status: str  # cosigned | already | failed | refused | skipped
    detail: str = ""


@dataclass
class _WitnessState:
    endpoint: WitnessEndpoint
    #: the tree size the witness holds for our log, when known
    held: int | None = None
    failures: int = 0
    not_before: float = 0.0
    last_error: str = field(default="")


class WitnessSubmitter:
    """Pushes the ledger's latest checkpoint to each witness and stores the cosignatures."""

    def __init__(
        self,
        engine: Engine,
        witnesses: Sequence[WitnessEndpoint],
        *,
        client: httpx.Client | None = None,  # its own timeouts apply
        interval: float = 1.0,
        timeout: float = 10.0,
        max_backoff: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.reader = LedgerReader(engine)
        self.witnesses = [_WitnessState(w) for w in witnesses]
        self._own_client = client is None
        self.client = client or httpx.Client(timeout=timeout)
        self.timeout = timeout
        self.interval = interval
        self.max_backoff = max_backoff
        self.clock = clock
        self._round = threading.Lock()  # one round at a time: thread or caller
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the background loop ------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None or not self.witnesses:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rxledger-witnessing", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, waiting for a submission in flight; close the HTTP client."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
            self._thread = None
        if self._own_client:
            self.client.close()

    def notify(self) -> None:
        """Ask for a round now (e.g. right after an append) instead of at the next tick."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.submit_once()
            except Exception:  # a round must never kill the thread
                log.exception("witnessing round failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    # -- one round ------------------------------------------------------------------------

    def submit_once(self, *, force: bool = False) -> list[SubmissionResult]:
        """Offer the latest checkpoint to every witness that is due; return what happened.

        ``force`` ignores the backoff (tests, and an operator's manual retry).
        """
        with self._round:
            return self._submit_all(force=force)

    def _submit_all(self, *, force: bool) -> list[SubmissionResult]:
        note = self.reader.latest_checkpoint()
        size = note_size(note)
        results = []
        for state in self.witnesses:
            name = state.endpoint.verifier.name
            if not force and self.clock() < state.not_before:
                results.append(SubmissionResult(name, size, "skipped", state.last_error))
                continue
            if self._has_cosignature(state.endpoint.verifier, size):
                state.held = max(state.held or 0, size)
                results.append(SubmissionResult(name, size, "already"))
                continue
            result = self._submit(state, note, size)
            if result.status == "cosigned":
                state.failures, state.not_before, state.last_error = 0, 0.0, ""
            else:
                self._back_off(state, result)
            results.append(result)
        return results

    def _back_off(self, state: _WitnessState, result: SubmissionResult) -> None:
        state.failures += 1
        state.last_error = result.detail
        delay = (
            self.max_backoff
            if result.status == "refused"
            else min(self.max_backoff, self.interval * 2 ** min(state.failures, 20))
        )
        state.not_before = self.clock() + delay
        level = logging.ERROR if result.status == "refused" else logging.WARNING
        log.log(
            level,
            "witness %s: checkpoint %d not cosigned (%s); retrying in %.0fs",
            result.witness,
            result.size,
            result.detail,
            delay,
        )

    def _submit(self, state: _WitnessState, note: str, size: int) -> SubmissionResult:
        endpoint = state.endpoint
        name = endpoint.verifier.name
        if state.held is None:
            state.held = self._last_cosigned_size(endpoint.verifier)
        for _ in range(_MAX_409_ROUNDS):
            old = state.held or 0
            if old > size:
                return SubmissionResult(
                    name,
                    size,
                    "refused",
                    f"the witness holds tree size {old}, larger than the log's {size}: "
                    "the log was rolled back or forked",
                )
            try:
                proof = self.reader.consistency_proof(old, size) if 0 < old < size else []
                body = format_add_checkpoint_request(old, proof, note)
            except LedgerError as e:
                state.held = None
                return SubmissionResult(name, size, "failed", f"cannot build the request: {e}")
            try:
                response = self.client.post(endpoint.add_checkpoint_url, content=body)
            except httpx.HTTPError as e:
                return SubmissionResult(name, size, "failed", f"{type(e).__name__}: {e}")
            if response.status_code == 409:
                held = _parse_size(response)
                if held is None:
                    return SubmissionResult(
                        name, size, "failed", "409 without a tree size in the body"
                    )
                if held == old:
                    # the witness holds our old size with another root, or this very
                    # size with another root: a fork
                    return SubmissionResult(
                        name,
                        size,
                        "refused",
                        f"the witness refuses: it holds another checkpoint of size {held}",
                    )
                state.held = held
                continue
            if response.status_code != 200:
                state.held = None  # ask again next time
                excerpt = response.text[:200].replace("\n", " ")
                # 422: our proof from the size it holds fails, so it holds another
                # tree; 403/404: it does not take our key or origin. Neither is
                # transient: retried at the slowest pace, logged as errors.
                status = "refused" if response.status_code in (403, 404, 422) else "failed"
                return SubmissionResult(
                    name, size, status, f"HTTP {response.status_code}: {excerpt}"
                )
            return self._store(state, note, size, response.text)
        return SubmissionResult(name, size, "failed", "the witness's size kept changing")

    def _store(self, state: _WitnessState, note: str, size: int, lines: str) -> SubmissionResult:
        verifier = state.endpoint.verifier
        try:
            cosigned = add_cosignatures(note, [lines])
        except LedgerError as e:
            return SubmissionResult(verifier.name, size, "failed", f"malformed response: {e}")
        found = verify_cosignatures(cosigned, [verifier])
        if not found:
            return SubmissionResult(
                verifier.name, size, "failed", "the response holds no valid cosignature by its key"
            )
        (cosignature,) = found
        with self.engine.begin() as conn:
            key = (
                (cosignatures.c.size == size)
                & (cosignatures.c.witness_name == verifier.name)
                & (cosignatures.c.key_id == verifier.key_id.hex())
            )
            conn.execute(delete(cosignatures).where(key))
            conn.execute(
                insert(cosignatures).values(
                    size=size,
                    witness_name=verifier.name,
                    key_id=verifier.key_id.hex(),
                    timestamp=cosignature.timestamp,
                    line=cosignature.to_line(),
                )
            )
        state.held = size
        log.info("witness %s cosigned checkpoint %d", verifier.name, size)
        return SubmissionResult(verifier.name, size, "cosigned")

    def _has_cosignature(self, verifier: WitnessVerifier, size: int) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(cosignatures.c.size).where(
                    cosignatures.c.size == size,
                    cosignatures.c.witness_name == verifier.name,
                    cosignatures.c.key_id == verifier.key_id.hex(),
                )
            ).first()
        return found is not None

    def _last_cosigned_size(self, verifier: WitnessVerifier) -> int | None:
        with self.engine.connect() as conn:
            size = conn.execute(
                select(func.max(cosignatures.c.size)).where(
                    cosignatures.c.witness_name == verifier.name,
                    cosignatures.c.key_id == verifier.key_id.hex(),
                )
            ).scalar()
        return None if size is None else int(size)


def _parse_size(response: httpx.Response) -> int | None:
    text = response.text
    if re.fullmatch(r"(0|[1-9][0-9]{0,19})\n", text) is None:
        return None
    return int(text)

"""The witness's HTTP interface: c2sp.org/tlog-witness ``add-checkpoint``.

``POST /add-checkpoint`` answers as the specification says:

* 200 with the cosignature line(s) (``text/plain; charset=utf-8``);
* 409 with the size the witness holds and a newline, ``Content-Type:
  text/x.tlog.size`` (a stale old size, or a fork: another root at the size held);
* 404 for an origin the witness does not know, 403 when no signature by the
  log's key verifies, 422 when the consistency proof fails, 400 for a malformed
  request, 413 for a body over :data:`MAX_BODY_BYTES`.

The protocol fixes only the status (and the 409 body); the other error bodies are
problem+json like the rest of rxledger's API (:mod:`api.errors`). ``GET /`` tells
the witness's key and the logs it witnesses; ``GET /healthz`` is a liveness probe.

Without a :class:`~ledger.witness.Witness`, :func:`create_witness_app` builds one
from the environment at start-up (``rxledger witness serve`` sets it):
``RXLEDGER_WITNESS_KEY_FILE``, ``RXLEDGER_WITNESS_LOG_KEYS`` (log verifier keys,
separated by commas or white space) and ``RXLEDGER_WITNESS_STATE``.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from api import errors
from ledger.core.errors import LedgerError
from ledger.core.note import Verifier
from ledger.service import read_key_file
from ledger.witness import (
    BadRequestError,
    StaleSizeError,
    Witness,
    default_state_file,
    logs_from_verifiers,
)

#: an add-checkpoint body is a size line, at most 63 hashes and a checkpoint note
MAX_BODY_BYTES = 64 * 1024
TLOG_SIZE = "text/x.tlog.size"


def witness_from_env() -> Witness:
    """The witness that ``RXLEDGER_WITNESS_*`` describe (see the module docstring)."""
    key_file = os.environ.get("RXLEDGER_WITNESS_KEY_FILE")
    if not key_file:
        raise BadRequestError("RXLEDGER_WITNESS_KEY_FILE is not set: the witness needs its key")
    vkeys = re.split(r"[\s,]+", os.environ.get("RXLEDGER_WITNESS_LOG_KEYS", "").strip())
    logs = logs_from_verifiers(Verifier.from_vkey(v) for v in vkeys if v)
    return Witness(read_key_file(Path(key_file)), logs, default_state_file())


def create_witness_app(witness: Witness | None = None) -> FastAPI:
    """Build the witness app; without ``witness``, build it from the environment."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.witness is None:
            app.state.witness = witness_from_env()
        yield

    app = FastAPI(
        title="rxledger witness",
        version="0.1.0",
        summary="A C2SP tlog-witness that cosigns checkpoints of the logs it knows",
        lifespan=lifespan,
    )
    app.state.witness = witness
    errors.install(app)

    @app.post("/add-checkpoint", response_class=PlainTextResponse)
    async def add_checkpoint(request: Request) -> Response:
        """Cosign a checkpoint that is consistent with the last one witnessed."""
        current: Witness = request.app.state.witness
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _too_large()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return _too_large()
        try:
            lines = await run_in_threadpool(current.add_checkpoint_body, bytes(body))
        except StaleSizeError as e:
            # exactly text/x.tlog.size: no charset parameter (Starlette adds one to text/*)
            return Response(
                f"{e.size}\n".encode("ascii"), status_code=409, headers={"Content-Type": TLOG_SIZE}
            )
        except LedgerError as e:
            return _problem(e)
        return PlainTextResponse(lines, media_type="text/plain; charset=utf-8")

    @app.get("/")
    def about(request: Request) -> dict[str, Any]:
        """The witness's verifier key and the logs it witnesses, with what it holds."""
        current: Witness = request.app.state.witness
        logs = []
        for origin, keys in sorted(current.logs.items()):
            held = current.latest(origin)
            logs.append(
                {
                    "origin": origin,
                    "log_keys": [k.vkey for k in keys],
                    "size": 0 if held is None else held.size,
                    "checkpoint": None if held is None else held.note,
                }
            )
        return {"name": current.verifier.name, "vkey": current.vkey, "logs": logs}

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, str]:
        current: Witness = request.app.state.witness
        return {"status": "ok", "vkey": current.vkey}

    return app


# The protocol's statuses, by the witness's error codes (``ledger.witness``).
_STATUS = {
    "unknown-log": 404,
    "bad-log-signature": 403,
    "inconsistent-checkpoint": 422,
    "malformed": 400,
    "witness-state": 503,
}


def _problem(error: LedgerError) -> JSONResponse:
    status = _STATUS.get(error.code) or errors.status_for(error)
    return errors.problem_response(errors.problem(error.code, str(error), status))


def _too_large() -> JSONResponse:
    return errors.problem_response(
        errors.problem(
            "too-large", f"an add-checkpoint body is at most {MAX_BODY_BYTES} bytes", 413
        )
    )

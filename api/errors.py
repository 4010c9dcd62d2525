"""The one place where errors become HTTP: RFC 9457 problem+json.

Every problem has a stable ``type`` (``urn:rxledger:problem:<code>``), the
same ``code`` as a plain field, a ``title`` and a ``detail`` saying what was
expected and what was found. Routes never raise ``HTTPException`` for a
ledger rule; they raise :class:`~ledger.core.errors.LedgerError` and this
module maps it. Nothing reaches the client as a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ledger.core.errors import (
    ConflictError,
    EncodingError,
    LedgerError,
    NotFoundError,
    NotInitializedError,
    ProofError,
    PushbackError,
    RejectionError,
    SignatureError,
)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:rxledger:problem:"
log = logging.getLogger("rxledger.api")

#: rejection codes and the HTTP status they map to; others of RejectionError -> 422
STATUS_BY_CODE: dict[str, int] = {
    "malformed": 400,
    "malformed-note": 400,
    "bad-key": 400,
    "bad-request": 400,
    "too-large": 413,
    "batch-too-large": 413,
    "payload-too-large": 413,
    "unauthenticated": 401,
    "forbidden": 403,
    "bad-signature": 403,
    "unknown-key": 403,
    "unknown-actor": 403,
    "key-revoked": 403,
    "key-expired": 403,
    "key-not-yet-valid": 403,
    "wrong-role": 403,
    "replayed-nonce": 409,
    "actor-exists": 409,
    "conflict": 409,
    "not-found": 404,
    "payload-erased": 410,
    "payload-unreadable": 503,
    "busy": 503,
    "not-initialized": 503,
}

TITLES: dict[str, str] = {
    "malformed": "Malformed request",
    "too-large": "Request too large",
    "bad-signature": "Signature does not verify",
    "unknown-key": "Key not registered to the actor",
    "unknown-actor": "Actor not registered",
    "wrong-role": "Actor's role may not make this statement",
    "replayed-nonce": "Nonce already used",
    "clock-skew": "Statement time too far from the ledger's clock",
    "not-found": "Not found",
    "bad-proof": "Proof cannot be made",
    "internal": "Internal error",
}


def status_for(error: LedgerError) -> int:
    code = error.code
    if code in STATUS_BY_CODE:
        return STATUS_BY_CODE[code]
    if isinstance(error, RejectionError):
        return 422
    if isinstance(error, EncodingError | ProofError):
        return 400
    if isinstance(error, SignatureError):
        return 403
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, ConflictError):
        return 409
    if isinstance(error, PushbackError | NotInitializedError):
        return 503
    return 422


def problem(code: str, detail: str, status: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": TYPE_PREFIX + code,
        "title": TITLES.get(code, code.replace("-", " ").capitalize()),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def problem_for(error: LedgerError) -> dict[str, Any]:
    return problem(error.code, str(error), status_for(error))


def problem_response(
    body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM_JSON, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(LedgerError)
    async def _ledger(_: Request, exc: LedgerError) -> JSONResponse:
        body = problem_for(exc)
        headers = {"WWW-Authenticate": "RxLedger-Sig"} if body["status"] == 401 else None
        return problem_response(body, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return problem_response(problem("malformed", "; ".join(parts) or "invalid request", 400))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        # keeps the exception's headers: a 405 says which methods are allowed
        return problem_response(problem(code, str(exc.detail), exc.status_code), exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # the client went away while sending its body: nothing was read in
        # full, nothing was done, and nobody is left to answer
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return problem_response(problem("client-disconnected", "the request body ended early", 400))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return problem_response(
            problem(
                "internal",
                "the ledger failed to handle this request; nothing was acknowledged",
                500,
            )
        )

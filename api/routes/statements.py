"""``POST /v1/statements``: submit one signed statement or a batch.

One statement: ``{"statement": {...}, "signature": "<base64>", "payload": "<base64>"?}``
answers ``201`` with a receipt (``200`` with ``"duplicate": true`` for an
identical retry), or a problem+json rejection.

A batch: ``{"statements": [<one statement>, ...], "atomic": false}`` answers
``200`` with one result per statement, in order: ``{"status": "accepted",
"receipt": {...}}`` or ``{"status": "rejected", "problem": {...}}``. With
``"atomic": true`` either all are recorded or none.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import LedgerDep, SettingsDep
from api.errors import problem_for
from ledger.core.canonical import parse_json
from ledger.core.errors import EncodingError, LedgerError, RejectionError
from ledger.core.statement import SignedStatement
from ledger.store.sequencer import MAX_BATCH, Receipt, Submission

router = APIRouter()


class TooLargeError(RejectionError):
    def __init__(self, message: str) -> None:
        super().__init__("too-large", message)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLargeError(f"request body is {declared} bytes; at most {limit} accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_submission(obj: object, *, where: str, max_statement: int) -> Submission:
    if not isinstance(obj, dict):
        raise EncodingError(f"{where}: expected a JSON object")
    extra = sorted(set(obj) - {"statement", "signature", "payload"})
    if extra:
        raise EncodingError(f"{where}: unknown field(s) {', '.join(extra)}")
    try:
        signed = SignedStatement.from_json(
            {k: obj[k] for k in ("statement", "signature") if k in obj}
        )
    except EncodingError as e:
        raise EncodingError(f"{where}: {e}") from e
    if len(signed.signed_bytes) > max_statement:
        raise TooLargeError(
            f"{where}: statement is {len(signed.signed_bytes)} bytes; at most {max_statement}"
        )
    payload = None
    if "payload" in obj:
        text = obj["payload"]
        if not isinstance(text, str):
            raise EncodingError(f"{where}.payload: expected a base64 string")
        try:
            payload = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise EncodingError(f"{where}.payload: not valid base64") from e
    return Submission(signed=signed, payload=payload)


def result_for(outcome: Receipt | LedgerError) -> dict[str, Any]:
    if isinstance(outcome, Receipt):
        return {"status": "accepted", "receipt": outcome.to_json()}
    return {"status": "rejected", "problem": problem_for(outcome)}


@router.post("/v1/statements", status_code=201)
async def submit(request: Request, ledger: LedgerDep, settings: SettingsDep) -> JSONResponse:
    body = parse_json(await read_body(request, settings.max_body_bytes))
    if not isinstance(body, dict):
        raise EncodingError("request body: expected a JSON object")
    if "statements" in body:
        extra = sorted(set(body) - {"statements", "atomic"})
        if extra:
            raise EncodingError(f"request body: unknown field(s) {', '.join(extra)}")
        items = body["statements"]
        atomic = body.get("atomic", False)
        if not isinstance(items, list) or not items:
            raise EncodingError("statements: expected a non-empty array")
        if not isinstance(atomic, bool):
            raise EncodingError("atomic: expected true or false")
        if len(items) > MAX_BATCH:
            raise RejectionError(
                "batch-too-large", f"a batch holds at most {MAX_BATCH} statements, got {len(items)}"
            )
        parsed: list[Submission | LedgerError] = []
        for i, item in enumerate(items):
            try:
                parsed.append(
                    parse_submission(
                        item, where=f"statements[{i}]", max_statement=settings.max_statement_bytes
                    )
                )
            except LedgerError as e:
                parsed.append(e)
        good = [p for p in parsed if isinstance(p, Submission)]
        if atomic and len(good) < len(parsed):
            aborted = RejectionError(
                "batch-aborted",
                "not recorded: another statement in this all-or-nothing batch was refused",
            )
            parsed = [aborted if isinstance(p, Submission) else p for p in parsed]
            good = []
        outcomes = iter(await run_in_threadpool(ledger.append, good, atomic=atomic) if good else [])
        results = [result_for(p if isinstance(p, LedgerError) else next(outcomes)) for p in parsed]
        accepted = sum(1 for r in results if r["status"] == "accepted")
        return JSONResponse(
            {"accepted": accepted, "rejected": len(results) - accepted, "results": results}
        )
    submission = parse_submission(
        body, where="request body", max_statement=settings.max_statement_bytes
    )
    (outcome,) = await run_in_threadpool(ledger.append, [submission])
    if isinstance(outcome, LedgerError):
        raise outcome
    return JSONResponse(outcome.to_json(), status_code=200 if outcome.duplicate else 201)

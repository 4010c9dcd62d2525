"""Reads of the log: checkpoint, records, proofs, health."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse

from api.deps import LedgerDep
from api.params import Digits
from ledger.core.errors import RangeError
from ledger.core.record import Record
from ledger.core.statement import format_time, now

router = APIRouter()
MAX_PAGE = 1000
MAX_TYPES = 32
NonNegative = Annotated[int, Digits, Query(ge=0, le=2**62)]


def record_json(record: Record) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "record_hash": record.hash.hex(),
        "leaf_hash": record.leaf_hash.hex(),
        "record": record.to_json(),
        "record_bytes": base64.b64encode(record.record_bytes).decode("ascii"),
    }


@router.get("/v1/checkpoint", response_class=PlainTextResponse)
def checkpoint(ledger: LedgerDep) -> PlainTextResponse:
    """The latest signed checkpoint (C2SP tlog-checkpoint signed note).

    With the witness cosignatures (C2SP tlog-cosignature) collected for it so
    far, as extra signature lines after the log's own.
    """
    return PlainTextResponse(
        ledger.reader.latest_checkpoint_cosigned(),
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/v1/records/{seq}")
def record(ledger: LedgerDep, seq: Annotated[int, Digits, Path(ge=0, le=2**62)]) -> dict[str, Any]:
    return record_json(ledger.reader.record(seq))


@router.get("/v1/records")
def records(
    ledger: LedgerDep,
    start: NonNegative = 0,
    limit: Annotated[int, Digits, Query(ge=1, le=MAX_PAGE)] = 100,
    type: Annotated[list[str] | None, Query()] = None,
    before: Annotated[int | None, Digits, Query(ge=0, le=2**62)] = None,
) -> dict[str, Any]:
    """Records in ``seq`` order from ``start``; optionally only of the given
    ``type`` (repeatable) and with ``seq < before``."""
    types = type or []
    if len(types) > MAX_TYPES:
        raise RangeError(f"type: at most {MAX_TYPES} types per request, got {len(types)}")
    page = ledger.reader.records(start, limit, types=types, before=before)
    size = ledger.reader.head().size
    end = size if before is None else min(size, before)
    # a filtered page shorter than ``limit`` is the last one
    more = len(page) == limit if types else bool(page)
    next_start = page[-1].seq + 1 if more and page[-1].seq + 1 < end else None
    return {
        "tree_size": size,
        "records": [record_json(r) for r in page],
        "next_start": next_start,
    }


@router.get("/v1/proofs/inclusion")
def inclusion(ledger: LedgerDep, leaf_index: NonNegative, tree_size: NonNegative) -> dict[str, Any]:
    proof = ledger.reader.inclusion_proof(leaf_index, tree_size)
    return {
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "hashes": [h.hex() for h in proof],
        "checkpoint": _checkpoint_or_none(ledger, tree_size),
    }


@router.get("/v1/proofs/consistency")
def consistency(ledger: LedgerDep, first: NonNegative, second: NonNegative) -> dict[str, Any]:
    proof = ledger.reader.consistency_proof(first, second)
    return {
        "first": first,
        "second": second,
        "hashes": [h.hex() for h in proof],
        "first_checkpoint": _checkpoint_or_none(ledger, first),
        "second_checkpoint": _checkpoint_or_none(ledger, second),
    }


@router.get("/healthz")
def healthz(ledger: LedgerDep) -> dict[str, Any]:
    head = ledger.reader.head()
    return {"status": "ok", "tree_size": head.size, "time": format_time(now())}


def _checkpoint_or_none(ledger: LedgerDep, size: int) -> str | None:
    from ledger.core.errors import NotFoundError  # noqa: PLC0415

    try:
        return ledger.reader.checkpoint(size)
    except NotFoundError:
        return None

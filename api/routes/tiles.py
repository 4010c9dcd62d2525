"""The log as C2SP tlog-tiles (c2sp.org/tlog-tiles): read-only, cacheable.

* ``GET /checkpoint`` — the latest signed checkpoint, exactly as ``GET
  /v1/checkpoint`` serves it; mutable, so ``Cache-Control: no-cache``.
* ``GET /tile/<L>/<N>[.p/<W>]`` — Merkle tree tiles, concatenated 32-byte hashes.
* ``GET /tile/entries/<N>[.p/<W>]`` — entry bundles: each record's exact bytes
  after a big-endian ``uint16`` length; gzip when the client accepts it.

Tiles and bundles never change once they exist, so they are served with
``Cache-Control: public, max-age=31536000, immutable``. A tile or bundle
exists once the tree holds every hash or entry in it: a partial one of any
width up to what the tree holds (the spec requires the partial tiles of
every checkpointed size, and keeping them costs nothing), never one beyond.
A path that is not the canonical path of a tile is ``400 bad-tile-path``; a
tile the tree does not hold is ``404 not-found``. Neither is cached.
"""

from __future__ import annotations

import gzip
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import LedgerDep
from api.errors import problem, problem_for, problem_response
from api.routes import log
from ledger.core import tiles
from ledger.core.errors import LedgerError

router = APIRouter(tags=["tlog-tiles"])
logger = logging.getLogger("rxledger.api")

OCTET_STREAM = "application/octet-stream"
IMMUTABLE = "public, max-age=31536000, immutable"
#: error answers must not be cached: a tile missing now exists after the next append
NOT_CACHED = "no-store"
_GZIP_LEVEL = 6


@router.get("/checkpoint")
def serve_checkpoint(ledger: LedgerDep) -> Response:
    """The latest signed checkpoint (tlog-tiles ``<prefix>/checkpoint``), as ``/v1/checkpoint``."""
    return log.checkpoint(ledger)


# Registered before the tile route: "entries" is never a tile level.
@router.get("/tile/entries/{path:path}")
def serve_entry_bundle(ledger: LedgerDep, path: str, request: Request) -> Response:
    """An entry bundle: records ``[256 N, 256 N + W)``, each after its ``uint16`` length."""
    try:
        tile = tiles.parse_entries_path(f"tile/entries/{path}")
        data = ledger.reader.entry_bundle(tile.index, tile.width)
    except tiles.EntryTooLargeError as e:
        # Accepted statements are kept small enough (Settings.max_statement_bytes)
        # that this cannot happen; if it does, say so rather than truncate.
        logger.error("cannot serve entry bundle %s: %s", path, e)
        return problem_response(
            problem(e.code, f"this entry bundle cannot be served: {e}", 500),
            headers={"Cache-Control": NOT_CACHED},
        )
    except LedgerError as e:
        return _error(e)
    headers = {"Cache-Control": IMMUTABLE, "Vary": "Accept-Encoding"}
    if _accepts_gzip(request.headers.get("accept-encoding", "")):
        data = gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return Response(data, media_type=OCTET_STREAM, headers=headers)


@router.get("/tile/{path:path}")
def serve_tile(ledger: LedgerDep, path: str) -> Response:
    """A Merkle tree tile: the hashes at tree level ``8 L``, ``[256 N, 256 N + W)``."""
    try:
        tile = tiles.parse_tile_path(f"tile/{path}")
        data = ledger.reader.tile_hashes(tile.level, tile.index, tile.width)
    except LedgerError as e:
        return _error(e)
    return Response(data, media_type=OCTET_STREAM, headers={"Cache-Control": IMMUTABLE})


def _error(error: LedgerError) -> Response:
    return problem_response(problem_for(error), headers={"Cache-Control": NOT_CACHED})


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip (RFC 9110 §12.5.3), ``q=0`` excluded."""
    accepted: dict[str, bool] = {}
    for item in accept_encoding.lower().split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if not coding:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        accepted[coding] = q > 0
    if "gzip" in accepted:
        return accepted["gzip"]
    if "x-gzip" in accepted:
        return accepted["x-gzip"]
    return accepted.get("*", False)

"""The domain's read side backed by the database, and the projector of effects."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import Connection, delete, insert, select, tuple_

from ledger.domain.state import Document, Put
from ledger.store.schema import projections


def encode(value: Document) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class DbState:
    """:class:`ledger.domain.state.State` over one open transaction.

    ``cache`` (the sequencer's, valid only while no other writer has appended)
    answers repeated reads of the same documents without a query.
    """

    def __init__(
        self,
        connection: Connection,
        size: int,
        cache: dict[tuple[str, str], Document | None] | None = None,
    ) -> None:
        self._conn = connection
        self._size = size
        self._cache = cache

    @property
    def size(self) -> int:
        return self._size

    def get(self, kind: str, key: str) -> Document | None:
        if self._cache is not None and (kind, key) in self._cache:
            return self._cache[(kind, key)]
        found = self._read(kind, key)
        if self._cache is not None:
            self._cache[(kind, key)] = found
        return found

    def get_many(self, kind: str, keys: list[str]) -> dict[str, Document | None]:
        out: dict[str, Document | None] = {}
        missing = []
        for key in keys:
            if self._cache is not None and (kind, key) in self._cache:
                out[key] = self._cache[(kind, key)]
            else:
                missing.append(key)
        for start in range(0, len(missing), 1000):
            chunk = missing[start : start + 1000]
            rows = self._conn.execute(
                select(projections.c.key, projections.c.value).where(
                    projections.c.kind == kind, projections.c.key.in_(chunk)
                )
            ).all()
            found = {r.key: json.loads(r.value) for r in rows}
            for key in chunk:
                out[key] = found.get(key)
                if self._cache is not None:
                    self._cache[(kind, key)] = out[key]
        return out

    def _read(self, kind: str, key: str) -> Document | None:
        value = self._conn.execute(
            select(projections.c.value).where(projections.c.kind == kind, projections.c.key == key)
        ).scalar()
        if value is None:
            return None
        document: Document = json.loads(value)
        return document


def project(connection: Connection, effects: Iterable[Put]) -> None:
    """Write the effects of a batch to the projections table (last write wins)."""
    last: dict[tuple[str, str], Put] = {}
    for put in effects:
        last[(put.kind, put.key)] = put
    if not last:
        return
    addresses = list(last)
    for start in range(0, len(addresses), 500):
        chunk = addresses[start : start + 500]
        connection.execute(
            delete(projections).where(tuple_(projections.c.kind, projections.c.key).in_(chunk))
        )
    connection.execute(
        insert(projections),
        [
            {
                "kind": p.kind,
                "key": p.key,
                "value": encode(p.value),
                "patient": p.patient,
                "party": p.party,
                "status": p.status,
                "tags": p.tags,
                "seq": p.seq,
            }
            for p in last.values()
        ],
    )

"""The domain's read side backed by the database, and the projector of effects."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    or_,
    select,
    text,
)

from ledger.domain.state import Document, MemoryState, Put
from ledger.domain.wallet import CONSENTS, Terms, consent_terms
from ledger.store.consents import consent_cache
from ledger.store.schema import projections


def pairs_in(
    first: ColumnElement[Any],
    second: ColumnElement[Any],
    pairs: Sequence[tuple[Any, Any]],
    *,
    max_groups: int = 200,
) -> list[ColumnElement[bool]]:
    """``(first, second) IN pairs`` as conditions that use the composite index.

    A row-value ``IN`` makes SQLite scan the table and PostgreSQL test every
    pair against every row of the prefix; grouped by the first column,
    ``first = a AND second IN (...) OR ...`` uses the index. SQLite refuses an
    expression tree deeper than 1,000 (one OR term per group), so the pairs
    come back as one condition per ``max_groups`` groups: run one query each.
    """
    grouped: dict[Any, list[Any]] = {}
    for a, b in pairs:
        grouped.setdefault(a, []).append(b)
    terms = [and_(first == a, second.in_(bs)) for a, bs in grouped.items()]
    return [or_(*terms[i : i + max_groups]) for i in range(0, len(terms), max_groups)]


def bulk_insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows in the connection's transaction.

    PostgreSQL: ``COPY ... FROM STDIN`` through psycopg (one stream, no
    per-row round trip and no SQL compilation per row); SQLite:
    ``executemany``, which runs in-process.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), rows)
        return
    columns = list(rows[0])
    raw = conn.connection.driver_connection
    assert raw is not None
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        # the columns' types, so that psycopg need not look at each value's
        types = [_COPY_TYPES.get(type(table.c[c].type), "") for c in columns]
        if all(types):  # else (a type not in the table) psycopg looks at each value
            copy.set_types(types)
        for row in rows:
            copy.write_row([row[c] for c in columns])


#: PostgreSQL type names for COPY (set_types), by SQLAlchemy column type
_COPY_TYPES: dict[type[Any], str] = {
    BigInteger: "int8",
    Integer: "int4",
    SmallInteger: "int2",
    LargeBinary: "bytea",
    String: "text",
    Text: "text",
}


def encode(value: Document) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


T = TypeVar("T")
_BY_KEYS_PG = text("SELECT key, value FROM projections WHERE kind = :kind AND key = ANY(:keys)")


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

    def peek(self, kind: str, key: str) -> Document | None:
        return self.get(kind, key)

    def peek_many(self, kind: str, keys: list[str]) -> dict[str, Document | None]:
        return self.get_many(kind, keys)

    def consent_terms(self, patients: list[str]) -> dict[str, Terms]:
        """:class:`ledger.domain.wallet.ConsentTermsReader`: from the engine's shared
        cache (:mod:`ledger.store.consents`), which reads what it lacks."""
        cache = consent_cache(self._conn.engine)
        return cache.read(
            self._conn, patients, self._size, lambda ks: self._fetch(CONSENTS, ks, consent_terms)
        )

    def get_many(self, kind: str, keys: list[str]) -> dict[str, Document | None]:
        out: dict[str, Document | None] = {}
        missing = []
        for key in keys:
            if self._cache is not None and (kind, key) in self._cache:
                out[key] = self._cache[(kind, key)]
            else:
                missing.append(key)
        found = self._fetch(kind, missing)
        for key in missing:
            out[key] = found[key]
            if self._cache is not None:
                self._cache[(kind, key)] = out[key]
        return out

    @overload
    def _fetch(self, kind: str, keys: list[str]) -> dict[str, Document | None]: ...

    @overload
    def _fetch(
        self, kind: str, keys: list[str], derive: Callable[[Document | None], T]
    ) -> dict[str, T]: ...

    def _fetch(
        self, kind: str, keys: list[str], derive: Callable[[Document | None], Any] | None = None
    ) -> dict[str, Any]:
        """Read documents from the table, ``None`` for those that do not exist; with
        ``derive``, ``derive(document)`` instead, each worked out as it is parsed (so
        that ten thousand parsed documents are never alive at once)."""
        out: dict[str, Any] = {}
        postgres = self._conn.dialect.name == "postgresql"
        per_query = 20_000 if postgres else 5_000  # SQLite: under its 32,766 parameters
        for start in range(0, len(keys), per_query):
            chunk = keys[start : start + per_query]
            if postgres:  # one array parameter, not one parameter per key
                rows = self._conn.execute(_BY_KEYS_PG, {"kind": kind, "keys": chunk}).all()
            else:
                rows = self._conn.execute(
                    select(projections.c.key, projections.c.value).where(
                        projections.c.kind == kind, projections.c.key.in_(chunk)
                    )
                ).all()
            if derive is None:
                found = {r.key: json.loads(r.value) for r in rows}
                for key in chunk:
                    out[key] = found.get(key)
            else:
                found = {r.key: derive(json.loads(r.value)) for r in rows}
                for key in chunk:
                    out[key] = found[key] if key in found else derive(None)
        return out

    def _read(self, kind: str, key: str) -> Document | None:
        value = self._conn.execute(
            select(projections.c.value).where(projections.c.kind == kind, projections.c.key == key)
        ).scalar()
        if value is None:
            return None
        document: Document = json.loads(value)
        return document


class OverlayState(MemoryState):
    """The sequencer's overlay (:class:`MemoryState` in front of a :class:`DbState`),
    which also gives consent terms: of the documents the batch has read or
    changed from its own, of the rest from the database state's cache."""

    def consent_terms(self, patients: list[str]) -> dict[str, Terms]:
        here = [p for p in patients if (CONSENTS, p) in self.data]
        out = {p: consent_terms(self.data[(CONSENTS, p)]) for p in here}
        rest = [p for p in patients if (CONSENTS, p) not in self.data]
        if rest:
            assert isinstance(self.base, DbState)
            out.update(self.base.consent_terms(rest))
        return out


def project(connection: Connection, effects: Iterable[Put]) -> None:
    """Write the effects of a batch to the projections table (last write wins)."""
    last: dict[tuple[str, str], Put] = {}
    for put in effects:
        last[(put.kind, put.key)] = put
    if not last:
        return
    addresses = [a for a, p in last.items() if not p.fresh or p.delete]
    for start in range(0, len(addresses), 500):
        chunk = addresses[start : start + 500]
        for condition in pairs_in(projections.c.kind, projections.c.key, chunk):
            connection.execute(delete(projections).where(condition))
    bulk_insert(
        connection,
        projections,
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
            if not p.delete
        ],
    )

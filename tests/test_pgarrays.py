"""The sequencer's PostgreSQL array parameters arrive as the same values."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from ledger.store.pgarrays import ByteaArray, Int2Array, Int8Array, TextArray
from tests.conftest import POSTGRES_ON, POSTGRES_URL

CASES = [
    (Int2Array, "int2", [0, 1, -32768, 32767]),
    (Int8Array, "int8", [0, -(2**63), 2**63 - 1, 5]),
    (ByteaArray, "bytea", [b"", b"\x00\xff", os.urandom(600)]),
    (TextArray, "text", ["", "registrar", "é√𝄞", 'a,b"{}']),
]


@pytest.fixture(scope="module")
def pg() -> Iterator[psycopg.Connection]:
    if not POSTGRES_ON:
        pytest.fail("this test needs PostgreSQL: set RXLEDGER_TEST_POSTGRES_URL")
    url = make_url(POSTGRES_URL).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        yield conn


def _round_trip(conn: psycopg.Connection, sql_type: str, value: object) -> list[object]:
    row = conn.execute(
        f"SELECT coalesce(array_agg(x ORDER BY o), '{{}}') "
        f"FROM unnest(%b::{sql_type}[]) WITH ORDINALITY AS u(x, o)",
        [value],
    ).fetchone()
    assert row is not None
    return list(row[0])


@pytest.mark.parametrize(("wrapper", "sql_type", "values"), CASES)
def test_each_type_arrives_in_order(
    pg: psycopg.Connection,
    wrapper: type,
    sql_type: str,
    values: list[object],
) -> None:
    assert _round_trip(pg, sql_type, wrapper(values)) == values
    # and exactly as psycopg's own list dumper sends them
    assert _round_trip(pg, sql_type, values) == values


@pytest.mark.parametrize(("wrapper", "sql_type", "values"), CASES)
def test_an_empty_array_is_empty(
    pg: psycopg.Connection,
    wrapper: type,
    sql_type: str,
    values: list[object],
) -> None:
    row = pg.execute(f"SELECT cardinality(%b::{sql_type}[])", [wrapper([])]).fetchone()
    assert row == (0,)


def test_out_of_range_is_refused_before_sending(pg: psycopg.Connection) -> None:
    with pytest.raises(ValueError, match="out of range"):
        pg.execute("SELECT %b::int2[]", [Int2Array([32768])])
    pg.rollback()


@settings(max_examples=30, deadline=None)
@given(
    ints=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
    blobs=st.lists(st.binary(max_size=80), max_size=40),
    texts=st.lists(
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
        max_size=40,
    ),
)
def test_random_arrays_round_trip(
    pg: psycopg.Connection,
    ints: list[int],
    blobs: list[bytes],
    texts: list[str],
) -> None:
    assert _round_trip(pg, "int8", Int8Array(ints)) == ints
    assert _round_trip(pg, "bytea", ByteaArray(blobs)) == blobs
    assert _round_trip(pg, "text", TextArray(texts)) == texts

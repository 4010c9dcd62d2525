"""Fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL is selected by ``RXLEDGER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``, the server every machine of
this project runs; the Makefile and CI pass it explicitly). Each test gets its
own database there, dropped afterwards. Set the variable to ``off`` to run the
SQLite half only. When it is set and the server cannot be reached, the
PostgreSQL tests fail: they are never skipped quietly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ledger.core.note import Signer
from ledger.core.sealing import MasterKey
from ledger.service import Ledger, init_ledger, read_key_file
from ledger.store.db import normalize_url

# Every ledger the tests make seals its payloads with this session's master key;
# child processes (servers, CLIs) inherit it. Tests of a missing or wrong key
# remove or replace it in their own environment.
# (setdefault: worker processes import this module again and must keep the key.)
os.environ.setdefault("RXLEDGER_MASTER_KEY", MasterKey.generate().encoded())
os.environ.pop("RXLEDGER_MASTER_KEY_FILE", None)

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_URL = os.environ.get("RXLEDGER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
POSTGRES_ON = POSTGRES_URL.strip().lower() not in ("", "off", "0", "no", "false")
BACKENDS = ["sqlite", "postgres"] if POSTGRES_ON else ["sqlite"]


def create_postgres_database() -> str:
    """A fresh, empty database on the test server; returns its URL."""
    admin_url = normalize_url(POSTGRES_URL)
    name = f"rxl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    admin = create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, for tests that are about PostgreSQL itself."""
    if not POSTGRES_ON:
        pytest.fail("this test needs PostgreSQL: set RXLEDGER_TEST_POSTGRES_URL")
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@dataclass
class LedgerEnv:
    """An initialized ledger and the keys a test needs."""

    url: str
    key_dir: Path
    ledger: Ledger
    registrar: Signer
    log_vkey: str
    registrar_vkey: str
    origin: str


def make_ledger_env(url: str, key_dir: Path) -> LedgerEnv:
    result = init_ledger(url, key_dir=key_dir)
    ledger = Ledger.open(url, log_key_file=result.log_key_file)
    return LedgerEnv(
        url=url,
        key_dir=key_dir,
        ledger=ledger,
        registrar=read_key_file(result.registrar_key_file),
        log_vkey=result.log_vkey,
        registrar_vkey=result.registrar_vkey,
        origin=result.origin,
    )


@pytest.fixture
def ledger_env(database_url: str, tmp_path: Path) -> Iterator[LedgerEnv]:
    env = make_ledger_env(database_url, tmp_path / "keys")
    try:
        yield env
    finally:
        env.ledger.close()

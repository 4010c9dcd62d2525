"""Engines for SQLite (the embedded default) and PostgreSQL.

``RXLEDGER_DATABASE_URL`` selects the database; by default it is the SQLite
file ``rxledger.db`` in ``RXLEDGER_HOME`` (default: the user's data directory,
e.g. ``~/.local/share/rxledger``). ``postgresql://`` URLs use psycopg 3.

SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged append
survives a crash of the process and of the machine). Writers take the
database lock up front with ``BEGIN IMMEDIATE`` (ARCHITECTURE §4); readers
use plain deferred transactions and never block the writer in WAL mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from ledger.core.sealing import (
    MASTER_KEY_FILE,
    MASTER_KEY_FILE_ENV,
    MasterKey,
    load_master_key,
)

WRITE = "rxledger_write"


def home_dir() -> Path:
    """Where the ledger keeps its files unless told otherwise."""
    return Path(os.environ.get("RXLEDGER_HOME") or user_data_dir("rxledger", appauthor=False))


def default_master_key_file(key_dir: Path | None = None) -> Path:
    """``RXLEDGER_MASTER_KEY_FILE``, else ``master.key`` in the key directory."""
    configured = os.environ.get(MASTER_KEY_FILE_ENV)
    if configured:
        return Path(configured)
    return (key_dir or home_dir() / "keys") / MASTER_KEY_FILE


def configured_master_key(key_dir: Path | None = None) -> MasterKey:
    """The operator's master key (``RXLEDGER_MASTER_KEY``, or its file); raises
    :class:`~ledger.core.sealing.MasterKeyError` saying how to provide it."""
    return load_master_key(default_master_key_file(key_dir))


def default_database_url() -> str:
    url = os.environ.get("RXLEDGER_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{home_dir() / 'rxledger.db'}"


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``postgres://`` URLs; use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    url = normalize_url(url or default_database_url())
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            poolclass=NullPool,
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite would
        # otherwise begin lazily and always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        if connection.get_execution_options().get(WRITE):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")

"""Service settings, from the environment (``RXLEDGER_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ledger.service import default_log_key_file
from ledger.store.db import default_database_url


@dataclass(frozen=True)
class Settings:
    database_url: str
    log_key_file: Path
    #: the largest request body accepted, in bytes
    max_body_bytes: int = 4 * 1024 * 1024
    #: the largest single statement (its canonical bytes), in bytes
    max_statement_bytes: int = 64 * 1024

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=default_database_url(),
            log_key_file=default_log_key_file(),
            max_body_bytes=int(os.environ.get("RXLEDGER_MAX_BODY_BYTES") or 4 * 1024 * 1024),
        )

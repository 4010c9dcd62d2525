"""Service settings, from the environment (``RXLEDGER_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ledger.service import default_log_key_file
from ledger.store.db import default_database_url
from ledger.store.sequencer import MAX_STATEMENT
from ledger.witnessing import WitnessEndpoint, parse_witnesses


@dataclass(frozen=True)
class Settings:
    database_url: str
    log_key_file: Path
    #: the largest request body accepted, in bytes
    max_body_bytes: int = 4 * 1024 * 1024
    #: witnesses that cosign the checkpoints: ``RXLEDGER_WITNESSES``, entries
    #: ``VKEY@URL`` separated by commas or white space (docs/witness.md)
    witnesses: tuple[WitnessEndpoint, ...] = ()
    #: seconds between two rounds of submissions to the witnesses
    witness_interval: float = 1.0
    #: the largest single statement (its canonical bytes), in bytes. The record
    #: around it adds at most 266 bytes (seq, prev, received_at, signature), and
    #: a record must fit a C2SP tlog-tiles entry (at most 65,535 bytes): 60 KiB
    #: leaves room to spare (tests/test_tiles.py checks the arithmetic).
    max_statement_bytes: int = MAX_STATEMENT

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=default_database_url(),
            log_key_file=default_log_key_file(),
            max_body_bytes=int(os.environ.get("RXLEDGER_MAX_BODY_BYTES") or 4 * 1024 * 1024),
            witnesses=tuple(parse_witnesses(os.environ.get("RXLEDGER_WITNESSES", ""))),
            witness_interval=float(os.environ.get("RXLEDGER_WITNESS_INTERVAL") or 1.0),
        )

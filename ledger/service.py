"""Use cases that tie the domain and the store together: init, open, append, read.

The API and the CLI are thin adapters over :class:`Ledger`.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, inspect, select

from ledger.core.checkpoint import Checkpoint, note_size
from ledger.core.errors import (
    ConflictError,
    KeyFormatError,
    LedgerError,
    NotFoundError,
    NotInitializedError,
)
from ledger.core.merkle import EMPTY_ROOT
from ledger.core.note import Signer
from ledger.core.sealing import MASTER_KEY_ENV, MasterKey, load_master_key
from ledger.core.statement import (
    SignedStatement,
    Statement,
    format_time,
    instant,
    make_statement,
    now,
)
from ledger.core.verify import head_extension
from ledger.domain import prescriptions, settlement
from ledger.domain.registry import get_actor, key_valid_at
from ledger.domain.state import State
from ledger.store import migrate
from ledger.store.db import (
    configured_master_key,
    default_master_key_file,
    home_dir,
    make_engine,
)
from ledger.store.reader import LedgerReader, ProjectionReader
from ledger.store.schema import checkpoints, ledger_meta, log_head
from ledger.store.sequencer import Receipt, Sequencer, Submission
from ledger.store.vault import Vault

DEFAULT_ORIGIN = "rxledger.local/log"
LOG_KEY_FILE = "log.skey"
REGISTRAR_KEY_FILE = "registrar.skey"
REGISTRAR_ID = "registrar"


def default_log_key_file() -> Path:
    """``RXLEDGER_LOG_KEY_FILE``, else ``RXLEDGER_HOME/keys/log.skey``."""
    configured = os.environ.get("RXLEDGER_LOG_KEY_FILE")
    return Path(configured) if configured else home_dir() / "keys" / LOG_KEY_FILE


def ensure_master_key(key_dir: Path) -> tuple[MasterKey, Path | None]:
    """The master key, made and written (0600) when none is configured; returns
    the key and the file it was written to (``None`` when it already existed)."""
    path = default_master_key_file(key_dir)
    if not os.environ.get(MASTER_KEY_ENV, "").strip() and not path.exists():
        key = MasterKey.generate()
        write_key_file(path, key.encoded())
        return key, path
    return load_master_key(path), None


def write_key_file(path: Path, skey: str) -> None:
    """Write a private key string to ``path`` with mode 0600; never overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(skey + "\n")


def read_key_file(path: Path) -> Signer:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as e:
        raise NotInitializedError(f"key file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFormatError(f"cannot read key file {path}: {e.__class__.__name__}") from e
    return Signer.from_skey(text)


@dataclass(frozen=True)
class InitResult:
    database_url: str
    origin: str
    log_vkey: str
    registrar_vkey: str
    log_key_file: Path
    registrar_key_file: Path
    created: bool
    #: the master key file ``init`` wrote; ``None`` when a key was configured already
    master_key_file: Path | None = None


def is_initialized(engine: Engine) -> bool:
    if not inspect(engine).has_table("ledger_meta"):
        return False
    with engine.connect() as conn:
        return conn.execute(select(ledger_meta.c.value)).first() is not None


def init_ledger(
    database_url: str | None = None,
    *,
    key_dir: Path | None = None,
    origin: str = DEFAULT_ORIGIN,
) -> InitResult:
    """Create the schema, the log key, the registrar key and the genesis record.

    Idempotent: on an initialized database it changes nothing and reports
    what is there (``created=False``).
    """
    engine = make_engine(database_url)
    key_dir = key_dir or home_dir() / "keys"
    log_path, registrar_path = key_dir / LOG_KEY_FILE, key_dir / REGISTRAR_KEY_FILE
    try:
        migrate.upgrade(engine)
        if is_initialized(engine):
            meta = LedgerReader(engine).meta()
            return InitResult(
                str(engine.url.render_as_string(hide_password=True)),
                meta["origin"],
                meta["log_vkey"],
                meta["registrar_vkey"],
                log_path,
                registrar_path,
                created=False,
            )
        for path in (log_path, registrar_path):
            if path.exists():
                raise ConflictError(
                    f"{path} exists but the database holds no ledger: refusing to reuse or "
                    "overwrite a key; move it away or pass another --key-dir"
                )
        sealing_key, master_key_file = ensure_master_key(key_dir)
        log_signer = Signer.generate(origin)
        registrar = Signer.generate(REGISTRAR_ID)
        write_key_file(log_path, log_signer.skey)
        write_key_file(registrar_path, registrar.skey)
        empty = Checkpoint(
            origin=origin, size=0, root_hash=EMPTY_ROOT, extensions=(head_extension(bytes(32)),)
        ).sign([log_signer])
        with engine.begin() as conn:
            conn.execute(
                insert(ledger_meta),
                [
                    {"name": "origin", "value": origin},
                    {"name": "log_vkey", "value": log_signer.vkey},
                    {"name": "registrar_vkey", "value": registrar.vkey},
                ],
            )
            conn.execute(
                insert(log_head).values(id=1, size=0, head_hash=bytes(32), root_hash=EMPTY_ROOT)
            )
            conn.execute(insert(checkpoints).values(size=0, note=empty))
        ledger = Ledger(engine, log_signer, master_key=sealing_key)
        genesis = make_statement(
            registrar,
            "actor.register",
            {
                "actor": REGISTRAR_ID,
                "role": "registrar",
                "key": registrar.vkey,
                "display_name": "Ledger registrar",
            },
        )
        (outcome,) = ledger.append([Submission(genesis)])
        if not isinstance(outcome, Receipt):
            raise outcome
        return InitResult(
            str(engine.url.render_as_string(hide_password=True)),
            origin,
            log_signer.vkey,
            registrar.vkey,
            log_path,
            registrar_path,
            created=True,
            master_key_file=master_key_file,
        )
    finally:
        engine.dispose()


class SettlementAgent:
    """Decides claims as they are sequenced, with the insurers' settlement keys.

    An insurer registers a key with purpose ``settlement`` (``actor.add_key``)
    and hands the private key to the service (a file ``<anything>.skey`` in
    the settlement key directory). For every accepted ``claim.submit`` the
    agent computes the decision with :func:`ledger.domain.settlement.evaluate`
    and signs a ``settlement.decision`` that the sequencer records right after
    the claim, in the same transaction. Without a key for the claim's insurer
    the claim stays pending (the insurer may then submit the decision itself).
    """

    def __init__(self, signers: list[Signer] | None = None) -> None:
        self._signers: dict[str, Signer] = {s.vkey: s for s in signers or []}

    @classmethod
    def from_dir(cls, directory: Path) -> SettlementAgent:
        signers = [read_key_file(p) for p in sorted(directory.glob("*.skey"))]
        return cls(signers)

    def add(self, signer: Signer) -> None:
        self._signers[signer.vkey] = signer

    def __call__(self, state: State, statement: Statement, seq: int) -> list[SignedStatement]:
        if statement.type != "claim.submit":
            return []
        claim = state.get(settlement.CLAIM, str(statement.body["claim_id"]))
        if claim is None:
            return []
        insurer = get_actor(state, claim["insurer"])
        # Decided at the claim's own time: within the clock window by construction.
        at = statement.issued_at
        for grant in (insurer or {}).get("keys", []):
            signer = self._signers.get(grant["vkey"])
            if signer is None or grant.get("purpose") != "settlement":
                continue
            if key_valid_at(grant, instant(at)) is None:
                decision = settlement.evaluate(state, claim)
                return [make_statement(signer, "settlement.decision", decision, issued_at=at)]
        return []


def default_settlement_key_dir() -> Path:
    configured = os.environ.get("RXLEDGER_SETTLEMENT_KEY_DIR")
    return Path(configured) if configured else home_dir() / "keys" / "settlement"


class Ledger:
    """An open ledger: its sequencer and its reader over one engine."""

    def __init__(
        self,
        engine: Engine,
        log_signer: Signer,
        *,
        settlement: SettlementAgent | None = None,
        master_key: MasterKey | None = None,
    ) -> None:
        """``master_key`` defaults to the configured one (:func:`configured_master_key`);
        without one, or with another ledger's, this raises :class:`MasterKeyError`."""
        self.engine = engine
        self.vault = Vault(master_key or configured_master_key())
        self.reader = LedgerReader(engine, vault=self.vault)
        meta = self.reader.meta()
        if log_signer.vkey != meta["log_vkey"]:
            raise ConflictError(
                f"the log key does not match this ledger: expected {meta['log_vkey']}, "
                f"got {log_signer.vkey}"
            )
        self.origin = meta["origin"]
        self.log_vkey = meta["log_vkey"]
        self.registrar_vkey = meta["registrar_vkey"]
        self.settlement = settlement or SettlementAgent()
        with engine.begin() as conn:
            self.vault.bind(conn)
        self.sequencer = Sequencer(
            engine,
            log_signer=log_signer,
            origin=self.origin,
            vault=self.vault,
            followup=self.settlement,
        )

    @classmethod
    def open(
        cls,
        database_url: str | None = None,
        *,
        log_key_file: Path | None = None,
        settlement_key_dir: Path | None = None,
    ) -> Ledger:
        """Open an initialized ledger. The master key is the configured one, else
        ``master.key`` beside the log key (where ``init`` writes both)."""
        engine = make_engine(database_url)
        try:
            if not is_initialized(engine):
                raise NotInitializedError("the database holds no ledger: run `rxledger init` first")
            log_key_file = log_key_file or default_log_key_file()
            signer = read_key_file(log_key_file)
            agent = SettlementAgent.from_dir(settlement_key_dir or default_settlement_key_dir())
            sealing = configured_master_key(log_key_file.parent)
            return cls(engine, signer, settlement=agent, master_key=sealing)
        except LedgerError:
            engine.dispose()
            raise

    def append(
        self, batch: list[Submission], *, atomic: bool = False
    ) -> list[Receipt | LedgerError]:
        return list(self.sequencer.append(batch, atomic=atomic))

    def close(self) -> None:
        self.engine.dispose()


TRAIL_STEPS = ("settlement", "claim", "dispense", "prescription", "prescriber-registration")


def claim_trail(engine: Engine, claim_id: str) -> dict[str, Any]:
    """Settlement -> claim -> dispense -> prescription -> prescriber registration.

    Each step is the record itself (exact bytes, base64) with an inclusion
    proof against the latest checkpoint, so the trail can be checked offline
    with the log's public key (:func:`ledger.client.check_trail`).
    """
    views, reader = ProjectionReader(engine), LedgerReader(engine)
    claim = views.get(settlement.CLAIM, claim_id)
    if claim is None:
        raise NotFoundError(f"no claim {claim_id!r}")
    dispense = views.get(
        prescriptions.DISPENSE, prescriptions.dispense_key(claim["rx_id"], claim["fill_number"])
    )
    rx = views.get(prescriptions.RX, claim["rx_id"])
    if dispense is None or rx is None:
        raise NotFoundError(f"claim {claim_id!r} refers to a dispense that is not recorded")
    prescriber = views.get("actor", rx["prescriber"])
    seqs: list[tuple[str, int]] = []
    if claim.get("decision"):
        seqs.append(("settlement", int(claim["decision"]["seq"])))
    seqs += [
        ("claim", int(claim["submitted_seq"])),
        ("dispense", int(dispense["seq"])),
        ("prescription", int(rx["issued_seq"])),
    ]
    if prescriber is not None:
        seqs.append(("prescriber-registration", int(prescriber["registered_seq"])))
    note = reader.latest_checkpoint()
    size = note_size(note)
    steps = []
    for step, seq in seqs:
        record = reader.record(seq)
        steps.append(
            {
                "step": step,
                "seq": seq,
                "type": record.fields.get("type"),
                "actor": record.fields.get("actor"),
                "record_hash": record.hash.hex(),
                "record_bytes": base64.b64encode(record.record_bytes).decode("ascii"),
                "inclusion_proof": [h.hex() for h in reader.inclusion_proof(seq, size)],
            }
        )
    return {
        "claim_id": claim_id,
        "status": claim["status"],
        "decision": claim.get("decision"),
        "tree_size": size,
        "checkpoint": note,
        "steps": steps,
    }


def prescription_view(engine: Engine, rx_id: str) -> dict[str, Any]:
    """A prescription's current state (expiry computed now) and its history."""
    reader = LedgerReader(engine)
    rx = ProjectionReader(engine).get(prescriptions.RX, rx_id)
    if rx is None:
        raise NotFoundError(f"no prescription {rx_id!r}")
    history = []
    for seq in rx["history"]:
        record = reader.record(seq)
        history.append(
            {
                "seq": seq,
                "type": record.fields.get("type"),
                "actor": record.fields.get("actor"),
                "issued_at": record.fields.get("issued_at"),
                "received_at": record.received_at,
                "record_hash": record.hash.hex(),
            }
        )
    view = dict(rx)
    view["status"] = prescriptions.status_at(rx, instant(format_time(now())))
    view["history"] = history
    return view

"""Tables. Migrations in ``ledger/store/migrations`` create exactly these.

Every column of ``records``, ``payloads``, ``merkle_nodes``, ``checkpoints``
and ``log_head`` is checked by ``rxledger verify --db``: either it is part of
the signed and hashed bytes, or verification compares it with them.

``cosignatures`` is not: each row is a witness's signature line on one of the
checkpoints, which anyone checks on its own against the witness's public key
(:func:`ledger.core.cosignature.verify_cosignatures`). A forged or altered row
only makes a cosignature that does not verify; it cannot change what a
checkpoint or a record says.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

#: ledger-wide settings written by ``init``: origin, log_vkey, registrar_vkey
ledger_meta = Table(
    "ledger_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

#: the single row the sequencer locks; the head of the log
log_head = Table(
    "log_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("head_hash", LargeBinary(32), nullable=False),
    Column("root_hash", LargeBinary(32), nullable=False),
)

records = Table(
    "records",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("record_hash", LargeBinary(32), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("nonce", String(64), nullable=False),
    Column("type", String(128), nullable=False),
    Column("received_at", String(32), nullable=False),
    Column("record_bytes", LargeBinary, nullable=False),
    # nonce first: it is random, so a lookup of a batch's nonces is selective
    # whatever the planner knows (one actor may have signed every record)
    UniqueConstraint("nonce", "actor", name="uq_records_nonce_actor"),
)
Index("ix_records_type_seq", records.c.type, records.c.seq)

#: payloads beside their records, committed to by ``body.payload_digest``
payloads = Table(
    "payloads",
    metadata,
    Column("seq", BigInteger, ForeignKey("records.seq"), primary_key=True, autoincrement=False),
    Column("digest", LargeBinary(32), nullable=False),
    Column("content", LargeBinary, nullable=True),
    #: whose data key seals ``content`` (a patient's pseudonym, or ``ledger``)
    Column("owner", String(128), nullable=True),
    #: the record that shredded ``content`` (erasure or retention); then it is NULL
    Column("erased_seq", BigInteger, nullable=True),
)
Index("ix_payloads_owner", payloads.c.owner, payloads.c.seq)

#: each owner's data key, sealed by the master key (never stored here); a
#: shredded key has ``wrapped`` NULL and the seq of the record that shredded it
data_keys = Table(
    "data_keys",
    metadata,
    Column("owner", String(128), primary_key=True),
    Column("wrapped", LargeBinary, nullable=True),
    Column("created_seq", BigInteger, nullable=False),
    Column("erased_seq", BigInteger, nullable=True),
)

#: every read of a clinical payload and every pseudonym lookup, as a FHIR
#: AuditEvent-like document (``event``); ``action`` is ``R`` (read) or ``E``
#: (execute: a lookup); the patient's access log is the rows of ``patient``
access_log = Table(
    "access_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("recorded", String(32), nullable=False),
    Column("action", String(1), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("patient", String(128), nullable=True),
    Column("seq", BigInteger, nullable=True),
    Column("basis", String(64), nullable=False),
    Column("event", Text, nullable=False),
)
Index("ix_access_log_patient", access_log.c.patient, access_log.c.id)

#: perfect-subtree hashes: (level, idx) covers leaves [idx << level, (idx + 1) << level)
merkle_nodes = Table(
    "merkle_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

#: one signed checkpoint per committed batch
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
)

#: witness cosignatures (c2sp.org/tlog-cosignature) collected for checkpoints:
#: ``line`` is the note signature line as the witness returned it, for the
#: checkpoint of tree size ``size``; one per (size, witness key)
cosignatures = Table(
    "cosignatures",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("witness_name", String(256), primary_key=True),
    Column("key_id", String(8), primary_key=True),
    Column("timestamp", BigInteger, nullable=False),
    Column("line", Text, nullable=False),
)
Index(
    "ix_cosignatures_witness_size",
    cosignatures.c.witness_name,
    cosignatures.c.key_id,
    cosignatures.c.size,
)

#: projections: the current state derived from the records, as JSON documents
#: addressed by (kind, key) — actors, prescriptions, dispenses, claims... —
#: with a few columns to query by. Dropped and rebuilt by replay.
projections = Table(
    "projections",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("key", String(300), primary_key=True),
    Column("value", Text, nullable=False),
    Column("patient", String(128), nullable=True),
    Column("party", String(128), nullable=True),
    Column("status", String(32), nullable=True),
    Column("tags", Text, nullable=True),
    Column("seq", BigInteger, nullable=False),
)
Index("ix_projections_patient", projections.c.kind, projections.c.patient, projections.c.seq)
Index(
    "ix_projections_party",
    projections.c.kind,
    projections.c.party,
    projections.c.status,
    projections.c.seq,
)

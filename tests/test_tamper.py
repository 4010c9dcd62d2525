"""Tampering with any stored byte is found by ``verify`` (ARCHITECTURE §7).

One small ledger per backend (about 50 records, some with payloads, one
checkpoint per batch) is built for the module; each case checks it verifies,
changes one byte or one value of one row (or deletes one row) directly in the
database, and checks that :func:`ledger.store.audit.verify_database` raises a
:class:`VerificationError` that names the right place: the tampered record's
``seq``, the Merkle node's ``first_seq``, the checkpoint's size, or the
``log_head`` row. The tables are restored from a snapshot after each case.

The last tests are the attacks ``verify`` alone cannot see: history rewritten,
or its tail cut off, by someone holding the log key and the actor's key, with
every hash, node and checkpoint recomputed. Only an auditor who kept an older
checkpoint catches them, with a consistency proof (issue 5).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, delete, insert, select, update

from ledger.core import merkle
from ledger.core.checkpoint import open_checkpoint
from ledger.core.errors import (
    CheckpointError,
    ConsistencyProofError,
    MerkleNodeError,
    PayloadError,
    RangeError,
    RecordError,
    RootMismatchError,
    VerificationError,
)
from ledger.core.note import Signer, Verifier
from ledger.core.record import Record
from ledger.core.statement import SignedStatement, format_time, make_statement, parse_time
from ledger.core.verify import _DeferredSignatures
from ledger.store import audit
from ledger.store.audit import verify_database
from ledger.store.reader import LedgerReader
from ledger.store.schema import checkpoints, log_head, merkle_nodes, payloads, records
from ledger.store.sequencer import Receipt, Submission
from tests.conftest import (
    BACKENDS,
    LedgerEnv,
    create_postgres_database,
    drop_postgres_database,
    make_ledger_env,
)
from tests.helpers import attest, register

BATCHES = 5
PER_BATCH = 10


@dataclass
class Built:
    """A small ledger and the rows the cases aim at."""

    env: LedgerEnv
    signer: Signer
    size: int
    batch_ends: list[int]  # checkpoint sizes, ascending
    plain_seq: int  # a record in the middle with no payload
    payload_seq: int  # a record in the middle with a payload
    later_plain_seq: int  # a record after payload_seq with no payload
    statements: dict[int, tuple[SignedStatement, bytes | None]]

    @property
    def engine(self) -> Engine:
        return self.env.ledger.engine

    @property
    def middle_checkpoint(self) -> int:
        return self.batch_ends[len(self.batch_ends) // 2]


def _payload_statement(signer: Signer) -> tuple[SignedStatement, bytes]:
    payload = b"clinical payload " + os.urandom(24)
    body = {
        "digest": hashlib.sha256(os.urandom(16)).hexdigest(),
        "payload_digest": hashlib.sha256(payload).hexdigest(),
    }
    return make_statement(signer, "doc.attest", body), payload


def build(env: LedgerEnv) -> Built:
    signer = register(env, "pharmacy-1", "pharmacy", licence="PH-0001")
    register(env, "auditor-1", "auditor")
    statements: dict[int, tuple[SignedStatement, bytes | None]] = {}
    for _ in range(BATCHES):
        batch: list[tuple[SignedStatement, bytes | None]] = []
        for i in range(PER_BATCH):
            if i % 3 == 1:
                batch.append(_payload_statement(signer))
            else:
                batch.append((attest(signer), None))
        outcomes = env.ledger.append([Submission(s, payload=p) for s, p in batch])
        for item, outcome in zip(batch, outcomes, strict=True):
            assert isinstance(outcome, Receipt), outcome
            statements[outcome.seq] = item
    reader = LedgerReader(env.ledger.engine)
    size = reader.head().size
    with_payload = sorted(s for s, (_, p) in statements.items() if p is not None)
    without = sorted(s for s, (_, p) in statements.items() if p is None)
    middle = size // 2
    payload_seq = next(s for s in with_payload if s >= middle)
    built = Built(
        env=env,
        signer=signer,
        size=size,
        batch_ends=[s for s, _ in reader.iter_checkpoints()],
        plain_seq=next(s for s in without if s >= middle),
        payload_seq=payload_seq,
        later_plain_seq=next(s for s in without if s > payload_seq + 2),
        statements=statements,
    )
    assert size == 3 + BATCHES * PER_BATCH
    assert 0 < built.plain_seq < size - 1
    verify_database(env.ledger.engine)  # the untouched ledger verifies
    return built


#: the tables a case may change; restored from a snapshot after every case
STORED = (records, payloads, merkle_nodes, checkpoints, log_head)


def _snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {t.name: [dict(r._mapping) for r in conn.execute(select(t)).all()] for t in STORED}


def _restore(engine: Engine, snapshot: dict[str, list[dict[str, Any]]]) -> None:
    with engine.begin() as conn:
        for t in (payloads, records, merkle_nodes, checkpoints, log_head):
            conn.execute(delete(t))
        for t in STORED:
            conn.execute(insert(t), snapshot[t.name])


@pytest.fixture(scope="module", params=BACKENDS)
def module_ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Built, dict[str, list[dict[str, Any]]]]]:
    """One small ledger per backend for the whole module (creating databases is slow)."""
    backend = str(request.param)
    tmp = tmp_path_factory.mktemp(f"tamper-{backend}")
    url = f"sqlite:///{tmp / 'ledger.db'}" if backend == "sqlite" else create_postgres_database()
    try:
        env = make_ledger_env(url, tmp / "keys")
        try:
            b = build(env)
            yield b, _snapshot(b.engine)
        finally:
            env.ledger.close()
    finally:
        if backend != "sqlite":
            drop_postgres_database(url)


@pytest.fixture
def built(module_ledger: tuple[Built, dict[str, list[dict[str, Any]]]]) -> Iterator[Built]:
    """The module's ledger, untouched: it verifies before, and is restored after, each case."""
    b, snapshot = module_ledger
    env = b.env
    verify_database(b.engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey)
    try:
        yield b
    finally:
        _restore(b.engine, snapshot)


# --- tampering helpers --------------------------------------------------------

Tamper = Callable[[Connection, "Built"], None]


def _flip(data: bytes, at: int) -> bytes:
    """``data`` with the byte at ``at`` changed (low bit flipped), same length."""
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _flip_char(text: str, at: int) -> str:
    """``text`` with one ASCII character changed to another printable one."""
    c = text[at]
    new = "0" if c == "1" else "1" if c.isdigit() else ("b" if c == "a" else "a")
    if c.isalpha() and c.isupper():
        new = "B" if c == "A" else "A"
    return text[:at] + new + text[at + 1 :]


def _record_bytes(conn: Connection, seq: int) -> bytes:
    return bytes(
        conn.execute(select(records.c.record_bytes).where(records.c.seq == seq)).scalar_one()
    )


def _set_record_bytes(conn: Connection, seq: int, data: bytes) -> None:
    conn.execute(update(records).where(records.c.seq == seq).values(record_bytes=data))


def _flip_record_bytes(where: Callable[[bytes], int], seq_of: Callable[[Built], int]) -> Tamper:
    def tamper(conn: Connection, b: Built) -> None:
        seq = seq_of(b)
        data = _record_bytes(conn, seq)
        _set_record_bytes(conn, seq, _flip(data, where(data)))

    return tamper


def _in_statement_body(data: bytes) -> int:
    return data.index(b'"digest":"') + len(b'"digest":"') + 10


def _in_prev(data: bytes) -> int:
    return data.index(b'"prev":"') + len(b'"prev":"') + 20


def _in_signature(data: bytes) -> int:
    return data.index(b'"signature":"') + len(b'"signature":"') + 30


def _received_at_one_ms_later(conn: Connection, b: Built) -> None:
    """The record's own received_at moved 1 ms later: still in order, still valid."""
    data = _record_bytes(conn, b.plain_seq)
    mark = b'"received_at":"'
    at = data.index(mark) + len(mark)
    old = data[at : at + 24].decode()
    new = format_time(parse_time(old) + timedelta(milliseconds=1))
    assert len(new) == len(old)
    _set_record_bytes(conn, b.plain_seq, data[:at] + new.encode() + data[at + 24 :])


def _column_text(column: Any, seq_of: Callable[[Built], int], at: int) -> Tamper:
    def tamper(conn: Connection, b: Built) -> None:
        seq = seq_of(b)
        value = conn.execute(select(column).where(records.c.seq == seq)).scalar_one()
        conn.execute(
            update(records).where(records.c.seq == seq).values({column.name: _flip_char(value, at)})
        )

    return tamper


def _records_seq(conn: Connection, b: Built) -> None:
    conn.execute(update(records).where(records.c.seq == b.plain_seq).values(seq=10**9))


def _records_hash(conn: Connection, b: Built) -> None:
    value = conn.execute(
        select(records.c.record_hash).where(records.c.seq == b.plain_seq)
    ).scalar_one()
    conn.execute(
        update(records)
        .where(records.c.seq == b.plain_seq)
        .values(record_hash=_flip(bytes(value), 7))
    )


def _delete_record(conn: Connection, b: Built) -> None:
    conn.execute(delete(records).where(records.c.seq == b.plain_seq))


def _delete_last_record(conn: Connection, b: Built) -> None:
    last = b.size - 1
    conn.execute(delete(payloads).where(payloads.c.seq == last))
    conn.execute(delete(records).where(records.c.seq == last))


def _payload_digest(conn: Connection, b: Built) -> None:
    value = conn.execute(
        select(payloads.c.digest).where(payloads.c.seq == b.payload_seq)
    ).scalar_one()
    conn.execute(
        update(payloads)
        .where(payloads.c.seq == b.payload_seq)
        .values(digest=_flip(bytes(value), 5))
    )


def _payload_content(conn: Connection, b: Built) -> None:
    value = conn.execute(
        select(payloads.c.content).where(payloads.c.seq == b.payload_seq)
    ).scalar_one()
    conn.execute(
        update(payloads)
        .where(payloads.c.seq == b.payload_seq)
        .values(content=_flip(bytes(value), len(value) // 2))
    )


def _payload_owner(conn: Connection, b: Built) -> None:
    # another owner: its data key does not open the payload, and the record says otherwise
    conn.execute(
        update(payloads).where(payloads.c.seq == b.payload_seq).values(owner="P-0000000000000000")
    )


def _payload_fake_shredding(conn: Connection, b: Built) -> None:
    # a payload dropped and passed off as shredded by a later record that shreds nothing
    conn.execute(
        update(payloads)
        .where(payloads.c.seq == b.payload_seq)
        .values(content=None, erased_seq=b.later_plain_seq)
    )


def _payload_shredded_but_kept(conn: Connection, b: Built) -> None:
    conn.execute(
        update(payloads).where(payloads.c.seq == b.payload_seq).values(erased_seq=b.later_plain_seq)
    )


def _payload_content_dropped(conn: Connection, b: Built) -> None:
    conn.execute(update(payloads).where(payloads.c.seq == b.payload_seq).values(content=None))


def _payload_seq(conn: Connection, b: Built) -> None:
    # the payload row moves from its record to a later record that commits to none
    conn.execute(
        update(payloads).where(payloads.c.seq == b.payload_seq).values(seq=b.later_plain_seq)
    )


def _payload_deleted(conn: Connection, b: Built) -> None:
    conn.execute(delete(payloads).where(payloads.c.seq == b.payload_seq))


def _leaf_of(b: Built) -> tuple[int, int]:
    return (0, b.plain_seq)


def _interior_of(b: Built) -> tuple[int, int]:
    level = 3
    idx = b.plain_seq >> level
    assert (idx + 1) << level <= b.size, "the level-3 node must be complete"
    return (level, idx)


def _node_where(node: tuple[int, int]) -> Any:
    return (merkle_nodes.c.level == node[0]) & (merkle_nodes.c.idx == node[1])


def _node_hash(node_of: Callable[[Built], tuple[int, int]]) -> Tamper:
    def tamper(conn: Connection, b: Built) -> None:
        node = node_of(b)
        value = conn.execute(select(merkle_nodes.c.hash).where(_node_where(node))).scalar_one()
        conn.execute(
            update(merkle_nodes).where(_node_where(node)).values(hash=_flip(bytes(value), 9))
        )

    return tamper


def _node_level(conn: Connection, b: Built) -> None:
    conn.execute(update(merkle_nodes).where(_node_where(_leaf_of(b))).values(level=40))


def _node_idx(conn: Connection, b: Built) -> None:
    conn.execute(update(merkle_nodes).where(_node_where(_leaf_of(b))).values(idx=10**9))


def _node_deleted(conn: Connection, b: Built) -> None:
    conn.execute(delete(merkle_nodes).where(_node_where(_leaf_of(b))))


def _last_checkpoint_deleted(conn: Connection, b: Built) -> None:
    conn.execute(delete(checkpoints).where(checkpoints.c.size == b.batch_ends[-1]))


def _head_deleted(conn: Connection, b: Built) -> None:
    del b
    conn.execute(delete(log_head))


def _checkpoint_size(conn: Connection, b: Built) -> None:
    size = b.middle_checkpoint
    assert size + 1 not in b.batch_ends
    conn.execute(update(checkpoints).where(checkpoints.c.size == size).values(size=size + 1))


def _checkpoint_note(line: int, offset: int) -> Tamper:
    def tamper(conn: Connection, b: Built) -> None:
        size = b.middle_checkpoint
        note = conn.execute(
            select(checkpoints.c.note).where(checkpoints.c.size == size)
        ).scalar_one()
        lines = note.split("\n")
        if line == -1:  # the signature line: "— <name> <base64>"
            text = lines[-2]
            lines[-2] = _flip_char(text, text.rindex(" ") + 1 + offset)
        else:
            lines[line] = _flip_char(lines[line], offset)
        conn.execute(
            update(checkpoints).where(checkpoints.c.size == size).values(note="\n".join(lines))
        )

    return tamper


def _head(column: str) -> Tamper:
    def tamper(conn: Connection, b: Built) -> None:
        del b
        row = conn.execute(select(log_head).where(log_head.c.id == 1)).one()
        if column == "size":
            value: Any = int(row.size) - 1
        else:
            value = _flip(bytes(getattr(row, column)), 3)
        conn.execute(update(log_head).where(log_head.c.id == 1).values({column: value}))

    return tamper


# --- where each case must be reported ------------------------------------------


@dataclass(frozen=True)
class AtRecord:
    """A RecordError naming this record."""

    seq_of: Callable[[Built], int]
    #: what the message must name (the changed column)
    says: str = ""

    def check(self, error: VerificationError, b: Built) -> None:
        assert isinstance(error, RecordError), f"{type(error).__name__}: {error}"
        assert error.seq == self.seq_of(b), str(error)
        assert self.says in str(error)


@dataclass(frozen=True)
class AtNode:
    """A MerkleNodeError naming this node."""

    node_of: Callable[[Built], tuple[int, int]]

    def check(self, error: VerificationError, b: Built) -> None:
        assert isinstance(error, MerkleNodeError), f"{type(error).__name__}: {error}"
        level, idx = self.node_of(b)
        assert (error.level, error.index, error.first_seq) == (level, idx, idx << level), str(error)


@dataclass(frozen=True)
class AtCheckpoint:
    """A CheckpointError naming the checkpoint by its size."""

    size_of: Callable[[Built], int]

    def check(self, error: VerificationError, b: Built) -> None:
        assert isinstance(error, CheckpointError), f"{type(error).__name__}: {error}"
        assert re.search(rf"\b{self.size_of(b)}\b", str(error)), str(error)


@dataclass(frozen=True)
class AtHead:
    """The log_head row."""

    def check(self, error: VerificationError, b: Built) -> None:
        del b
        assert type(error) is VerificationError, f"{type(error).__name__}: {error}"
        assert "log_head" in str(error), str(error)


def _plain(b: Built) -> int:
    return b.plain_seq


def _with_payload(b: Built) -> int:
    return b.payload_seq


def _first(b: Built) -> int:
    del b
    return 0


def _last(b: Built) -> int:
    return b.size - 1


def _middle_cp(b: Built) -> int:
    return b.middle_checkpoint


def _last_cp(b: Built) -> int:
    return b.batch_ends[-1]


Expect = AtRecord | AtNode | AtCheckpoint | AtHead

CASES: list[tuple[str, Tamper, Expect]] = [
    # records: every column
    ("records.seq changed", _records_seq, AtRecord(_plain)),
    ("records.record_hash flipped byte", _records_hash, AtRecord(_plain, "record_hash column:")),
    (
        "records.actor changed",
        _column_text(records.c.actor, _plain, 0),
        AtRecord(_plain, "actor column:"),
    ),
    (
        "records.nonce changed",
        _column_text(records.c.nonce, _plain, 5),
        AtRecord(_plain, "nonce column:"),
    ),
    (
        "records.type changed",
        _column_text(records.c.type, _plain, 6),
        AtRecord(_plain, "type column:"),
    ),
    (
        "records.received_at changed",
        _column_text(records.c.received_at, _plain, 22),
        AtRecord(_plain, "received_at column:"),
    ),
    (
        "records.record_bytes flipped byte in statement",
        _flip_record_bytes(_in_statement_body, _plain),
        AtRecord(_plain),
    ),
    (
        "records.record_bytes flipped byte in prev",
        _flip_record_bytes(_in_prev, _plain),
        AtRecord(_plain),
    ),
    (
        "records.record_bytes flipped byte in signature",
        _flip_record_bytes(_in_signature, _plain),
        AtRecord(_plain),
    ),
    (
        "records.record_bytes received_at 1 ms later",
        _received_at_one_ms_later,
        AtRecord(_plain),
    ),
    (
        "records.record_bytes flipped byte of payload record",
        _flip_record_bytes(_in_statement_body, _with_payload),
        AtRecord(_with_payload),
    ),
    (
        "records.record_bytes flipped byte of FIRST record",
        _flip_record_bytes(_in_signature, _first),
        AtRecord(_first),
    ),
    (
        "records.record_bytes flipped byte of LAST record",
        _flip_record_bytes(_in_statement_body, _last),
        AtRecord(_last),
    ),
    ("records row deleted", _delete_record, AtRecord(_plain)),
    ("records LAST row deleted (tail cut off)", _delete_last_record, AtCheckpoint(_last_cp)),
    # payloads
    ("payloads.seq moved to a later record", _payload_seq, AtRecord(_with_payload)),
    ("payloads.digest flipped byte", _payload_digest, AtRecord(_with_payload)),
    ("payloads.content flipped byte", _payload_content, AtRecord(_with_payload)),
    ("payloads row deleted", _payload_deleted, AtRecord(_with_payload)),
    ("payloads.owner changed", _payload_owner, AtRecord(_with_payload)),
    ("payloads content dropped as if shredded", _payload_fake_shredding, AtRecord(_with_payload)),
    ("payloads.erased_seq set, content kept", _payload_shredded_but_kept, AtRecord(_with_payload)),
    ("payloads.content dropped", _payload_content_dropped, AtRecord(_with_payload)),
    # merkle_nodes
    ("merkle_nodes.level changed", _node_level, AtNode(_leaf_of)),
    ("merkle_nodes.idx changed", _node_idx, AtNode(_leaf_of)),
    ("merkle_nodes leaf row deleted", _node_deleted, AtNode(_leaf_of)),
    ("merkle_nodes.hash flipped byte of leaf", _node_hash(_leaf_of), AtNode(_leaf_of)),
    (
        "merkle_nodes.hash flipped byte of level-3 node",
        _node_hash(_interior_of),
        AtNode(_interior_of),
    ),
    # checkpoints
    ("checkpoints.size changed", _checkpoint_size, AtCheckpoint(_middle_cp)),
    (
        "checkpoints.note flipped byte in size line",
        _checkpoint_note(1, 0),
        AtCheckpoint(_middle_cp),
    ),
    (
        "checkpoints.note flipped byte in root hash",
        _checkpoint_note(2, 7),
        AtCheckpoint(_middle_cp),
    ),
    (
        "checkpoints.note flipped byte in head extension",
        _checkpoint_note(3, 30),
        AtCheckpoint(_middle_cp),
    ),
    (
        "checkpoints.note flipped byte in signature",
        _checkpoint_note(-1, 20),
        AtCheckpoint(_middle_cp),
    ),
    ("checkpoints LAST row deleted", _last_checkpoint_deleted, AtCheckpoint(_last_cp)),
    # log_head
    ("log_head.size changed", _head("size"), AtHead()),
    ("log_head.head_hash flipped byte", _head("head_hash"), AtHead()),
    ("log_head.root_hash flipped byte", _head("root_hash"), AtHead()),
    ("log_head row deleted", _head_deleted, AtHead()),
]


@pytest.mark.parametrize(("tamper", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampering_is_found_and_located(built: Built, tamper: Tamper, expect: Expect) -> None:
    with built.engine.begin() as conn:
        tamper(conn, built)
    env = built.env
    with pytest.raises(VerificationError) as caught:
        # trust anchors pinned, as an auditor would
        verify_database(built.engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey)
    expect.check(caught.value, built)


# --- rewritten history -----------------------------------------------------------


def _roll_back_to(env: LedgerEnv, b: Built, start: int) -> None:
    """Cut the log back to ``start`` records, consistently, as an operator could.

    Everything at and after ``start`` is removed (records, payloads, the Merkle
    nodes that cover them, later checkpoints) and the head is set back.
    """
    assert start in b.batch_ends, "roll back to a batch boundary (a checkpoint exists there)"
    reader = LedgerReader(env.ledger.engine)
    root_at_start = reader.root(start)
    head_at_start = reader.record(start - 1).hash
    with env.ledger.engine.begin() as conn:
        conn.execute(delete(payloads).where(payloads.c.seq >= start))
        conn.execute(delete(records).where(records.c.seq >= start))
        for level, idx in conn.execute(select(merkle_nodes.c.level, merkle_nodes.c.idx)).all():
            if (int(idx) + 1) << int(level) > start:
                conn.execute(delete(merkle_nodes).where(_node_where((int(level), int(idx)))))
        conn.execute(delete(checkpoints).where(checkpoints.c.size > start))
        conn.execute(
            update(log_head)
            .where(log_head.c.id == 1)
            .values(size=start, head_hash=head_at_start, root_hash=root_at_start)
        )


def _rewrite_from(env: LedgerEnv, b: Built, start: int, replace: SignedStatement) -> None:
    """Rewrite the log from record ``start`` on, as an operator holding every key could.

    The log is rolled back to ``start``; then the same statements, with record
    ``start`` replaced, are appended again in the same batches by the ledger's
    own sequencer (so every ``prev``, record hash, Merkle node and checkpoint
    is recomputed and signed by the log key).
    """
    _roll_back_to(env, b, start)
    bounds = [start, *[s for s in b.batch_ends if s > start]]
    for lo, hi in itertools.pairwise(bounds):
        batch = []
        for seq in range(lo, hi):
            signed, payload = b.statements[seq]
            if seq == start:
                signed, payload = replace, None
            batch.append(Submission(signed, payload=payload))
        outcomes = env.ledger.append(batch)
        assert [o.seq for o in outcomes if isinstance(o, Receipt)] == list(range(lo, hi)), outcomes


def _root_of(note: str, env: LedgerEnv) -> tuple[int, bytes]:
    checkpoint, _ = open_checkpoint(
        note, origin=env.origin, verifier=Verifier.from_vkey(env.log_vkey)
    )
    return checkpoint.size, checkpoint.root_hash


def test_rewritten_history_passes_verify_but_fails_consistency_with_an_older_checkpoint(
    built: Built,
) -> None:
    env = built.env
    reader = LedgerReader(env.ledger.engine)
    # The auditor's saved checkpoints: one from before the rewritten record, the latest one.
    start = built.batch_ends[-3]
    early_note = reader.checkpoint(start)
    old_note = reader.latest_checkpoint()
    old_size, old_root = _root_of(old_note, env)
    assert old_size == built.size
    original = Record.from_bytes(bytes(_record_bytes_of(env.ledger.engine, start)))

    # Record `start`, re-signed by the same key with the same nonce and a different body.
    statement = original.statement()
    assert statement.actor == built.signer.name
    forged = make_statement(
        built.signer,
        statement.type,
        {"digest": hashlib.sha256(b"a different document").hexdigest()},
        issued_at=statement.issued_at,
        nonce=statement.nonce,
    )
    assert forged.signed_bytes != original.statement_bytes
    _rewrite_from(env, built, start, forged)
    # ...and the log goes on growing after the rewrite.
    tail = env.ledger.append([Submission(attest(built.signer)) for _ in range(7)])
    assert all(isinstance(o, Receipt) for o in tail), tail

    # verify --db cannot tell: every byte is consistent and signed by the right keys.
    result = verify_database(
        env.ledger.engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey
    )
    new_size = result.size
    assert new_size == old_size + 7
    rewritten = reader.record(start)
    assert rewritten.statement_bytes == forged.signed_bytes
    assert rewritten.hash != original.hash

    # The rewritten log even holds a validly signed checkpoint at the old size, with another root.
    forked_size, forked_root = _root_of(reader.checkpoint(old_size), env)
    assert forked_size == old_size
    assert forked_root != old_root

    # The auditor who kept the old checkpoint asks for a consistency proof and catches it.
    new_size_cp, new_root = _root_of(reader.latest_checkpoint(), env)
    assert new_size_cp == new_size
    proof = reader.consistency_proof(old_size, new_size)
    with pytest.raises(RootMismatchError):
        merkle.verify_consistency(old_size, new_size, proof, old_root, new_root)
    # The same proof holds against the forked checkpoint: the proof is sound, the history is not.
    merkle.verify_consistency(old_size, new_size, proof, forked_root, new_root)

    # An auditor whose checkpoint predates the rewritten record cannot catch it (expected).
    early_size, early_root = _root_of(early_note, env)
    assert early_size == start
    merkle.verify_consistency(
        early_size, new_size, reader.consistency_proof(early_size, new_size), early_root, new_root
    )


def _record_bytes_of(engine: Engine, seq: int) -> bytes:
    with engine.connect() as conn:
        return _record_bytes(conn, seq)


def test_rolled_back_tail_passes_verify_but_not_an_auditor_holding_the_old_checkpoint(
    built: Built,
) -> None:
    """Cutting off the last batch consistently is invisible to verify, not to an old checkpoint."""
    env = built.env
    reader = LedgerReader(env.ledger.engine)
    old_size, old_root = _root_of(reader.latest_checkpoint(), env)
    start = built.batch_ends[-2]
    _roll_back_to(env, built, start)
    result = verify_database(
        env.ledger.engine, log_key=env.log_vkey, registrar_key=env.registrar_vkey
    )
    assert result.size == start < old_size
    # The log cannot even be asked to prove it extends the old checkpoint...
    with pytest.raises(RangeError):
        reader.consistency_proof(old_size, start)
    with pytest.raises(ConsistencyProofError):
        merkle.verify_consistency(old_size, start, [], old_root, result.root)
    # ...and once it grows past the old size again, with other records, the proof fails.
    grown = env.ledger.append([Submission(attest(built.signer)) for _ in range(old_size - start)])
    assert all(isinstance(o, Receipt) for o in grown), grown
    new_size, new_root = _root_of(reader.latest_checkpoint(), env)
    assert new_size == old_size
    assert new_root != old_root
    with pytest.raises(RootMismatchError):
        merkle.verify_consistency(old_size, new_size, [], old_root, new_root)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize(("tamper", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampering_is_located_in_small_pages_and_chunks(
    built: Built,
    tamper: Tamper,
    expect: Expect,
    workers: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stored nodes are compared a page at a time, and signatures checked on
    threads a chunk at a time; with pages of 4 nodes and chunks of 3
    signatures, most are checked while records still stream, and the same
    first bad thing is named."""
    monkeypatch.setattr(audit._NodeChecker, "PAGE", 4)
    monkeypatch.setattr(_DeferredSignatures, "CHUNK", 3)
    assert built.size > 4 * 4
    with built.engine.begin() as conn:
        tamper(conn, built)
    env = built.env
    with pytest.raises(VerificationError) as caught:
        verify_database(
            built.engine,
            log_key=env.log_vkey,
            registrar_key=env.registrar_vkey,
            workers=workers,
        )
    expect.check(caught.value, built)


def test_a_second_payload_row_for_a_record_is_found(ledger_env: LedgerEnv) -> None:
    """The table's key forbids two payload rows for one record; whoever rewrites
    the database can drop the key, and verify must not pick one and ignore the
    other."""
    b = build(ledger_env)
    with b.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE payloads DROP CONSTRAINT payloads_pkey")
        else:  # SQLite cannot drop a key: the table is made again without it
            conn.exec_driver_sql("CREATE TABLE payloads_bare AS SELECT * FROM payloads")
            conn.exec_driver_sql("DROP TABLE payloads")
            conn.exec_driver_sql("ALTER TABLE payloads_bare RENAME TO payloads")
        row = conn.execute(select(payloads).where(payloads.c.seq == b.payload_seq)).one()
        conn.execute(insert(payloads).values(**row._mapping))
    with pytest.raises(VerificationError) as caught:
        verify_database(
            b.engine, log_key=ledger_env.log_vkey, registrar_key=ledger_env.registrar_vkey
        )
    assert isinstance(caught.value, PayloadError), caught.value
    assert caught.value.seq == b.payload_seq
    assert "two rows" in str(caught.value)

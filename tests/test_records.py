"""Statements, records and the streaming verifier, in memory (no database).

The offline verifier is what an auditor runs; these tests build logs by hand
and attack them: flipped bytes, broken links, back-dating, forged checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core import merkle
from ledger.core.checkpoint import Checkpoint
from ledger.core.errors import (
    ChainError,
    CheckpointError,
    EncodingError,
    RecordError,
    RootMismatchError,
    TimeOrderError,
    VerificationError,
)
from ledger.core.note import Signer, Verifier
from ledger.core.record import GENESIS_PREV, Record, build_record_bytes
from ledger.core.statement import (
    SignedStatement,
    Statement,
    format_time,
    instant,
    make_statement,
)
from ledger.core.verify import _DeferredSignatures, head_extension, verify_log
from ledger.domain import rules
from ledger.domain.replay import Replayer

ORIGIN = "test.example/log"
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

LOG = Signer.generate(ORIGIN)
REGISTRAR = Signer.generate("registrar")
PHARMACY = Signer.generate("pharmacy-1")
LOG_KEY = Verifier.from_vkey(LOG.vkey)


def genesis(at: datetime = T0) -> SignedStatement:
    return make_statement(
        REGISTRAR,
        "actor.register",
        {"actor": "registrar", "role": "registrar", "key": REGISTRAR.vkey},
        issued_at=at,
    )


def attest(signer: Signer, at: datetime, n: int) -> SignedStatement:
    digest = hashlib.sha256(f"{signer.name}-{n}".encode()).hexdigest()
    return make_statement(signer, "doc.attest", {"digest": digest}, issued_at=at)


def sequence(
    statements: list[SignedStatement], received: list[datetime] | None = None
) -> tuple[list[bytes], list[str]]:
    """What an honest sequencer would write: record bytes and a checkpoint per record."""
    out: list[bytes] = []
    notes: list[str] = []
    tree = merkle.MerkleAccumulator()
    prev = GENESIS_PREV
    for seq, signed in enumerate(statements):
        at = received[seq] if received else T0 + timedelta(seconds=seq)
        record = Record.build(seq, prev, format_time(at), signed)
        out.append(record.record_bytes)
        tree.append(record.leaf_hash)
        prev = record.hash.hex()
        notes.append(
            Checkpoint(
                origin=ORIGIN,
                size=tree.size,
                root_hash=tree.root(),
                extensions=(head_extension(record.hash),),
            ).sign([LOG])
        )
    return out, notes


def world(n: int = 6) -> list[SignedStatement]:
    statements = [genesis()]
    statements.append(
        make_statement(
            REGISTRAR,
            "actor.register",
            {"actor": "pharmacy-1", "role": "pharmacy", "key": PHARMACY.vkey, "licence": "PH-1"},
            issued_at=T0 + timedelta(seconds=1),
        )
    )
    statements += [attest(PHARMACY, T0 + timedelta(seconds=2 + i), i) for i in range(n)]
    return statements


def run_verify(records: list[bytes], notes: list[str], **kwargs: Any) -> Any:
    return verify_log(
        records,
        notes,
        log_key=kwargs.pop("log_key", LOG_KEY),
        origin=ORIGIN,
        replay=Replayer(registrar_key=REGISTRAR.vkey),
        **kwargs,
    )


# -- record bytes ---------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    body=st.dictionaries(st.text(max_size=10), json_values, max_size=5), seq=st.integers(0, 2**40)
)
def test_record_bytes_are_the_jcs_of_the_record(body: dict[str, Any], seq: int) -> None:
    signed = make_statement(PHARMACY, "doc.attest", body, issued_at=T0)
    record = Record.build(seq, "ab" * 32, format_time(T0), signed)
    as_object = {
        "seq": seq,
        "prev": "ab" * 32,
        "received_at": format_time(T0),
        "statement": signed.statement.to_mapping(),
        "signature": signed.signature_b64,
    }
    assert record.record_bytes == rfc8785.dumps(as_object)
    parsed = Record.from_bytes(record.record_bytes, expected_seq=seq)
    assert parsed.statement_bytes == signed.signed_bytes
    assert parsed.statement() == signed.statement
    # Canonical bytes take the short path (only the statement goes through the
    # JSON parser); the same record spelt otherwise takes the full parse, and
    # both give the same record.
    assert Record._from_canonical(record.record_bytes, seq) == parsed
    spelt_otherwise = (
        (
            f'{{"seq":{seq},"prev":"{"ab" * 32}","received_at":"{format_time(T0)}",'
            f'"signature":"{signed.signature_b64}","statement":'
        ).encode()
        + signed.signed_bytes
        + b"}"
    )
    assert json.loads(spelt_otherwise) == as_object
    assert Record._from_canonical(spelt_otherwise, seq) is None
    full = Record.from_bytes(spelt_otherwise, expected_seq=seq)
    assert (full.seq, full.prev, full.received_at, full.signature, full.fields) == (
        parsed.seq,
        parsed.prev,
        parsed.received_at,
        parsed.signature,
        parsed.fields,
    )


def test_statement_signature_is_over_its_jcs_bytes() -> None:
    signed = attest(PHARMACY, T0, 1)
    assert signed.signed_bytes == rfc8785.dumps(signed.statement.to_mapping())
    signed.verify_signature()
    wire = SignedStatement.from_json(signed.to_json())
    assert wire == signed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"nonce": "short"}, "nonce", id="nonce too short"),
        pytest.param({"issued_at": "2026-11-23 08:00:00"}, "issued_at", id="time not RFC 3339"),
        pytest.param({"issued_at": "2026-13-40T08:00:00Z"}, "issued_at", id="impossible date"),
        pytest.param({"type": "Rx Issue"}, "type", id="type not dotted"),
        pytest.param({"actor": "pharmacy 1"}, "actor", id="actor with a space"),
        pytest.param(
            {"actor": "pharmacy-2"}, "key name must be the actor", id="key of another actor"
        ),
        pytest.param({"key": "not-a-key"}, "key", id="key not a vkey"),
        pytest.param({"body": []}, "body", id="body not an object"),
        pytest.param({"extra": 1}, "unknown field", id="unknown field"),
        pytest.param({"nonce": 12345678901234567}, "nonce: expected a string", id="nonce a number"),
        pytest.param({"issued_at": None}, "issued_at: expected a string", id="time null"),
        pytest.param({"type": ["doc", "attest"]}, "type: expected a string", id="type a list"),
        pytest.param({"actor": {"id": 1}}, "actor: expected a string", id="actor an object"),
    ],
)
def test_statement_field_rules(change: dict[str, Any], message: str) -> None:
    # attest() has just checked a statement of this signer, so its (type, actor,
    # key) is known good: the other fields are still checked, every time
    fields = attest(PHARMACY, T0, 1).statement.to_mapping() | change
    for _ in range(2):  # a refusal is not remembered as a pass
        with pytest.raises(EncodingError, match=message):
            Statement.from_mapping(fields)


# -- the streaming verifier -----------------------------------------------------


def test_an_honest_log_verifies() -> None:
    records, notes = sequence(world())
    result = run_verify(records, notes)
    assert result.size == len(records)
    assert result.checkpoints_verified == len(notes)
    assert result.root == merkle.root([merkle.hash_leaf(r) for r in records])


def test_only_the_final_checkpoint_is_enough() -> None:
    records, notes = sequence(world())
    assert run_verify(records, notes[-1:]).size == len(records)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_in_any_record_is_found_at_that_record(data: st.DataObject) -> None:
    records, notes = sequence(world(4))
    seq = data.draw(st.integers(0, len(records) - 1), label="seq")
    position = data.draw(st.integers(0, len(records[seq]) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    tampered = bytearray(records[seq])
    tampered[position] ^= 1 << bit
    records[seq] = bytes(tampered)
    with pytest.raises(VerificationError) as caught:
        run_verify(records, notes)
    error = caught.value
    # Either the record itself is refused, or (a flip that still parses and
    # verifies cannot exist: the signature or the hash chain catches it) the
    # next link or the checkpoint at that size is.
    if isinstance(error, RecordError):
        assert error.seq in (seq, seq + 1)
    else:
        assert isinstance(error, CheckpointError | RootMismatchError)


def test_broken_link_names_the_record() -> None:
    statements = world()
    records, notes = sequence(statements)
    # Rebuild record 4 with a wrong prev (and a consistent tree for it).
    bad = Record.build(4, "00" * 32, format_time(T0 + timedelta(seconds=4)), statements[4])
    records[4] = bad.record_bytes
    with pytest.raises(ChainError) as caught:
        run_verify(records, notes)
    assert caught.value.seq == 4


def test_dropped_record_is_found() -> None:
    records, notes = sequence(world())
    del records[3]
    with pytest.raises(VerificationError) as caught:
        run_verify(records, notes)
    assert isinstance(caught.value, RecordError)
    assert caught.value.seq == 3


def test_back_dated_record_is_found() -> None:
    statements = world()
    received = [T0 + timedelta(seconds=i) for i in range(len(statements))]
    received[5] = T0 - timedelta(seconds=30)  # earlier than record 4
    records, notes = sequence(statements, received)
    with pytest.raises(TimeOrderError) as caught:
        run_verify(records, notes)
    assert caught.value.seq == 5


def test_statement_issued_long_before_it_was_received_is_found() -> None:
    statements = world()
    statements[3] = attest(PHARMACY, T0 - timedelta(hours=2), 99)
    records, notes = sequence(statements)
    with pytest.raises(TimeOrderError, match="allowed") as caught:
        run_verify(records, notes)
    assert caught.value.seq == 3


def test_statement_by_unregistered_actor_is_refused_by_replay() -> None:
    stranger = Signer.generate("stranger")
    statements = [*world(), attest(stranger, T0 + timedelta(seconds=9), 1)]
    records, notes = sequence(statements)
    with pytest.raises(RecordError, match="unknown-actor") as caught:
        run_verify(records, notes)
    assert caught.value.seq == len(statements) - 1


def test_genesis_by_another_registrar_key_is_refused() -> None:
    impostor = Signer.generate("registrar")
    statements = [
        make_statement(
            impostor,
            "actor.register",
            {"actor": "registrar", "role": "registrar", "key": impostor.vkey},
            issued_at=T0,
        )
    ]
    records, notes = sequence(statements)
    with pytest.raises(RecordError, match="genesis") as caught:
        run_verify(records, notes)
    assert caught.value.seq == 0


def test_unsigned_tail_is_refused() -> None:
    records, notes = sequence(world())
    with pytest.raises(CheckpointError, match="no signed checkpoint covers"):
        run_verify(records, notes[:-1])


def test_checkpoint_beyond_the_records_is_refused() -> None:
    records, notes = sequence(world())
    with pytest.raises(CheckpointError, match="only"):
        run_verify(records[:-1], notes)


def test_checkpoint_signed_by_another_key_is_refused() -> None:
    records, notes = sequence(world())
    other = Verifier.from_vkey(Signer.generate(ORIGIN).vkey)
    with pytest.raises(CheckpointError):
        run_verify(records, notes[-1:], log_key=other)


def test_checkpoint_with_another_root_is_refused() -> None:
    records, _ = sequence(world())
    wrong = Checkpoint(origin=ORIGIN, size=len(records), root_hash=bytes(32)).sign([LOG])
    with pytest.raises(RootMismatchError):
        run_verify(records, [wrong])


def test_record_bytes_that_are_not_json() -> None:
    records, notes = sequence(world())
    records[2] = b"not json"
    with pytest.raises(RecordError) as caught:
        run_verify(records, notes)
    assert caught.value.seq == 2


def test_build_record_bytes_matches_record_build() -> None:
    signed = attest(PHARMACY, T0, 5)
    record = Record.build(7, "cd" * 32, format_time(T0), signed)
    assert record.record_bytes == build_record_bytes(
        7, "cd" * 32, format_time(T0), signed.signature_b64, signed.signed_bytes
    )


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_signatures_checked_on_threads_give_the_same_verdict(data: st.DataObject) -> None:
    """With the signatures checked on threads, a chunk at a time, verify names
    the same first error (or the same root) as checking them in line."""
    records, notes = sequence(world(12))
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(records) - 1), st.integers(0, 2**20), st.integers(0, 7)),
            max_size=3,
        ),
        label="flips",
    )
    for seq, offset, bit in flips:
        tampered = bytearray(records[seq])
        position = offset % len(tampered)
        at = tampered.find(b'"signature":"')  # gone if an earlier flip hit it
        if at >= 0 and data.draw(st.booleans(), label="in the signature"):
            position = at + len(b'"signature":"') + offset % 80  # in the base64: still parses
        tampered[position] ^= 1 << bit
        records[seq] = bytes(tampered)
    chunk = data.draw(st.sampled_from([1, 2, 3, 5, 512]), label="chunk")

    def verdict(workers: int) -> tuple[str, str]:
        try:
            return ("verified", run_verify(list(records), notes, workers=workers).root.hex())
        except VerificationError as e:
            return (type(e).__name__, str(e))

    with patch.object(_DeferredSignatures, "CHUNK", chunk):
        assert verdict(3) == verdict(1)


def test_records_and_statements_made_per_record_are_as_their_init_makes_them() -> None:
    """The verifier's hot path makes records and statements without ``__init__``
    (ledger.core.frozen): they must be the same values, as frozen, in every field."""
    signed = attest(PHARMACY, T0, 7)
    data = Record.build(3, "cd" * 32, format_time(T0), signed).record_bytes
    fast = Record.from_bytes(data, expected_seq=3)
    by_init = Record(
        3, "cd" * 32, format_time(T0), signed.signature, signed.signed_bytes, data, fast.fields
    )
    assert vars(fast).keys() == {f.name for f in dataclasses.fields(Record)}
    assert (fast, repr(fast)) == (by_init, repr(by_init))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.seq = 4  # type: ignore[misc]
    assert fast.hash == hashlib.sha256(data).digest()  # cached beside the fields

    statement = fast.statement()
    assert vars(statement).keys() == {f.name for f in dataclasses.fields(Statement)}
    assert statement == Statement(**signed.statement.to_mapping())
    assert repr(statement) == repr(signed.statement)
    with pytest.raises(dataclasses.FrozenInstanceError):
        statement.nonce = "x" * 16  # type: ignore[misc]

    normalized = rules._normalized(statement)
    assert normalized == dataclasses.replace(statement, issued_at=instant(statement.issued_at))
    assert vars(normalized).keys() == vars(statement).keys()

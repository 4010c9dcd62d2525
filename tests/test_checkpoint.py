"""Conformance and property tests of ledger.core.checkpoint (c2sp.org/tlog-checkpoint)."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.checkpoint import MAX_TREE_SIZE, Checkpoint, open_checkpoint
from ledger.core.errors import (
    CheckpointError,
    NoteFormatError,
    SignatureError,
    UnknownKeyError,
)
from ledger.core.note import (
    Signer,
    UnverifiedNoteError,
    Verifier,
    add_signatures,
    open_note,
    sign_note,
)
from tests._vectors import load_vectors

VECTORS = load_vectors("signed_note.json")
KEYS: dict[str, dict[str, Any]] = {k["id"]: k for k in VECTORS["keys"]}
CHECKPOINTS: list[dict[str, Any]] = VECTORS["checkpoints"]
SIGNED: dict[str, dict[str, Any]] = {n["id"]: n for n in VECTORS["signed_notes"]}


def checkpoint_id(case: dict[str, Any]) -> str:
    return case.get("reason") or case["body"].split("\n", 1)[0]


def verifier(key: str) -> Verifier:
    return Verifier.from_vkey(KEYS[key]["vkey"])


def assert_fields(checkpoint: Checkpoint, case: dict[str, Any]) -> None:
    assert checkpoint.origin == case["origin"]
    assert checkpoint.size == case["size"]
    assert checkpoint.root_hash.hex() == case["root_hash_hex"]
    assert base64.b64encode(checkpoint.root_hash).decode() == case["root_hash_base64"]
    assert list(checkpoint.extensions) == case["extension_lines"]


# --- vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CHECKPOINTS, ids=checkpoint_id)
def test_strict_parse_matches_strict_c2sp_valid(case: dict[str, Any]) -> None:
    if not case["strict_c2sp_valid"]:
        with pytest.raises(NoteFormatError):
            Checkpoint.from_text(case["body"], strict=True)
        return
    checkpoint = Checkpoint.from_text(case["body"])
    assert_fields(checkpoint, case)
    assert checkpoint.to_text() == case["body"]


LAX_CASES = [
    c for c in CHECKPOINTS if c["valid"] or "transparency-dev/formats" in c.get("library", "")
]


@pytest.mark.parametrize("case", LAX_CASES, ids=checkpoint_id)
def test_lax_parse_matches_transparency_dev_formats(case: dict[str, Any]) -> None:
    if not case["valid"]:
        with pytest.raises(NoteFormatError):
            Checkpoint.from_text(case["body"], strict=False)
        return
    checkpoint = Checkpoint.from_text(case["body"], strict=False)
    assert_fields(checkpoint, case)
    assert checkpoint.to_text() == case["body"]


def test_lax_parse_does_not_enforce_the_hash_length() -> None:
    # golang.org/x/mod tlog.ParseTree rejects this 35-byte hash; formats does not.
    (case,) = [c for c in CHECKPOINTS if "35 bytes" in c.get("reason", "")]
    assert len(Checkpoint.from_text(case["body"], strict=False).root_hash) == 35


SIGNED_CHECKPOINTS = [
    ("sumdb-checkpoint", "go.sum database tree", "sum.golang.org", 6476701, 0),
    ("sumdb-checkpoint-cosigned", "go.sum database tree", "sum.golang.org", 6476701, 3),
    ("localdev-sumdb-tree6", "go.sum database tree", "localhost.localdev/sumdb", 6, 0),
    ("localdev-sumdb-tree5", "go.sum database tree", "localhost.localdev/sumdb", 5, 0),
]


@pytest.mark.parametrize(
    ("note_id", "origin", "key", "size", "cosignatures"),
    SIGNED_CHECKPOINTS,
    ids=[c[0] for c in SIGNED_CHECKPOINTS],
)
def test_open_signed_checkpoint_vector(
    note_id: str, origin: str, key: str, size: int, cosignatures: int
) -> None:
    vector = SIGNED[note_id]
    checkpoint, note = open_checkpoint(vector["signed_note"], origin=origin, verifier=verifier(key))
    assert checkpoint.origin == origin
    assert checkpoint.size == size
    assert checkpoint.to_text() == vector["text"]
    assert [s.name for s in note.verified] == [KEYS[key]["name"]]
    assert len(note.unverified) == cosignatures


def test_cosigned_c2sp_example_parses_but_has_no_trusted_signature() -> None:
    vector = SIGNED["c2sp-cosignature-behind-the-sofa"]
    with pytest.raises(UnknownKeyError) as info:
        open_checkpoint(
            vector["signed_note"], origin="example.com/behind-the-sofa", verifier=verifier("Log")
        )
    assert isinstance(info.value, UnverifiedNoteError)
    assert len(info.value.note.unverified) == 2
    checkpoint = Checkpoint.from_text(info.value.note.text)
    assert checkpoint.size == 20852163


# --- strict parsing -----------------------------------------------------------------

ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()
URL_SAFE_ROOT = base64.urlsafe_b64encode(b"\xff" * 32).decode()
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The last base64 digit of a 32-byte value carries 2 unused bits; setting one gives a
# different text that lenient decoders (Go's StdEncoding, Python's) read as the same bytes.
NON_CANONICAL_ROOT = ROOT_B64[:-2] + _ALPHABET[_ALPHABET.index(ROOT_B64[-2]) | 1] + "="

BAD_BODIES = {
    "size with a leading zero": f"log\n07\n{ROOT_B64}\n",
    "size with a plus sign": f"log\n+7\n{ROOT_B64}\n",
    "negative size": f"log\n-7\n{ROOT_B64}\n",
    "size with a space": f"log\n 7\n{ROOT_B64}\n",
    "size with underscores": f"log\n1_000\n{ROOT_B64}\n",
    "size in Arabic-Indic digits": f"log\n\u0667\n{ROOT_B64}\n",
    "size in hex": f"log\n0x10\n{ROOT_B64}\n",
    "empty size": f"log\n\n{ROOT_B64}\n",
    "size of 2^64": f"log\n{2**64}\n{ROOT_B64}\n",
    "root hash of 31 bytes": f"log\n7\n{base64.b64encode(ROOT[:31]).decode()}\n",
    "root hash of 33 bytes": f"log\n7\n{base64.b64encode(ROOT + b'x').decode()}\n",
    "empty root hash": "log\n0\n\n",
    "root hash without padding": f"log\n7\n{ROOT_B64.rstrip('=')}\n",
    "root hash in URL-safe base64": f"log\n7\n{URL_SAFE_ROOT}\n",
    "root hash in hex": f"log\n7\n{ROOT.hex()}\n",
    "root hash in non-canonical base64": f"log\n7\n{NON_CANONICAL_ROOT}\n",
    "empty origin": f"\n7\n{ROOT_B64}\n",
    "empty extension line": f"log\n7\n{ROOT_B64}\n\nhead\n",
    "trailing blank line": f"log\n7\n{ROOT_B64}\n\n",
    "no final newline": f"log\n7\n{ROOT_B64}",
    "only two lines": "log\n7\n",
    "empty text": "",
    "carriage returns": f"log\r\n7\r\n{ROOT_B64}\r\n",
    "control character in an extension line": f"log\n7\n{ROOT_B64}\nhe\x07ad\n",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_strict_parse_rejects(body: str) -> None:
    with pytest.raises(NoteFormatError):
        Checkpoint.from_text(body)


def test_lax_parse_still_rejects_what_formats_rejects() -> None:
    for name in ["size with a plus sign", "negative size", "size of 2^64", "empty origin"]:
        with pytest.raises(NoteFormatError):
            Checkpoint.from_text(BAD_BODIES[name], strict=False)
    assert Checkpoint.from_text(BAD_BODIES["size with a leading zero"], strict=False).size == 7
    lax = Checkpoint.from_text(BAD_BODIES["empty extension line"], strict=False)
    assert lax.extensions == ("", "head")


GOOD_BODIES = {
    "empty tree": (f"log\n0\n{ROOT_B64}\n", 0, ()),
    "largest uint64 size": (f"log\n{MAX_TREE_SIZE}\n{ROOT_B64}\n", MAX_TREE_SIZE, ()),
    "origin with spaces": (f"Moon Log\n1\n{ROOT_B64}\n", 1, ()),
    "extension lines": (f"log\n7\n{ROOT_B64}\nhead abc\n— x\n", 7, ("head abc", "— x")),
}


@pytest.mark.parametrize(("body", "size", "extensions"), GOOD_BODIES.values(), ids=GOOD_BODIES)
def test_strict_parse_accepts(body: str, size: int, extensions: tuple[str, ...]) -> None:
    checkpoint = Checkpoint.from_text(body)
    assert checkpoint.size == size
    assert checkpoint.root_hash == ROOT
    assert checkpoint.extensions == extensions
    assert checkpoint.to_text() == body


def test_non_canonical_root_decodes_to_the_same_bytes() -> None:
    assert NON_CANONICAL_ROOT != ROOT_B64
    assert base64.b64decode(NON_CANONICAL_ROOT) == ROOT
    lax = Checkpoint.from_text(f"log\n7\n{NON_CANONICAL_ROOT}\n", strict=False)
    assert lax.root_hash == ROOT


def test_from_text_needs_a_string() -> None:
    with pytest.raises(NoteFormatError):
        Checkpoint.from_text(f"log\n7\n{ROOT_B64}\n".encode())  # type: ignore[arg-type]


BAD_FIELDS: dict[str, dict[str, Any]] = {
    "empty origin": {"origin": ""},
    "origin with a newline": {"origin": "a\nb"},
    "negative size": {"size": -1},
    "size of 2^64": {"size": 2**64},
    "bool size": {"size": True},
    "str size": {"size": "7"},
    "root hash as str": {"root_hash": ROOT_B64},
    "extensions as a list": {"extensions": ["head"]},
    "extension line with a newline": {"extensions": ("a\nb",)},
}


@pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_constructor_rejects(fields: dict[str, Any]) -> None:
    values: dict[str, Any] = {"origin": "log", "size": 7, "root_hash": ROOT, **fields}
    with pytest.raises(CheckpointError):
        Checkpoint(**values)


# --- signing and opening ------------------------------------------------------------

ORIGIN = "rxledger.example/log"
LOG = Signer.generate(ORIGIN)
WITNESS = Signer.generate("witness.example/w1")
HEAD = "head " + "ab" * 32
CHECKPOINT = Checkpoint(origin=ORIGIN, size=42, root_hash=ROOT, extensions=(HEAD,))


def test_signed_checkpoint_round_trips() -> None:
    message = CHECKPOINT.sign([LOG])
    checkpoint, note = open_checkpoint(message, origin=ORIGIN, verifier=LOG.verifier())
    assert checkpoint == CHECKPOINT
    assert note.text == CHECKPOINT.to_text()
    assert [s.name for s in note.verified] == [ORIGIN]
    assert note.unverified == ()


def test_cosigned_checkpoint_opens_with_the_log_key_and_keeps_the_cosignature() -> None:
    message = add_signatures(CHECKPOINT.sign([LOG]), [WITNESS])
    checkpoint, note = open_checkpoint(message, origin=ORIGIN, verifier=LOG.verifier())
    assert checkpoint == CHECKPOINT
    assert [s.name for s in note.unverified] == [WITNESS.name]
    both = open_note(message, [LOG.verifier(), WITNESS.verifier()])
    assert [s.name for s in both.verified] == [ORIGIN, WITNESS.name]


def test_wrong_origin_is_rejected() -> None:
    message = CHECKPOINT.sign([LOG])
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(message, origin="rxledger.example/other", verifier=LOG.verifier())
    assert str(info.value) == (
        "checkpoint origin: expected 'rxledger.example/other', got 'rxledger.example/log'"
    )


def test_checkpoint_signed_by_another_key_is_rejected() -> None:
    message = CHECKPOINT.sign([WITNESS])
    with pytest.raises(UnknownKeyError, match="no signature by the log key"):
        open_checkpoint(message, origin=ORIGIN, verifier=LOG.verifier())


def test_checkpoint_signed_by_another_key_with_the_log_name_is_rejected() -> None:
    impostor = Signer.generate(ORIGIN)
    with pytest.raises(UnknownKeyError):
        open_checkpoint(CHECKPOINT.sign([impostor]), origin=ORIGIN, verifier=LOG.verifier())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("root_hash", bytes([ROOT[0] ^ 1]) + ROOT[1:]),
        ("size", 43),
        ("extensions", ("head " + "cd" * 32,)),
        ("origin", "rxledger.example/log2"),
    ],
    ids=["tampered root", "tampered size", "tampered chain head", "tampered origin"],
)
def test_tampered_checkpoint_is_rejected(field: str, value: object) -> None:
    message = CHECKPOINT.sign([LOG])
    tampered_text = dataclasses.replace(CHECKPOINT, **{field: value}).to_text()
    tampered = tampered_text + message[len(CHECKPOINT.to_text()) :]
    with pytest.raises(SignatureError) as info:
        open_checkpoint(tampered, origin=ORIGIN, verifier=LOG.verifier())
    assert not isinstance(info.value, UnknownKeyError)
    assert str(info.value).startswith("invalid signature for key rxledger.example/log+")


def test_sign_refuses_a_checkpoint_that_is_not_strictly_valid() -> None:
    with pytest.raises(CheckpointError, match="root hash has wrong size"):
        Checkpoint(origin=ORIGIN, size=1, root_hash=b"\x00" * 16).sign([LOG])
    with pytest.raises(CheckpointError, match="extension line"):
        Checkpoint(origin=ORIGIN, size=1, root_hash=ROOT, extensions=("",)).sign([LOG])


def test_signed_checkpoint_with_a_lax_body_is_rejected_by_open() -> None:
    message = sign_note(f"{ORIGIN}\n007\n{ROOT_B64}\n", [LOG])
    with pytest.raises(NoteFormatError, match="leading zeros"):
        open_checkpoint(message, origin=ORIGIN, verifier=LOG.verifier())


# --- properties ---------------------------------------------------------------------

LINE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=40
)
CHECKPOINTS_ST = st.builds(
    Checkpoint,
    origin=LINE_TEXT,
    size=st.integers(min_value=0, max_value=MAX_TREE_SIZE),
    root_hash=st.binary(min_size=32, max_size=32),
    extensions=st.lists(LINE_TEXT, max_size=3).map(tuple),
)


@given(checkpoint=CHECKPOINTS_ST)
def test_to_text_then_from_text_round_trips(checkpoint: Checkpoint) -> None:
    assert Checkpoint.from_text(checkpoint.to_text()) == checkpoint
    assert Checkpoint.from_text(checkpoint.to_text(), strict=False) == checkpoint


@given(bit=st.integers(min_value=0, max_value=32 * 8 - 1))
def test_flipping_any_bit_of_the_root_hash_is_detected(bit: int) -> None:
    message = CHECKPOINT.sign([LOG])
    root = bytearray(ROOT)
    root[bit // 8] ^= 1 << (bit % 8)
    tampered = message.replace(ROOT_B64, base64.b64encode(bytes(root)).decode(), 1)
    assert tampered != message
    with pytest.raises(SignatureError):
        open_checkpoint(tampered, origin=ORIGIN, verifier=LOG.verifier())

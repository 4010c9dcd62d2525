"""Witness cosignatures (c2sp.org/tlog-cosignature) and the add-checkpoint request body.

Known answers come from published bytes: the C2SP example (loaded from the shared
signed-note vectors), transparency-dev/formats' cosignature tests, and the Go
signed-note test key ``PeterNeumann`` with the layout checked by hand with PyNaCl.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import nacl.signing
import pytest

from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.cosignature import (
    MAX_PROOF_LINES,
    AddCheckpointRequest,
    Cosignature,
    WitnessVerifier,
    add_cosignatures,
    cosign,
    cosignature_key_id,
    cosignature_message,
    format_add_checkpoint_request,
    parse_add_checkpoint_request,
    verify_cosignatures,
    witness_verifier,
    witness_vkey,
)
from ledger.core.errors import CheckpointError, KeyFormatError, NoteFormatError
from ledger.core.merkle import EMPTY_ROOT
from ledger.core.note import Signer, open_note
from tests._vectors import load_vectors

VECTORS = load_vectors("signed_note.json")
PETER_SKEY = next(k["skey"] for k in VECTORS["keys"] if k["id"] == "PeterNeumann")
C2SP_EXAMPLE = next(
    n for n in VECTORS["signed_notes"] if n["id"] == "c2sp-cosignature-behind-the-sofa"
)

ORIGIN = "example.com/log"
LOG = Signer.generate(ORIGIN)


def checkpoint_note(size: int = 5, root: bytes = b"\x01" * 32, *, ext: tuple[str, ...] = ()) -> str:
    return Checkpoint(ORIGIN, size, root, ext).sign([LOG])


def text_of(note: str) -> str:
    return note[: note.rfind("\n\n") + 1]


# --- known answers -----------------------------------------------------------------


def test_the_spec_example_message_is_reproduced() -> None:
    text = C2SP_EXAMPLE["text"]
    assert cosignature_message(text, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n"
        b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )


def test_the_spec_example_line_is_key_id_timestamp_and_signature() -> None:
    line = C2SP_EXAMPLE["signatures"][1]
    payload = base64.b64decode(line["signature_base64"])
    assert len(payload) == 4 + 8 + 64
    assert payload[:4].hex() == line["key_id_hex"] == "8d66cf3f"
    # the same time as the spec's example message
    assert struct.unpack(">Q", payload[4:12])[0] == 1679315147


def test_transparency_dev_cosignature_timestamp() -> None:
    # formats/note/note_cosigv1_test.go TestCosignatureTimestamp "works"
    payload = base64.b64decode(
        "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA=="
    )
    assert struct.unpack(">Q", payload[4:12])[0] == 1727964367


def test_transparency_dev_native_witness_key_parses_with_its_key_id() -> None:
    # formats/note/note_cosigv1_test.go TestCoSigV1NewVerifier, a native 0x04 key
    vkey = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
    witness = WitnessVerifier.from_vkey(vkey)
    assert witness.name == "remora.n621.de"
    assert witness.key_id.hex() == "da77ade7"
    assert witness.vkey == vkey


def test_key_id_uses_signature_type_0x04() -> None:
    signer = Signer.from_skey(PETER_SKEY)
    expected = hashlib.sha256(b"PeterNeumann\n\x04" + signer.public_key).digest()[:4]
    assert cosignature_key_id("PeterNeumann", signer.public_key) == expected
    assert witness_verifier(signer).key_id == expected
    # and it is not the signed-note (0x01) key id of the same key
    assert expected != signer.key_id
    assert signer.key_id.hex() == "c74f20a3"
    assert witness_vkey(signer) == (
        f"PeterNeumann+{expected.hex()}+" + base64.b64encode(b"\x04" + signer.public_key).decode()
    )


def test_a_cosignature_line_has_the_published_layout() -> None:
    """Checked with PyNaCl by hand, not with this module's verifier."""
    signer = Signer.from_skey(PETER_SKEY)
    text = C2SP_EXAMPLE["text"]
    line = cosign(text, signer, 1679315147)
    name, b64 = line.removeprefix("\u2014 ").removesuffix("\n").split(" ")
    assert line.startswith("\u2014 PeterNeumann ")
    assert line.endswith("=\n")
    assert name == "PeterNeumann"
    payload = base64.b64decode(b64)
    assert payload[:4] == hashlib.sha256(b"PeterNeumann\n\x04" + signer.public_key).digest()[:4]
    assert payload[4:12] == (1679315147).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + text.encode()
    nacl.signing.VerifyKey(signer.public_key).verify(message, payload[12:])
    # Ed25519 is deterministic: the same inputs give the same line
    assert cosign(text, signer, 1679315147) == line


def test_a_plain_note_key_is_refused_as_a_witness_key() -> None:
    # formats/note/note_cosigv1_test.go "convert from algEd25519": a 0x01 key
    with pytest.raises(KeyFormatError, match=r"0x01.*witness keygen"):
        WitnessVerifier.from_vkey("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6")


@pytest.mark.parametrize(
    ("vkey", "match"),
    [
        ("remora.n621.de+da77ade7", "not base64"),
        ("remora.n621.de+DA77ADE7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2", "hex"),
        ("remora.n621.de+00000000+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2", "does not match"),
        ("other+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2", "does not match"),
        ("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmt", "base64"),
        ("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2AA==", "size"),
        ("+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2", "name"),
        ("a b+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2", "name"),
        ("x+12345678+AwEB", "type"),
    ],
    ids=[
        "no key data",
        "upper-case key id",
        "wrong key id",
        "key id of another name",
        "truncated base64",
        "33-byte key",
        "empty name",
        "name with a space",
        "unknown type",
    ],
)
def test_bad_witness_keys_are_refused(vkey: str, match: str) -> None:
    with pytest.raises(KeyFormatError, match=match):
        WitnessVerifier.from_vkey(vkey)


# --- sign and verify ----------------------------------------------------------------


def test_round_trip_on_a_log_signed_checkpoint() -> None:
    w1, w2 = Signer.generate("w1.example/w"), Signer.generate("w2.example/w")
    note = checkpoint_note(ext=("head abc",))
    text = text_of(note)
    cosigned = add_cosignatures(note, [cosign(text, w1, 1700000000), cosign(text, w2, 1700000005)])

    found = verify_cosignatures(cosigned, [witness_verifier(w1), witness_verifier(w2)])
    assert [(c.name, c.timestamp) for c in found] == [
        ("w1.example/w", 1700000000),
        ("w2.example/w", 1700000005),
    ]
    assert found[0].key_id == witness_verifier(w1).key_id
    assert isinstance(found[0], Cosignature)
    # the log's signature is intact: the note still opens with the log key
    checkpoint, opened = open_checkpoint(cosigned, origin=ORIGIN, verifier=LOG.verifier())
    assert checkpoint.size == 5
    assert len(opened.unverified) == 2


def test_only_the_given_witnesses_count() -> None:
    w1, w2 = Signer.generate("w1"), Signer.generate("w2")
    note = checkpoint_note()
    cosigned = add_cosignatures(note, [cosign(text_of(note), w1, 1)])
    assert verify_cosignatures(cosigned, [witness_verifier(w2)]) == []
    assert verify_cosignatures(cosigned, []) == []


def test_the_wrong_key_under_the_right_name_does_not_count() -> None:
    real, impostor = Signer.generate("w1"), Signer.generate("w1")
    note = checkpoint_note()
    cosigned = add_cosignatures(note, [cosign(text_of(note), impostor, 1)])
    assert verify_cosignatures(cosigned, [witness_verifier(real)]) == []


def test_a_forged_line_under_a_trusted_key_id_does_not_count() -> None:
    witness = Signer.generate("w1")
    verifier = witness_verifier(witness)
    note = checkpoint_note()
    forged = Signer.generate("w1")
    line = cosign(text_of(note), forged, 1)
    payload = verifier.key_id + base64.b64decode(line.split(" ")[2])[4:]
    forged_line = f"\u2014 w1 {base64.b64encode(payload).decode()}\n"
    assert verify_cosignatures(add_cosignatures(note, [forged_line]), [verifier]) == []


def test_a_cosignature_of_another_checkpoint_does_not_count() -> None:
    witness = Signer.generate("w1")
    a, b = checkpoint_note(root=b"\x01" * 32), checkpoint_note(root=b"\x02" * 32)
    line = cosign(text_of(a), witness, 1)
    assert verify_cosignatures(add_cosignatures(a, [line]), [witness_verifier(witness)])
    assert verify_cosignatures(add_cosignatures(b, [line]), [witness_verifier(witness)]) == []


def test_the_timestamp_is_part_of_the_signed_message() -> None:
    witness = Signer.generate("w1")
    note = checkpoint_note()
    line = cosign(text_of(note), witness, 1700000000)
    payload = bytearray(base64.b64decode(line.split(" ")[2]))
    payload[11] ^= 1  # the timestamp's last byte: 1700000001
    tampered = f"\u2014 w1 {base64.b64encode(bytes(payload)).decode()}\n"
    assert (
        verify_cosignatures(add_cosignatures(note, [tampered]), [witness_verifier(witness)]) == []
    )


def test_extension_lines_are_covered() -> None:
    witness = Signer.generate("w1")
    a = checkpoint_note(ext=("head 01",))
    b = checkpoint_note(ext=("head 02",))
    line = cosign(text_of(a), witness, 1)
    assert verify_cosignatures(add_cosignatures(b, [line]), [witness_verifier(witness)]) == []


def test_the_log_signature_is_not_a_cosignature() -> None:
    """The same key as a log (0x01) and as a witness (0x04) has two key ids."""
    note = checkpoint_note()
    assert verify_cosignatures(note, [witness_verifier(LOG)]) == []


def test_a_witness_counts_once_with_its_latest_timestamp() -> None:
    witness = Signer.generate("w1")
    note = checkpoint_note()
    text = text_of(note)
    cosigned = add_cosignatures(
        note, [cosign(text, witness, 5), cosign(text, witness, 9), cosign(text, witness, 7)]
    )
    found = verify_cosignatures(cosigned, [witness_verifier(witness), witness_verifier(witness)])
    assert [c.timestamp for c in found] == [9]


def test_a_cosigned_note_still_opens_with_a_plain_note_verifier() -> None:
    """Go's note.Open semantics: the cosignature is an unknown key, not a failure."""
    witness = Signer.generate("w1")
    note = checkpoint_note()
    cosigned = add_cosignatures(note, [cosign(text_of(note), witness, 1)])
    opened = open_note(cosigned, [LOG.verifier(), witness.verifier()])
    assert [s.name for s in opened.verified] == [ORIGIN]
    assert [s.name for s in opened.unverified] == ["w1"]


def test_add_cosignatures_keeps_existing_lines_and_skips_repeats() -> None:
    witness = Signer.generate("w1")
    note = checkpoint_note()
    line = cosign(text_of(note), witness, 1)
    once = add_cosignatures(note, [line])
    assert once.startswith(note)
    assert once == note + line
    assert add_cosignatures(once, [line, line]) == once
    assert add_cosignatures(note, []) == note


@pytest.mark.parametrize(
    "lines",
    [
        "\u2014 w1 AAAA",
        "w1 AAAAAAAA\n",
        "\u2014 w1 !!!!\n",
        "\u2014 w1 AAAA\n",
        "\u2014 a b AAAAAAAA\n",
    ],
    ids=["no newline", "no dash", "not base64", "too short", "name with a space"],
)
def test_add_cosignatures_refuses_malformed_lines(lines: str) -> None:
    with pytest.raises(NoteFormatError):
        add_cosignatures(checkpoint_note(), [lines])


def test_cosign_refuses_what_is_not_a_checkpoint() -> None:
    witness = Signer.generate("w1")
    with pytest.raises(CheckpointError, match="invalid checkpoint"):
        cosign("just some text\n", witness, 1)
    with pytest.raises(CheckpointError, match="2\\^63"):
        cosign(text_of(checkpoint_note()), witness, 2**63)
    with pytest.raises(CheckpointError, match="2\\^63"):
        cosign(text_of(checkpoint_note()), witness, -1)


def test_a_timestamp_above_2_63_does_not_verify() -> None:
    witness = Signer.generate("w1")
    verifier = witness_verifier(witness)
    text = text_of(checkpoint_note())
    assert verifier.verify(text, (2**63).to_bytes(8, "big") + bytes(64)) is None
    assert verifier.verify(text, b"short") is None


# --- add-checkpoint request body ----------------------------------------------------


def test_request_body_round_trip() -> None:
    note = checkpoint_note()
    proof = [b"\x03" * 32, b"\x04" * 32]
    body = format_add_checkpoint_request(3, proof, note)
    assert body == (
        b"old 3\n"
        + base64.b64encode(b"\x03" * 32)
        + b"\n"
        + base64.b64encode(b"\x04" * 32)
        + b"\n\n"
        + note.encode()
    )
    assert parse_add_checkpoint_request(body) == AddCheckpointRequest(3, tuple(proof), note)
    empty = format_add_checkpoint_request(0, [], note)
    assert empty == b"old 0\n\n" + note.encode()
    assert parse_add_checkpoint_request(empty) == AddCheckpointRequest(0, (), note)


HASH64 = base64.b64encode(EMPTY_ROOT).decode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "empty line"),
        (b"old 1\n", "empty line"),
        (b"new 1\n\nx\n", "'old <size>'"),
        (b"old 01\n\nx\n", "leading zeros"),
        (b"old -1\n\nx\n", "decimal"),
        (b"old 1 \n\nx\n", "decimal"),
        (b"old 18446744073709551616\n\nx\n", "64 bits"),
        (b"old 1\nAAAA\n\nx\n", "32-byte hash"),
        (f"old 1\n{HASH64[:-1]}\n\nx\n".encode(), "32-byte hash"),
        (f"old 1\n{HASH64} \n\nx\n".encode(), "32-byte hash"),
        (("old 1\n" + f"{HASH64}\n" * (MAX_PROOF_LINES + 1) + "\nx\n").encode(), "too many"),
        (b"old 1\n\n", "no checkpoint"),
        (b"old 1\n\n\xff\n", "UTF-8"),
    ],
    ids=[
        "empty body",
        "no empty line",
        "not old",
        "leading zero",
        "negative",
        "trailing space",
        "over 64 bits",
        "short hash",
        "bad padding",
        "hash with a space",
        "64 proof lines",
        "no checkpoint",
        "invalid UTF-8",
    ],
)
def test_malformed_request_bodies_are_refused(body: bytes, match: str) -> None:
    with pytest.raises(NoteFormatError, match=match):
        parse_add_checkpoint_request(body)


def test_format_refuses_more_than_63_proof_lines() -> None:
    with pytest.raises(NoteFormatError, match="63"):
        format_add_checkpoint_request(1, [EMPTY_ROOT] * 64, checkpoint_note())

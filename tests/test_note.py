"""Conformance and property tests of ledger.core.note (c2sp.org/signed-note, note.go)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.errors import (
    KeyFormatError,
    NoteFormatError,
    SignatureError,
    UnknownKeyError,
)
from ledger.core.note import (
    MAX_SIGNATURES,
    NoteSignature,
    Signer,
    UnverifiedNoteError,
    Verifier,
    add_signatures,
    is_valid_key_name,
    key_id,
    open_note,
    sign_note,
)
from tests._vectors import load_vectors

VECTORS = load_vectors("signed_note.json")
KEYS: dict[str, dict[str, Any]] = {k["id"]: k for k in VECTORS["keys"]}
SIGNER_KEYS = [k for k in VECTORS["keys"] if k["skey"] is not None]
SIGNED_NOTES: list[dict[str, Any]] = VECTORS["signed_notes"]
NEGATIVE = VECTORS["negative"]

PETER = "PeterNeumann"
ENOCH = "EnochRoot"
PETER_VECTOR = next(n for n in SIGNED_NOTES if n["id"] == "peterneumann-single")
PETER_TEXT: str = PETER_VECTOR["text"]
PETER_NOTE: str = PETER_VECTOR["signed_note"]
PETER_LINE = PETER_NOTE[len(PETER_TEXT) + 1 :]


def verifier(key: str) -> Verifier:
    return Verifier.from_vkey(KEYS[key]["vkey"])


def signer(key: str) -> Signer:
    return Signer.from_skey(KEYS[key]["skey"])


def expected_error_class(go_error: str) -> type[Exception]:
    """Map golang.org/x/mod/sumdb/note error texts to rxledger error classes."""
    if go_error == "malformed note":
        return NoteFormatError
    if go_error == "note has no verifiable signatures":
        return UnverifiedNoteError
    if go_error.startswith("invalid signature for key "):
        return SignatureError
    raise AssertionError(f"unmapped golang error text: {go_error!r}")


def assert_raises_exactly(cls: type[Exception], exc: BaseException) -> None:
    """``pytest.raises`` accepts subclasses; UnknownKeyError is-a SignatureError."""
    assert isinstance(exc, cls), f"expected {cls.__name__}, got {type(exc).__name__}: {exc}"
    if cls is SignatureError:
        assert not isinstance(exc, UnknownKeyError), f"expected a bad signature, got {exc}"


def raw_signature(sig: dict[str, Any]) -> bytes:
    return base64.b64decode(sig["signature_base64"])


# --- keys -------------------------------------------------------------------------


@pytest.mark.parametrize("key", VECTORS["keys"], ids=lambda k: k["id"])
def test_verifier_key_parses(key: dict[str, Any]) -> None:
    v = Verifier.from_vkey(key["vkey"])
    assert v.name == key["name"]
    assert v.key_id.hex() == key["key_id_hex"]
    assert v.public_key.hex() == key["ed25519_public_key_hex"]
    assert v.vkey == key["vkey"]
    assert key_id(key["name"], bytes.fromhex(key["ed25519_public_key_hex"])) == v.key_id
    assert v == Verifier.from_public_key(key["name"], v.public_key)
    assert hash(v) == hash(Verifier.from_vkey(key["vkey"]))


@pytest.mark.parametrize("key", SIGNER_KEYS, ids=lambda k: k["id"])
def test_signer_key_parses(key: dict[str, Any]) -> None:
    s = Signer.from_skey(key["skey"])
    assert s.name == key["name"]
    assert s.key_id.hex() == key["key_id_hex"]
    assert s.public_key.hex() == key["ed25519_public_key_hex"]
    assert s.skey == key["skey"]
    assert s.vkey == key["vkey"]
    assert s.verifier() == Verifier.from_vkey(key["vkey"])
    assert key["skey"] not in repr(s)
    message = b"rxledger"
    signature = s.sign(message)
    assert len(signature) == 64
    assert s.verifier().verify(message, signature)
    assert s.sign(message) == signature  # RFC 8032 signing is deterministic


@pytest.mark.parametrize(
    "case",
    NEGATIVE["verifier_keys"],
    ids=[f"{i:02d} {c['reason']}" for i, c in enumerate(NEGATIVE["verifier_keys"])],
)
def test_negative_verifier_key_is_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(KeyFormatError):
        Verifier.from_vkey(case["vkey"])


@pytest.mark.parametrize(
    "case",
    NEGATIVE["signer_keys"],
    ids=[f"{i:02d} {c['reason']}" for i, c in enumerate(NEGATIVE["signer_keys"])],
)
def test_negative_signer_key_is_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(KeyFormatError) as info:
        Signer.from_skey(case["skey"])
    fields = case["skey"].split("+", 4)
    key_data = fields[-1] if len(fields) == 5 else case["skey"]
    assert key_data not in str(info.value), "error message leaks the key material"


PETER_PUB = base64.b64encode(b"\x01" + bytes.fromhex(KEYS[PETER]["ed25519_public_key_hex"]))


def _vkey(name: str, key: bytes, type_byte: int = 1) -> str:
    """A verifier key string with a correct key id for whatever type and key it holds."""
    encoded = bytes([type_byte]) + key
    hex_id = hashlib.sha256(name.encode("utf-8", "surrogatepass") + b"\n" + encoded).hexdigest()
    return f"{name}+{hex_id[:8]}+{base64.b64encode(encoded).decode()}"


BAD_VERIFIER_KEYS = {
    "empty string": "",
    "name only": "PeterNeumann",
    "no key data": "PeterNeumann+c74f20a3+",
    "key id with seven hex digits": "PeterNeumann+c74f20a+" + PETER_PUB.decode(),
    "key id with a sign": "PeterNeumann++74f20a3+" + PETER_PUB.decode(),
    "empty name": "+c74f20a3+" + PETER_PUB.decode(),
    "name with a space": _vkey("Peter Neumann", b"\x11" * 32),
    "name with a no-break space": _vkey("Peter\u00a0Neumann", b"\x11" * 32),
    "name with an ideographic space": _vkey("Peter\u3000Neumann", b"\x11" * 32),
    "name with a tab": _vkey("Peter\tNeumann", b"\x11" * 32),
    "name with a control character": _vkey("Peter\x01Neumann", b"\x11" * 32),
    "base64 with stray padding": "PeterNeumann+c74f20a3+" + PETER_PUB.decode() + "=",
    "URL-safe base64": "PeterNeumann+c74f20a3+" + PETER_PUB.decode().replace("/", "_"),
    "base64 with a space": "PeterNeumann+c74f20a3+ " + PETER_PUB.decode(),
    "31-byte key": _vkey("k", b"\x11" * 31),
    "33-byte key": _vkey("k", b"\x11" * 33),
    "ECDSA signature type 0x02": _vkey("k", b"\x11" * 32, type_byte=2),
    "timestamped cosignature type 0x04": _vkey("k", b"\x11" * 32, type_byte=4),
    "signer key given as a verifier key": KEYS[PETER]["skey"],
}


@pytest.mark.parametrize("vkey", BAD_VERIFIER_KEYS.values(), ids=BAD_VERIFIER_KEYS.keys())
def test_malformed_verifier_key_is_rejected(vkey: str) -> None:
    with pytest.raises(KeyFormatError):
        Verifier.from_vkey(vkey)


def test_upper_case_key_id_is_rejected() -> None:
    # note.go accepts it (strconv.ParseUint(hex, 16, 32)); a ledger that compares
    # keys as strings must not have two spellings of one key. (33-byte key data is
    # exactly 44 base64 digits, so the base64 part has only one spelling.)
    name, hex_id, key64 = KEYS[PETER]["vkey"].split("+", 2)
    with pytest.raises(KeyFormatError, match="canonical"):
        Verifier.from_vkey(f"{name}+{hex_id.upper()}+{key64}")
    private, key, name, hex_id, key64 = KEYS[PETER]["skey"].split("+", 4)
    with pytest.raises(KeyFormatError, match="canonical"):
        Signer.from_skey(f"{private}+{key}+{name}+{hex_id.upper()}+{key64}")


def test_non_string_keys_are_rejected() -> None:
    with pytest.raises(KeyFormatError):
        Verifier.from_vkey(KEYS[PETER]["vkey"].encode())  # type: ignore[arg-type]
    with pytest.raises(KeyFormatError):
        Signer.from_skey(KEYS[PETER]["skey"].encode())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("PeterNeumann", True),
        ("localhost.localdev/sumdb", True),
        ("è-unicode.example/log", True),
        ("", False),
        ("a+b", False),
        ("a b", False),
        ("a\u2028b", False),
        ("a\u0085b", False),
        ("a\nb", False),
        ("a\ud800b", False),
    ],
    ids=[
        "plain",
        "with slash",
        "non-ASCII letters",
        "empty",
        "plus",
        "space",
        "line separator",
        "next line",
        "newline",
        "lone surrogate",
    ],
)
def test_key_name_rules(name: str, valid: bool) -> None:
    assert is_valid_key_name(name) is valid


def test_generate_gives_a_fresh_working_key() -> None:
    a, b = Signer.generate("rxledger.example/log"), Signer.generate("rxledger.example/log")
    assert a.public_key != b.public_key
    assert Signer.from_skey(a.skey).public_key == a.public_key
    assert Verifier.from_vkey(a.vkey) == a.verifier()
    with pytest.raises(KeyFormatError):
        Signer.generate("bad name")


def test_key_id_needs_a_32_byte_key() -> None:
    with pytest.raises(KeyFormatError):
        key_id("k", b"\x00" * 31)


def test_verify_returns_false_and_never_raises_for_bad_signatures() -> None:
    v = verifier(PETER)
    good = bytes.fromhex(SIGNED_NOTES[0]["signatures"][0]["ed25519_signature_hex"])
    message = PETER_TEXT.encode()
    assert v.verify(message, good)
    assert not v.verify(message + b"x", good)
    assert not v.verify(message, good[:63])
    assert not v.verify(message, good + b"\x00")
    assert not v.verify(message, b"")
    assert not v.verify(message, b"\xff" * 64)


# --- signed notes -------------------------------------------------------------------


def _open_cases(note: dict[str, Any]) -> list[dict[str, Any]]:
    expected = note["expected"]
    cases: list[dict[str, Any]] = expected.get("cases", [expected])
    return cases


OPEN_CASES = [
    pytest.param(note, case, id=f"{note['id']} with [{', '.join(case['open_with'])}]")
    for note in SIGNED_NOTES
    if not note["expected"].get("parse_only")
    for case in _open_cases(note)
]


@pytest.mark.parametrize(("note", "case"), OPEN_CASES)
def test_open_signed_note(note: dict[str, Any], case: dict[str, Any]) -> None:
    verifiers = [verifier(k) for k in case["open_with"]]
    by_name = {s["name"]: s for s in note["signatures"]}
    if case["error"] is not None:
        with pytest.raises(expected_error_class(case["error"])) as info:
            open_note(note["signed_note"], verifiers)
        assert str(info.value).startswith(case["error"])
        assert isinstance(info.value, UnverifiedNoteError)
        opened = info.value.note
        assert opened.verified == ()
    else:
        opened = open_note(note["signed_note"], verifiers)
    assert opened.text == note["text"]
    assert [s.name for s in opened.verified] == case["verified_signatures"]
    assert [s.name for s in opened.unverified] == case["unverified_signatures"]
    for sig in (*opened.verified, *opened.unverified):
        assert sig.key_id.hex() == by_name[sig.name]["key_id_hex"]
        assert sig.key_id + sig.signature == raw_signature(by_name[sig.name])
    for sig in opened.verified:
        assert sig.signature.hex() == by_name[sig.name]["ed25519_signature_hex"]
    # bytes in, same result
    if case["error"] is None:
        assert open_note(note["signed_note"].encode(), verifiers) == opened


@pytest.mark.parametrize(
    "note", [n for n in SIGNED_NOTES if n["verifier_key_ids"]], ids=lambda n: n["id"]
)
def test_signed_note_signatures_are_the_listed_ones(note: dict[str, Any]) -> None:
    for sig in note["signatures"]:
        v = verifier(next(k for k in note["verifier_key_ids"] if KEYS[k]["name"] == sig["name"]))
        raw = raw_signature(sig)
        assert raw[:4].hex() == sig["key_id_hex"] == v.key_id.hex()
        assert v.verify(note["text"].encode(), raw[4:])
        assert NoteSignature(sig["name"], raw[:4], raw[4:]).to_line() in note["signed_note"]


@pytest.mark.parametrize(
    "note", [n for n in SIGNED_NOTES if n["expected"].get("parse_only")], ids=lambda n: n["id"]
)
def test_parse_only_note_has_no_verifiable_signature(note: dict[str, Any]) -> None:
    with pytest.raises(UnverifiedNoteError) as info:
        open_note(note["signed_note"], [verifier(PETER)])
    opened = info.value.note
    assert opened.text == note["expected"].get("parsed_text", note["text"])
    assert len(opened.unverified) == note["expected"]["signature_count"]
    assert [s.key_id + s.signature for s in opened.unverified] == [
        raw_signature(s) for s in note["signatures"]
    ]
    assert [s.to_line() for s in opened.unverified] == [
        line + "\n" for line in note["signed_note"].split("\n\n")[-1].splitlines()
    ]


SIGN_VECTORS = [n for n in SIGNED_NOTES if "sign_vector" in n]


@pytest.mark.parametrize("note", SIGN_VECTORS, ids=lambda n: n["id"])
def test_sign_vector_is_byte_exact(note: dict[str, Any]) -> None:
    vector = note["sign_vector"]
    signers = [signer(k) for k in vector["signer_key_ids"]]
    assert sign_note(note["text"], signers) == vector["expected_output"]


@pytest.mark.parametrize("note", SIGN_VECTORS, ids=lambda n: n["id"])
def test_cosigning_one_by_one_gives_the_sign_vector(note: dict[str, Any]) -> None:
    first, *others = (signer(k) for k in note["sign_vector"]["signer_key_ids"])
    message = sign_note(note["text"], [first])
    for s in others:
        message = add_signatures(message, [s])
    assert message == note["sign_vector"]["expected_output"]


def test_add_signatures_replaces_a_line_by_the_same_key_and_keeps_the_others() -> None:
    double = next(n for n in SIGN_VECTORS if n["id"] == "peterneumann-enochroot-double")[
        "sign_vector"
    ]["expected_output"]
    assert add_signatures(double, [signer(PETER)]) == (
        PETER_TEXT + "\n" + double.split("\n\n")[1].split("\n")[1] + "\n" + PETER_LINE
    )
    duplicated = PETER_NOTE + PETER_LINE
    assert add_signatures(duplicated, [signer(ENOCH)]) == double
    with pytest.raises(NoteFormatError):
        add_signatures(PETER_TEXT, [signer(ENOCH)])


@pytest.mark.parametrize(
    "case",
    NEGATIVE["notes"],
    ids=[f"{i} {c['reason']}" for i, c in enumerate(NEGATIVE["notes"])],
)
def test_negative_note_is_rejected(case: dict[str, Any]) -> None:
    verifiers = [verifier(k) for k in case["verifier_key_ids"]]
    expected = expected_error_class(case["expected_error"])
    message = bytes.fromhex(case["message_hex"])
    with pytest.raises(expected) as info:
        open_note(message, verifiers)
    assert_raises_exactly(expected, info.value)
    assert str(info.value).startswith(case["expected_error"])
    if case["message"] is not None:
        assert case["message"].encode() == message
        with pytest.raises(expected):
            open_note(case["message"], verifiers)


@pytest.mark.parametrize("case", VECTORS["open_cases"], ids=lambda c: c["reason"])
def test_open_case(case: dict[str, Any]) -> None:
    assert bytes.fromhex(case["message_hex"]) == case["message"].encode()
    opened = open_note(case["message"], [verifier(k) for k in case["verifier_key_ids"]])

    def listed(sigs: tuple[NoteSignature, ...]) -> list[tuple[str, str, str]]:
        return [
            (s.name, s.key_id.hex(), base64.b64encode(s.key_id + s.signature).decode())
            for s in sigs
        ]

    def wanted(sigs: list[dict[str, str]]) -> list[tuple[str, str, str]]:
        return [(s["name"], s["key_id_hex"], s["signature_base64"]) for s in sigs]

    assert listed(opened.verified) == wanted(case["expected"]["verified_signatures"])
    assert listed(opened.unverified) == wanted(case["expected"]["unverified_signatures"])


# --- adversarial notes beyond the vectors -------------------------------------------

PETER_SIG = base64.b64decode(PETER_LINE.split(" ")[2])
OTHER_PETER = Signer(PETER, b"\x07" * 32)  # same name, different key and key id


def _line(name: str, payload: bytes) -> str:
    return f"— {name} {base64.b64encode(payload).decode()}\n"


BAD_NOTES = {
    "key name with a space and a final newline": PETER_TEXT + "\n— Bad Name AAAAAAA=\n",
    "signature line without the em dash": PETER_TEXT + "\n" + PETER_LINE[1:],
    "signature line with a hyphen instead of the em dash": PETER_TEXT + "\n-" + PETER_LINE[1:],
    "signature line without base64": PETER_TEXT + "\n— PeterNeumann\n",
    "signature line with an empty signature": PETER_TEXT + "\n— PeterNeumann \n",
    "signature that is not base64": PETER_TEXT + "\n— PeterNeumann !!!!\n",
    "signature with two spaces after the name": PETER_TEXT + "\n— PeterNeumann  AAAAAAA=\n",
    "signature of only a key id": PETER_TEXT + "\n" + _line(PETER, PETER_SIG[:4]),
    "key name with a plus": PETER_TEXT + "\n" + _line("Peter+Neumann", PETER_SIG),
    "carriage return line endings": PETER_NOTE.replace("\n", "\r\n"),
    "tab in the text": "a\tb\n\n" + PETER_LINE,
    "lone surrogate in the text": "\ud800\n\n" + PETER_LINE,
    "empty message": "",
    "signature block is one blank line": PETER_TEXT + "\n\n",
    "blank line after the signatures": PETER_NOTE + "\n",
}


@pytest.mark.parametrize("message", BAD_NOTES.values(), ids=BAD_NOTES.keys())
def test_malformed_note_is_rejected(message: str) -> None:
    with pytest.raises(NoteFormatError):
        open_note(message, [verifier(PETER)])


def test_note_of_wrong_type_is_rejected() -> None:
    with pytest.raises(NoteFormatError):
        open_note(12, [verifier(PETER)])  # type: ignore[arg-type]


def test_at_most_100_signatures_are_accepted() -> None:
    lines = [PETER_LINE] + [
        _line(f"w{i}", key_id(f"w{i}", b"\x01" * 32) + b"\x00" * 64)
        for i in range(MAX_SIGNATURES - 1)
    ]
    opened = open_note(PETER_TEXT + "\n" + "".join(lines), [verifier(PETER)])
    assert len(opened.unverified) == MAX_SIGNATURES - 1
    with pytest.raises(NoteFormatError):
        open_note(PETER_TEXT + "\n" + "".join([*lines, PETER_LINE]), [verifier(PETER)])


def test_signature_with_known_name_but_other_key_id_is_ignored() -> None:
    message = sign_note(PETER_TEXT, [OTHER_PETER, signer(PETER)])
    opened = open_note(message, [verifier(PETER)])
    assert [s.key_id for s in opened.verified] == [verifier(PETER).key_id]
    assert [s.key_id for s in opened.unverified] == [OTHER_PETER.key_id]


def test_signature_with_known_key_id_but_other_name_is_ignored() -> None:
    message = PETER_NOTE + _line("NotPeter", PETER_SIG)
    opened = open_note(message, [verifier(PETER)])
    assert [s.name for s in opened.unverified] == ["NotPeter"]


def test_only_the_first_signature_by_a_known_key_is_checked() -> None:
    # note.go: "Drop repeated signatures by a single verifier."
    forged = _line(PETER, PETER_SIG[:4] + b"\x00" * 64)
    opened = open_note(PETER_NOTE + forged, [verifier(PETER)])
    assert len(opened.verified) == 1
    with pytest.raises(SignatureError) as info:
        open_note(PETER_TEXT + "\n" + forged + PETER_LINE, [verifier(PETER)])
    assert_raises_exactly(SignatureError, info.value)


def test_bad_signature_by_a_known_key_rejects_the_whole_note() -> None:
    forged = _line(ENOCH, verifier(ENOCH).key_id + b"\x00" * 64)
    with pytest.raises(SignatureError) as info:
        open_note(PETER_NOTE + forged, [verifier(PETER), verifier(ENOCH)])
    assert_raises_exactly(SignatureError, info.value)
    assert str(info.value) == "invalid signature for key EnochRoot+af0cfe78"


def test_two_trusted_keys_with_the_same_name_and_key_id_are_ambiguous() -> None:
    twin = Verifier(PETER, b"\x11" * 32)
    # A real 32-bit key id collision takes ~2^32 key generations; simulate one.
    twin._key_id = verifier(PETER).key_id
    assert twin != verifier(PETER)
    with pytest.raises(SignatureError, match="ambiguous key"):
        open_note(PETER_NOTE, [verifier(PETER), twin])
    # The same key listed twice is not ambiguous.
    assert open_note(PETER_NOTE, [verifier(PETER), verifier(PETER)]).verified


def test_unverified_note_error_is_an_unknown_key_error() -> None:
    with pytest.raises(UnknownKeyError) as info:
        open_note(PETER_NOTE, [])
    assert isinstance(info.value, UnverifiedNoteError)
    assert info.value.note.text == PETER_TEXT


# --- sign_note ----------------------------------------------------------------------

BAD_TEXTS = {
    "text without final newline": "hello",
    "empty text": "",
    "text with a carriage return": "hello\r\n",
    "text with a NUL": "hel\x00lo\n",
    "text with a lone surrogate": "\udc00\n",
}


@pytest.mark.parametrize("text", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
def test_sign_note_rejects_malformed_text(text: str) -> None:
    with pytest.raises(NoteFormatError):
        sign_note(text, [signer(PETER)])


def test_sign_note_needs_between_1_and_100_signers() -> None:
    with pytest.raises(NoteFormatError):
        sign_note(PETER_TEXT, [])
    with pytest.raises(NoteFormatError):
        sign_note(PETER_TEXT, [signer(PETER)] * (MAX_SIGNATURES + 1))
    assert sign_note(PETER_TEXT, [signer(PETER)] * MAX_SIGNATURES).count("— ") == MAX_SIGNATURES


def test_text_with_blank_lines_and_a_fake_signature_line_round_trips() -> None:
    text = "a\n\n— PeterNeumann AAAAAAA=\n\n"
    opened = open_note(sign_note(text, [signer(PETER)]), [verifier(PETER)])
    assert opened.text == text
    assert [s.name for s in opened.verified] == [PETER]


# --- properties ---------------------------------------------------------------------

LOG = Signer.generate("rxledger.example/log")
WITNESS = Signer.generate("witness.example/w1")
NOTE_TEXTS = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cs"],
        blacklist_characters=[chr(c) for c in range(0x20) if c != 0x0A],
    ),
    max_size=200,
).map(lambda s: s + "\n")


@given(text=NOTE_TEXTS)
def test_sign_then_open_round_trips(text: str) -> None:
    message = sign_note(text, [LOG, WITNESS])
    opened = open_note(message, [LOG.verifier()])
    assert opened.text == text
    assert [s.name for s in opened.verified] == [LOG.name]
    assert [s.name for s in opened.unverified] == [WITNESS.name]
    both = open_note(message, [LOG.verifier(), WITNESS.verifier()])
    assert [s.name for s in both.verified] == [LOG.name, WITNESS.name]
    assert add_signatures(sign_note(text, [LOG]), [WITNESS]) == message


@settings(max_examples=300)
@given(text=NOTE_TEXTS, bit=st.integers(min_value=0, max_value=68 * 8 - 1))
def test_flipping_any_bit_of_the_signature_makes_open_fail(text: str, bit: int) -> None:
    message = sign_note(text, [LOG])
    head, line = message.rsplit("— ", 1)
    name, b64 = line[:-1].split(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[bit // 8] ^= 1 << (bit % 8)
    tampered = f"{head}— {name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(SignatureError) as info:
        open_note(tampered, [LOG.verifier()])
    if bit >= 32:  # past the key id: the key is known, so the signature is checked
        assert_raises_exactly(SignatureError, info.value)
    else:  # a changed key id names an unknown key
        assert isinstance(info.value, UnverifiedNoteError)


@given(text=NOTE_TEXTS, data=st.data())
def test_changing_the_text_makes_open_fail(text: str, data: st.DataObject) -> None:
    message = sign_note(text, [LOG])
    index = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    replacement = data.draw(st.sampled_from("aZ \n.é"))
    if text[index] == replacement:
        replacement = "x" if replacement != "x" else "y"
    tampered = message[:index] + replacement + message[index + 1 :]
    with pytest.raises((SignatureError, NoteFormatError)):
        open_note(tampered, [LOG.verifier()])

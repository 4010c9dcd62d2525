"""Conformance and property tests of ledger.core.canonical (RFC 8785 JCS, strict JSON)."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.canonical import MAX_SAFE_INTEGER, canonicalize, parse_json
from ledger.core.errors import EncodingError
from tests._vectors import VECTORS_DIR

JCS = VECTORS_DIR / "jcs"
JCS_NAMES = sorted(p.stem for p in (JCS / "input").glob("*.json"))
ES6_FILE = JCS / "es6numbers" / "es6testfile_first10000.txt"


def test_all_jcs_vectors_are_found() -> None:
    assert JCS_NAMES == ["arrays", "french", "structures", "unicode", "values", "weird"]


@pytest.mark.parametrize("name", JCS_NAMES)
def test_jcs_vector_is_byte_exact(name: str) -> None:
    value = parse_json((JCS / "input" / f"{name}.json").read_bytes(), allow_floats=True)
    expected = (JCS / "output" / f"{name}.json").read_bytes()
    expected_hex = bytes.fromhex((JCS / "outhex" / f"{name}.txt").read_text())
    assert expected == expected_hex
    assert canonicalize(value) == expected
    # Canonical output is a fixed point.
    assert canonicalize(parse_json(expected, allow_floats=True)) == expected


@pytest.mark.parametrize("name", ["structures", "values"])
def test_jcs_vectors_with_floats_are_refused_by_default(name: str) -> None:
    with pytest.raises(EncodingError, match="not an integer"):
        parse_json((JCS / "input" / f"{name}.json").read_bytes())


@pytest.mark.parametrize("name", ["arrays", "french", "unicode", "weird"])
def test_jcs_vectors_without_floats_parse_by_default(name: str) -> None:
    value = parse_json((JCS / "input" / f"{name}.json").read_bytes())
    assert canonicalize(value) == (JCS / "output" / f"{name}.json").read_bytes()


def _es6_cases() -> list[tuple[str, str]]:
    lines = ES6_FILE.read_text(encoding="ascii").splitlines()
    return [(bits, text) for bits, text in (line.split(",") for line in lines)]


def test_es6_number_serialization() -> None:
    """Every line: the IEEE 754 double with these bits serializes to the expected text."""
    cases = _es6_cases()
    assert len(cases) == 10000
    wrong = []
    for bits, expected in cases:
        (value,) = struct.unpack(">d", bytes.fromhex(bits.zfill(16)))
        if canonicalize(value) != expected.encode("ascii"):
            wrong.append((bits, expected, canonicalize(value)))
    assert wrong == []


def test_es6_number_text_parses_back_to_itself() -> None:
    """Parsing the expected text (floats allowed) and canonicalizing gives it back.

    Texts written as integers beyond ±(2^53 - 1) (JCS writes doubles below 1e21
    without exponent) are integers to the parser and refused, as I-JSON requires.
    """
    wrong = []
    refused = 0
    for bits, text in _es6_cases():
        integer_syntax = not any(c in text for c in ".eE")
        if integer_syntax and abs(int(text)) > MAX_SAFE_INTEGER:
            with pytest.raises(EncodingError, match="outside the I-JSON range"):
                parse_json(text, allow_floats=True)
            refused += 1
            continue
        value = parse_json(text, allow_floats=True)
        (expected,) = struct.unpack(">d", bytes.fromhex(bits.zfill(16)))
        if value != expected or canonicalize(value) != text.encode("ascii"):
            wrong.append((bits, text))
    assert wrong == []
    assert 0 < refused < 1000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, b"0"),
        (-0.0, b"0"),
        (1.0, b"1"),
        (1e21, b"1e+21"),
        (1e20, b"100000000000000000000"),
        (1e-7, b"1e-7"),
        (5e-324, b"5e-324"),
        (MAX_SAFE_INTEGER, b"9007199254740991"),
        (-MAX_SAFE_INTEGER, b"-9007199254740991"),
        ({"b": [1, "x", None, True, False], "a": {}}, b'{"a":{},"b":[1,"x",null,true,false]}'),
        (("tuple", 1), b'["tuple",1]'),
        (
            {"\u20ac": 1, "\U0001f602": 2, "\ufb33": 3},
            '{"\u20ac":1,"\U0001f602":2,"\ufb33":3}'.encode(),
        ),
    ],
    ids=[
        "zero",
        "negative zero",
        "integral float",
        "1e21 switches to exponent",
        "1e20 stays decimal",
        "small exponent",
        "smallest subnormal",
        "largest safe integer",
        "smallest safe integer",
        "keys sorted",
        "tuple as array",
        "keys sorted by UTF-16 code units",
    ],
)
def test_canonicalize(value: object, expected: bytes) -> None:
    assert canonicalize(value) == expected


class _Unsupported:
    pass


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


BAD_VALUES: dict[str, object] = {
    "integer beyond 2^53 - 1": MAX_SAFE_INTEGER + 1,
    "integer below -(2^53 - 1)": -MAX_SAFE_INTEGER - 1,
    "NaN": math.nan,
    "infinity": math.inf,
    "integer key": {1: "a"},
    "bytes": b"abc",
    "set": {1, 2},
    "arbitrary object": _Unsupported(),
    "lone surrogate in a string": "\ud800",
    "lone surrogate in a key": {"\udfff": 1},
    "nesting 100000 deep": _deep(100_000),
}


@pytest.mark.parametrize("value", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_canonicalize_rejects(value: object) -> None:
    with pytest.raises(EncodingError):
        canonicalize(value)


# --- parse_json ---------------------------------------------------------------------

GOOD_JSON: dict[str, tuple[str | bytes, Any]] = {
    "object": (b'{"a": [1, "b", null, true, false]}', {"a": [1, "b", None, True, False]}),
    "largest safe integer": ("9007199254740991", MAX_SAFE_INTEGER),
    "smallest safe integer": ("-9007199254740991", -MAX_SAFE_INTEGER),
    "negative zero integer": ("-0", 0),
    "escaped surrogate pair": ('"\\ud83d\\ude02"', "\U0001f602"),
    "escaped control character": ('"\\u0000"', "\x00"),
    "surrounding whitespace": (" \t\r\n[]\n", []),
    "non-ASCII UTF-8 bytes": ('{"péché": "€"}'.encode(), {"péché": "€"}),
    "decimal string amount": ('{"amount": "12.50"}', {"amount": "12.50"}),
}


@pytest.mark.parametrize(("data", "expected"), GOOD_JSON.values(), ids=GOOD_JSON.keys())
def test_parse_json_accepts(data: str | bytes, expected: Any) -> None:
    value = parse_json(data)
    assert value == expected
    assert type(value) is type(expected)


BAD_JSON: dict[str, tuple[str | bytes, str]] = {
    "duplicate key": ('{"a": 1, "a": 2}', "duplicate object key 'a'"),
    "duplicate key spelled with an escape": ('{"a": 1, "\\u0061": 2}', "duplicate object key"),
    "duplicate key in a nested object": ('[{"k": {"x": 1, "x": 1}}]', "duplicate object key 'x'"),
    "NaN": ("NaN", "NaN"),
    "Infinity": ('{"a": Infinity}', "Infinity"),
    "negative Infinity": ("[-Infinity]", "-Infinity"),
    "float amount": ('{"amount": 12.5}', "not an integer"),
    "integral float": ("1.0", "not an integer"),
    "exponent": ("1e3", "not an integer"),
    "integer beyond 2^53 - 1": ("9007199254740992", "outside the I-JSON range"),
    "integer below -(2^53 - 1)": ("-9007199254740992", "outside the I-JSON range"),
    "integer with 5000 digits": ("7" * 5000, "outside the I-JSON range"),
    "lone high surrogate escape": ('"\\ud800"', "lone surrogate"),
    "lone low surrogate escape in a key": ('{"\\udc00": 1}', "lone surrogate"),
    "lone surrogate in a str argument": ('"\ud800"', "lone surrogate"),
    "invalid UTF-8": (b'"\xff"', "not valid UTF-8"),
    "UTF-8 encoded surrogate": (b'"\xed\xa0\x80"', "not valid UTF-8"),
    "overlong UTF-8": (b'"\xc0\xaf"', "not valid UTF-8"),
    "UTF-16 input": ('{"a": 1}'.encode("utf-16"), "not valid UTF-8"),
    "byte order mark": (b"\xef\xbb\xbf{}", "byte order mark"),
    "trailing comma": ('{"a": 1,}', "line 1 column 9"),
    "single quotes": ("{'a': 1}", "invalid JSON"),
    "comment": ('{"a": 1 /* one */}', "invalid JSON"),
    "raw control character in a string": ('"a\tb"', "invalid JSON"),
    "two values": ("{} {}", "Extra data"),
    "empty input": ("", "invalid JSON"),
    "leading zero": ("01", "invalid JSON"),
    "hexadecimal number": ("0x10", "invalid JSON"),
    "nesting 100000 deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "neither bytes nor str": (12, "must be bytes or str"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize(("data", "message"), BAD_JSON.values(), ids=BAD_JSON.keys())
def test_parse_json_rejects(data: str | bytes, message: str) -> None:
    with pytest.raises(EncodingError) as info:
        parse_json(data)
    assert message in str(info.value)
    if isinstance(data, str | bytes) and "not an integer" not in message:
        with pytest.raises(EncodingError):
            parse_json(data, allow_floats=True)


def test_parse_json_allow_floats() -> None:
    assert parse_json('{"x": 1.5, "y": 1e3, "z": -0.0}', allow_floats=True) == {
        "x": 1.5,
        "y": 1000.0,
        "z": 0.0,
    }
    with pytest.raises(EncodingError, match="too large"):
        parse_json("1e400", allow_floats=True)
    with pytest.raises(EncodingError, match="NaN"):
        parse_json("NaN", allow_floats=True)


def test_float_messages_point_at_the_rule() -> None:
    with pytest.raises(EncodingError) as info:
        parse_json('{"price": 9.99}')
    assert str(info.value) == (
        "number 9.99 is not an integer: amounts and quantities must be integers "
        "or decimal strings, never floats"
    )


# --- properties ---------------------------------------------------------------------

JSON_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | JSON_TEXT,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(JSON_TEXT, children, max_size=5)
    ),
    max_leaves=30,
)


@given(value=JSON_VALUES)
def test_canonical_bytes_round_trip_through_the_parser(value: Any) -> None:
    canonical = canonicalize(value)
    parsed = parse_json(canonical)
    assert canonicalize(parsed) == canonical
    assert parsed == value


@given(items=st.dictionaries(JSON_TEXT, JSON_VALUES, max_size=8))
def test_canonical_bytes_do_not_depend_on_key_order(items: dict[str, Any]) -> None:
    reordered = dict(reversed(list(items.items())))
    assert canonicalize(reordered) == canonicalize(items)
    assert parse_json(canonicalize(items).decode("utf-8")) == items

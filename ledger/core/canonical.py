"""Canonical JSON: RFC 8785 JSON Canonicalization Scheme (JCS), and a strict parser.

Every hash and every signature over structured data in rxledger is over the JCS
bytes of that data (ARCHITECTURE §3). :func:`canonicalize` produces them with the
``rfc8785`` package. :func:`parse_json` reads untrusted JSON into the values that
JCS can canonicalize without loss: I-JSON (RFC 7493) — UTF-8, no duplicate member
names, no lone surrogates, integers within ±(2^53 - 1) — and, unless asked
otherwise, no non-integer numbers at all, because money and quantities are integers
in the smallest unit or decimal strings, never floats.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn, cast

import rfc8785

from ledger.core.errors import EncodingError

__all__ = ["MAX_SAFE_INTEGER", "canonicalize", "parse_json"]

#: The largest integer an IEEE 754 double holds exactly (RFC 7493 §2.2, RFC 8785 §3.2.2.3).
MAX_SAFE_INTEGER = 2**53 - 1

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SAFE_INTEGER_DIGITS = len(str(MAX_SAFE_INTEGER))


def canonicalize(value: object) -> bytes:
    """The RFC 8785 (JCS) bytes of ``value``.

    ``value`` is built from ``dict`` (string keys), ``list``/``tuple``, ``str``,
    ``int``, ``float``, ``bool`` and ``None``. Raises
    :class:`~ledger.core.errors.EncodingError` for anything JCS cannot represent:
    integers beyond ±(2^53 - 1), NaN and infinities, non-string keys, strings that
    are not valid Unicode (lone surrogates), other types, or nesting too deep.
    """
    try:
        return rfc8785.dumps(cast(Any, value))
    except (rfc8785.CanonicalizationError, UnicodeError) as e:
        # rfc8785 0.1.4 lets a UnicodeEncodeError escape for a lone surrogate in a key.
        raise EncodingError(f"cannot canonicalize (RFC 8785): {e}") from e
    except RecursionError as e:
        raise EncodingError("cannot canonicalize (RFC 8785): nested too deeply") from e


def _reject_constant(name: str) -> NoReturn:
    raise EncodingError(f"invalid JSON: {name} is not a JSON number")


def _parse_int(text: str) -> int:
    # Check the length first: converting a huge digit string is slow, and any
    # integer with more digits than 2^53 - 1 is out of range (JSON has no leading zeros).
    if len(text.lstrip("-")) <= _SAFE_INTEGER_DIGITS:
        value = int(text)
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
    shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"
    raise EncodingError(f"integer {shown} is outside the I-JSON range ±(2^53 - 1)")


def _reject_float(text: str) -> NoReturn:
    shown = text if len(text) <= 40 else f"{text[:20]}..."
    raise EncodingError(
        f"number {shown} is not an integer: amounts and quantities must be integers "
        "or decimal strings, never floats"
    )


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        shown = text if len(text) <= 40 else f"{text[:20]}..."
        raise EncodingError(f"number {shown} is too large for an IEEE 754 double")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise EncodingError(f"duplicate object key {key!r}")
            seen.add(key)
    return result


def _check_strings(value: Any) -> None:
    """Reject lone surrogates (from ``\\ud800``-style escapes) anywhere in ``value``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            bad = _SURROGATE.search(item)
            if bad is not None:
                shown = item if len(item) <= 40 else f"{item[:40]}..."
                raise EncodingError(
                    f"string {shown!r} contains a lone surrogate U+{ord(bad.group()):04X} "
                    f"at index {bad.start()} (not Unicode)"
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(data: bytes | str, *, allow_floats: bool = False) -> Any:
    """Parse untrusted JSON (RFC 8259) strictly, as I-JSON (RFC 7493).

    Rejects, with :class:`~ledger.core.errors.EncodingError` saying what and where:
    bytes that are not UTF-8 (a byte order mark included), syntax errors,
    duplicate object keys, ``NaN``/``Infinity``, lone surrogates, integers outside
    ±(2^53 - 1), and — unless ``allow_floats`` — any number with a fraction or an
    exponent (ARCHITECTURE §3: never floats). With ``allow_floats`` such numbers
    become ``float`` and must be finite; a number written without fraction or
    exponent is still an integer and still limited to ±(2^53 - 1).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise EncodingError(f"JSON is not valid UTF-8: {e.reason} at byte {e.start}") from e
    elif isinstance(data, str):
        text = data
        bad = _SURROGATE.search(text)
        if bad is not None:
            raise EncodingError(f"JSON text contains a lone surrogate at offset {bad.start()}")
    else:
        raise EncodingError(f"JSON must be bytes or str, got {type(data).__name__}")
    if text.startswith("\ufeff"):
        raise EncodingError("JSON must not start with a byte order mark")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float if allow_floats else _reject_float,
        )
    except json.JSONDecodeError as e:
        raise EncodingError(
            f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno} (offset {e.pos})"
        ) from e
    except RecursionError as e:
        raise EncodingError("invalid JSON: nested too deeply") from e
    _check_strings(value)
    return value

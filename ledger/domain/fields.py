"""Field checks for statement bodies and payloads, raising ``malformed-body``.

Each takes the object, the field name and a ``where`` prefix for the message,
so that a rejection says exactly which field is wrong and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ledger.core.errors import EncodingError, RejectionError
from ledger.core.statement import instant, parse_time

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_TRACE_RE = re.compile(r"\d{20}")


def malformed(where: str, message: str) -> RejectionError:
    return RejectionError("malformed-body", f"{where}: {message}")


def only(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise malformed(where, f"unknown field(s) {', '.join(extra)}")


def obj_field(obj: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise malformed(f"{where}.{name}", "expected an object")
    return value


def list_field(
    obj: Mapping[str, Any], name: str, where: str, *, min_len: int = 0, max_len: int = 1000
) -> list[Any]:
    value = obj.get(name)
    if not isinstance(value, list) or not min_len <= len(value) <= max_len:
        raise malformed(f"{where}.{name}", f"expected an array of {min_len} to {max_len} items")
    return value


def str_field(
    obj: Mapping[str, Any], name: str, where: str, *, max_len: int = 200, optional: bool = False
) -> str:
    value = obj.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise malformed(f"{where}.{name}", f"expected a string of 1 to {max_len} characters")
    return value


def id_field(obj: Mapping[str, Any], name: str, where: str, *, optional: bool = False) -> str:
    value = obj.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise malformed(f"{where}.{name}", "expected an id of 1-128 of [A-Za-z0-9._:-]")
    return value


def code_field(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not _CODE_RE.fullmatch(value):
        raise malformed(f"{where}.{name}", "expected a code of 1-64 of [A-Za-z0-9._:-]")
    return value


def int_field(
    obj: Mapping[str, Any],
    name: str,
    where: str,
    *,
    minimum: int = 0,
    maximum: int = 2**53 - 1,
    optional: bool = False,
    default: int = 0,
) -> int:
    value = obj.get(name)
    if value is None and optional:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise malformed(f"{where}.{name}", f"expected an integer from {minimum} to {maximum}")
    return value


def bool_field(obj: Mapping[str, Any], name: str, where: str, *, default: bool = False) -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise malformed(f"{where}.{name}", "expected true or false")
    return value


def time_field(obj: Mapping[str, Any], name: str, where: str, *, optional: bool = False) -> str:
    value = obj.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise malformed(f"{where}.{name}", "expected an RFC 3339 UTC time")
    try:
        parse_time(value, field=f"{where}.{name}")
    except EncodingError as e:
        raise malformed(f"{where}.{name}", str(e)) from e
    return instant(value)


def hex64_field(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not _HEX64_RE.fullmatch(value):
        raise malformed(f"{where}.{name}", "expected 64 lower-case hex digits")
    return value


def trace_code(value: object, where: str) -> str:
    if not isinstance(value, str) or not _TRACE_RE.fullmatch(value):
        raise malformed(where, "expected a 20-digit drug traceability code")
    return value

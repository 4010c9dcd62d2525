"""Integers in paths and query strings: plain decimal digits only.

Left to itself, the validator reads ``1_0`` as 10, ``+5`` and `` 5`` as 5 and
``1.0`` as 1: a typo would name another record or proof. An integer
parameter is refused (``400 malformed``) unless it is digits alone.
"""

from __future__ import annotations

import re

from pydantic import BeforeValidator

_DIGITS = re.compile(r"[0-9]{1,19}")


def _digits_only(value: object) -> object:
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("expected a non-negative decimal integer, digits only")
    return value


#: in ``Annotated[int, Digits, Query(...)]``: the string must be digits alone
Digits = BeforeValidator(_digits_only)

"""Signed requests: how an actor (a patient, a data user) authenticates to the API.

The client signs, with its registered Ed25519 key, the message

    rxledger-request-v1 LF METHOD LF PATH[?QUERY] LF TIME LF SHA-256(body) hex LF

and sends ``Authorization: RxLedger-Sig actor="...", key="<vkey>",
time="<RFC 3339 UTC>", signature="<base64>"``. The server checks the
signature, that the key is registered to the actor and valid now, and that
``time`` is within five minutes of its clock. No password, no session: the
same key that signs the actor's statements.
"""

from __future__ import annotations

import base64
import hashlib
import re

from ledger.core.errors import EncodingError
from ledger.core.note import Signer

SCHEME = "RxLedger-Sig"
_PARAM_RE = re.compile(r'\s*([a-z]+)="([^"]*)"\s*(?:,|$)')


def request_message(method: str, target: str, time: str, body: bytes = b"") -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"rxledger-request-v1\n{method.upper()}\n{target}\n{time}\n{digest}\n".encode()


def authorization(signer: Signer, method: str, target: str, time: str, body: bytes = b"") -> str:
    """The ``Authorization`` header value for a request to ``target`` (path and query)."""
    signature = signer.sign(request_message(method, target, time, body))
    return (
        f'{SCHEME} actor="{signer.name}", key="{signer.vkey}", time="{time}", '
        f'signature="{base64.b64encode(signature).decode("ascii")}"'
    )


def parse_authorization(value: str) -> dict[str, str]:
    """``{actor, key, time, signature}`` from the header; :class:`EncodingError` if malformed."""
    if not value.startswith(SCHEME + " "):
        raise EncodingError(f"Authorization: expected the {SCHEME} scheme")
    rest = value[len(SCHEME) + 1 :]
    params = {}
    position = 0
    while position < len(rest):
        match = _PARAM_RE.match(rest, position)
        if match is None:
            raise EncodingError('Authorization: expected name="value" pairs')
        params[match.group(1)] = match.group(2)
        position = match.end()
    missing = sorted({"actor", "key", "time", "signature"} - set(params))
    if missing:
        raise EncodingError(f"Authorization: missing {', '.join(missing)}")
    return params

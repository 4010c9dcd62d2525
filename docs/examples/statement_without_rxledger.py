"""Make and submit a valid rxledger statement WITHOUT the rxledger package.

Only PyNaCl (Ed25519) and rfc8785 (JSON Canonicalization Scheme) are used, to
show exactly what any language must do. Run it against a ledger:

    python docs/examples/statement_without_rxledger.py URL SKEY_FILE

where SKEY_FILE holds the actor's private key string
(``PRIVATE+KEY+<name>+<hex id>+<base64>``, as written by ``rxledger keygen``
or ``rxledger init`` for the registrar).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
import urllib.request
from datetime import UTC, datetime

import rfc8785
from nacl.signing import SigningKey


def load_key(skey: str) -> tuple[str, SigningKey, str]:
    """Split a C2SP signed-note private key string; return (name, key, vkey)."""
    _, _, name, key_id_hex, b64 = skey.strip().split("+", 4)  # base64 may hold "+"
    raw = base64.b64decode(b64)
    assert raw[0] == 0x01, "algorithm byte 0x01 = Ed25519"
    key = SigningKey(raw[1:])
    public = bytes(key.verify_key)
    # key id = first 4 bytes of SHA-256(name || "\n" || 0x01 || public key)
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    assert key_id.hex() == key_id_hex
    encoded = base64.b64encode(b"\x01" + public).decode()
    vkey = f"{name}+{key_id_hex}+{encoded}"
    return name, key, vkey


def make_statement(skey: str, type_: str, body: dict[str, object]) -> dict[str, object]:
    actor, key, vkey = load_key(skey)
    now = datetime.now(UTC)
    statement = {
        "type": type_,
        "actor": actor,  # must be the key's name
        "key": vkey,  # the signer's verifier key string
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "nonce": secrets.token_hex(16),  # never reuse
        "body": body,  # integers only, never floats
    }
    signed_bytes = rfc8785.dumps(statement)  # RFC 8785 canonical JSON
    signature = key.sign(signed_bytes).signature  # raw 64-byte Ed25519
    return {"statement": statement, "signature": base64.b64encode(signature).decode()}


def main() -> None:
    url, key_file = sys.argv[1], sys.argv[2]
    with open(key_file, encoding="ascii") as f:
        skey = f.read()
    digest = hashlib.sha256(b"a document to notarize").hexdigest()
    submission = make_statement(skey, "doc.attest", {"digest": digest})
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/statements",
        data=json.dumps(submission).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        receipt = json.load(response)
    print(json.dumps(receipt, indent=2))


if __name__ == "__main__":
    main()

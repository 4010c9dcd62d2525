"""A small client: build and sign statements, submit them, check the receipts.

The CLI, the demo, the benchmarks and the tests make statements only through
:func:`ledger.core.statement.make_statement` and submit them through
:class:`LedgerClient`, so there is one way to make a statement.

A receipt is checked, not trusted: :func:`check_receipt` rebuilds the record
bytes from the statement that was sent and the receipt's ``seq``, ``prev``
and ``received_at``, checks the record hash, opens the checkpoint with the
log's public key and verifies the inclusion proof against its root.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ledger.core import cohort, merkle
from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.errors import EncodingError, LedgerError, RejectionError, VerificationError
from ledger.core.note import Signer, Verifier
from ledger.core.record import Record, build_record_bytes
from ledger.core.request_auth import authorization
from ledger.core.statement import SignedStatement, format_time, make_statement, now

__all__ = [
    "LedgerClient",
    "RejectedError",
    "VerifiedReceipt",
    "check_after_revocation",
    "check_receipt",
    "check_trail",
    "make_statement",
]


@dataclass(frozen=True)
class VerifiedReceipt:
    seq: int
    record_hash: bytes
    checkpoint: Checkpoint
    duplicate: bool
    raw: dict[str, Any]


class RejectedError(RejectionError):
    """The ledger refused a statement; ``problem`` is its problem+json body."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(str(problem.get("code", "rejected")), str(problem.get("detail", "")))
        self.problem = problem
        self.status = int(problem.get("status", 0))


def check_receipt(
    receipt: dict[str, Any],
    signed: SignedStatement,
    *,
    log_key: Verifier,
    origin: str,
) -> VerifiedReceipt:
    """Check that ``receipt`` proves ``signed`` is in the log; raise if not."""
    try:
        seq = int(receipt["seq"])
        prev = str(receipt["prev"])
        received_at = str(receipt["received_at"])
        record_hash = bytes.fromhex(receipt["record_hash"])
        proof = receipt["inclusion_proof"]
        tree_size = int(proof["tree_size"])
        hashes = [bytes.fromhex(h) for h in proof["hashes"]]
        note = str(receipt["checkpoint"])
    except (KeyError, TypeError, ValueError) as e:
        raise EncodingError(f"receipt is malformed: {e}") from e
    data = build_record_bytes(seq, prev, received_at, signed.signature_b64, signed.signed_bytes)
    if hashlib.sha256(data).digest() != record_hash:
        raise VerificationError(
            f"receipt record_hash: expected {hashlib.sha256(data).hexdigest()} for the "
            f"statement sent, got {record_hash.hex()}"
        )
    checkpoint, _ = open_checkpoint(note, origin=origin, verifier=log_key)
    if checkpoint.size != tree_size:
        raise VerificationError(
            f"receipt proof tree_size {tree_size} differs from its checkpoint's {checkpoint.size}"
        )
    merkle.verify_inclusion(merkle.hash_leaf(data), seq, tree_size, hashes, checkpoint.root_hash)
    return VerifiedReceipt(
        seq=seq,
        record_hash=record_hash,
        checkpoint=checkpoint,
        duplicate=bool(receipt.get("duplicate", False)),
        raw=receipt,
    )


def _submission_json(signed: SignedStatement, payload: bytes | None) -> dict[str, Any]:
    body = signed.to_json()
    if payload is not None:
        body["payload"] = base64.b64encode(payload).decode("ascii")
    return body


class LedgerClient:
    """Talks to the rxledger HTTP API and checks every receipt it gets."""

    def __init__(
        self,
        base_url: str = "",
        *,
        http: httpx.Client | None = None,
        log_key: str | None = None,
        origin: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._log_key = Verifier.from_vkey(log_key) if log_key else None
        self._origin = origin or (self._log_key.name if self._log_key else None)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------

    def submit(self, signed: SignedStatement, *, payload: bytes | None = None) -> VerifiedReceipt:
        """Submit one statement; return its checked receipt or raise :class:`RejectedError`."""
        response = self.http.post("/v1/statements", json=_submission_json(signed, payload))
        body = self._json(response)
        if response.status_code not in (200, 201):
            raise RejectedError(body)
        return self._check(body, signed)

    def submit_batch(
        self,
        batch: Sequence[SignedStatement | tuple[SignedStatement, bytes | None]],
        *,
        atomic: bool = False,
    ) -> list[VerifiedReceipt | RejectedError]:
        """Submit a batch; one checked receipt or :class:`RejectedError` per statement."""
        items = [b if isinstance(b, tuple) else (b, None) for b in batch]
        response = self.http.post(
            "/v1/statements",
            json={
                "statements": [_submission_json(s, p) for s, p in items],
                "atomic": atomic,
            },
        )
        body = self._json(response)
        if response.status_code != 200:
            raise RejectedError(body)
        out: list[VerifiedReceipt | RejectedError] = []
        for (signed, _), result in zip(items, body["results"], strict=True):
            if result["status"] == "accepted":
                out.append(self._check(result["receipt"], signed))
            else:
                out.append(RejectedError(result["problem"]))
        return out

    # -- reads ---------------------------------------------------------------------

    def checkpoint(self) -> str:
        response = self.http.get("/v1/checkpoint")
        if response.status_code != 200:
            raise RejectedError(self._json(response))
        return response.text

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        body = self._json(response)
        if response.status_code != 200:
            raise RejectedError(body)
        return body

    def signed(
        self, method: str, path: str, signer: Signer, *, json_body: Any = None, **params: Any
    ) -> Any:
        """A request signed by ``signer`` (``ledger.core.request_auth``): the
        patient's wallet views, a data user's previews and uses."""
        content = b"" if json_body is None else json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if json_body is not None else {}
        request = self.http.build_request(
            method,
            path,
            params={k: v for k, v in params.items() if v is not None},
            content=content,
            headers=headers,
        )
        target = request.url.raw_path.decode("ascii")
        request.headers["Authorization"] = authorization(
            signer, method, target, format_time(now()), content
        )
        response = self.http.send(request)
        body = self._json(response)
        if response.status_code != 200:
            raise RejectedError(body)
        return body

    def read_payload(self, seq: int, signer: Signer) -> dict[str, Any]:
        """Record ``seq``'s payload, if ``signer``'s actor may read it (``ledger.access``)."""
        return dict(self.signed("GET", f"/v1/payloads/{seq}", signer))

    def access_log(
        self, patient: str, signer: Signer, *, after_id: int = 0, limit: int = 100
    ) -> dict[str, Any]:
        """Who read (or tried to read) ``patient``'s data: ``{patient, events, next_after_id}``."""
        path = f"/v1/wallet/{patient}/access-log"
        return dict(self.signed("GET", path, signer, after_id=after_id, limit=limit))

    def pseudonym(self, identifier: str, signer: Signer) -> str:
        """The registrar's pseudonym lookup (logged; the identifier is not)."""
        body = {"identifier": identifier}
        return str(
            self.signed("POST", "/v1/operator/pseudonyms", signer, json_body=body)["pseudonym"]
        )

    # -- helpers -------------------------------------------------------------------

    def _check(self, receipt: dict[str, Any], signed: SignedStatement) -> VerifiedReceipt:
        if self._log_key is None or self._origin is None:
            raise LedgerError("the client needs the log's public key to check receipts")
        return check_receipt(receipt, signed, log_key=self._log_key, origin=self._origin)

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as e:
            raise EncodingError(
                f"the ledger answered HTTP {response.status_code} with no JSON body"
            ) from e


#: the steps of a claim's trail, in order, and the statement type of each
TRAIL: tuple[tuple[str, str], ...] = (
    ("settlement", "settlement.decision"),
    ("claim", "claim.submit"),
    ("dispense", "rx.dispense"),
    ("prescription", "rx.issue"),
    ("prescriber-registration", "actor.register"),
)


def check_trail(trail: dict[str, Any], *, log_key: Verifier, origin: str) -> Checkpoint:
    """Check a claim's audit trail offline; return the checkpoint it is checked against.

    Every step must be there, in order, be a record of the right type,
    hash to its ``record_hash`` and be included in the checkpoint signed by
    ``log_key``; each step must refer to the next (the decision to the claim,
    the claim to the dispense and its pharmacy, the dispense to the
    prescription, the prescription to its prescriber's registration); and
    the summary (``status``, ``decision``) must be what the records say.
    """
    try:
        return _check_trail(trail, log_key=log_key, origin=origin)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VerificationError(f"trail is malformed: {type(e).__name__}: {e}") from e


def _check_trail(trail: dict[str, Any], *, log_key: Verifier, origin: str) -> Checkpoint:
    checkpoint, _ = open_checkpoint(str(trail["checkpoint"]), origin=origin, verifier=log_key)
    decision = trail["decision"]
    wanted = [(name, kind) for name, kind in TRAIL if name != "settlement" or decision]
    steps = trail["steps"]
    if [s["step"] for s in steps] != [name for name, _ in wanted]:
        raise VerificationError(
            f"trail steps: expected {', '.join(n for n, _ in wanted)}; "
            f"got {', '.join(str(s.get('step')) for s in steps)}"
        )
    records: dict[str, dict[str, Any]] = {}
    for step, (name, kind) in zip(steps, wanted, strict=True):
        data = base64.b64decode(step["record_bytes"], validate=True)
        if hashlib.sha256(data).hexdigest() != step["record_hash"]:
            raise VerificationError(f"trail step {name}: record bytes do not match record_hash")
        hashes = [bytes.fromhex(h) for h in step["inclusion_proof"]]
        merkle.verify_inclusion(
            merkle.hash_leaf(data), int(step["seq"]), checkpoint.size, hashes, checkpoint.root_hash
        )
        fields = Record.from_bytes(data, expected_seq=int(step["seq"])).fields
        if fields["type"] != kind:
            raise VerificationError(f"trail step {name}: expected a {kind}, got {fields['type']}")
        records[name] = fields
    claim = records["claim"]
    links = {
        "claim": claim["body"]["claim_id"] == trail["claim_id"],
        "dispense": (
            records["dispense"]["body"]["rx_id"],
            records["dispense"]["body"]["fill_number"],
            records["dispense"]["actor"],
        )
        == (claim["body"]["rx_id"], claim["body"]["fill_number"], claim["actor"]),
        "prescription": records["prescription"]["body"]["rx_id"] == claim["body"]["rx_id"],
        "prescriber-registration": records["prescriber-registration"]["body"]["actor"]
        == records["prescription"]["actor"],
    }
    if decision:
        recorded = records["settlement"]["body"]
        summary = {k: v for k, v in decision.items() if k != "seq"}
        links["settlement"] = (
            recorded == summary
            and recorded["claim_id"] == trail["claim_id"]
            and int(decision["seq"]) == int(steps[0]["seq"])
            and trail["status"] == recorded["outcome"]
        )
    else:
        links["settlement"] = trail["status"] == "pending"
    for name, holds in links.items():
        if not holds:
            raise VerificationError(f"trail step {name} does not agree with the records")
    return checkpoint


def check_after_revocation(proof: dict[str, Any], *, log_key: Verifier, origin: str) -> list[str]:
    """Check, offline, a patient's proof about the data uses after a revocation.

    Every listed use must be a ``data.use`` record after the revocation,
    included in the checkpoint signed by ``log_key``, with a valid
    membership or non-membership proof for the patient against the record's
    cohort commitment. Returns the uses that included the patient (empty when
    no use after the revocation did), which must equal ``proof["included"]``.
    """
    try:
        checkpoint, _ = open_checkpoint(str(proof["checkpoint"]), origin=origin, verifier=log_key)
        patient = str(proof["patient"])
        revoked_seq = int(proof["revoked_seq"])
        included = []
        for use in proof["uses"]:
            data = base64.b64decode(use["record_bytes"], validate=True)
            seq = int(use["seq"])
            record = Record.from_bytes(data, expected_seq=seq)
            if record.fields["type"] != "data.use" or seq <= revoked_seq:
                raise VerificationError(f"record {seq} is not a data.use after the revocation")
            hashes = [bytes.fromhex(h) for h in use["inclusion_proof"]]
            merkle.verify_inclusion(
                merkle.hash_leaf(data), seq, checkpoint.size, hashes, checkpoint.root_hash
            )
            body = record.fields["body"]
            member = cohort.verify_membership(
                str(body["use_id"]),
                patient,
                count=int(body["permitted_count"]),
                root=bytes.fromhex(body["permitted_root"]),
                proof=use["membership"],
            )
            if member:
                included.append(str(body["use_id"]))
        claimed = list(proof["included"])
    except (KeyError, TypeError, ValueError) as e:
        raise VerificationError(f"proof is malformed: {type(e).__name__}: {e}") from e
    if included != claimed:
        raise VerificationError(
            f"proof says the patient was included in {claimed}, the records say {included}"
        )
    return included

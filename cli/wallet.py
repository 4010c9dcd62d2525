"""``rxledger wallet``: a patient's data wallet, from the patient's own key file.

Every command talks to a ledger's HTTP API (``--url``) and trusts nothing but
the log's public key (``--log-key``): reads are signed requests
(``ledger.core.request_auth``) made with the patient's key (``--key``, the
file ``rxledger keygen`` wrote); statements are made and signed here, and
their receipts checked against a checkpoint signed by the log key. A guardian
registered for a patient acts for them with ``--patient``.

Exit codes as the rest of the CLI: 0 success, 1 a proof or receipt that does
not verify, 2 usage, input, I/O or a refusal by the ledger; errors are one
line on stderr.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx

from ledger.client import LedgerClient, RejectedError, VerifiedReceipt, check_after_revocation
from ledger.core.checkpoint import note_size, open_checkpoint
from ledger.core.errors import EncodingError, KeyFormatError, LedgerError, VerificationError
from ledger.core.note import Signer, Verifier
from ledger.core.statement import format_time, make_statement, now, parse_time
from ledger.domain import wallet as rules

#: DUO terms by their short names, as the docs and ``--purpose`` use them
ABBREVIATIONS = {
    "GRU": rules.GRU,
    "HMB": rules.HMB,
    "DS": rules.DS,
    "POA": rules.POA,
    "NPU": rules.NPU,
    "NCU": rules.NCU,
    "TS": rules.TS,
    "PUB": rules.PUB,
}
NAMES = {code: name for name, code in ABBREVIATIONS.items()}
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_RELATIVE_RE = re.compile(r"^\+(\d{1,5})([dh])$")


# -- errors, options and parsing ---------------------------------------------------------


def _failure(message: str, *, unverified: bool = False) -> click.ClickException:
    """cli.main's one-line error: exit 2, or exit 1 (``unverified``) for what did not verify.

    Imported when raised, so that this module does not need cli.main loaded
    first (cli.main registers this group at its end).
    """
    from cli.main import Failure, VerificationFailure  # noqa: PLC0415

    return VerificationFailure(message) if unverified else Failure(message)


def _url_option(f: Any) -> Any:
    return click.option(
        "--url", required=True, help="The ledger's HTTP API, e.g. http://127.0.0.1:8000."
    )(f)


def _key_option(f: Any) -> Any:
    return click.option(
        "--key",
        "key_file",
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        help="Your private key file (as `rxledger keygen` writes it).",
    )(f)


def _log_key_option(f: Any) -> Any:
    return click.option(
        "--log-key",
        required=True,
        help="The log's verifier key (vkey string): the one thing you trust.",
    )(f)


def _patient_option(f: Any) -> Any:
    return click.option(
        "--patient",
        default=None,
        help="The patient (pseudonym) whose wallet this is; default the key's actor. "
        "A guardian names their ward here.",
    )(f)


def _json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


def _signer(key_file: Path) -> Signer:
    from ledger.service import read_key_file  # noqa: PLC0415 - keep start-up light

    try:
        return read_key_file(key_file)
    except KeyFormatError as e:
        raise _failure(f"--key {key_file}: {e}") from None


def _verifier(log_key: str) -> Verifier:
    return Verifier.from_vkey(log_key)


def _patient(patient: str | None, signer: Signer) -> str:
    chosen = patient or signer.name
    if not ID_RE.fullmatch(chosen):
        raise _failure(f"--patient {chosen!r} is not a pseudonym (letters, digits, . _ : -)")
    return chosen


def _identifier(value: str, option: str) -> str:
    if not ID_RE.fullmatch(value):
        raise _failure(f"{option} {value!r}: expected letters, digits and . _ : - (at most 128)")
    return value


def _client(url: str, log_key: str | None = None) -> LedgerClient:
    if not url.startswith(("http://", "https://")):
        raise _failure(f"--url {url!r}: expected an http:// or https:// URL")
    return LedgerClient(url.rstrip("/"), log_key=log_key)


@contextmanager
def _talking_to(url: str) -> Iterator[None]:
    """One-line errors for the ledger's refusals and for network failures."""
    try:
        yield
    except RejectedError as e:
        status = f"HTTP {e.status}, " if e.status else ""
        raise _failure(f"the ledger refused: {e.code} ({status}{e})") from None
    except httpx.HTTPError as e:
        raise _failure(f"cannot talk to the ledger at {url}: {type(e).__name__}: {e}") from None


def parse_purpose(value: str) -> dict[str, Any]:
    """``--purpose``: a DUO term by code or short name, with ``:disease=`` or ``:months=``.

    ``DUO:0000007:disease=E11``, ``DS:disease=E11``, ``TS:months=12``, ``HMB``.
    """
    parts = value.strip().split(":")
    if parts[0].upper() == "DUO" and len(parts) >= 2:
        code, rest = f"DUO:{parts[1]}", parts[2:]
    elif parts[0].upper() in ABBREVIATIONS:
        code, rest = ABBREVIATIONS[parts[0].upper()], parts[1:]
    else:
        raise _failure(
            f"--purpose {value!r}: expected a DUO term (DUO:0000042 or GRU, HMB, DS, POA, "
            "NCU, NPU, TS, PUB), with :disease=ICD10 for DS and :months=N for TS"
        )
    raw: dict[str, Any] = {"code": code}
    for item in rest:
        name, sep, setting = item.partition("=")
        if not sep or name not in ("disease", "months") or not setting:
            raise _failure(
                f"--purpose {value!r}: expected :disease=CODE or :months=N, got {item!r}"
            )
        if name == "months":
            if not setting.isdigit():
                raise _failure(f"--purpose {value!r}: months must be a whole number")
            raw["months"] = int(setting)
        else:
            raw["disease"] = setting
    try:
        return rules.parse_purpose(raw, "purpose")
    except LedgerError as e:
        raise _failure(f"--purpose {value!r}: {e}") from None


def _permission_code(value: str) -> str:
    """A permission's DUO code from a code or a short name (for ``--remove-purpose``).

    Only permissions: dropping a modifier (NCU, NPU, TS, PUB) would make the
    consent broader, which a narrowing must never do.
    """
    code = ABBREVIATIONS.get(value.upper(), value)
    if code in rules.MODIFIERS:
        raise _failure(
            f"--remove-purpose {value!r}: a modifier limits the consent, removing it would "
            "broaden it (grant a new consent instead)"
        )
    if code not in rules.PERMISSIONS:
        raise _failure(f"--remove-purpose {value!r}: expected a permission: GRU, HMB, DS, POA")
    return code


def parse_when(value: str, option: str) -> str:
    """A time option: RFC 3339 UTC, a date (midnight UTC), ``now``, or ``+30d`` / ``+12h``."""
    text = value.strip()
    if text == "now":
        return format_time(now())
    relative = _RELATIVE_RE.fullmatch(text)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        delta = timedelta(days=amount) if unit == "d" else timedelta(hours=amount)
        return format_time(now() + delta)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return format_time(datetime.fromisoformat(text).replace(tzinfo=UTC))
        except ValueError:
            raise _failure(f"{option} {value!r}: not a valid date") from None
    try:
        parse_time(text, field=option)
    except EncodingError as e:
        raise _failure(f"{e} (or a date, now, +30d, +12h)") from None
    return text


def describe_purpose(purpose: dict[str, Any]) -> str:
    name = NAMES.get(str(purpose.get("code")), str(purpose.get("code")))
    if "disease" in purpose:
        return f"{name}({purpose['disease']})"
    if "months" in purpose:
        return f"{name}({purpose['months']} months)"
    return name


def _day(time: str | None) -> str:
    return (time or "")[:10]


# -- the group ---------------------------------------------------------------------------


@click.group()
def wallet() -> None:
    """A patient's data wallet: consents, the data-use log, proceeds, proofs."""


@wallet.command("show")
@_url_option
@_key_option
@_log_key_option
@_patient_option
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="At most this many data uses (newest first).",
)
@_json_option
def show(
    *,
    url: str,
    key_file: Path,
    log_key: str,
    patient: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Consents (in force and past), the data-use log newest first, the balance."""
    signer = _signer(key_file)
    verifier = _verifier(log_key)
    who = _patient(patient, signer)
    with _client(url, log_key) as client, _talking_to(url):
        checkpoint, _ = open_checkpoint(
            client.checkpoint(), origin=verifier.name, verifier=verifier
        )
        consents = client.signed("GET", f"/v1/wallet/{who}/consents", signer)["consents"]
        uses: list[dict[str, Any]] = []
        before: int | None = None
        while len(uses) < limit:
            page = client.signed(
                "GET",
                f"/v1/wallet/{who}/uses",
                signer,
                limit=min(500, limit - len(uses)),
                before_seq=before,
            )
            uses.extend(page["uses"])
            before = page["next_before_seq"]
            if before is None:
                break
        more = before is not None
        balance = client.signed("GET", f"/v1/wallet/{who}/balance", signer)
    if as_json:
        out = {
            "patient": who,
            "checkpoint": {"origin": checkpoint.origin, "size": checkpoint.size},
            "consents": consents,
            "uses": uses,
            "more_uses": more,
            "balance": balance["balance"],
            "payments": balance["payments"],
        }
        click.echo(json.dumps(out, indent=2))
        return
    acting = "" if who == signer.name else f" (read by {signer.name}, their guardian)"
    click.echo(f"wallet of {who}{acting}")
    click.echo(f"log {checkpoint.origin}: checkpoint of size {checkpoint.size} verified")
    in_force = sum(1 for c in consents if c.get("in_force"))
    click.echo(f"consents: {len(consents)} ({in_force} in force)")
    for c in consents:
        if c["revoked_at"]:
            state = f"revoked {_day(c['revoked_at'])} (seq {c['revoked_seq']})"
        else:
            state = "in force" if c.get("in_force") else "not in force"
        narrowed = len(c.get("history", [])) - 1 - (1 if c["revoked_seq"] is not None else 0)
        click.echo(
            f"  {c['consent_id']:<14} {state}; to {c['grantee']} for "
            f"{'+'.join(describe_purpose(p) for p in c['purposes'])} on "
            f"{','.join(c['categories'])}; {_day(c['valid_from'])} to {_day(c['valid_until'])}; "
            f"share {c['share_bp']} bp; granted seq {c['granted_seq']}"
            + (f", narrowed {narrowed}x" if narrowed > 0 else "")
        )
    click.echo(
        f"data uses that included you: {len(uses)}{' (more: raise --limit)' if more else ''}"
    )
    for u in uses:
        click.echo(
            f"  seq {u['seq']:<8} {u['use_id']:<24} by {u['data_user']} for "
            f"{describe_purpose(u['purpose'] or {})} on {','.join(u['categories'] or [])} "
            f"at {u['at']}"
        )
    click.echo(f"balance: {balance['balance']} ({len(balance['payments'])} payments)")
    for p in balance["payments"]:
        click.echo(
            f"  {p['amount']:>10} of {p['of_total']} from use {p['use_id']}, "
            f"payment {p['payment_id']} (seq {p['seq']})"
        )


def _submit(
    url: str, log_key: str, signer: Signer, kind: str, body: dict[str, Any]
) -> tuple[VerifiedReceipt, dict[str, Any]]:
    signed = make_statement(signer, kind, body)
    with _client(url, log_key) as client, _talking_to(url):
        receipt = client.submit(signed)
    return receipt, signed.to_json()


def _print_receipt(
    what: str, receipt: VerifiedReceipt, statement: dict[str, Any], log: str, as_json: bool
) -> None:
    if as_json:
        out = {
            "seq": receipt.seq,
            "record_hash": receipt.record_hash.hex(),
            "duplicate": receipt.duplicate,
            "checkpoint": {"origin": receipt.checkpoint.origin, "size": receipt.checkpoint.size},
            **statement,  # the statement sent, and its signature
        }
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"{what}: seq {receipt.seq}, record hash {receipt.record_hash.hex()}")
    click.echo(
        f"receipt verified: included in the checkpoint of size {receipt.checkpoint.size} "
        f"signed by {log}" + (" (already recorded: a retry)" if receipt.duplicate else "")
    )


@wallet.command("grant")
@_url_option
@_key_option
@_log_key_option
@click.option("--consent-id", required=True, help="Your name for this consent (unique for you).")
@click.option(
    "--grantee",
    required=True,
    help="A data user's id, or class:accredited-nonprofit, class:nonprofit, class:any.",
)
@click.option(
    "--purpose",
    "purposes",
    multiple=True,
    required=True,
    help="A DUO term, repeatable: GRU, HMB, DS:disease=E11, POA, NCU, NPU, TS:months=12, "
    "PUB (or DUO:0000007:disease=E11). At least one of GRU, HMB, DS, POA.",
)
@click.option(
    "--category",
    "categories",
    multiple=True,
    required=True,
    help=f"A data category, repeatable: {', '.join(rules.CATEGORIES)}.",
)
@click.option("--until", required=True, help="End: RFC 3339 UTC time, a date, or +365d.")
@click.option("--from", "valid_from", default="now", show_default=True, help="Start (as --until).")
@click.option(
    "--share-bp",
    type=click.IntRange(0, 10_000),
    required=True,
    help="Your weight in the split of proceeds, in basis points (0-10000).",
)
@_patient_option
@_json_option
def grant(
    *,
    url: str,
    key_file: Path,
    log_key: str,
    consent_id: str,
    grantee: str,
    purposes: tuple[str, ...],
    categories: tuple[str, ...],
    until: str,
    valid_from: str,
    share_bp: int,
    patient: str | None,
    as_json: bool,
) -> None:
    """Grant a consent (consent.grant): sign it, submit it, check the receipt."""
    signer = _signer(key_file)
    verifier = _verifier(log_key)
    who = _patient(patient, signer)
    unknown = sorted(set(categories) - set(rules.CATEGORIES))
    if unknown:
        raise _failure(f"--category {unknown[0]!r}: expected one of {', '.join(rules.CATEGORIES)}")
    body = {
        "consent_id": _identifier(consent_id, "--consent-id"),
        "patient": who,
        "grantee": grantee,
        "purposes": [parse_purpose(p) for p in purposes],
        "categories": sorted(set(categories)),
        "valid_from": parse_when(valid_from, "--from"),
        "valid_until": parse_when(until, "--until"),
        "share_bp": share_bp,
    }
    receipt, statement = _submit(url, log_key, signer, "consent.grant", body)
    _print_receipt(f"consent {consent_id} granted", receipt, statement, verifier.name, as_json)


@wallet.command("narrow")
@_url_option
@_key_option
@_log_key_option
@click.option("--consent-id", required=True)
@click.option(
    "--remove-purpose",
    "remove_purposes",
    multiple=True,
    help="A permission to drop (GRU, HMB, DS, POA; repeatable).",
)
@click.option("--remove-category", "remove_categories", multiple=True, help="A category to drop.")
@click.option("--until", default=None, help="An earlier end (RFC 3339, a date, now, +30d).")
@_patient_option
@_json_option
def narrow(
    *,
    url: str,
    key_file: Path,
    log_key: str,
    consent_id: str,
    remove_purposes: tuple[str, ...],
    remove_categories: tuple[str, ...],
    until: str | None,
    patient: str | None,
    as_json: bool,
) -> None:
    """Narrow a consent (consent.narrow): fewer purposes or categories, an earlier end."""
    signer = _signer(key_file)
    verifier = _verifier(log_key)
    body: dict[str, Any] = {
        "consent_id": _identifier(consent_id, "--consent-id"),
        "patient": _patient(patient, signer),
    }
    if remove_purposes:
        body["remove_purposes"] = sorted({_permission_code(p) for p in remove_purposes})
    if remove_categories:
        body["remove_categories"] = sorted(set(remove_categories))
    if until is not None:
        body["valid_until"] = parse_when(until, "--until")
    if len(body) == 2:
        raise _failure("nothing to narrow: give --remove-purpose, --remove-category or --until")
    receipt, statement = _submit(url, log_key, signer, "consent.narrow", body)
    _print_receipt(f"consent {consent_id} narrowed", receipt, statement, verifier.name, as_json)


@wallet.command("revoke")
@_url_option
@_key_option
@_log_key_option
@click.option("--consent-id", required=True)
@_patient_option
@_json_option
def revoke(
    *,
    url: str,
    key_file: Path,
    log_key: str,
    consent_id: str,
    patient: str | None,
    as_json: bool,
) -> None:
    """Revoke a consent (consent.revoke): from now on it permits nothing."""
    signer = _signer(key_file)
    verifier = _verifier(log_key)
    body = {
        "consent_id": _identifier(consent_id, "--consent-id"),
        "patient": _patient(patient, signer),
    }
    receipt, statement = _submit(url, log_key, signer, "consent.revoke", body)
    _print_receipt(f"consent {consent_id} revoked", receipt, statement, verifier.name, as_json)
    if not as_json:
        click.echo(
            f"later: rxledger wallet proof --consent-id {consent_id} ... shows every use since"
        )


@wallet.command("erase")
@_url_option
@_key_option
@_log_key_option
@_patient_option
@_json_option
def erase(*, url: str, key_file: Path, log_key: str, patient: str | None, as_json: bool) -> None:
    """Ask for your clinical data to be erased (erasure.request).

    The operator then executes it (`rxledger erasure execute`): your data key
    and every payload sealed with it are destroyed; the records stay, and
    every consent of yours is revoked.
    """
    signer = _signer(key_file)
    verifier = _verifier(log_key)
    who = _patient(patient, signer)
    receipt, statement = _submit(url, log_key, signer, "erasure.request", {"patient": who})
    _print_receipt(f"erasure of {who} requested", receipt, statement, verifier.name, as_json)


def _report_proof(
    proof: dict[str, Any], included: list[str], size: int, log: str, as_json: bool
) -> None:
    if as_json:
        out = {
            "verified": True,
            "patient": proof["patient"],
            "consent_id": proof["consent_id"],
            "revoked_seq": proof["revoked_seq"],
            "revoked_at": proof["revoked_at"],
            "tree_size": size,
            "uses_after": [{"use_id": u["use_id"], "seq": u["seq"]} for u in proof["uses"]],
            "included": included,
        }
        click.echo(json.dumps(out, indent=2))
        return
    uses = proof["uses"]
    click.echo(
        f"consent {proof['consent_id']} of {proof['patient']}: revoked at "
        f"{proof['revoked_at']} (seq {proof['revoked_seq']})"
    )
    click.echo(
        f"verified against the checkpoint of size {size} signed by {log}: "
        f"{len(uses)} data use{'' if len(uses) == 1 else 's'} recorded after the revocation, "
        "each with its inclusion proof and a proof of your (non-)membership"
    )
    if not included:
        click.echo("no data use after the revocation included you")
        return
    click.echo(
        f"{len(included)} data use{'' if len(included) == 1 else 's'} after the revocation "
        "included you (another consent of yours may cover it: see `rxledger wallet show`):"
    )
    seqs = {u["use_id"]: u["seq"] for u in uses}
    for use_id in included:
        click.echo(f"  {use_id} (seq {seqs.get(use_id)})")


def _check_proof(proof: Any, verifier: Verifier) -> tuple[list[str], int]:
    """The uses that included the patient, and the checkpoint's size; raise if it fails."""
    if not isinstance(proof, dict):
        raise _failure("the proof is not a JSON object", unverified=True)
    try:
        included = check_after_revocation(proof, log_key=verifier, origin=verifier.name)
        size = note_size(str(proof["checkpoint"]))
        for key in ("patient", "consent_id", "revoked_at"):
            str(proof[key])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise VerificationError(f"proof is malformed: {type(e).__name__}: {e}") from None
    except VerificationError:
        raise
    except LedgerError as e:  # a record that does not even parse: it does not verify either
        raise VerificationError(f"proof does not verify: {e}") from None
    return included, size


@wallet.command("proof")
@_url_option
@_key_option
@_log_key_option
@click.option("--consent-id", required=True, help="A consent you revoked.")
@_patient_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also save the proof as JSON, for `rxledger wallet check-proof` (offline).",
)
@_json_option
def proof(
    *,
    url: str,
    key_file: Path,
    log_key: str,
    consent_id: str,
    patient: str | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Prove which data uses recorded after a revocation included you, and check it.

    Exit 0 when the proof verifies (whatever it shows), 1 when it does not.
    """
    signer = _signer(key_file)
    verifier = _verifier(log_key)
    who = _patient(patient, signer)
    cid = _identifier(consent_id, "--consent-id")
    with _client(url, log_key) as client, _talking_to(url):
        found = client.signed("GET", f"/v1/wallet/{who}/consents/{cid}/after-revocation", signer)
    if out is not None:
        out.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    included, size = _check_proof(found, verifier)
    _report_proof(found, included, size, verifier.name, as_json)
    if out is not None and not as_json:
        click.echo(f"proof saved to {out}")


@wallet.command("check-proof")
@click.argument("proof_file", type=click.Path(dir_okay=False, path_type=Path))
@_log_key_option
@_json_option
def check_proof(proof_file: Path, log_key: str, as_json: bool) -> None:
    """Check, offline, a proof saved by `rxledger wallet proof --out` (exit 1 if it fails)."""
    verifier = _verifier(log_key)
    try:
        found = json.loads(proof_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _failure(f"{proof_file} is not a JSON text file") from None
    except json.JSONDecodeError as e:
        raise _failure(f"{proof_file} is not JSON: {e}") from None
    included, size = _check_proof(found, verifier)
    _report_proof(found, included, size, verifier.name, as_json)

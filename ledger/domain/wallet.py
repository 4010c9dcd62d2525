"""The patient's data wallet: consent, data use, proceeds.

``consent.grant`` (the patient, or a guardian registered for them)
    ``{consent_id, patient, grantee, purposes: [{code, disease?, months?}],
    categories: [...], valid_from, valid_until, share_bp}``. ``grantee`` is a
    registered data user's id or a class ``class:accredited-nonprofit``,
    ``class:nonprofit``, ``class:any``. ``purposes`` are GA4GH DUO terms: at
    least one *permission* (GRU ``DUO:0000042`` general research, HMB
    ``DUO:0000006`` health/medical/biomedical, DS ``DUO:0000007``
    disease-specific with ``disease`` (an ICD-10 code, matched as a prefix),
    POA ``DUO:0000011`` population origins) and any *modifiers* (NCU
    ``DUO:0000046`` non-commercial use only, NPU ``DUO:0000045``
    not-for-profit organisations only, TS ``DUO:0000025`` time limit with
    ``months`` from ``valid_from``, PUB ``DUO:0000019`` publication required
    — recorded, not enforced). ``share_bp`` is the patient's weight in the
    split of proceeds, in basis points (0-10000).
``consent.narrow`` (same)
    ``{consent_id, patient, remove_purposes?, remove_categories?, valid_until?}``:
    only ever narrower (an earlier end, fewer purposes or categories; at least
    one permission stays).
``consent.revoke`` (same)
    ``{consent_id, patient}``: from ``issued_at`` on, the consent permits nothing.
``data.use`` (a data user)
    body ``{use_id, purpose: {code, disease?}, categories, requested_count,
    permitted_count, denied_count, permitted_root, payload_digest}``; payload
    ``{salt, patients: [pseudonyms]}`` (the requested cohort, off the record).
    The rules decide per patient whether a consent in force at ``issued_at``
    covers this grantee, purpose and every category; the body must state the
    result exactly (counts and the cohort root, :mod:`ledger.core.cohort`), or
    the use is refused (``cohort-mismatch``). A data user learns the result
    first from the preview endpoint, signs it, and the record then holds the
    permitted set's commitment and the count denied.
``data.proceeds`` (the data user of the use)
    ``{use_id, payment_id, amount}``: split among the permitted patients in
    proportion to their consents' ``share_bp`` (see :func:`split`).
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from ledger.core.cohort import cohort_root
from ledger.core.errors import RejectionError
from ledger.core.statement import Statement
from ledger.domain import fields as f
from ledger.domain import privacy
from ledger.domain.registry import get_actor
from ledger.domain.state import Document, Effect, Put, State

GRU, HMB, DS, POA = "DUO:0000042", "DUO:0000006", "DUO:0000007", "DUO:0000011"
NPU, NCU, TS, PUB = "DUO:0000045", "DUO:0000046", "DUO:0000025", "DUO:0000019"
PERMISSIONS = (GRU, HMB, DS, POA)
MODIFIERS = (NPU, NCU, TS, PUB)
CATEGORIES = ("prescriptions", "dispenses", "diagnoses", "claims", "demographics")
GRANTEE_CLASSES = ("class:accredited-nonprofit", "class:nonprofit", "class:any")
MAX_COHORT = 100_000

CONSENTS = "consents"  # per patient: every consent the patient gave
#: the only statements that change a CONSENTS document: the one of the patient in
#: their body (:func:`consents_key`); ``ledger.store.consents`` relies on it
CONSENT_TYPES = ("consent.grant", "consent.narrow", "consent.revoke", "erasure.execute")
USE = "data-use"
MEMBER = "use-member"  # one per permitted patient of a use: the patient's use log
MEMBERS = "use-members"  # per use: the permitted patients and their weights
WALLET = "wallet"  # per patient: balance
PAYMENT = "payment"  # per patient and payment


def _permission_covers(granted: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """DUO permission hierarchy: GRU > HMB > DS(disease); POA only under GRU."""
    code, use = str(granted["code"]), str(wanted["code"])
    if code == GRU:
        return True
    if code == HMB:
        return use in (HMB, DS)
    if code == DS:
        return use == DS and str(wanted.get("disease", "")).startswith(str(granted["disease"]))
    if code == POA:
        return use == POA
    return False


def consents_key(statement: dict[str, Any]) -> str:
    """The CONSENTS document that a recorded statement of :data:`CONSENT_TYPES` changed,
    from its fields as recorded."""
    return str(statement["body"]["patient"])


@functools.lru_cache(maxsize=65536)  # pure: the same TS end for every use of a consent
def _months_after(start: str, months: int) -> str:
    moment = datetime.fromisoformat(start)
    year, month = divmod(moment.month - 1 + months, 12)
    day = min(moment.day, calendar.monthrange(moment.year + year, month + 1)[1])
    return moment.replace(year=moment.year + year, month=month + 1, day=day).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


def in_force(consent: Document, at: str) -> bool:
    """Is the consent in force at ``at``: not revoked, within its period and any time limit?"""
    if consent["revoked_at"] is not None:
        # A recorded revocation ends the consent for every use sequenced after
        # it, whatever time that use states (no back-dating around it).
        return False
    if not consent["valid_from"] <= at < consent["valid_until"]:
        return False
    return all(
        at < _months_after(consent["valid_from"], p["months"])
        for p in consent["purposes"]
        if p["code"] == TS
    )


def covers(
    consent: Document,
    *,
    at: str,
    data_user: Document,
    purpose: dict[str, Any],
    categories: list[str],
) -> bool:
    """Does ``consent`` permit this use by ``data_user`` at ``at``?"""
    if not in_force(consent, at):
        return False
    grantee = consent["grantee"]
    user_class = data_user.get("data_user_class") or "commercial"
    if grantee == "class:accredited-nonprofit":
        if user_class != "accredited-nonprofit":
            return False
    elif grantee == "class:nonprofit":
        if user_class == "commercial":
            return False
    elif grantee != "class:any" and grantee != data_user["actor_id"]:
        return False
    purposes = consent["purposes"]
    if not any(_permission_covers(p, purpose) for p in purposes if p["code"] in PERMISSIONS):
        return False
    for modifier in purposes:
        code = modifier["code"]
        if code in (NCU, NPU) and user_class == "commercial":
            return False
    return set(categories) <= set(consent["categories"])


#: what deciding a use needs of one consent, worked out once from its document:
#: ``(share_bp, grantee, valid_from, ends, categories, permissions, non_commercial)``,
#: ``ends`` the earlier of ``valid_until`` and any TS time limit, ``permissions``
#: ``(code, disease)`` pairs, ``non_commercial`` whether an NCU or NPU modifier
#: is among its purposes. Plain tuples of strings, numbers and tuples: immutable,
#: small, and left alone by Python's cycle collector however many are kept.
ConsentTerm = tuple[int, str, str, str, tuple[str, ...], tuple[tuple[str, str], ...], bool]
#: a patient's consents that are not revoked, as :data:`ConsentTerm`
Terms = tuple[ConsentTerm, ...]


def consent_terms(doc: Document | None) -> Terms:
    """The :data:`Terms` of a patient's CONSENTS document (``None``: no consents).

    A revoked consent permits nothing (:func:`in_force`), so it has no terms.
    """
    terms = []
    for consent in (doc or {}).get("consents", []):
        if consent["revoked_at"] is not None:
            continue
        valid_from, ends = consent["valid_from"], consent["valid_until"]
        permissions = []
        non_commercial = False
        for term in consent["purposes"]:
            code = term["code"]
            if code in PERMISSIONS:
                disease = sys.intern(str(term["disease"])) if code == DS else ""
                permissions.append((sys.intern(code), disease))
            elif code in (NCU, NPU):
                non_commercial = True
            elif code == TS:
                with contextlib.suppress(ValueError):  # past the year 9999: never reached
                    ends = min(ends, _months_after(valid_from, term["months"]))
        terms.append(
            (
                consent["share_bp"],
                sys.intern(consent["grantee"]),  # the same few strings over and over: one copy
                valid_from,
                ends,
                tuple(map(sys.intern, consent["categories"])),
                tuple(permissions),
                non_commercial,
            )
        )
    return tuple(terms)


@runtime_checkable
class ConsentTermsReader(Protocol):
    """A state that can give the patients' :data:`Terms` without their documents
    (the store's, which keeps them between decisions: ``ledger.store.consents``).
    It must answer exactly ``consent_terms`` of the documents ``peek_many`` gives."""

    def consent_terms(self, patients: list[str]) -> dict[str, Terms]: ...


def read_terms(state: State, patients: list[str]) -> dict[str, Terms]:
    """The patients' :data:`Terms` from ``state``."""
    if isinstance(state, ConsentTermsReader):
        return state.consent_terms(patients)
    docs = state.peek_many(CONSENTS, patients)  # read only
    return {patient: consent_terms(doc) for patient, doc in docs.items()}


def use_matcher(
    *, at: str, data_user: Document, purpose: dict[str, Any], categories: list[str]
) -> Callable[[ConsentTerm], bool]:
    """:func:`covers` for one use, on a consent's :data:`ConsentTerm`.

    A cohort of 10,000 patients means about as many consents to check, so what
    depends only on the use is worked out here: the grantees this data user
    passes, the permissions that cover this purpose, whether modifiers for
    non-commercial use exclude it. (A property test checks that it answers as
    :func:`covers` for every consent; another checks recorded uses against a
    model of the rules written apart.)
    """
    user_class = data_user.get("data_user_class") or "commercial"
    commercial = user_class == "commercial"
    grantees = {"class:any"}
    if not commercial:
        grantees.add("class:nonprofit")
    if user_class == "accredited-nonprofit":
        grantees.add("class:accredited-nonprofit")
    if data_user["actor_id"] not in GRANTEE_CLASSES:  # a class is decided by the class rule
        grantees.add(data_user["actor_id"])
    use = str(purpose["code"])
    disease = str(purpose.get("disease", "")) if use == DS else None
    plain = {GRU}  # the permissions that cover this purpose without a disease to match
    if use in (HMB, DS):
        plain.add(HMB)
    if use == POA:
        plain.add(POA)
    wanted = tuple(set(categories))

    def matches(term: ConsentTerm) -> bool:
        _, grantee, valid_from, ends, granted, permissions, non_commercial = term
        if grantee not in grantees or not valid_from <= at < ends:
            return False
        if non_commercial and commercial:
            return False
        for category in wanted:
            if category not in granted:
                return False
        for code, prefix in permissions:
            if code in plain or (disease is not None and code == DS and disease.startswith(prefix)):
                return True
        return False

    return matches


def _owner(state: State, statement: Statement, patient: str) -> None:
    """The signer must be the patient, or a guardian registered for them; and the
    patient must not have been erased."""
    privacy.refuse_if_erased(state, patient)
    if privacy.acts_for(state, statement.actor, patient):
        return
    raise RejectionError(
        "not-your-consent",
        f"{statement.actor!r} may not act for patient {patient!r}: only the patient or a "
        "guardian registered for them",
    )


def parse_purpose(raw: object, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise f.malformed(where, "expected an object {code, disease?, months?}")
    f.only(raw, {"code", "disease", "months"}, where)
    code = f.str_field(raw, "code", where, max_len=16)
    out: dict[str, Any] = {"code": code}
    if code not in PERMISSIONS + MODIFIERS:
        raise f.malformed(
            f"{where}.code", f"expected a DUO term: {', '.join(PERMISSIONS + MODIFIERS)}"
        )
    if code == DS:
        out["disease"] = f.code_field(raw, "disease", where)
    elif "disease" in raw:
        raise f.malformed(f"{where}.disease", "only DS (DUO:0000007) takes a disease")
    if code == TS:
        out["months"] = f.int_field(raw, "months", where, minimum=1, maximum=1200)
    elif "months" in raw:
        raise f.malformed(f"{where}.months", "only TS (DUO:0000025) takes months")
    return out


def parse_use_purpose(raw: object, where: str) -> dict[str, Any]:
    """A use's purpose: exactly one DUO permission term (GRU, HMB, DS with disease, POA)."""
    purpose = parse_purpose(raw, where)
    if purpose["code"] not in PERMISSIONS:
        raise f.malformed(where, "a use states one DUO permission (GRU, HMB, DS, POA)")
    return purpose


def parse_categories(obj: dict[str, Any], name: str, where: str, *, min_len: int = 1) -> list[str]:
    values = f.list_field(obj, name, where, min_len=min_len, max_len=len(CATEGORIES))
    if any(c not in CATEGORIES for c in values) or len(set(values)) != len(values):
        raise f.malformed(
            f"{where}.{name}", f"expected distinct categories of {', '.join(CATEGORIES)}"
        )
    return sorted(values)


def _consents_put(doc: Document, seq: int) -> Put:
    return Put(CONSENTS, doc["patient"], doc, patient=doc["patient"], seq=seq)


def decide_grant(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    f.only(
        body,
        {
            "consent_id",
            "patient",
            "grantee",
            "purposes",
            "categories",
            "valid_from",
            "valid_until",
            "share_bp",
        },
        "body",
    )
    consent_id = f.id_field(body, "consent_id", "body")
    patient = f.id_field(body, "patient", "body")
    _owner(state, statement, patient)
    grantee = f.str_field(body, "grantee", "body", max_len=128)
    if grantee not in GRANTEE_CLASSES:
        found = get_actor(state, grantee)
        if found is None or found["role"] != "data_user":
            raise RejectionError(
                "unknown-grantee",
                f"grantee {grantee!r} is neither a registered data user nor one of "
                f"{', '.join(GRANTEE_CLASSES)}",
            )
    purposes = [
        parse_purpose(p, f"body.purposes[{i}]")
        for i, p in enumerate(f.list_field(body, "purposes", "body", min_len=1, max_len=10))
    ]
    if not any(p["code"] in PERMISSIONS for p in purposes):
        raise f.malformed("body.purposes", "at least one permission (GRU, HMB, DS, POA)")
    categories = parse_categories(dict(body), "categories", "body")
    valid_from = f.time_field(body, "valid_from", "body")
    valid_until = f.time_field(body, "valid_until", "body")
    if valid_until <= valid_from:
        raise f.malformed("body.valid_until", "must be after valid_from")
    share = f.int_field(body, "share_bp", "body", maximum=10_000)
    doc = state.get(CONSENTS, patient) or {"patient": patient, "consents": []}
    if any(c["consent_id"] == consent_id for c in doc["consents"]):
        raise RejectionError("consent-exists", f"consent {consent_id!r} already exists")
    doc["consents"] = [
        *doc["consents"],
        {
            "consent_id": consent_id,
            "grantee": grantee,
            "purposes": purposes,
            "categories": categories,
            "valid_from": valid_from,
            "valid_until": valid_until,
            "share_bp": share,
            "granted_seq": seq,
            "granted_by": statement.actor,
            "revoked_at": None,
            "revoked_seq": None,
            "history": [seq],
        },
    ]
    return [_consents_put(doc, seq)]


def _find(state: State, statement: Statement, body: Any) -> tuple[Document, dict[str, Any]]:
    consent_id = f.id_field(body, "consent_id", "body")
    patient = f.id_field(body, "patient", "body")
    _owner(state, statement, patient)
    doc = state.get(CONSENTS, patient)
    for consent in (doc or {}).get("consents", []):
        if consent["consent_id"] == consent_id:
            if consent["revoked_at"] is not None:
                raise RejectionError("consent-revoked", f"consent {consent_id!r} was revoked")
            assert doc is not None
            return doc, consent
    raise RejectionError("unknown-consent", f"patient {patient!r} has no consent {consent_id!r}")


def decide_narrow(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = dict(statement.body)
    f.only(
        body,
        {"consent_id", "patient", "remove_purposes", "remove_categories", "valid_until"},
        "body",
    )
    doc, consent = _find(state, statement, body)
    if consent["valid_until"] <= statement.issued_at:
        raise RejectionError(
            "consent-ended", f"consent {consent['consent_id']!r} ended at {consent['valid_until']}"
        )
    remove = body.get("remove_purposes", [])
    if not isinstance(remove, list) or not all(isinstance(c, str) for c in remove):
        raise f.malformed("body.remove_purposes", "expected a list of DUO codes")
    if any(code in MODIFIERS for code in remove):
        raise RejectionError(
            "consent-broadened",
            "a modifier (non-commercial, not-for-profit, time limit, publication) restricts "
            "a consent: removing it would broaden it",
        )
    purposes = [p for p in consent["purposes"] if p["code"] not in remove]
    if not any(p["code"] in PERMISSIONS for p in purposes):
        raise f.malformed("body.remove_purposes", "a consent keeps at least one permission")
    drop = (
        parse_categories(body, "remove_categories", "body", min_len=0)
        if "remove_categories" in body
        else []
    )
    categories = [c for c in consent["categories"] if c not in drop]
    if not categories:
        raise f.malformed("body.remove_categories", "a consent keeps at least one category")
    valid_until = consent["valid_until"]
    if "valid_until" in body:
        valid_until = f.time_field(body, "valid_until", "body")
        if valid_until > consent["valid_until"]:
            raise RejectionError("consent-broadened", "narrowing cannot extend a consent")
        # not retroactive, and never reviving a consent that has ended
        valid_until = min(consent["valid_until"], max(valid_until, statement.issued_at))
    if (purposes, categories, valid_until) == (
        consent["purposes"],
        consent["categories"],
        consent["valid_until"],
    ):
        raise f.malformed("body", "this narrowing changes nothing")
    consent.update(
        purposes=purposes,
        categories=categories,
        valid_until=valid_until,
        history=[*consent["history"], seq],
    )
    doc["consents"] = [
        consent if c["consent_id"] == consent["consent_id"] else c for c in doc["consents"]
    ]
    return [_consents_put(doc, seq)]


def decide_revoke(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = dict(statement.body)
    f.only(body, {"consent_id", "patient"}, "body")
    doc, consent = _find(state, statement, body)
    consent.update(
        revoked_at=statement.issued_at, revoked_seq=seq, history=[*consent["history"], seq]
    )
    doc["consents"] = [
        consent if c["consent_id"] == consent["consent_id"] else c for c in doc["consents"]
    ]
    return [_consents_put(doc, seq)]


def revoke_all(state: State, patient: str, *, at: str, seq: int) -> list[Effect]:
    """Every consent of ``patient`` still standing revoked at ``at`` (an erasure)."""
    doc = state.get(CONSENTS, patient)
    if doc is None:
        return []
    changed = False
    for consent in doc["consents"]:
        if consent["revoked_at"] is None:
            consent.update(revoked_at=at, revoked_seq=seq, history=[*consent["history"], seq])
            changed = True
    return [_consents_put(doc, seq)] if changed else []


def evaluate_use(
    state: State,
    *,
    use_id: str,
    data_user: Document,
    at: str,
    purpose: dict[str, Any],
    categories: list[str],
    patients: list[str],
) -> tuple[dict[str, int], list[str]]:
    """Which patients' data may be released: ``({patient: share_bp}, denied)``.

    A patient is permitted when some consent of theirs covers the use
    (:func:`covers`, as :func:`use_matcher` on their :data:`Terms`); their
    weight in a split of proceeds is the largest ``share_bp`` among those.
    """
    del use_id
    matches = use_matcher(at=at, data_user=data_user, purpose=purpose, categories=categories)
    terms = read_terms(state, patients)
    permitted: dict[str, int] = {}
    denied: list[str] = []
    for patient in patients:
        best = -1
        for term in terms[patient]:
            # a consent sharing no more than one already found cannot change the weight
            if term[0] > best and matches(term):
                best = term[0]
        if best >= 0:
            permitted[patient] = best
        else:
            denied.append(patient)
    return permitted, denied


def parse_use(
    statement: Statement, payload: Any
) -> tuple[str, dict[str, Any], list[str], list[str]]:
    """``(use_id, purpose, categories, patients)`` from a data.use statement and its payload."""
    body = statement.body
    f.only(
        body,
        {
            "use_id",
            "purpose",
            "categories",
            "requested_count",
            "permitted_count",
            "denied_count",
            "permitted_root",
            "payload_digest",
        },
        "body",
    )
    use_id = f.id_field(body, "use_id", "body")
    purpose = parse_use_purpose(body.get("purpose"), "body.purpose")
    categories = parse_categories(dict(body), "categories", "body")
    if not isinstance(payload, dict):
        raise RejectionError("payload-required", "data.use needs its cohort payload")
    f.only(payload, {"salt", "patients"}, "payload")
    patients = f.list_field(payload, "patients", "payload", min_len=1, max_len=MAX_COHORT)
    for i, patient in enumerate(patients):
        f.id_field({"p": patient}, "p", f"payload.patients[{i}]")
    if len(set(patients)) != len(patients):
        raise f.malformed("payload.patients", "a patient is listed twice")
    return use_id, purpose, categories, patients


def decide_use(
    state: State, statement: Statement, data_user: Document, payload: Any, *, seq: int
) -> list[Effect]:
    use_id, purpose, categories, patients = parse_use(statement, payload)
    if state.get(USE, use_id) is not None:
        raise RejectionError("use-exists", f"data use {use_id!r} already exists")
    permitted, denied = evaluate_use(
        state,
        use_id=use_id,
        data_user=data_user,
        at=statement.issued_at,
        purpose=purpose,
        categories=categories,
        patients=patients,
    )
    expected = {
        "requested_count": len(patients),
        "permitted_count": len(permitted),
        "denied_count": len(denied),
        "permitted_root": cohort_root(use_id, permitted).hex(),
    }
    stated = {k: statement.body.get(k) for k in expected}
    if stated != expected:
        raise RejectionError(
            "cohort-mismatch",
            f"the consents in force permit {len(permitted)} of {len(patients)} patients "
            f"(root {expected['permitted_root']}); the statement says "
            f"{stated['permitted_count']} (root {stated['permitted_root']}): preview again",
        )
    use: Document = {
        "use_id": use_id,
        "data_user": statement.actor,
        "purpose": purpose,
        "categories": categories,
        "at": statement.issued_at,
        "seq": seq,
        **expected,
        "paid": 0,
        "payments": [],
    }
    effects: list[Effect] = [
        Put(USE, use_id, use, party=statement.actor, seq=seq),
        Put(MEMBERS, use_id, {"use_id": use_id, "weights": permitted}, seq=seq, fresh=True),
    ]
    effects.extend(
        Put(
            MEMBER,
            f"{use_id}|{p}",
            {"use_id": use_id, "share_bp": share, "seq": seq},
            patient=p,
            party=statement.actor,
            seq=seq,
            fresh=True,
        )
        for p, share in sorted(permitted.items())
    )
    return effects


def split(amount: int, weights: dict[str, int]) -> dict[str, int]:
    """Split ``amount`` in proportion to ``weights``, losing no unit.

    Largest remainder: each gets ``floor(amount * w / W)``; the units left
    over go one each to the largest remainders (ties: the smaller
    pseudonym). All zero weights split equally.
    """
    if not weights:
        return {}
    if not any(weights.values()):
        weights = dict.fromkeys(weights, 1)
    total = sum(weights.values())
    shares = {p: amount * w // total for p, w in weights.items()}
    left = amount - sum(shares.values())
    order = sorted(weights, key=lambda p: (-(amount * weights[p] % total), p))
    for p in order[:left]:
        shares[p] += 1
    return shares


def decide_proceeds(state: State, statement: Statement, *, seq: int) -> list[Effect]:
    body = statement.body
    f.only(body, {"use_id", "payment_id", "amount"}, "body")
    use_id = f.id_field(body, "use_id", "body")
    payment_id = f.id_field(body, "payment_id", "body")
    amount = f.int_field(body, "amount", "body", minimum=1, maximum=10**15)
    use = state.get(USE, use_id)
    if use is None:
        raise RejectionError("unknown-use", f"data use {use_id!r} does not exist")
    if use["data_user"] != statement.actor:
        raise RejectionError("not-your-use", f"data use {use_id!r} is {use['data_user']!r}'s")
    if payment_id in use["payments"]:
        raise RejectionError("payment-exists", f"payment {payment_id!r} was recorded already")
    if use["permitted_count"] == 0:
        raise RejectionError("no-one-to-pay", f"data use {use_id!r} permitted no patient")
    members = _members(state, use)
    shares = split(amount, members)
    use["paid"] += amount
    use["payments"] = [*use["payments"], payment_id]
    effects: list[Effect] = [Put(USE, use_id, use, party=use["data_user"], seq=seq)]
    wallets = state.get_many(WALLET, sorted(shares))
    for patient, share in sorted(shares.items()):
        wallet = wallets.get(patient) or {"patient": patient, "balance": 0, "payments": 0}
        wallet["balance"] += share
        wallet["payments"] += 1
        effects.append(Put(WALLET, patient, wallet, patient=patient, seq=seq))
        effects.append(
            Put(
                PAYMENT,
                f"{use_id}|{payment_id}|{patient}",
                {
                    "use_id": use_id,
                    "payment_id": payment_id,
                    "amount": share,
                    "of_total": amount,
                    "seq": seq,
                },
                patient=patient,
                party=use["data_user"],
                seq=seq,
                fresh=True,
            )
        )
    return effects


def _members(state: State, use: Document) -> dict[str, int]:
    """The permitted patients of a use and their weights (from the use log rows)."""
    members = state.get(MEMBERS, use["use_id"])
    if members is not None:
        return dict(members["weights"])
    raise RejectionError("unknown-use", f"data use {use['use_id']!r} has no member list")

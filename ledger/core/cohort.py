"""Commitments to a data use's cohort, with membership and non-membership proofs.

A ``data.use`` record commits to the patients whose data may be released as
an RFC 9162 Merkle root over the *sorted* member values

    value(P) = SHA-256("rxledger-cohort\\n" || use_id || "\\n" || P)

(sorted by value, leaf hash = SHA-256(0x00 || value)). A patient can then be
shown, for any use, either that they are in it (an inclusion proof) or that
they are not: the two adjacent members whose values bracket theirs, each with
an inclusion proof — checkable offline against the record's root and count.

Values are per use, so that one use's commitment does not link to another's.
Whoever holds a proof sees at most two neighbours' values, not their
pseudonyms; testing a guessed pseudonym against a value needs the pseudonym,
which only the operator can link to a person (see the privacy notes).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

from ledger.core import merkle
from ledger.core.errors import ProofError


def member_value(use_id: str, patient: str) -> bytes:
    return hashlib.sha256(f"rxledger-cohort\n{use_id}\n{patient}".encode()).digest()


def sorted_values(use_id: str, members: Iterable[str]) -> list[bytes]:
    return sorted({member_value(use_id, p) for p in members})


def cohort_root(use_id: str, members: Iterable[str]) -> bytes:
    """The Merkle root committing to ``members`` of use ``use_id``."""
    return merkle.root([merkle.hash_leaf(v) for v in sorted_values(use_id, members)])


def _leaf(values: list[bytes], index: int) -> dict[str, Any]:
    leaves = [merkle.hash_leaf(v) for v in values]
    proof = merkle.inclusion_proof_from_leaves(leaves, index)
    return {"index": index, "value": values[index].hex(), "proof": [h.hex() for h in proof]}


def membership_proof(use_id: str, members: Iterable[str], patient: str) -> dict[str, Any]:
    """A proof that ``patient`` is, or is not, among ``members`` of the use."""
    values = sorted_values(use_id, members)
    target = member_value(use_id, patient)
    at = bisect_left(values, target)
    if at < len(values) and values[at] == target:
        return {"member": True, "leaf": _leaf(values, at)}
    return {
        "member": False,
        "left": _leaf(values, at - 1) if at > 0 else None,
        "right": _leaf(values, at) if at < len(values) else None,
    }


def _check_leaf(leaf: Mapping[str, Any], count: int, root: bytes) -> tuple[int, bytes]:
    try:
        index = int(leaf["index"])
        value = bytes.fromhex(leaf["value"])
        proof = [bytes.fromhex(h) for h in leaf["proof"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ProofError(f"cohort proof is malformed: {e}") from e
    merkle.verify_inclusion(merkle.hash_leaf(value), index, count, proof, root)
    return index, value


def verify_membership(
    use_id: str, patient: str, *, count: int, root: bytes, proof: Mapping[str, Any]
) -> bool:
    """Check ``proof``; return whether ``patient`` is a member. Raises on a bad proof."""
    target = member_value(use_id, patient)
    if proof.get("member") is True:
        leaf = proof.get("leaf")
        if not isinstance(leaf, Mapping):
            raise ProofError("membership proof has no leaf")
        _, value = _check_leaf(leaf, count, root)
        if value != target:
            raise ProofError("membership proof is for another member")
        return True
    left, right = proof.get("left"), proof.get("right")
    if count == 0:
        if root != merkle.EMPTY_ROOT or left or right:
            raise ProofError("an empty cohort has the empty root and no neighbours")
        return False
    if left is None and right is None:
        raise ProofError("non-membership needs at least one neighbour")
    li = ri = None
    if left is not None:
        li, lv = _check_leaf(left, count, root)
        if not lv < target:
            raise ProofError("left neighbour does not sort before the patient")
        if right is None and li != count - 1:
            raise ProofError("left neighbour is not the last member")
    if right is not None:
        ri, rv = _check_leaf(right, count, root)
        if not target < rv:
            raise ProofError("right neighbour does not sort after the patient")
        if left is None and ri != 0:
            raise ProofError("right neighbour is not the first member")
    if li is not None and ri is not None and ri != li + 1:
        raise ProofError("neighbours are not adjacent")
    return False

"""Cohort commitments: membership and non-membership proofs (``ledger.core.cohort``).

Property tests: for any cohort and any patient, the proof the operator builds
verifies and says exactly whether the patient is a member; every tampering
with the proof, the root or the count is caught as a :class:`ProofError`.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core import merkle
from ledger.core.cohort import (
    cohort_root,
    member_value,
    membership_proof,
    sorted_values,
    verify_membership,
)
from ledger.core.errors import ProofError

USE = "use-1"

pseudonyms = st.integers(0, 2**32).map(lambda i: f"P-{i:x}")
cohorts = st.lists(pseudonyms, max_size=24, unique=True)


def verify(patient: str, members: list[str], proof: dict[str, Any], **kw: Any) -> bool:
    """``verify_membership`` against the honest commitment unless ``count``/``root`` given."""
    count = kw.get("count", len(members))
    root = kw.get("root", cohort_root(USE, members))
    return verify_membership(USE, patient, count=count, root=root, proof=proof)


def flip_hex(text: str, bit: int) -> str:
    data = bytearray(bytes.fromhex(text))
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return data.hex()


def leaves(proof: dict[str, Any]) -> list[dict[str, Any]]:
    """The leaf proofs a membership proof carries (one, or one or two neighbours)."""
    if proof["member"]:
        return [proof["leaf"]]
    return [leaf for leaf in (proof["left"], proof["right"]) if leaf is not None]


def leaf_at(members: list[str], index: int) -> dict[str, Any]:
    """A correct inclusion proof for the member at ``index`` of the sorted values."""
    values = sorted_values(USE, members)
    proof = membership_proof(USE, members, _patient_with(values[index], members))
    return proof["leaf"]


def _patient_with(value: bytes, members: list[str]) -> str:
    return next(p for p in members if member_value(USE, p) == value)


# --- honest proofs --------------------------------------------------------------------


@settings(max_examples=200)
@given(members=cohorts, outsider=pseudonyms)
def test_the_proof_says_exactly_whether_the_patient_is_a_member(
    members: list[str], outsider: str
) -> None:
    for patient in [*members[:3], outsider]:
        proof = membership_proof(USE, members, patient)
        assert proof["member"] is (patient in members)
        assert verify(patient, members, proof) is (patient in members)


def test_an_empty_cohort_has_the_empty_root_and_no_member() -> None:
    assert cohort_root(USE, []) == merkle.EMPTY_ROOT
    proof = membership_proof(USE, [], "P-1")
    assert proof == {"member": False, "left": None, "right": None}
    assert verify("P-1", [], proof) is False


def test_an_empty_cohort_refuses_a_neighbour_or_another_root() -> None:
    proof = membership_proof(USE, [], "P-1")
    with pytest.raises(ProofError):
        verify("P-1", [], proof, root=cohort_root(USE, ["P-2"]))
    with pytest.raises(ProofError):
        verify("P-1", [], {**proof, "left": leaf_at(["P-2"], 0)})
    with pytest.raises(ProofError):  # a member proof for a cohort said to be empty
        verify("P-2", [], membership_proof(USE, ["P-2"], "P-2"))


def test_a_single_member_cohort_proves_its_member_and_both_sides_of_it() -> None:
    members = ["P-only"]
    assert verify("P-only", members, membership_proof(USE, members, "P-only")) is True
    sides = set()
    for i in range(64):  # outsiders sort on both sides of the one value
        outsider = f"P-out-{i}"
        proof = membership_proof(USE, members, outsider)
        assert verify(outsider, members, proof) is False
        sides.add("left" if proof["left"] is not None else "right")
        assert (proof["left"] is None) != (proof["right"] is None)
    assert sides == {"left", "right"}


def test_values_are_per_use() -> None:
    assert member_value("use-1", "P-1") != member_value("use-2", "P-1")
    assert cohort_root("use-1", ["P-1"]) != cohort_root("use-2", ["P-1"])


# --- tampering --------------------------------------------------------------------------


@settings(max_examples=120)
@given(members=cohorts.filter(bool), outsider=pseudonyms, bit=st.integers(0, 255))
def test_a_flipped_bit_in_a_value_or_a_proof_hash_is_caught(
    members: list[str], outsider: str, bit: int
) -> None:
    for patient in (members[0], outsider):
        proof = membership_proof(USE, members, patient)
        for i, leaf in enumerate(leaves(proof)):
            bad_value = copy.deepcopy(proof)
            leaves(bad_value)[i]["value"] = flip_hex(leaf["value"], bit)
            with pytest.raises(ProofError):
                verify(patient, members, bad_value)
            for j, node in enumerate(leaf["proof"]):
                bad_node = copy.deepcopy(proof)
                leaves(bad_node)[i]["proof"][j] = flip_hex(node, bit)
                with pytest.raises(ProofError):
                    verify(patient, members, bad_node)


@settings(max_examples=120)
@given(members=cohorts.filter(bool), outsider=pseudonyms, bit=st.integers(0, 255))
def test_a_wrong_root_is_caught(members: list[str], outsider: str, bit: int) -> None:
    root = cohort_root(USE, members)
    wrong = bytes.fromhex(flip_hex(root.hex(), bit))
    for patient in (members[0], outsider):
        with pytest.raises(ProofError):
            verify(patient, members, membership_proof(USE, members, patient), root=wrong)
    other = [*members, outsider] if outsider not in members else members[1:]
    patient = members[0] if members[0] in other else outsider
    proof = membership_proof(USE, members, patient)
    with pytest.raises(ProofError):  # the root of another cohort
        verify(patient, members, proof, root=cohort_root(USE, other))


@settings(max_examples=120)
@given(members=cohorts.filter(bool), outsider=pseudonyms, delta=st.integers(1, 40))
def test_a_wrong_count_is_caught_or_proves_nothing_false(
    members: list[str], outsider: str, delta: int
) -> None:
    """RFC 9162 inclusion proofs do not bind the tree size where two sizes share the
    proof's shape (leaf 0 of 5, 6, 7 or 8 leaves), so a wrong count cannot always be
    noticed; what must hold is that it never yields a false answer."""
    for patient in (members[0], outsider):
        proof = membership_proof(USE, members, patient)
        for count in (len(members) + delta, max(len(members) - delta, 0)):
            if count == len(members):
                continue
            try:
                answer = verify(patient, members, proof, count=count)
            except ProofError:
                continue
            assert answer is (patient in members)


def test_a_wrong_count_is_caught_when_the_proof_leans_on_the_last_member() -> None:
    members = [f"P-{i}" for i in range(5)]
    values = sorted_values(USE, members)
    above = next(p for p in (f"Q-{i}" for i in range(10_000)) if member_value(USE, p) > values[-1])
    proof = membership_proof(USE, members, above)
    assert (proof["left"]["index"], proof["right"]) == (4, None)
    assert verify(above, members, proof) is False
    for count in (4, 6, 7, 8):  # the left neighbour is then not the last member
        with pytest.raises(ProofError):
            verify(above, members, proof, count=count)
    last = _patient_with(values[-1], members)
    with pytest.raises(ProofError):
        verify(last, members, membership_proof(USE, members, last), count=6)


@settings(max_examples=120)
@given(members=st.lists(pseudonyms, min_size=3, max_size=24, unique=True), outsider=pseudonyms)
def test_a_wrong_or_non_adjacent_neighbour_is_caught(members: list[str], outsider: str) -> None:
    if outsider in members:
        return
    proof = membership_proof(USE, members, outsider)
    values = sorted_values(USE, members)
    n = len(values)
    at = sum(v < member_value(USE, outsider) for v in values)  # the outsider's place
    for index in range(n):
        for side in ("left", "right"):
            if proof[side] is not None and proof[side]["index"] == index:
                continue
            bad = {**proof, side: leaf_at(members, index)}
            with pytest.raises(ProofError):
                verify(outsider, members, bad)
    # one neighbour dropped, where it is not an end of the cohort
    if 0 < at < n:
        for side in ("left", "right"):
            with pytest.raises(ProofError):
                verify(outsider, members, {**proof, side: None})
    # non-adjacent neighbours that still bracket the outsider
    if at >= 2:
        with pytest.raises(ProofError):
            verify(outsider, members, {**proof, "left": leaf_at(members, at - 2)})
    if at + 1 < n:
        with pytest.raises(ProofError):
            verify(outsider, members, {**proof, "right": leaf_at(members, at + 1)})
    with pytest.raises(ProofError):  # no neighbour at all
        verify(outsider, members, {"member": False, "left": None, "right": None})


@settings(max_examples=120)
@given(members=st.lists(pseudonyms, min_size=1, max_size=12, unique=True), pick=st.integers(0))
def test_a_member_cannot_be_presented_as_a_non_member(members: list[str], pick: int) -> None:
    patient = members[pick % len(members)]
    values = sorted_values(USE, members)
    at = values.index(member_value(USE, patient))
    n = len(values)
    leaf = [None, *(leaf_at(members, i) for i in range(n))]
    tries = [{"member": False, "left": lp, "right": rp} for lp in leaf for rp in leaf]
    assert any(t["left"] and t["left"]["index"] == at for t in tries)
    for proof in tries:
        with pytest.raises(ProofError):
            verify(patient, members, proof)


@settings(max_examples=200)
@given(members=cohorts.filter(bool), outsider=pseudonyms)
def test_a_membership_proof_for_another_member_is_caught(members: list[str], outsider: str) -> None:
    if outsider in members:
        return
    proof = membership_proof(USE, members, members[0])
    with pytest.raises(ProofError):
        verify(outsider, members, proof)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda p: {**p, "leaf": {**p["leaf"], "value": "zz"}}, id="value not hex"),
        pytest.param(
            lambda p: {**p, "leaf": {**p["leaf"], "index": "one"}}, id="index not a number"
        ),
        pytest.param(lambda p: {**p, "leaf": {**p["leaf"], "index": -1}}, id="negative index"),
        pytest.param(lambda p: {**p, "leaf": {**p["leaf"], "proof": None}}, id="proof not a list"),
        pytest.param(lambda p: {**p, "leaf": {**p["leaf"], "proof": []}}, id="proof truncated"),
        pytest.param(lambda p: {**p, "leaf": None}, id="leaf is null"),
        pytest.param(lambda p: {"member": True}, id="leaf missing"),
    ],
)
def test_a_malformed_membership_proof_is_a_proof_error(mangle: Any) -> None:
    members = ["P-1", "P-2", "P-3"]
    proof = membership_proof(USE, members, "P-2")
    with pytest.raises(ProofError):
        verify("P-2", members, mangle(proof))

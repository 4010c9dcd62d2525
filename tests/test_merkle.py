"""ledger.core.merkle: RFC 6962/9162 vectors, transparency-dev probes, properties, attacks."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import sha256

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.errors import (
    ConsistencyProofError,
    EncodingError,
    InclusionProofError,
    RootMismatchError,
    VerificationError,
)
from ledger.core.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleAccumulator,
    NodeId,
    consistency_proof,
    consistency_proof_from_leaves,
    consistency_proof_nodes,
    frontier,
    hash_children,
    hash_leaf,
    inclusion_proof,
    inclusion_proof_from_leaves,
    inclusion_proof_nodes,
    inclusion_proofs,
    root,
    root_from_inclusion_proof,
    root_from_nodes,
    verify_consistency,
    verify_inclusion,
)
from tests._vectors import PROJECT_ROOT, load_vectors

RFC = load_vectors("merkle_rfc6962.json")
PROBES = load_vectors("merkle_probes_transparency_dev.json")


def unhex(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


LEAF_HASHES = unhex(RFC["leaf_hashes"])
VECTOR_NODES: dict[NodeId, bytes] = {
    (level, index): bytes.fromhex(value)
    for level, row in enumerate(RFC["node_hashes_by_level"])
    for index, value in enumerate(row)
}


def only(nodes: Mapping[NodeId, bytes], wanted: list[NodeId]) -> dict[NodeId, bytes]:
    """The sub-mapping a storage layer would have fetched: proves the *_nodes lists suffice."""
    return {node_id: nodes[node_id] for node_id in wanted}


def flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def mth(d: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, written out here independently of the module."""
    if not d:
        return sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = 1
    while k * 2 < len(d):
        k *= 2
    return sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


# --- RFC 6962 / RFC 9162 vectors --------------------------------------------


def test_vector_file_describes_the_classic_8_leaf_tree() -> None:
    assert RFC["hash_algorithm"] == "SHA-256"
    assert RFC["leaf_prefix_hex"] == "00"
    assert RFC["node_prefix_hex"] == "01"
    assert len(LEAF_HASHES) == 8
    assert [len(row) for row in RFC["node_hashes_by_level"]] == [8, 4, 2, 1]
    assert [r["tree_size"] for r in RFC["roots"]] == list(range(9))


def test_leaf_hashes_are_hash_leaf_of_leaf_inputs() -> None:
    assert [hash_leaf(bytes.fromhex(x)) for x in RFC["leaves"]] == LEAF_HASHES
    assert unhex(RFC["node_hashes_by_level"][0]) == LEAF_HASHES


def test_node_hashes_by_level_are_the_nodes_the_accumulator_completes() -> None:
    acc = MerkleAccumulator()
    completed: dict[NodeId, bytes] = {}
    for leaf_hash in LEAF_HASHES:
        for node_id, value in acc.append(leaf_hash):
            assert node_id not in completed
            completed[node_id] = value
    assert completed == VECTOR_NODES


@pytest.mark.parametrize(
    "node_id", sorted(VECTOR_NODES), ids=lambda n: f"level {n[0]} index {n[1]}"
)
def test_node_hashes_by_level_are_roots_of_leaf_slices(node_id: NodeId) -> None:
    level, index = node_id
    assert root(LEAF_HASHES[index << level : (index + 1) << level]) == VECTOR_NODES[node_id]


@pytest.mark.parametrize("case", RFC["roots"], ids=lambda c: f"size {c['tree_size']}")
def test_roots(case: dict[str, object]) -> None:
    size = case["tree_size"]
    assert isinstance(size, int)
    want = bytes.fromhex(str(case["root"]))
    assert root(LEAF_HASHES[:size]) == want
    assert mth(LEAF_HASHES[:size]) == want
    assert root_from_nodes(size, only(VECTOR_NODES, frontier(size))) == want
    acc = MerkleAccumulator()
    for leaf_hash in LEAF_HASHES[:size]:
        acc.append_fast(leaf_hash)
    assert acc.root() == want


@pytest.mark.parametrize(
    "case",
    RFC["inclusion_proofs"],
    ids=lambda c: f"leaf {c['leaf_index']} of {c['tree_size']}",
)
def test_inclusion_proof_vectors(case: dict[str, object]) -> None:
    leaf_index, tree_size = case["leaf_index"], case["tree_size"]
    assert isinstance(leaf_index, int)
    assert isinstance(tree_size, int)
    leaf_hash = bytes.fromhex(str(case["leaf_hash"]))
    want_root = bytes.fromhex(str(case["root"]))
    path = unhex(case["path"])  # type: ignore[arg-type]

    assert hash_leaf(bytes.fromhex(str(case["leaf_hex"]))) == leaf_hash
    verify_inclusion(leaf_hash, leaf_index, tree_size, path, want_root)
    assert root_from_inclusion_proof(leaf_hash, leaf_index, tree_size, path) == want_root
    assert inclusion_proof_from_leaves(LEAF_HASHES[:tree_size], leaf_index) == path
    needed = inclusion_proof_nodes(leaf_index, tree_size)
    assert inclusion_proof(leaf_index, tree_size, only(VECTOR_NODES, needed)) == path


@pytest.mark.parametrize(
    "case",
    RFC["consistency_proofs"],
    ids=lambda c: f"{c['size1']} to {c['size2']}",
)
def test_consistency_proof_vectors(case: dict[str, object]) -> None:
    size1, size2 = case["size1"], case["size2"]
    assert isinstance(size1, int)
    assert isinstance(size2, int)
    root1 = bytes.fromhex(str(case["root1"]))
    root2 = bytes.fromhex(str(case["root2"]))
    path = unhex(case["path"])  # type: ignore[arg-type]

    assert root(LEAF_HASHES[:size1]) == root1
    assert root(LEAF_HASHES[:size2]) == root2
    verify_consistency(size1, size2, path, root1, root2)
    assert consistency_proof_from_leaves(LEAF_HASHES[:size2], size1) == path
    needed = consistency_proof_nodes(size1, size2)
    assert consistency_proof(size1, size2, only(VECTOR_NODES, needed)) == path


@pytest.mark.parametrize(
    "case", RFC["hasher_kats"]["leaf_hashes"], ids=lambda c: c["leaf_hex"] or "empty"
)
def test_hasher_leaf_kats(case: dict[str, str]) -> None:
    assert hash_leaf(bytes.fromhex(case["leaf_hex"])) == bytes.fromhex(case["leaf_hash"])


@pytest.mark.parametrize("case", RFC["hasher_kats"]["node_hashes"], ids=lambda c: c["left_hex"][:8])
def test_hasher_node_kats(case: dict[str, str]) -> None:
    left, right = bytes.fromhex(case["left_hex"]), bytes.fromhex(case["right_hex"])
    assert hash_children(left, right) == bytes.fromhex(case["node_hash"])


def test_empty_tree_root() -> None:
    want = bytes.fromhex(RFC["hasher_kats"]["empty_tree_root"]["root"])
    assert want == EMPTY_ROOT == root([]) == root_from_nodes(0, {}) == MerkleAccumulator().root()
    assert len(EMPTY_ROOT) == HASH_SIZE


def test_real_ct_inclusion_proof() -> None:
    case = RFC["real_ct_inclusion_proof"]
    leaf_hash = hash_leaf(bytes.fromhex(case["leaf_input_hex"]))
    assert leaf_hash == bytes.fromhex(case["leaf_hash"])
    path = unhex(case["path"])
    want_root = bytes.fromhex(case["root"])
    verify_inclusion(leaf_hash, case["leaf_index"], case["tree_size"], path, want_root)
    # The proof really depends on the index: the neighbouring leaf position fails.
    with pytest.raises(VerificationError):
        verify_inclusion(leaf_hash, case["leaf_index"] + 1, case["tree_size"], path, want_root)
    # and on every element.
    for i in range(len(path)):
        bad = [*path[:i], flip(path[i], 0), *path[i + 1 :]]
        with pytest.raises(RootMismatchError):
            verify_inclusion(leaf_hash, case["leaf_index"], case["tree_size"], bad, want_root)


# --- transparency-dev probes ------------------------------------------------


@pytest.mark.parametrize("probe", PROBES["inclusion"], ids=lambda p: f"{p['file']}: {p['desc']}")
def test_inclusion_probe(probe: dict[str, object]) -> None:
    args = (
        bytes.fromhex(str(probe["leaf_hash"])),
        probe["leaf_index"],
        probe["tree_size"],
        unhex(probe["path"]),  # type: ignore[arg-type]
        bytes.fromhex(str(probe["root"])),
    )
    if probe["want_error"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)  # type: ignore[arg-type]
    else:
        verify_inclusion(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("probe", PROBES["consistency"], ids=lambda p: f"{p['file']}: {p['desc']}")
def test_consistency_probe(probe: dict[str, object]) -> None:
    args = (
        probe["size1"],
        probe["size2"],
        unhex(probe["path"]),  # type: ignore[arg-type]
        bytes.fromhex(str(probe["root1"])),
        bytes.fromhex(str(probe["root2"])),
    )
    if probe["want_error"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)  # type: ignore[arg-type]
    else:
        verify_consistency(*args)  # type: ignore[arg-type]


def test_probe_files_hold_both_valid_and_invalid_cases() -> None:
    for kind in ("inclusion", "consistency"):
        flags = {p["want_error"] for p in PROBES[kind]}
        assert flags == {True, False}, kind


# --- edge semantics and messages --------------------------------------------

ROOT8 = bytes.fromhex(RFC["roots"][8]["root"])


def test_wrong_size_message_names_expected_and_got() -> None:
    proof = inclusion_proof_from_leaves(LEAF_HASHES, 0)
    with pytest.raises(
        InclusionProofError, match=r"^inclusion proof has wrong size: expected 3, got 4$"
    ):
        verify_inclusion(LEAF_HASHES[0], 0, 8, [*proof, proof[0]], ROOT8)


def test_root_mismatch_message_names_both_roots() -> None:
    proof = inclusion_proof_from_leaves(LEAF_HASHES, 0)
    other = bytes(32)
    with pytest.raises(RootMismatchError) as info:
        verify_inclusion(LEAF_HASHES[0], 0, 8, proof, other)
    assert str(info.value) == f"root mismatch: expected {other.hex()}, computed {ROOT8.hex()}"


@pytest.mark.parametrize(
    ("leaf_index", "tree_size"),
    [(8, 8), (9, 8), (-1, 8), (0, 0), (2**64 - 1, 8)],
    ids=[
        "index equals size",
        "index past size",
        "negative index",
        "empty tree",
        "uint64 underflow",
    ],
)
def test_inclusion_index_out_of_range(leaf_index: int, tree_size: int) -> None:
    with pytest.raises(InclusionProofError, match="leaf_index"):
        verify_inclusion(LEAF_HASHES[0], leaf_index, tree_size, [], ROOT8)
    with pytest.raises(InclusionProofError):
        inclusion_proof_nodes(leaf_index, tree_size)
    with pytest.raises(InclusionProofError):
        inclusion_proof(leaf_index, tree_size, VECTOR_NODES)
    with pytest.raises(InclusionProofError):
        inclusion_proof_from_leaves(LEAF_HASHES[:tree_size], leaf_index)


def test_inclusion_rejects_hashes_that_are_not_32_bytes() -> None:
    proof = inclusion_proof_from_leaves(LEAF_HASHES, 3)
    with pytest.raises(
        InclusionProofError, match="leaf hash has wrong size: expected 32 bytes, got 31"
    ):
        verify_inclusion(LEAF_HASHES[3][:31], 3, 8, proof, ROOT8)
    with pytest.raises(InclusionProofError, match="element 1 has wrong size"):
        verify_inclusion(LEAF_HASHES[3], 3, 8, [proof[0], proof[1] + b"\x00", proof[2]], ROOT8)


def test_consistency_from_empty_tree_always_fails() -> None:
    with pytest.raises(ConsistencyProofError, match="size1 is 0"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ConsistencyProofError, match="size1 is 0"):
        verify_consistency(0, 8, [], EMPTY_ROOT, ROOT8)


def test_consistency_equal_sizes_needs_empty_proof_and_equal_roots() -> None:
    verify_consistency(8, 8, [], ROOT8, ROOT8)
    with pytest.raises(ConsistencyProofError, match="expected 0, got 1"):
        verify_consistency(8, 8, [ROOT8], ROOT8, ROOT8)
    with pytest.raises(RootMismatchError):
        verify_consistency(8, 8, [], ROOT8, flip(ROOT8, 0))


def test_consistency_rejects_shrinking_trees_and_bad_sizes() -> None:
    with pytest.raises(ConsistencyProofError, match=r"size2 \(7\) < size1 \(8\)"):
        verify_consistency(8, 7, [], ROOT8, ROOT8)
    with pytest.raises(ConsistencyProofError):
        consistency_proof(8, 7, VECTOR_NODES)
    with pytest.raises(ConsistencyProofError):
        consistency_proof_nodes(-1, 7)
    with pytest.raises(ConsistencyProofError):
        consistency_proof_from_leaves(LEAF_HASHES, 9)


def test_consistency_proof_generation_is_empty_for_empty_or_equal_sizes() -> None:
    for size1, size2 in [(0, 0), (0, 8), (5, 5), (8, 8)]:
        assert consistency_proof(size1, size2, {}) == []
        assert consistency_proof_nodes(size1, size2) == []
        assert consistency_proof_from_leaves(LEAF_HASHES[:size2], size1) == []


def test_consistency_rejects_elements_and_roots_that_are_not_32_bytes() -> None:
    root6 = root(LEAF_HASHES[:6])
    proof = consistency_proof_from_leaves(LEAF_HASHES, 6)
    with pytest.raises(ConsistencyProofError, match="element 2 has wrong size"):
        verify_consistency(6, 8, [*proof[:2], proof[2][:-1]], root6, ROOT8)
    with pytest.raises(ConsistencyProofError, match="root2 has wrong size"):
        verify_consistency(6, 8, proof, root6, ROOT8 + b"\x00")


def test_missing_node_is_a_lookup_error_naming_the_node() -> None:
    nodes = dict(VECTOR_NODES)
    del nodes[(2, 0)]
    for build in (
        lambda: inclusion_proof(5, 8, nodes),
        lambda: consistency_proof(6, 8, nodes),
        lambda: root_from_nodes(4, nodes),
    ):
        with pytest.raises(
            LookupError, match=r"^missing merkle node \(level=2, index=0\)$"
        ) as info:
            build()
        assert not isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    ("tree_size", "want"),
    [
        (0, []),
        (1, [(0, 0)]),
        (6, [(2, 0), (1, 2)]),
        (7, [(2, 0), (1, 2), (0, 6)]),
        (8, [(3, 0)]),
        (13, [(3, 0), (2, 2), (0, 12)]),
    ],
)
def test_frontier(tree_size: int, want: list[NodeId]) -> None:
    assert frontier(tree_size) == want


def test_frontier_rejects_negative_size() -> None:
    with pytest.raises(EncodingError):
        frontier(-1)


def test_accumulator_rejects_malformed_input() -> None:
    acc = MerkleAccumulator()
    with pytest.raises(EncodingError, match="expected 32 bytes, got 31"):
        acc.append(LEAF_HASHES[0][:31])
    with pytest.raises(EncodingError):
        acc.append_fast(b"")
    assert acc.size == 0
    with pytest.raises(EncodingError, match="expected 2, got 1"):
        MerkleAccumulator.from_frontier(6, [VECTOR_NODES[(2, 0)]])
    with pytest.raises(EncodingError):
        MerkleAccumulator.from_frontier(4, [b"short"])


# --- Hypothesis properties --------------------------------------------------


@dataclass(frozen=True)
class Tree:
    leaves: list[bytes]
    nodes: dict[NodeId, bytes] = field(repr=False)
    roots: list[bytes] = field(repr=False)  # roots[k] = root of the first k leaves

    @property
    def size(self) -> int:
        return len(self.leaves)


@lru_cache(maxsize=64)
def build_tree(size: int, salt: bytes) -> Tree:
    leaves = [hash_leaf(salt + i.to_bytes(4, "big")) for i in range(size)]
    acc = MerkleAccumulator()
    nodes: dict[NodeId, bytes] = {}
    roots = [acc.root()]
    for leaf_hash in leaves:
        nodes.update(acc.append(leaf_hash))
        roots.append(acc.root())
    return Tree(leaves, nodes, roots)


@st.composite
def trees(draw: st.DrawFn, min_size: int = 1, max_size: int = 300) -> Tree:
    return build_tree(draw(st.integers(min_size, max_size)), draw(st.binary(max_size=2)))


def max_nodes(tree_size: int) -> int:
    """2 * ceil(log2(tree_size)); the worst cases, at sizes 2**k - 1, need 2k - 2 and 2k - 1."""
    return 2 * (tree_size - 1).bit_length()


@settings(max_examples=40, deadline=None)
@given(tree=trees(), data=st.data())
def test_every_inclusion_proof_verifies_and_equals_the_reference(
    tree: Tree, data: st.DataObject
) -> None:
    n = tree.size
    for i in range(n):
        needed = inclusion_proof_nodes(i, n)
        assert len(needed) <= max_nodes(n)
        proof = inclusion_proof(i, n, only(tree.nodes, needed))
        verify_inclusion(tree.leaves[i], i, n, proof, tree.roots[n])
    for i in data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4), label="sampled"):
        assert inclusion_proof(i, n, tree.nodes) == inclusion_proof_from_leaves(tree.leaves, i)


@settings(max_examples=40, deadline=None)
@given(tree=trees(), data=st.data())
def test_inclusion_proofs_of_many_leaves_are_each_leafs_proof(
    tree: Tree, data: st.DataObject
) -> None:
    """The batched proofs (a batch's receipts) share folds, never change a proof."""
    n = tree.size
    first = data.draw(st.integers(0, n - 1), label="first")
    last = data.draw(st.integers(first + 1, n), label="last")
    leaves = [*range(first, last), *data.draw(st.lists(st.integers(0, n - 1), max_size=5))]
    needed = {node for i in leaves for node in inclusion_proof_nodes(i, n)}
    proofs = inclusion_proofs(leaves, n, only(tree.nodes, sorted(needed)))
    assert [list(p) for p in proofs] == [inclusion_proof(i, n, tree.nodes) for i in leaves]
    with pytest.raises(InclusionProofError):
        inclusion_proofs([0, n], n, tree.nodes)


@settings(max_examples=40, deadline=None)
@given(tree=trees(), data=st.data())
def test_every_consistency_proof_verifies_and_equals_the_reference(
    tree: Tree, data: st.DataObject
) -> None:
    n = tree.size
    pairs = data.draw(
        st.lists(
            st.tuples(st.integers(1, n), st.integers(1, n)).map(sorted), min_size=1, max_size=8
        ),
        label="size pairs",
    )
    for size1, size2 in [*pairs, (1, n), (n, n)]:
        needed = consistency_proof_nodes(size1, size2)
        assert len(needed) <= max_nodes(size2)
        proof = consistency_proof(size1, size2, only(tree.nodes, needed))
        assert proof == consistency_proof_from_leaves(tree.leaves[:size2], size1)
        verify_consistency(size1, size2, proof, tree.roots[size1], tree.roots[size2])


@settings(max_examples=15, deadline=None)
@given(tree=trees(max_size=200))
def test_accumulator_root_equals_root_at_every_size(tree: Tree) -> None:
    for k in range(tree.size + 1):
        assert tree.roots[k] == root(tree.leaves[:k]) == root_from_nodes(k, tree.nodes)
    assert tree.roots[-1] == mth(tree.leaves)


@settings(max_examples=40, deadline=None)
@given(tree=trees(), data=st.data())
def test_accumulator_from_frontier_resumes_exactly(tree: Tree, data: st.DataObject) -> None:
    n = tree.size
    k = data.draw(st.integers(0, n), label="restart at")
    ids = frontier(k)
    resumed = MerkleAccumulator.from_frontier(k, [tree.nodes[node_id] for node_id in ids])
    assert resumed.size == k
    assert resumed.root() == tree.roots[k]
    fast = MerkleAccumulator.from_frontier(k, resumed.frontier_hashes())
    for j in range(k, n):
        completed = resumed.append(tree.leaves[j])
        fast.append_fast(tree.leaves[j])
        # Exactly the nodes this leaf completes: the leaf, then one per trailing 1 bit of j.
        assert [node_id for node_id, _ in completed] == [
            (level, j >> level) for level in range((~j & (j + 1)).bit_length())
        ]
        for node_id, value in completed:
            assert tree.nodes[node_id] == value
        assert resumed.size == fast.size == j + 1
    assert resumed.root() == fast.root() == tree.roots[n]
    assert resumed.frontier_hashes() == [tree.nodes[node_id] for node_id in frontier(n)]


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 2**64),
    data=st.data(),
)
def test_proof_node_sets_are_logarithmic_and_inside_the_tree(
    size: int, data: st.DataObject
) -> None:
    leaf_index = data.draw(st.integers(0, size - 1), label="leaf_index")
    size1 = data.draw(st.integers(1, size), label="size1")
    bound = max_nodes(size)
    for ids in (inclusion_proof_nodes(leaf_index, size), consistency_proof_nodes(size1, size)):
        assert len(ids) <= bound
        assert ids == sorted(set(ids))
        for level, index in ids:
            assert (index + 1) << level <= size  # a complete subtree of the tree
    assert len(frontier(size)) == size.bit_count()


class UniformTree(Mapping[NodeId, bytes]):
    """A tree of any size whose leaves are all equal: node (level, _) hashes to z[level].

    It lets proofs be built and checked at sizes far beyond what can be
    materialised; asking for a node that is not complete inside the tree is a
    KeyError, so building a proof also checks that it only reads real nodes.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.z = [hash_leaf(b"uniform")]
        for _ in range(size.bit_length()):
            self.z.append(hash_children(self.z[-1], self.z[-1]))

    def __getitem__(self, node_id: NodeId) -> bytes:
        level, index = node_id
        if level < 0 or index < 0 or (index + 1) << level > self.size:
            raise KeyError(node_id)
        return self.z[level]

    def __iter__(self) -> Iterator[NodeId]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 2**63), data=st.data())
def test_proofs_verify_in_huge_trees(size: int, data: st.DataObject) -> None:
    tree = UniformTree(size)
    leaf_index = data.draw(st.integers(0, size - 1), label="leaf_index")
    size1 = data.draw(st.integers(1, size), label="size1")
    root2 = root_from_nodes(size, tree)
    proof = inclusion_proof(leaf_index, size, tree)
    verify_inclusion(tree.z[0], leaf_index, size, proof, root2)
    root1 = root_from_nodes(size1, UniformTree(size1))
    verify_consistency(size1, size, consistency_proof(size1, size, tree), root1, root2)


@settings(max_examples=60, deadline=None)
@given(tree=trees(), data=st.data())
def test_flipping_any_bit_breaks_an_inclusion_proof(tree: Tree, data: st.DataObject) -> None:
    n = tree.size
    i = data.draw(st.integers(0, n - 1), label="leaf_index")
    proof = inclusion_proof(i, n, tree.nodes)
    leaf_hash, root_n = tree.leaves[i], tree.roots[n]
    bit = data.draw(st.integers(0, 8 * HASH_SIZE - 1), label="bit")
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")  # -2 leaf, -1 root
    if target == -2:
        leaf_hash = flip(leaf_hash, bit)
    elif target == -1:
        root_n = flip(root_n, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(RootMismatchError):
        verify_inclusion(leaf_hash, i, n, proof, root_n)


@settings(max_examples=60, deadline=None)
@given(tree=trees(min_size=2), data=st.data())
def test_flipping_any_bit_breaks_a_consistency_proof(tree: Tree, data: st.DataObject) -> None:
    n = tree.size
    size1 = data.draw(st.integers(1, n - 1), label="size1")
    proof = consistency_proof(size1, n, tree.nodes)
    root1, root2 = tree.roots[size1], tree.roots[n]
    bit = data.draw(st.integers(0, 8 * HASH_SIZE - 1), label="bit")
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")  # -2 root1, -1 root2
    if target == -2:
        root1 = flip(root1, bit)
    elif target == -1:
        root2 = flip(root2, bit)
    else:
        proof[target] = flip(proof[target], bit)
    with pytest.raises(RootMismatchError):
        verify_consistency(size1, n, proof, root1, root2)


# --- attacks ----------------------------------------------------------------


def test_second_preimage_interior_node_presented_as_leaf_fails() -> None:
    # Node (1, 0) = SHA-256(0x01 || l0 || l1). Without domain separation,
    # leaf data "l0 || l1" would hash to it and pass as leaf 0 of a 4-leaf
    # tree seen one level up. With the 0x00/0x01 prefixes it cannot.
    left, right = LEAF_HASHES[0], LEAF_HASHES[1]
    interior, sibling = VECTOR_NODES[(1, 0)], VECTOR_NODES[(1, 1)]
    root4 = root(LEAF_HASHES[:4])
    assert sha256(b"\x01" + left + right).digest() == interior
    for forged_data in (left + right, b"\x01" + left + right):
        forged_leaf = hash_leaf(forged_data)
        assert forged_leaf != interior
        with pytest.raises(RootMismatchError):
            verify_inclusion(forged_leaf, 0, 2, [sibling], root4)
    # The defence holds only if the verifier hashes the record itself: an
    # interior hash handed over *as* a leaf hash is indistinguishable.
    verify_inclusion(interior, 0, 2, [sibling], root4)


def test_second_preimage_leaf_presented_as_interior_node_fails() -> None:
    # The other direction: a leaf whose data is "0x01-less" concatenation of
    # two hashes never collides with the interior node over them.
    assert hash_leaf(LEAF_HASHES[0] + LEAF_HASHES[1]) != hash_children(
        LEAF_HASHES[0], LEAF_HASHES[1]
    )


@settings(max_examples=40, deadline=None)
@given(tree=trees(min_size=2), data=st.data())
def test_truncated_inclusion_proof_fails(tree: Tree, data: st.DataObject) -> None:
    n = tree.size
    i = data.draw(st.integers(0, n - 1), label="leaf_index")
    proof = inclusion_proof(i, n, tree.nodes)
    cut = data.draw(st.integers(0, len(proof) - 1), label="drop")
    with pytest.raises(InclusionProofError, match="wrong size"):
        verify_inclusion(tree.leaves[i], i, n, proof[:cut] + proof[cut + 1 :], tree.roots[n])
    with pytest.raises(InclusionProofError, match="wrong size"):
        verify_inclusion(tree.leaves[i], i, n, proof[:-1], tree.roots[n])


@settings(max_examples=40, deadline=None)
@given(tree=trees(), data=st.data())
def test_extended_inclusion_proof_fails(tree: Tree, data: st.DataObject) -> None:
    n = tree.size
    i = data.draw(st.integers(0, n - 1), label="leaf_index")
    proof = inclusion_proof(i, n, tree.nodes)
    for extended in ([*proof, tree.roots[n]], [tree.leaves[i], *proof]):
        with pytest.raises(InclusionProofError, match="wrong size"):
            verify_inclusion(tree.leaves[i], i, n, extended, tree.roots[n])


@settings(max_examples=40, deadline=None)
@given(tree=trees(min_size=2), data=st.data())
def test_truncated_and_extended_consistency_proofs_fail(tree: Tree, data: st.DataObject) -> None:
    n = tree.size
    size1 = data.draw(st.integers(1, n - 1), label="size1")
    proof = consistency_proof(size1, n, tree.nodes)
    root1, root2 = tree.roots[size1], tree.roots[n]
    for bad in (proof[:-1], proof[1:], [*proof, root2], [root1, *proof]):
        with pytest.raises(ConsistencyProofError, match=r"wrong size|empty"):
            verify_consistency(size1, n, bad, root1, root2)


@settings(max_examples=40, deadline=None)
@given(tree=trees(min_size=2), data=st.data())
def test_inclusion_proof_at_wrong_index_fails(tree: Tree, data: st.DataObject) -> None:
    n = tree.size
    i = data.draw(st.integers(0, n - 1), label="leaf_index")
    j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i), label="claimed index")
    proof = inclusion_proof(i, n, tree.nodes)
    with pytest.raises(VerificationError):
        verify_inclusion(tree.leaves[i], j, n, proof, tree.roots[n])
    # nor does another leaf pass with this leaf's proof
    with pytest.raises(VerificationError):
        verify_inclusion(tree.leaves[j], i, n, proof, tree.roots[n])


@settings(max_examples=40, deadline=None)
@given(tree=trees(min_size=2), data=st.data())
def test_inclusion_proof_for_a_smaller_tree_fails_against_a_bigger_one(
    tree: Tree, data: st.DataObject
) -> None:
    # Wrong size: a proof made for tree_size m, checked against the checkpoint
    # (size n, root n) of another size. The size travels with the root in the
    # signed checkpoint; the pair must be checked together.
    n = tree.size
    m = data.draw(st.integers(1, n - 1), label="smaller size")
    i = data.draw(st.integers(0, m - 1), label="leaf_index")
    proof = inclusion_proof(i, m, tree.nodes)
    with pytest.raises(VerificationError):
        verify_inclusion(tree.leaves[i], i, n, proof, tree.roots[n])
    with pytest.raises(VerificationError):
        verify_inclusion(tree.leaves[i], i, m, proof, tree.roots[n])


def test_tree_size_is_bound_to_the_root_only_by_the_checkpoint() -> None:
    # RFC 9162 proofs do not authenticate tree_size by themselves: leaf 0's
    # proof in the 5-leaf tree has the same shape in a 6-leaf tree, so it
    # "verifies" for size 6 against the 5-leaf root. Callers must take
    # tree_size and root from the same signed checkpoint.
    root5 = root(LEAF_HASHES[:5])
    proof5 = inclusion_proof_from_leaves(LEAF_HASHES[:5], 0)
    verify_inclusion(LEAF_HASHES[0], 0, 6, proof5, root5)
    with pytest.raises(RootMismatchError):
        verify_inclusion(LEAF_HASHES[0], 0, 6, proof5, root(LEAF_HASHES[:6]))


@settings(max_examples=40, deadline=None)
@given(tree=trees(min_size=3), data=st.data())
def test_consistency_proof_for_a_smaller_tree_fails_against_a_bigger_one(
    tree: Tree, data: st.DataObject
) -> None:
    n = tree.size
    size2 = data.draw(st.integers(2, n - 1), label="smaller size2")
    size1 = data.draw(st.integers(1, size2 - 1), label="size1")
    proof = consistency_proof(size1, size2, tree.nodes)
    with pytest.raises(VerificationError):
        verify_consistency(size1, n, proof, tree.roots[size1], tree.roots[n])
    with pytest.raises(VerificationError):
        verify_consistency(size1, size2, proof, tree.roots[size1], tree.roots[n])


@settings(max_examples=40, deadline=None)
@given(tree=trees(min_size=2), data=st.data())
def test_consistency_proof_with_wrong_old_size_fails(tree: Tree, data: st.DataObject) -> None:
    n = tree.size
    size1 = data.draw(st.integers(1, n - 1), label="size1")
    claimed = data.draw(st.integers(1, n - 1).filter(lambda s: s != size1), label="claimed size1")
    proof = consistency_proof(size1, n, tree.nodes)
    with pytest.raises(VerificationError):
        verify_consistency(claimed, n, proof, tree.roots[claimed], tree.roots[n])


# --- the auditor guide ------------------------------------------------------


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    text = (PROJECT_ROOT / "docs" / "merkle.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/merkle.md has no python example"
    for block in blocks:
        exec(compile(block, "docs/merkle.md", "exec"), {})
    out = capsys.readouterr().out
    assert "inclusion and consistency verified" in out
    assert out.count("rejected") == 3

"""RFC 9162 Merkle tree: hashing, roots, inclusion and consistency proofs.

Everything here follows RFC 9162 §2.1 (the same tree as RFC 6962 §2.1) with
SHA-256:

* leaf hash ``SHA-256(0x00 || data)`` and interior node
  ``SHA-256(0x01 || left || right)`` (§2.1.1); the one-byte prefixes keep a
  leaf from ever being confused with an interior node (second-preimage
  defence);
* the Merkle Tree Hash (MTH) of ``n`` leaves splits at ``k``, the largest power
  of two smaller than ``n`` (§2.1.1); the empty tree hashes to
  ``SHA-256("")``;
* inclusion proofs (``PATH``, §2.1.3) and consistency proofs (``PROOF`` /
  ``SUBPROOF``, §2.1.4), ordered from the leaf (or the old tree) up to the root.

Conventions: hashes are ``bytes`` of :data:`HASH_SIZE`; ``leaf_index`` is
0-based, ``tree_size`` is a count of leaves. Verification functions return
``None`` or raise a :class:`~ledger.core.errors.VerificationError` subclass.

Storage addresses the tree by :data:`NodeId` ``(level, index)``: the perfect
subtree over leaves ``[index << level, (index + 1) << level)``. A storage layer
keeps those nodes once they are complete and asks :func:`frontier`,
:func:`inclusion_proof_nodes` and :func:`consistency_proof_nodes` which ones to
read (``O(log n)`` of them); :func:`root_from_nodes`, :func:`inclusion_proof`
and :func:`consistency_proof` then build the answer. A node that the caller did
not supply raises :class:`LookupError` naming it (storage translates it).

The node arithmetic follows transparency-dev/merkle (``proof/proof.go``,
``proof/verify.go``, ``compact/``), and so do the edge cases of
:func:`verify_consistency`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from hashlib import sha256

from ledger.core.errors import (
    ConsistencyProofError,
    EncodingError,
    InclusionProofError,
    RootMismatchError,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleAccumulator",
    "NodeId",
    "consistency_proof",
    "consistency_proof_from_leaves",
    "consistency_proof_nodes",
    "frontier",
    "frontier_from_inclusion",
    "hash_children",
    "hash_leaf",
    "inclusion_proof",
    "inclusion_proof_from_leaves",
    "inclusion_proof_nodes",
    "inclusion_proofs",
    "root",
    "root_from_inclusion_proof",
    "root_from_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every leaf, node and root hash (SHA-256)."""

EMPTY_ROOT = sha256(b"").digest()
"""MTH({}) = SHA-256() — the root of the empty tree (RFC 9162 §2.1.1)."""

NodeId = tuple[int, int]
"""``(level, index)``: the perfect subtree over leaves ``[index << level, (index + 1) << level)``.

Level 0 holds the leaf hashes; ``(level + 1, index)`` is the parent of
``(level, 2 * index)`` and ``(level, 2 * index + 1)``.
"""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


# --- hashing (RFC 9162 §2.1.1) ---------------------------------------------


def hash_leaf(data: bytes) -> bytes:
    """Return the leaf hash ``SHA-256(0x00 || data)`` (RFC 9162 §2.1.1)."""
    return sha256(_LEAF_PREFIX + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """Return the interior node hash ``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1)."""
    return sha256(_NODE_PREFIX + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return MTH over already-hashed leaves (RFC 9162 §2.1.1); :data:`EMPTY_ROOT` if empty.

    One pass, ``O(n)`` hashes, ``O(log n)`` extra memory: a stack of the
    completed perfect subtrees (the compact range), folded right to left at
    the end. This equals the recursive definition because MTH splits at the
    largest power of two below ``n``, so the tree is the right-to-left fold of
    its maximal perfect subtrees.
    """
    stack: list[bytes] = []
    for index, leaf_hash in enumerate(leaf_hashes):
        # Leaf ``index`` completes one perfect subtree per trailing 1 bit of index.
        node, carry = leaf_hash, index
        while carry & 1:
            node = hash_children(stack.pop(), node)
            carry >>= 1
        stack.append(node)
    return _fold(stack)


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Fold perfect-subtree hashes, given left to right, into one root, right to left."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for i in range(len(hashes) - 2, -1, -1):
        acc = hash_children(hashes[i], acc)
    return acc


# --- verification (RFC 9162 §2.1.3.2, §2.1.4.2) -----------------------------


def _decompose_inclusion(leaf_index: int, tree_size: int) -> tuple[int, int]:
    """Split an inclusion proof's length into ``(inner, border)``.

    ``inner`` elements are siblings below the point where the path to
    ``leaf_index`` leaves the path to the last leaf ``tree_size - 1``; the
    remaining ``border`` elements are left siblings above it, one per set bit
    of ``leaf_index >> inner``. ``inner + border`` is the exact length of the
    RFC 9162 §2.1.3.1 ``PATH``.
    """
    inner = (leaf_index ^ (tree_size - 1)).bit_length()
    border = (leaf_index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Hash ``seed`` up through ``proof``; bit ``i`` of ``index`` says which side it is on."""
    for i, sibling in enumerate(proof):
        seed = hash_children(sibling, seed) if (index >> i) & 1 else hash_children(seed, sibling)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    """Like :func:`_chain_inner`, but only through the left siblings (set bits of ``index``)."""
    for i, sibling in enumerate(proof):
        if (index >> i) & 1:
            seed = hash_children(sibling, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    """Hash ``seed`` up through ``proof``, every element being a left sibling."""
    for sibling in proof:
        seed = hash_children(sibling, seed)
    return seed


def _check_match(computed: bytes, expected: bytes) -> None:
    if computed != expected:
        raise RootMismatchError(
            f"root mismatch: expected {expected.hex()}, computed {computed.hex()}"
        )


def root_from_inclusion_proof(
    leaf_hash: bytes, leaf_index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """Return the root ``proof`` implies for ``leaf_hash`` at ``leaf_index`` (RFC 9162 §2.1.3.2).

    Equivalent to the RFC's ``fn``/``sn`` loop, but the expected proof length
    is computed first so that a truncated or extended proof is reported as
    such. Raises :class:`InclusionProofError` if ``leaf_index`` is not in
    ``[0, tree_size)``, if ``leaf_hash`` or a proof element is not
    :data:`HASH_SIZE` bytes, or if the proof has the wrong number of elements.
    """
    if leaf_index < 0 or leaf_index >= tree_size:
        raise InclusionProofError(f"leaf_index: {leaf_index}, want < tree_size {tree_size}")
    if len(leaf_hash) != HASH_SIZE:
        raise InclusionProofError(
            f"leaf hash has wrong size: expected {HASH_SIZE} bytes, got {len(leaf_hash)}"
        )
    inner, border = _decompose_inclusion(leaf_index, tree_size)
    if len(proof) != inner + border:
        raise InclusionProofError(
            f"inclusion proof has wrong size: expected {inner + border}, got {len(proof)}"
        )
    for i, element in enumerate(proof):
        if len(element) != HASH_SIZE:
            raise InclusionProofError(
                f"inclusion proof element {i} has wrong size: "
                f"expected {HASH_SIZE} bytes, got {len(element)}"
            )
    node = _chain_inner(leaf_hash, proof[:inner], leaf_index)
    return _chain_border_right(node, proof[inner:])


def frontier_from_inclusion(
    leaf_hash: bytes, tree_size: int, proof: Sequence[bytes]
) -> list[bytes]:
    """The hashes of :func:`frontier` ``(tree_size)`` from its last leaf and that leaf's proof.

    For the last leaf (``tree_size - 1``) every proof element is a left
    sibling: the first ``t`` (``2**t`` is the lowest set bit of ``tree_size``)
    lie inside the last perfect subtree and fold with the leaf into its root;
    the others are the roots of the frontier's other subtrees, nearest first.
    The result is only as good as the proof: check the root it gives
    (``MerkleAccumulator.from_frontier(...).root()``) against a signed one.
    Raises :class:`InclusionProofError` for a proof of the wrong shape.
    """
    root_from_inclusion_proof(leaf_hash, tree_size - 1, tree_size, proof)  # shape checks
    inner = (tree_size & -tree_size).bit_length() - 1
    node = leaf_hash
    for sibling in proof[:inner]:
        node = hash_children(sibling, node)
    return [*reversed(proof[inner:]), node]


def verify_inclusion(
    leaf_hash: bytes, leaf_index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``leaf_index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 §2.1.3.2. Returns ``None``; raises :class:`InclusionProofError`
    for a malformed proof (see :func:`root_from_inclusion_proof`) and
    :class:`RootMismatchError` when the proof leads to a different root.
    """
    computed = root_from_inclusion_proof(leaf_hash, leaf_index, tree_size, proof)
    _check_match(computed, root)


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the tree of ``size1`` with ``root1``.

    RFC 9162 §2.1.4.2, with the edge cases of transparency-dev/merkle
    ``proof.VerifyConsistency`` (and its test probes):

    * ``size2 < size1`` fails;
    * ``size1 == 0`` fails, even ``0 -> 0``: RFC 9162 §2.1.4 defines proofs
      only for ``0 < m``, and an empty tree commits to nothing worth proving;
    * ``size1 == size2`` needs an empty proof and byte-equal roots (their
      length is not checked);
    * otherwise the proof must be non-empty and of exactly the right length.

    Returns ``None``; raises :class:`ConsistencyProofError` for a malformed
    proof or impossible sizes and :class:`RootMismatchError` when a recomputed
    root differs from ``root1`` or ``root2``.
    """
    if size1 < 0 or size2 < size1:
        raise ConsistencyProofError(f"size2 ({size2}) < size1 ({size1})")
    if size1 == 0:
        raise ConsistencyProofError(
            f"size1 is 0: no consistency proof from the empty tree (size2 {size2})"
        )
    if size1 == size2:
        if proof:
            raise ConsistencyProofError(
                f"consistency proof has wrong size: expected 0, got {len(proof)} "
                f"(size1 == size2 == {size1})"
            )
        _check_match(root1, root2)
        return
    if not proof:
        raise ConsistencyProofError(
            f"consistency proof is empty, but size1 {size1} < size2 {size2}"
        )
    for name, value in (("root1", root1), ("root2", root2)):
        if len(value) != HASH_SIZE:
            raise ConsistencyProofError(
                f"{name} has wrong size: expected {HASH_SIZE} bytes, got {len(value)}"
            )
    for i, element in enumerate(proof):
        if len(element) != HASH_SIZE:
            raise ConsistencyProofError(
                f"consistency proof element {i} has wrong size: "
                f"expected {HASH_SIZE} bytes, got {len(element)}"
            )

    # The proof is (a) the root of the largest perfect subtree ending at
    # size1 -- omitted when size1 is a power of two, root1 itself -- followed
    # by (b) the tail of the inclusion proof of that subtree in the tree of
    # size2, from its level upward.
    inner, border = _decompose_inclusion(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    if size1 == 1 << shift:
        seed, rest = root1, proof
        expected = inner + border
    else:
        seed, rest = proof[0], proof[1:]
        expected = 1 + inner + border
    if len(proof) != expected:
        raise ConsistencyProofError(
            f"consistency proof has wrong size: expected {expected}, got {len(proof)}"
        )
    mask = (size1 - 1) >> shift
    hash1 = _chain_inner_right(seed, rest[:inner], mask)
    hash1 = _chain_border_right(hash1, rest[inner:])
    _check_match(hash1, root1)
    hash2 = _chain_inner(seed, rest[:inner], mask)
    hash2 = _chain_border_right(hash2, rest[inner:])
    _check_match(hash2, root2)


# --- node addressing for storage --------------------------------------------


def _range_nodes(begin: int, end: int) -> list[NodeId]:
    """Return the maximal perfect subtrees covering ``[begin, end)``, left to right.

    Each step takes the largest subtree that starts at ``begin`` (aligned) and
    does not pass ``end``: at most ``2 * log2(end - begin)`` nodes.
    """
    nodes: list[NodeId] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        nodes.append((level, begin >> level))
        begin += 1 << level
    return nodes


@functools.lru_cache(maxsize=4096)
def _cached_range(begin: int, end: int) -> tuple[NodeId, ...]:
    return tuple(_range_nodes(begin, end))


def frontier(tree_size: int) -> list[NodeId]:
    """Return the maximal perfect subtrees that make up ``[0, tree_size)``, left to right.

    One node per set bit of ``tree_size``, largest first (the "compact
    range"). Folding their hashes right to left with :func:`hash_children`
    gives the RFC 9162 §2.1.1 root. Raises :class:`EncodingError` for a
    negative size.
    """
    if tree_size < 0:
        raise EncodingError(f"tree_size: {tree_size}, want >= 0")
    return _range_nodes(0, tree_size)


class _ProofPlan:
    """The nodes of an RFC 9162 proof for node ``(level, index)`` in a tree of ``tree_size``.

    Proof order (leaf to root) is: :attr:`siblings` (perfect, one per level up
    to the ``fork``, the highest ancestor that is still complete), then the
    hash of :attr:`right` folded into one (the imperfect right-edge subtree,
    absent if empty), then each of :attr:`left`, lowest level first. This is
    ``proof.nodes`` of transparency-dev/merkle.
    """

    __slots__ = ("left", "right", "siblings")

    def __init__(self, level: int, index: int, tree_size: int) -> None:
        # Highest bit where the node's index and the end position differ: the
        # paths to (level, index) and to leaf tree_size part there.
        inner = (index ^ (tree_size >> level)).bit_length() - 1
        fork_level = level + inner
        fork_index = index >> inner
        begin = fork_index << fork_level
        end = (fork_index + 1) << fork_level
        self.siblings: list[NodeId] = [
            (lvl, (index >> (lvl - level)) ^ 1) for lvl in range(level, fork_level)
        ]
        # the same few ranges recur across the proofs of a batch or a tree size
        self.right: Sequence[NodeId] = _cached_range(end, tree_size)
        self.left: Sequence[NodeId] = _cached_range(0, begin)[::-1]

    def node_ids(self) -> list[NodeId]:
        return [*self.siblings, *self.right, *self.left]

    def hashes(
        self, nodes: Mapping[NodeId, bytes], shared: _SharedParts | None = None
    ) -> list[bytes]:
        """The proof's hashes from ``nodes``. ``shared`` keeps the parts that
        proofs in the same tree have in common, for the next to reuse."""
        try:
            proof = [nodes[node_id] for node_id in self.siblings]  # one per level: hot
        except KeyError:
            proof = [_get(nodes, node_id) for node_id in self.siblings]  # names the missing one
        if self.right:
            first = self.right[0]
            edge = None if shared is None else shared.right.get(first)
            if edge is None:
                edge = _fold([_get(nodes, node_id) for node_id in self.right])
                if shared is not None:
                    shared.right[first] = edge
            proof.append(edge)
        if self.left:
            first = self.left[0]
            left = None if shared is None else shared.left.get(first)
            if left is None:
                left = [_get(nodes, node_id) for node_id in self.left]
                if shared is not None:
                    shared.left[first] = left
            proof += left
        return proof


class _SharedParts:
    """What inclusion proofs in one tree share, by the first node of the part:
    the fold of the imperfect right edge, and the hashes of the nodes left of
    the fork."""

    __slots__ = ("left", "right")

    def __init__(self) -> None:
        self.right: dict[NodeId, bytes] = {}
        self.left: dict[NodeId, list[bytes]] = {}


def _get(nodes: Mapping[NodeId, bytes], node_id: NodeId) -> bytes:
    try:
        return nodes[node_id]
    except KeyError as e:
        level, index = node_id
        raise LookupError(f"missing merkle node (level={level}, index={index})") from e


def _check_inclusion_args(leaf_index: int, tree_size: int) -> None:
    if leaf_index < 0 or leaf_index >= tree_size:
        raise InclusionProofError(f"leaf_index: {leaf_index}, want < tree_size {tree_size}")


def _consistency_plan(size1: int, size2: int) -> tuple[NodeId | None, _ProofPlan] | None:
    """Return the seed node and the plan of the consistency proof ``size1 -> size2``.

    The proof is the seed, the last node of ``frontier(size1)``, followed by
    its inclusion proof in the tree of ``size2`` from its own level upward.
    The seed is ``None`` (left out) when ``size1`` is a power of two: it is
    then root1 itself, which the verifier already has. ``None`` when the proof
    is empty (``size1 == 0`` or ``size1 == size2``).
    """
    if size1 < 0 or size1 > size2:
        raise ConsistencyProofError(f"size1 ({size1}) > size2 ({size2})")
    if size1 in (0, size2):
        return None
    level = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> level
    seed = (level, index) if index else None
    return seed, _ProofPlan(level, index, size2)


def inclusion_proof_nodes(leaf_index: int, tree_size: int) -> list[NodeId]:
    """Return the nodes to read to build the inclusion proof of ``leaf_index`` (sorted, unique).

    At most ``2 * ceil(log2(tree_size))`` nodes. Raises :class:`InclusionProofError`
    if ``leaf_index`` is not in ``[0, tree_size)``.
    """
    _check_inclusion_args(leaf_index, tree_size)
    return sorted(set(_ProofPlan(0, leaf_index, tree_size).node_ids()))


def consistency_proof_nodes(size1: int, size2: int) -> list[NodeId]:
    """Return the nodes to read to build the consistency proof ``size1 -> size2`` (sorted, unique).

    At most ``2 * ceil(log2(size2))`` nodes; empty when ``size1 == 0`` or
    ``size1 == size2`` (the proof is empty). Raises
    :class:`ConsistencyProofError` if ``size1 > size2`` or negative.
    """
    planned = _consistency_plan(size1, size2)
    if planned is None:
        return []
    seed, plan = planned
    ids = plan.node_ids()
    if seed is not None:
        ids.append(seed)
    return sorted(set(ids))


def root_from_nodes(tree_size: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    """Return the RFC 9162 §2.1.1 root of ``tree_size`` leaves from stored nodes.

    ``nodes`` must hold the hashes of :func:`frontier` ``(tree_size)``;
    :data:`EMPTY_ROOT` for size 0. Raises :class:`LookupError` for a missing node.
    """
    return _fold([_get(nodes, node_id) for node_id in frontier(tree_size)])


def inclusion_proof(leaf_index: int, tree_size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """Build the RFC 9162 §2.1.3.1 inclusion proof (``PATH``), leaf to root, from stored nodes.

    ``nodes`` must hold at least :func:`inclusion_proof_nodes` ``(leaf_index,
    tree_size)``; the imperfect right-edge subtree is computed by folding its
    perfect pieces. Raises :class:`InclusionProofError` if ``leaf_index`` is not
    in ``[0, tree_size)`` and :class:`LookupError` for a missing node.
    """
    _check_inclusion_args(leaf_index, tree_size)
    return _ProofPlan(0, leaf_index, tree_size).hashes(nodes)


def inclusion_proofs(
    leaf_indices: Iterable[int], tree_size: int, nodes: Mapping[NodeId, bytes]
) -> list[tuple[bytes, ...]]:
    """:func:`inclusion_proof` of each leaf in ``leaf_indices``, in one tree, as tuples.

    The same proofs, cheaper for many leaves (a batch's receipts). A proof is
    the sibling of each node on the leaf's path up to the fork, then the
    fork's own proof; the part from a node upward is the same for every leaf
    under it, so it is built once per node and shared: neighbouring leaves
    cost one sibling and one tuple each. What the fork proofs share (the fold
    of the right edge, the nodes left of the fork) is looked up and folded
    once. ``nodes`` must hold every proof's nodes.
    """
    above: dict[NodeId, tuple[bytes, ...]] = {}  # a node's proof, from its level up
    shared = _SharedParts()
    proofs = []
    for leaf_index in leaf_indices:
        if not 0 <= leaf_index < tree_size:
            _check_inclusion_args(leaf_index, tree_size)  # raises
        level, index = 0, leaf_index
        climbed: list[tuple[NodeId, NodeId]] = []  # (node, its sibling), leaf upward
        while (proof := above.get((level, index))) is None:
            if ((index >> 1) + 1) << (level + 1) > tree_size:
                # the parent is not a perfect subtree: this node is the fork
                proof = tuple(_ProofPlan(level, index, tree_size).hashes(nodes, shared))
                above[level, index] = proof
                break
            climbed.append(((level, index), (level, index ^ 1)))
            level += 1
            index >>= 1
        for node, sibling in reversed(climbed):
            proof = (_get(nodes, sibling), *proof)
            above[node] = proof
        proofs.append(proof)
    return proofs


def consistency_proof(size1: int, size2: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """Build the RFC 9162 §2.1.4.1 consistency proof (``PROOF``) from stored nodes.

    ``nodes`` must hold at least :func:`consistency_proof_nodes` ``(size1,
    size2)``. Returns ``[]`` when ``size1 == size2`` or ``size1 == 0`` (RFC
    9162 defines ``PROOF`` only for ``0 < size1 < size2``; note that
    :func:`verify_consistency` rejects every ``size1 == 0``). Raises
    :class:`ConsistencyProofError` if ``size1 > size2`` or negative and
    :class:`LookupError` for a missing node.
    """
    planned = _consistency_plan(size1, size2)
    if planned is None:
        return []
    seed, plan = planned
    head = [] if seed is None else [_get(nodes, seed)]
    return head + plan.hashes(nodes)


# --- naive reference (RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1, verbatim) ---------


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return d[0]
    k = _split(n)
    return hash_children(_mth(d[:k]), _mth(d[k:]))


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, d[:k]), _mth(d[k:])]
    return [*_path(m - k, d[k:]), _mth(d[:k])]


def _subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_mth(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], b), _mth(d[k:])]
    return [*_subproof(m - k, d[k:], False), _mth(d[:k])]


def inclusion_proof_from_leaves(leaf_hashes: Sequence[bytes], leaf_index: int) -> list[bytes]:
    """Return ``PATH(leaf_index, D[n])`` of RFC 9162 §2.1.3.1, computed by its recursive definition.

    A reference for tests and small trees: ``O(n log n)`` hashing. Raises
    :class:`InclusionProofError` if ``leaf_index`` is not in ``[0, n)``.
    """
    _check_inclusion_args(leaf_index, len(leaf_hashes))
    return _path(leaf_index, leaf_hashes)


def consistency_proof_from_leaves(leaf_hashes: Sequence[bytes], size1: int) -> list[bytes]:
    """Return ``PROOF(size1, D[n])`` of RFC 9162 §2.1.4.1, computed by its recursive definition.

    ``[]`` when ``size1 == 0`` or ``size1 == n``, as :func:`consistency_proof`.
    A reference for tests and small trees. Raises
    :class:`ConsistencyProofError` if ``size1`` is negative or above ``n``.
    """
    n = len(leaf_hashes)
    if size1 < 0 or size1 > n:
        raise ConsistencyProofError(f"size1 ({size1}) > size2 ({n})")
    if size1 in (0, n):
        return []
    return _subproof(size1, leaf_hashes, True)


# --- incremental tree -------------------------------------------------------


def _check_leaf(leaf_hash: bytes) -> None:
    if len(leaf_hash) != HASH_SIZE:
        raise EncodingError(
            f"leaf hash has wrong size: expected {HASH_SIZE} bytes, got {len(leaf_hash)}"
        )


class MerkleAccumulator:
    """An append-only Merkle tree kept as its compact range: ``O(log n)`` memory.

    Holds the hashes of :func:`frontier` ``(size)``, left to right. Appending a
    leaf merges it with the trailing perfect subtrees of equal size, exactly
    as a binary counter carries; :meth:`root` folds the frontier (RFC 9162
    §2.1.1). Resume after a restart with :meth:`from_frontier`.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._hashes: list[bytes] = []
        self._size = 0

    @classmethod
    def from_frontier(cls, tree_size: int, hashes: Sequence[bytes]) -> MerkleAccumulator:
        """Resume a tree of ``tree_size`` leaves from the hashes of ``frontier(tree_size)``.

        Raises :class:`EncodingError` if the number of hashes is not the number
        of frontier nodes or a hash is not :data:`HASH_SIZE` bytes.
        """
        expected = len(frontier(tree_size))
        if len(hashes) != expected:
            raise EncodingError(
                f"frontier of tree_size {tree_size} has wrong size: "
                f"expected {expected}, got {len(hashes)}"
            )
        for i, value in enumerate(hashes):
            if len(value) != HASH_SIZE:
                raise EncodingError(
                    f"frontier hash {i} has wrong size: "
                    f"expected {HASH_SIZE} bytes, got {len(value)}"
                )
        acc = cls()
        acc._hashes = list(hashes)
        acc._size = tree_size
        return acc

    @property
    def size(self) -> int:
        """Number of leaves appended so far (the tree size)."""
        return self._size

    def append(self, leaf_hash: bytes) -> list[tuple[NodeId, bytes]]:
        """Append a leaf hash; return every perfect node it completes.

        The list starts with the leaf itself, ``((0, index), leaf_hash)``, then
        each newly completed ancestor upward. These are exactly the nodes a
        storage layer must write for this leaf. Raises :class:`EncodingError`
        if ``leaf_hash`` is not :data:`HASH_SIZE` bytes.
        """
        _check_leaf(leaf_hash)
        hashes = self._hashes
        index = self._size
        node = leaf_hash
        level = 0
        completed: list[tuple[NodeId, bytes]] = [((0, index), node)]
        while index & 1:
            node = sha256(_NODE_PREFIX + hashes.pop() + node).digest()
            index >>= 1
            level += 1
            completed.append(((level, index), node))
        hashes.append(node)
        self._size += 1
        return completed

    def append_into(self, leaf_hash: bytes, levels: list[list[bytes]]) -> None:
        """Append a leaf hash like :meth:`append`, adding the hash of each node it
        completes to ``levels[level]`` (lists added as the tree grows a level).

        For verifiers that compare every node with stored ones in bulk: the
        node ``(level, index)`` is the ``index``-th hash ever added to
        ``levels[level]``.
        """
        _check_leaf(leaf_hash)
        hashes = self._hashes
        count = self._size
        node = leaf_hash
        level = 0
        while True:
            if level == len(levels):
                levels.append([])
            levels[level].append(node)
            if not count & 1:
                break
            node = sha256(_NODE_PREFIX + hashes.pop() + node).digest()
            count >>= 1
            level += 1
        hashes.append(node)
        self._size += 1

    def append_fast(self, leaf_hash: bytes) -> None:
        """Append a leaf hash like :meth:`append`, without reporting completed nodes.

        For verifiers that stream records and only need the root.
        """
        _check_leaf(leaf_hash)
        hashes = self._hashes
        count = self._size
        node = leaf_hash
        while count & 1:
            node = sha256(_NODE_PREFIX + hashes.pop() + node).digest()
            count >>= 1
        hashes.append(node)
        self._size += 1

    def root(self) -> bytes:
        """Return the current root (RFC 9162 §2.1.1): ``O(log n)`` hashes."""
        return _fold(self._hashes)

    def frontier_hashes(self) -> list[bytes]:
        """Return the hashes of ``frontier(self.size)``, left to right (a copy)."""
        return list(self._hashes)

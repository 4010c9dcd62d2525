"""C2SP tlog-tiles: tile paths, entry bundles, and reading the tree from tiles.

c2sp.org/tlog-tiles serves a log as static resources:

* ``tile/<L>/<N>[.p/<W>]`` — the Merkle Tree Hashes at tree level ``8 * L``
  with indices ``[N * 256, N * 256 + W)``, concatenated 32-byte hashes. Level 0
  holds the leaf hashes. A full tile has ``W = 256`` and no ``.p/<W>`` suffix;
  a partial tile has ``1 <= W <= 255``.
* ``tile/entries/<N>[.p/<W>]`` — the entries behind level-0 tile ``N``, each
  prefixed by its length as a big-endian ``uint16``. An rxledger entry is the
  record's exact JCS bytes, whose RFC 6962 leaf hash ``SHA-256(0x00 || entry)``
  is the level-0 hash (:func:`ledger.core.record.leaf_hash`).

``<L>`` is decimal ``0..63`` without leading zeros; ``<N>`` is split into
zero-padded 3-digit path elements, all but the last prefixed with ``x``
(1234067 is ``x001/x234/067``); ``<W>`` is decimal ``1..255`` without leading
zeros. Only the canonical spelling of a path is accepted: the same tile has
exactly one path, so a cache can never hold two copies that differ.

The client side is a function of a ``fetch(path) -> bytes`` callable (an HTTP
GET against the log's prefix, a file read from a mirror, ...):
:func:`node_hashes_from_tiles` reads any perfect-subtree hash of a tree of
a given size from the tiles, so :func:`root_from_tiles` and
:func:`inclusion_proof_from_tiles` rebuild a checkpoint's root and a proof with
nothing but the tiles and :mod:`ledger.core.merkle`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ledger.core import merkle
from ledger.core.errors import EncodingError

__all__ = [
    "MAX_ENTRY_SIZE",
    "MAX_LEVEL",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "EntryTooLargeError",
    "Fetch",
    "TileId",
    "TilePathError",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "format_tile_index",
    "inclusion_proof_from_tiles",
    "node_hashes_from_tiles",
    "parse_entries_path",
    "parse_tile_index",
    "parse_tile_path",
    "root_from_tiles",
    "split_hashes",
    "tile_width",
]

TILE_HEIGHT = 8
"""Tree levels spanned by one tile: a tile's hashes sit at tree level ``TILE_HEIGHT * L``."""

TILE_WIDTH = 1 << TILE_HEIGHT
"""Hashes (or entries) in a full tile: 256."""

MAX_LEVEL = 63
"""The highest tile level a path may name (tlog-tiles: ``<L>`` is ``0..63``)."""

MAX_ENTRY_SIZE = 0xFFFF
"""The largest entry an entry bundle can hold: its length prefix is a ``uint16``."""

_MAX_INDEX = 2**64
"""Tile indices are below ``2**64`` (tree sizes are ``uint64``)."""

_MAX_INDEX_ELEMENTS = 7
"""Enough 3-digit path elements for any index below :data:`_MAX_INDEX` (20 digits)."""

_LEVEL_RE = re.compile(r"0|[1-9][0-9]?")
_WIDTH_RE = re.compile(r"[1-9][0-9]{0,2}")
_HEAD_ELEMENT_RE = re.compile(r"x[0-9]{3}")
_LAST_ELEMENT_RE = re.compile(r"[0-9]{3}")

Fetch = Callable[[str], bytes]
"""``fetch(path)``: the bytes of a resource at ``path`` under the log's prefix (``tile/0/000``)."""


class TilePathError(EncodingError):
    """A path that is not the canonical tlog-tiles path of any tile or entry bundle."""

    code = "bad-tile-path"


class EntryTooLargeError(EncodingError):
    """An entry longer than :data:`MAX_ENTRY_SIZE` cannot go into an entry bundle."""

    code = "entry-too-large"


# --- tile coordinates and paths ----------------------------------------------


@dataclass(frozen=True)
class TileId:
    """Tile ``index`` of tile ``level``, ``width`` hashes wide (:data:`TILE_WIDTH` when full).

    Its hashes are the tree nodes ``(TILE_HEIGHT * level, TILE_WIDTH * index + i)``
    for ``i`` in ``range(width)`` (:data:`ledger.core.merkle.NodeId` addressing).
    """

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if not 0 <= self.level <= MAX_LEVEL:
            raise TilePathError(f"tile level: {self.level}, want 0..{MAX_LEVEL}")
        if not 0 <= self.index < _MAX_INDEX:
            raise TilePathError(f"tile index: {self.index}, want 0..2**64-1")
        if not 1 <= self.width <= TILE_WIDTH:
            raise TilePathError(f"tile width: {self.width}, want 1..{TILE_WIDTH}")

    @property
    def is_partial(self) -> bool:
        """True for a partial tile (fewer than :data:`TILE_WIDTH` hashes)."""
        return self.width < TILE_WIDTH

    @property
    def node_level(self) -> int:
        """The tree level of the tile's hashes: ``TILE_HEIGHT * level``."""
        return TILE_HEIGHT * self.level

    @property
    def start(self) -> int:
        """The index at :attr:`node_level` of the tile's first hash (for level 0: first entry)."""
        return TILE_WIDTH * self.index

    def to_path(self) -> str:
        """The tile's path, ``tile/<L>/<N>[.p/<W>]``."""
        return f"tile/{self.level}/{self._index_and_width()}"

    def to_entries_path(self) -> str:
        """The path of the entry bundle behind this level-0 tile, ``tile/entries/<N>[.p/<W>]``.

        Raises :class:`TilePathError` for a tile above level 0 (only leaves have entries).
        """
        if self.level != 0:
            raise TilePathError(f"entry bundles exist for level 0 only, not level {self.level}")
        return f"tile/entries/{self._index_and_width()}"

    def _index_and_width(self) -> str:
        suffix = f".p/{self.width}" if self.is_partial else ""
        return format_tile_index(self.index) + suffix


def format_tile_index(index: int) -> str:
    """Encode a tile index as 3-digit path elements: ``1234067`` -> ``x001/x234/067``.

    Raises :class:`TilePathError` for a negative index or one of ``2**64`` or more.
    """
    if not 0 <= index < _MAX_INDEX:
        raise TilePathError(f"tile index: {index}, want 0..2**64-1")
    groups: list[str] = []
    while True:
        index, group = divmod(index, 1000)
        groups.append(f"{group:03d}")
        if not index:
            break
    groups.reverse()
    return "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])


def parse_tile_index(text: str) -> int:
    """Decode the path elements of a tile index; only the canonical encoding is accepted.

    ``x001/x234/067`` -> ``1234067``. Refuses missing ``x`` prefixes, elements of
    other than three ASCII digits, and superfluous leading ``x000`` elements
    (``x000/067`` is not ``067``). Raises :class:`TilePathError`.
    """
    elements = text.split("/")
    if len(elements) > _MAX_INDEX_ELEMENTS:
        raise TilePathError(f"tile index {text!r}: too many path elements")
    *head, last = elements
    if not all(_HEAD_ELEMENT_RE.fullmatch(e) for e in head) or not _LAST_ELEMENT_RE.fullmatch(last):
        raise TilePathError(
            f"tile index {text!r}: expected 3-digit path elements, all but the last "
            "prefixed with 'x' (e.g. x001/x234/067)"
        )
    index = 0
    for element in elements:
        index = index * 1000 + int(element.removeprefix("x"))
    if index >= _MAX_INDEX:
        raise TilePathError(f"tile index {text!r}: {index}, want < 2**64")
    canonical = format_tile_index(index)
    if canonical != text:
        raise TilePathError(f"tile index {text!r}: not canonical, expected {canonical!r}")
    return index


def _split_width(rest: str, what: str) -> tuple[str, int]:
    """Split ``<N>[.p/<W>]`` into the index text and the width."""
    index_text, sep, width_text = rest.partition(".p/")
    if not sep:
        return rest, TILE_WIDTH
    if not _WIDTH_RE.fullmatch(width_text) or int(width_text) >= TILE_WIDTH:
        raise TilePathError(
            f"{what} {rest!r}: partial width {width_text!r}, want 1..{TILE_WIDTH - 1} "
            "without leading zeros"
        )
    return index_text, int(width_text)


def parse_tile_path(path: str) -> TileId:
    """Parse ``tile/<L>/<N>[.p/<W>]`` (relative to the log's prefix) into a :class:`TileId`.

    Only the canonical path of a tile is accepted (:func:`parse_tile_index`;
    ``<L>`` and ``<W>`` without leading zeros). Raises :class:`TilePathError`.
    """
    prefix, _, rest = path.partition("/")
    level_text, _, rest = rest.partition("/")
    if prefix != "tile" or not rest:
        raise TilePathError(f"tile path {path!r}: expected tile/<L>/<N>[.p/<W>]")
    if not _LEVEL_RE.fullmatch(level_text) or int(level_text) > MAX_LEVEL:
        raise TilePathError(
            f"tile path {path!r}: level {level_text!r}, want 0..{MAX_LEVEL} without leading zeros"
        )
    index_text, width = _split_width(rest, "tile path")
    return TileId(int(level_text), parse_tile_index(index_text), width)


def parse_entries_path(path: str) -> TileId:
    """Parse ``tile/entries/<N>[.p/<W>]`` into the :class:`TileId` of its level-0 tile.

    Raises :class:`TilePathError` for anything but a canonical entry-bundle path.
    """
    prefix = "tile/entries/"
    if not path.startswith(prefix) or len(path) == len(prefix):
        raise TilePathError(f"entry bundle path {path!r}: expected tile/entries/<N>[.p/<W>]")
    index_text, width = _split_width(path[len(prefix) :], "entry bundle path")
    return TileId(0, parse_tile_index(index_text), width)


def tile_width(tree_size: int, level: int, index: int) -> int:
    """The width of tile ``(level, index)`` in a tree of ``tree_size`` leaves; 0 if it has none.

    A tree of size ``s`` has ``s >> (8 * level)`` hashes at tile level
    ``level``; the tile holds those in ``[256 * index, 256 * index + 256)``. So
    the rightmost tile of a level has width ``(s >> 8 * level) % 256`` (when
    not 0), the tiles left of it are full, and those right of it are empty
    (and are never served).
    """
    if tree_size < 0 or level < 0 or index < 0:
        raise EncodingError(f"tree_size, level, index: ({tree_size}, {level}, {index}), want >= 0")
    count = tree_size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, count - TILE_WIDTH * index))


# --- entry bundles ------------------------------------------------------------


def encode_entry_bundle(entries: Iterable[bytes], *, first_index: int = 0) -> bytes:
    """Concatenate entries, each prefixed by its length as a big-endian ``uint16``.

    Raises :class:`EntryTooLargeError` naming the entry (``first_index`` + its
    position) if one is longer than :data:`MAX_ENTRY_SIZE`: an entry is never
    truncated.
    """
    parts: list[bytes] = []
    for offset, entry in enumerate(entries):
        if len(entry) > MAX_ENTRY_SIZE:
            raise EntryTooLargeError(
                f"entry {first_index + offset} is {len(entry)} bytes; a tlog-tiles entry "
                f"bundle holds entries of at most {MAX_ENTRY_SIZE} bytes"
            )
        parts.append(len(entry).to_bytes(2, "big"))
        parts.append(entry)
    return b"".join(parts)


def decode_entry_bundle(data: bytes) -> list[bytes]:
    """Split an entry bundle into its entries. Raises :class:`EncodingError` if truncated."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise EncodingError(
                f"entry bundle truncated: a length prefix at byte {at}, but {len(data) - at} "
                "byte(s) left"
            )
        size = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if at + size > len(data):
            raise EncodingError(
                f"entry bundle truncated: entry {len(entries)} is {size} bytes, "
                f"but {len(data) - at} left"
            )
        entries.append(data[at : at + size])
        at += size
    return entries


# --- the tree from tiles (client side) ----------------------------------------


def split_hashes(data: bytes, *, width: int | None = None) -> list[bytes]:
    """Split tile data into its 32-byte hashes, checking the count when ``width`` is given.

    Raises :class:`EncodingError` if the length is not a multiple of
    :data:`~ledger.core.merkle.HASH_SIZE` or not ``width`` hashes.
    """
    size = merkle.HASH_SIZE
    if len(data) % size:
        raise EncodingError(f"tile has wrong size: {len(data)} bytes, not a multiple of {size}")
    if width is not None and len(data) != width * size:
        raise EncodingError(
            f"tile has wrong size: expected {width * size} bytes ({width} hashes), got {len(data)}"
        )
    return [data[i : i + size] for i in range(0, len(data), size)]


def node_hashes_from_tiles(
    tree_size: int, node_ids: Iterable[merkle.NodeId], fetch: Fetch
) -> dict[merkle.NodeId, bytes]:
    """Read perfect-subtree hashes of the tree of ``tree_size`` leaves from its tiles.

    Node ``(level, index)`` lies in tile level ``level // 8``: it is the root of
    ``2 ** (level % 8)`` consecutive hashes of one tile, hashed up with
    :func:`~ledger.core.merkle.hash_children`. Each tile is fetched once, at the
    width the tree of ``tree_size`` gives it (:func:`tile_width`), so a client
    only ever asks for tiles a checkpoint of that size commits to.

    The hashes are as the server sent them: compare what they add up to with a
    signed root (:func:`root_from_tiles`) before trusting any of them. Raises
    :class:`EncodingError` for a node outside the tree or a tile of the wrong
    size; whatever ``fetch`` raises passes through.
    """
    tiles: dict[TileId, list[bytes]] = {}
    out: dict[merkle.NodeId, bytes] = {}
    for level, index in node_ids:
        if level < 0 or index < 0 or (index + 1) << level > tree_size:
            raise EncodingError(
                f"node ({level}, {index}) is not a complete subtree of a tree of size {tree_size}"
            )
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height  # index of the node's first hash at the tile's tree level
        tile_index, offset = divmod(first, TILE_WIDTH)
        tile = TileId(tile_level, tile_index, tile_width(tree_size, tile_level, tile_index))
        hashes = tiles.get(tile)
        if hashes is None:
            hashes = split_hashes(fetch(tile.to_path()), width=tile.width)
            tiles[tile] = hashes
        out[(level, index)] = merkle.root(hashes[offset : offset + (1 << height)])
    return out


def root_from_tiles(tree_size: int, fetch: Fetch) -> bytes:
    """Rebuild the RFC 6962 root of the tree of ``tree_size`` leaves from its tiles.

    Reads the hashes of :func:`~ledger.core.merkle.frontier` ``(tree_size)``
    (one tile per set bit of ``tree_size``, at most) and folds them. Equal to a
    checkpoint's root if, and only if, the tiles agree with it.
    """
    nodes = node_hashes_from_tiles(tree_size, merkle.frontier(tree_size), fetch)
    return merkle.root_from_nodes(tree_size, nodes)


def inclusion_proof_from_tiles(leaf_index: int, tree_size: int, fetch: Fetch) -> list[bytes]:
    """Build the RFC 9162 inclusion proof of ``leaf_index`` in the tree of ``tree_size`` from tiles.

    Verify it with :func:`~ledger.core.merkle.verify_inclusion` against a signed
    root. Raises :class:`~ledger.core.errors.InclusionProofError` if
    ``leaf_index`` is not in ``[0, tree_size)``.
    """
    wanted = merkle.inclusion_proof_nodes(leaf_index, tree_size)
    return merkle.inclusion_proof(
        leaf_index, tree_size, node_hashes_from_tiles(tree_size, wanted, fetch)
    )

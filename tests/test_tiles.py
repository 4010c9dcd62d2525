"""The log as C2SP tlog-tiles: a client that knows only the spec rebuilds the signed root.

The pure helpers (paths, widths, bundles, the tree from tiles) are checked
against the spec's own examples and against :mod:`ledger.core.merkle`. Over
HTTP, on SQLite and PostgreSQL, a log of 600 records (full and partial tiles at
level 0, a partial tile at level 1) is read as a standard client would: the
checkpoint, then only the tiles its size calls for, then the entry bundles.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import PROBLEM_JSON
from api.settings import Settings
from ledger.core import merkle, tiles
from ledger.core.checkpoint import Checkpoint, open_checkpoint
from ledger.core.errors import EncodingError, RejectionError
from ledger.core.note import Signer, Verifier
from ledger.core.record import build_record_bytes, leaf_hash
from ledger.core.statement import SignedStatement, make_statement
from ledger.core.tiles import TileId
from ledger.store import sequencer
from ledger.store.sequencer import Receipt, Submission
from tests.conftest import (
    BACKENDS,
    LedgerEnv,
    create_postgres_database,
    drop_postgres_database,
    make_ledger_env,
)
from tests.helpers import attest, register

IMMUTABLE = "public, max-age=31536000, immutable"

# --- tile paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "text"),
    [
        (0, "000"),
        (5, "005"),
        (67, "067"),
        (999, "999"),
        (1000, "x001/000"),
        (1234067, "x001/x234/067"),  # the spec's example
        (1_000_000, "x001/x000/000"),
        (2**64 - 1, "x018/x446/x744/x073/x709/x551/615"),
    ],
)
def test_tile_index_encoding(index: int, text: str) -> None:
    assert tiles.format_tile_index(index) == text
    assert tiles.parse_tile_index(text) == index


@pytest.mark.parametrize(
    ("tile", "path", "entries_path"),
    [
        (TileId(0, 0), "tile/0/000", "tile/entries/000"),
        (TileId(0, 1234067, 5), "tile/0/x001/x234/067.p/5", "tile/entries/x001/x234/067.p/5"),
        (TileId(0, 273, 112), "tile/0/273.p/112", "tile/entries/273.p/112"),
        (TileId(0, 2, 255), "tile/0/002.p/255", "tile/entries/002.p/255"),
    ],
)
def test_tile_paths_round_trip(tile: TileId, path: str, entries_path: str) -> None:
    assert tile.to_path() == path
    assert tile.to_entries_path() == entries_path
    assert tiles.parse_tile_path(path) == tile
    assert tiles.parse_entries_path(entries_path) == tile


def test_tiles_above_level_0_have_paths_but_no_entry_bundles() -> None:
    tile = TileId(63, 1, 17)
    assert tile.to_path() == "tile/63/001.p/17"
    assert tiles.parse_tile_path("tile/63/001.p/17") == tile
    assert tile.node_level == 504
    assert tile.start == 256
    with pytest.raises(tiles.TilePathError, match="level 0 only"):
        tile.to_entries_path()


BAD_TILE_PATHS = {
    "index without its x prefix": "tile/0/001/234",
    "index element of two digits": "tile/0/67",
    "index element of four digits": "tile/0/0067",
    "superfluous x000 element": "tile/0/x000/067",
    "last element with an x": "tile/0/x067",
    "non-ASCII digits": "tile/0/\u0660\u0660\u0661",
    "signed index": "tile/0/+01",
    "level with a leading zero": "tile/00/000",
    "level 64": "tile/64/000",
    "negative level": "tile/-1/000",
    "level not a number": "tile/a/000",
    "no index": "tile/0/",
    "no level": "tile/",
    "trailing slash": "tile/0/000/",
    "width 0": "tile/0/000.p/0",
    "width 256": "tile/0/000.p/256",
    "width with a leading zero": "tile/0/000.p/07",
    "width missing": "tile/0/000.p/",
    "width with a path element after it": "tile/0/000.p/5/6",
    "width not a number": "tile/0/000.p/five",
    "index too large for uint64": "tile/0/x018/x446/x744/x073/x709/x551/616",
    "more than seven index elements": "tile/0/x000/x000/x000/x000/x000/x000/x000/001",
    "junk": "tile/0/000junk",
    "entries is not a level": "tile/entries/000",
    "not a tile at all": "checkpoint",
}


@pytest.mark.parametrize("path", BAD_TILE_PATHS.values(), ids=BAD_TILE_PATHS.keys())
def test_bad_tile_paths_are_refused(path: str) -> None:
    with pytest.raises(tiles.TilePathError):
        tiles.parse_tile_path(path)


BAD_ENTRIES_PATHS = {
    "no index": "tile/entries/",
    "index without its x prefix": "tile/entries/001/234",
    "superfluous x000 element": "tile/entries/x000/001",
    "width 0": "tile/entries/000.p/0",
    "width 256": "tile/entries/000.p/256",
    "width with a leading zero": "tile/entries/000.p/010",
    "a tile path": "tile/0/000",
}


@pytest.mark.parametrize("path", BAD_ENTRIES_PATHS.values(), ids=BAD_ENTRIES_PATHS.keys())
def test_bad_entry_bundle_paths_are_refused(path: str) -> None:
    with pytest.raises(tiles.TilePathError):
        tiles.parse_entries_path(path)


# --- tile widths: the spec's examples ----------------------------------------


def test_a_tree_of_70000_has_the_tiles_the_spec_lists() -> None:
    # "273 full level 0 tiles, one partial level 0 tile of width 112, one full
    # level 1 tile, one partial level 1 tile of width 17, and one partial level
    # 2 tile of width 1"
    size = 70_000
    assert [tiles.tile_width(size, 0, n) for n in (0, 272, 273, 274)] == [256, 256, 112, 0]
    assert [tiles.tile_width(size, 1, n) for n in (0, 1, 2)] == [256, 17, 0]
    assert [tiles.tile_width(size, 2, n) for n in (0, 1)] == [1, 0]
    assert tiles.tile_width(size, 3, 0) == 0


def test_a_tree_of_256_has_a_full_level_0_tile_and_a_level_1_tile_of_width_1() -> None:
    assert tiles.tile_width(256, 0, 0) == 256
    assert tiles.tile_width(256, 0, 1) == 0
    assert tiles.tile_width(256, 1, 0) == 1


# --- entry bundles --------------------------------------------------------------


def test_entry_bundle_round_trip() -> None:
    entries = [b"", b"a", b"\x00" * 300, b"x" * tiles.MAX_ENTRY_SIZE]
    data = tiles.encode_entry_bundle(entries)
    assert data[:5] == b"\x00\x00\x00\x01a"
    assert data[5:7] == (300).to_bytes(2, "big")
    assert len(data) == 2 * len(entries) + sum(map(len, entries))
    assert tiles.decode_entry_bundle(data) == entries


def test_an_entry_too_large_for_a_bundle_is_refused_not_truncated() -> None:
    entries = [b"ok", b"x" * (tiles.MAX_ENTRY_SIZE + 1)]
    with pytest.raises(tiles.EntryTooLargeError, match=r"entry 513 is 65536 bytes"):
        tiles.encode_entry_bundle(entries, first_index=512)


@pytest.mark.parametrize(
    "data", [b"\x00", b"\x00\x05abcd", b"\x00\x01a\x00"], ids=["half prefix", "short", "tail"]
)
def test_a_truncated_entry_bundle_is_refused(data: bytes) -> None:
    with pytest.raises(EncodingError, match="truncated"):
        tiles.decode_entry_bundle(data)


# --- the tree from tiles, against a reference tile server ---------------------


def reference_tiles(leaf_hashes: list[bytes]) -> dict[str, bytes]:
    """Every tile (full and the partial one per level) of a tree, built naively from the spec."""
    served: dict[str, bytes] = {}
    level_hashes = leaf_hashes
    level = 0
    while level_hashes:
        for n in range(0, len(level_hashes), tiles.TILE_WIDTH):
            chunk = level_hashes[n : n + tiles.TILE_WIDTH]
            served[TileId(level, n // tiles.TILE_WIDTH, len(chunk)).to_path()] = b"".join(chunk)
        # "each hash in a tile is the Merkle Tree Hash of a full tile at the level below"
        level_hashes = [
            merkle.root(level_hashes[n : n + tiles.TILE_WIDTH])
            for n in range(0, len(level_hashes) - tiles.TILE_WIDTH + 1, tiles.TILE_WIDTH)
        ]
        level += 1
    return served


@dataclass
class RecordingFetch:
    served: dict[str, bytes]
    paths: list[str] = field(default_factory=list)

    def __call__(self, path: str) -> bytes:
        self.paths.append(path)
        return self.served[path]


SIZES = [1, 2, 255, 256, 257, 300, 511, 512, 600, 65_535, 65_536, 65_536 + 256 * 3 + 7]


@pytest.fixture(scope="module")
def leaves() -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(max(SIZES))]


@pytest.mark.parametrize("size", SIZES)
def test_root_from_tiles_equals_the_merkle_tree_hash(leaves: list[bytes], size: int) -> None:
    fetch = RecordingFetch(reference_tiles(leaves[:size]))
    assert tiles.root_from_tiles(size, fetch) == merkle.root(leaves[:size])
    # one tile per fetch, each at the width this size gives it
    assert len(fetch.paths) == len(set(fetch.paths)) <= len(merkle.frontier(size))
    for path in fetch.paths:
        tile = tiles.parse_tile_path(path)
        assert tile.width == tiles.tile_width(size, tile.level, tile.index)


def test_a_full_level_1_tile_is_the_hashes_of_the_full_level_0_tiles(
    leaves: list[bytes],
) -> None:
    served = reference_tiles(leaves[:65_536])
    assert "tile/1/000" in served
    assert "tile/2/000.p/1" in served
    fetch = RecordingFetch(served)
    assert tiles.root_from_tiles(65_536, fetch) == merkle.root(leaves[:65_536])
    assert fetch.paths == ["tile/2/000.p/1"]
    nodes = tiles.node_hashes_from_tiles(65_536, [(8, 3), (9, 1), (15, 0)], RecordingFetch(served))
    assert nodes[(8, 3)] == merkle.root(leaves[3 * 256 : 4 * 256])
    assert nodes[(9, 1)] == merkle.root(leaves[512:1024])
    assert nodes[(15, 0)] == merkle.root(leaves[:32_768])


@pytest.mark.parametrize(("size", "leaf_index"), [(1, 0), (300, 0), (600, 599), (70_000, 65_600)])
def test_inclusion_proofs_from_tiles_verify(size: int, leaf_index: int) -> None:
    hashes = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size)]
    served = reference_tiles(hashes)
    proof = tiles.inclusion_proof_from_tiles(leaf_index, size, RecordingFetch(served))
    assert proof == merkle.inclusion_proof_from_leaves(hashes, leaf_index)
    merkle.verify_inclusion(hashes[leaf_index], leaf_index, size, proof, merkle.root(hashes))


def test_a_tampered_tile_gives_another_root(leaves: list[bytes]) -> None:
    served = reference_tiles(leaves[:600])
    good = tiles.root_from_tiles(600, RecordingFetch(served))
    data = bytearray(served["tile/0/002.p/88"])
    data[0] ^= 1
    served["tile/0/002.p/88"] = bytes(data)
    assert tiles.root_from_tiles(600, RecordingFetch(served)) != good


def test_a_tile_of_the_wrong_size_is_refused(leaves: list[bytes]) -> None:
    served = reference_tiles(leaves[:600])
    served["tile/1/000.p/2"] += b"\x00" * 32
    with pytest.raises(EncodingError, match="expected 64 bytes"):
        tiles.root_from_tiles(600, RecordingFetch(served))


def test_nodes_outside_the_tree_are_refused() -> None:
    with pytest.raises(EncodingError, match="not a complete subtree"):
        tiles.node_hashes_from_tiles(600, [(8, 2)], RecordingFetch({}))


# --- statement size: every record fits an entry bundle -------------------------


def largest_record_overhead() -> int:
    """Bytes a record adds around its statement, with every field at its largest."""
    return len(
        build_record_bytes(
            seq=2**63 - 1,  # the largest seq storage holds
            prev="f" * 64,
            received_at="9" * 32,  # records.received_at is String(32)
            signature_b64="A" * 88,  # base64 of 64 bytes
            statement_bytes=b"",
        )
    )


def test_the_largest_accepted_statement_makes_a_record_that_fits_an_entry() -> None:
    limit = Settings(database_url="sqlite://", log_key_file=Path("log.skey")).max_statement_bytes
    assert limit == 60 * 1024
    assert limit + largest_record_overhead() <= tiles.MAX_ENTRY_SIZE


# --- over HTTP ------------------------------------------------------------------


@dataclass
class TiledLog:
    env: LedgerEnv
    http: TestClient
    log_key: Verifier
    #: the signed checkpoints produced while the log grew, by size
    checkpoints: dict[int, str]

    def fetch(self, paths: list[str] | None = None) -> tiles.Fetch:
        def get(path: str) -> bytes:
            if paths is not None:
                paths.append(path)
            response = self.http.get(f"/{path}")
            assert response.status_code == 200, (path, response.text)
            return response.content

        return get

    def open(self, note: str) -> Checkpoint:
        checkpoint, _ = open_checkpoint(note, origin=self.env.origin, verifier=self.log_key)
        return checkpoint


GROWTH = [254, 46, 298]  # after genesis and the patient: sizes 256, 302, 600


def make_tiled_log(env: LedgerEnv, **limits: int) -> TiledLog:
    settings = Settings(database_url=env.url, log_key_file=env.key_dir / "log.skey", **limits)
    http = TestClient(create_app(env.ledger, settings))
    return TiledLog(env=env, http=http, log_key=Verifier.from_vkey(env.log_vkey), checkpoints={})


@pytest.fixture(scope="module", params=BACKENDS)
def tiled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TiledLog]:
    """A log of 600 records per backend, grown in batches; read-only for the tests."""
    postgres = request.param == "postgres"
    url = (
        create_postgres_database()
        if postgres
        else f"sqlite:///{tmp_path_factory.mktemp('tiles-db') / 'ledger.db'}"
    )
    try:
        env = make_ledger_env(url, tmp_path_factory.mktemp("tiles-keys"))
        try:
            patient = register(env, "pat-tiles", "patient")
            log = make_tiled_log(env)
            for count in GROWTH:
                outcomes = env.ledger.append([Submission(attest(patient)) for _ in range(count)])
                assert all(isinstance(o, Receipt) for o in outcomes), outcomes
                note = env.ledger.reader.latest_checkpoint()
                log.checkpoints[log.open(note).size] = note
            assert sorted(log.checkpoints) == [256, 302, 600]
            yield log
            log.http.close()
        finally:
            env.ledger.close()
    finally:
        if postgres:
            drop_postgres_database(url)


def test_checkpoint_is_the_latest_signed_checkpoint(tiled: TiledLog) -> None:
    response = tiled.http.get("/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.text == tiled.http.get("/v1/checkpoint").text == tiled.checkpoints[600]
    checkpoint = tiled.open(response.text)
    assert checkpoint.size == 600


def test_a_client_rebuilds_the_checkpoint_root_from_tiles(tiled: TiledLog) -> None:
    checkpoint = tiled.open(tiled.http.get("/checkpoint").text)
    paths: list[str] = []
    root = tiles.root_from_tiles(checkpoint.size, tiled.fetch(paths))
    assert root == checkpoint.root_hash
    # 600 = 512 + 64 + 16 + 8: the first 512 leaves come from the level-1 tile
    # (two hashes, one per full level-0 tile), the rest from the partial level-0 tile
    assert sorted(paths) == ["tile/0/002.p/88", "tile/1/000.p/2"]


@pytest.mark.parametrize(
    ("size", "needed"),
    [
        (256, ["tile/1/000.p/1"]),  # the level-1 tile is .p/2 now
        (302, ["tile/0/001.p/46", "tile/1/000.p/1"]),  # the level-0 tile is full now
    ],
)
def test_earlier_checkpoints_can_still_be_checked_from_tiles(
    tiled: TiledLog, size: int, needed: list[str]
) -> None:
    # The spec: logs MUST serve the partial tiles of every checkpointed size.
    checkpoint = tiled.open(tiled.checkpoints[size])
    paths: list[str] = []
    assert tiles.root_from_tiles(size, tiled.fetch(paths)) == checkpoint.root_hash
    assert sorted(paths) == needed


def test_entry_bundles_hash_to_the_level_0_tiles(tiled: TiledLog) -> None:
    reader = tiled.env.ledger.reader
    checkpoint = tiled.open(tiled.http.get("/checkpoint").text)
    leaf_hashes: list[bytes] = []
    for n in range(3):
        tile = TileId(0, n, tiles.tile_width(checkpoint.size, 0, n))
        bundle = tiled.http.get(f"/{tile.to_entries_path()}", headers={"Accept-Encoding": "gzip"})
        assert bundle.status_code == 200
        entries = tiles.decode_entry_bundle(bundle.content)
        assert len(entries) == tile.width
        assert entries[0] == reader.record(tile.start).record_bytes
        hashes = tiles.split_hashes(tiled.http.get(f"/{tile.to_path()}").content, width=tile.width)
        assert [leaf_hash(e) for e in entries] == hashes
        leaf_hashes.extend(hashes)
    assert merkle.root(leaf_hashes) == checkpoint.root_hash
    # and the level-1 tile holds the hashes of the full level-0 tiles
    level_1 = tiles.split_hashes(tiled.http.get("/tile/1/000.p/2").content, width=2)
    assert level_1 == [merkle.root(leaf_hashes[:256]), merkle.root(leaf_hashes[256:512])]


@pytest.mark.parametrize("leaf_index", [0, 255, 256, 511, 599])
def test_inclusion_proofs_from_tiles_match_the_api(tiled: TiledLog, leaf_index: int) -> None:
    checkpoint = tiled.open(tiled.checkpoints[600])
    proof = tiles.inclusion_proof_from_tiles(leaf_index, 600, tiled.fetch())
    api = tiled.http.get(f"/v1/proofs/inclusion?leaf_index={leaf_index}&tree_size=600").json()
    assert [h.hex() for h in proof] == api["hashes"]
    record = tiled.env.ledger.reader.record(leaf_index)
    merkle.verify_inclusion(record.leaf_hash, leaf_index, 600, proof, checkpoint.root_hash)


@pytest.mark.parametrize(
    ("path", "length"),
    [
        ("tile/0/000", 8192),
        ("tile/0/001", 8192),
        ("tile/0/002.p/88", 88 * 32),
        ("tile/0/001.p/46", 46 * 32),  # a partial of a tile that is full now
        ("tile/1/000.p/2", 64),
        ("tile/1/000.p/1", 32),
    ],
)
def test_tiles_are_immutable_octet_streams(tiled: TiledLog, path: str, length: int) -> None:
    response = tiled.http.get(f"/{path}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["cache-control"] == IMMUTABLE
    assert len(response.content) == length
    tile = tiles.parse_tile_path(path)
    full = tiled.http.get(f"/{TileId(tile.level, tile.index, 256).to_path()}")
    if full.status_code == 200:  # a partial tile is a prefix of the full one
        assert full.content[:length] == response.content


def test_entry_bundles_are_immutable_and_gzipped_on_request(tiled: TiledLog) -> None:
    plain = tiled.http.get("/tile/entries/001", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/octet-stream"
    assert plain.headers["cache-control"] == IMMUTABLE
    assert plain.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in plain.headers
    assert int(plain.headers["content-length"]) == len(plain.content)
    for accept in ("gzip", "br;q=1.0, gzip;q=0.5", "*"):
        compressed = tiled.http.get("/tile/entries/001", headers={"Accept-Encoding": accept})
        assert compressed.headers["content-encoding"] == "gzip", accept
        assert compressed.content == plain.content  # httpx decodes it
        assert int(compressed.headers["content-length"]) < len(plain.content)
    for accept in ("gzip;q=0, br", "br", "*;q=0", "gzip;q=junk"):
        refused = tiled.http.get("/tile/entries/001", headers={"Accept-Encoding": accept})
        assert "content-encoding" not in refused.headers, accept
        assert refused.content == plain.content


MISSING = {
    "full tile past the right edge": "tile/0/003",
    "full tile of a partial one": "tile/0/002",
    "partial wider than the tree": "tile/0/002.p/89",
    "partial much wider than the tree": "tile/0/002.p/255",
    "level-1 tile wider than the tree": "tile/1/000.p/3",
    "full level-1 tile": "tile/1/000",
    "level-2 tile": "tile/2/000.p/1",
    "level-63 tile": "tile/63/000.p/1",
    "far index": "tile/0/x001/000",
    "index past any stored node": "tile/0/x018/x446/x744/x073/x709/x551/615.p/1",
    "entry bundle past the right edge": "tile/entries/003",
    "full entry bundle of a partial one": "tile/entries/002",
    "partial entry bundle wider than the log": "tile/entries/002.p/89",
    "entry bundle past any stored record": "tile/entries/x018/x446/x744/x073/x709/x551/615",
}


@pytest.mark.parametrize("path", MISSING.values(), ids=MISSING.keys())
def test_tiles_the_tree_does_not_hold_are_404(tiled: TiledLog, path: str) -> None:
    response = tiled.http.get(f"/{path}")
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["code"] == "not-found"


HTTP_BAD_PATHS = {
    **{
        k: v
        for k, v in BAD_TILE_PATHS.items()
        if k not in ("entries is not a level", "not a tile at all")
    },
    **BAD_ENTRIES_PATHS,
}
HTTP_BAD_PATHS.pop("a tile path")


@pytest.mark.parametrize("path", HTTP_BAD_PATHS.values(), ids=HTTP_BAD_PATHS.keys())
def test_bad_paths_are_400_never_500(tiled: TiledLog, path: str) -> None:
    response = tiled.http.get(f"/{path}")
    assert response.status_code == 400, (path, response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["code"] == "bad-tile-path"
    assert body["detail"]


def test_tiles_are_read_only(tiled: TiledLog) -> None:
    for path in ("/checkpoint", "/tile/0/000", "/tile/entries/000"):
        assert tiled.http.post(path, content=b"x").status_code == 405
        assert tiled.http.delete(path).status_code == 405


# --- the statement size limit, end to end ---------------------------------------

ENTRY = {"max_unit_price": 1, "max_quantity": 1, "max_days_supply": 1}


def policy_of_size(insurer: Signer, version: int, size: int) -> SignedStatement:
    """A ``policy.publish`` statement whose signed bytes are exactly ``size`` long."""

    def build(count: int, pad: int) -> SignedStatement:
        formulary: dict[str, Any] = {f"D{i:06d}": ENTRY for i in range(count)}
        formulary["Y" * (1 + min(pad, 63))] = ENTRY
        formulary["Z" * (1 + max(0, pad - 63))] = ENTRY
        body = {
            "version": version,
            "formulary": formulary,
            "refill_threshold_pct": 75,
            "copay_bp": 2000,
            "controlled_allowed": False,
            "controlled_max_days_supply": 7,
        }
        return make_statement(insurer, "policy.publish", body)

    base = len(build(0, 0).signed_bytes)
    per_entry = len(build(1, 0).signed_bytes) - base
    count = (size - base) // per_entry
    pad = size - len(build(count, 0).signed_bytes)
    assert 0 <= pad <= 126, pad
    signed = build(count, pad)
    assert len(signed.signed_bytes) == size
    return signed


def test_statements_up_to_the_limit_are_served_in_entry_bundles(ledger_env: LedgerEnv) -> None:
    insurer = register(ledger_env, "insurer-big", "insurer")
    log = make_tiled_log(ledger_env)
    limit = Settings(database_url="sqlite://", log_key_file=Path("log.skey")).max_statement_bytes
    try:
        over = policy_of_size(insurer, 1, limit + 1)
        refused = log.http.post("/v1/statements", json=over.to_json())
        assert refused.status_code == 413
        assert refused.headers["content-type"].startswith(PROBLEM_JSON)
        assert refused.json()["code"] == "too-large"
        assert str(limit) in refused.json()["detail"]

        at = policy_of_size(insurer, 1, limit)
        accepted = log.http.post("/v1/statements", json=at.to_json())
        assert accepted.status_code == 201, accepted.text
        seq = accepted.json()["seq"]
        size = seq + 1
        tile = TileId(0, seq // 256, tiles.tile_width(size, 0, seq // 256))
        bundle = log.http.get(f"/{tile.to_entries_path()}")
        assert bundle.status_code == 200
        entry = tiles.decode_entry_bundle(bundle.content)[seq - tile.start]
        assert entry == ledger_env.ledger.reader.record(seq).record_bytes
        assert at.signed_bytes in entry
        assert limit < len(entry) <= tiles.MAX_ENTRY_SIZE
        checkpoint = log.open(log.http.get("/checkpoint").text)
        assert tiles.root_from_tiles(size, log.fetch()) == checkpoint.root_hash
    finally:
        log.http.close()


def test_a_record_too_large_for_an_entry_bundle_is_a_loud_error(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sequencer refuses such statements, as the API does...
    insurer = register(ledger_env, "insurer-huge", "insurer")
    signed = policy_of_size(insurer, 1, tiles.MAX_ENTRY_SIZE)
    (refused,) = ledger_env.ledger.append([Submission(signed)])
    assert isinstance(refused, RejectionError)
    assert refused.code == "too-large"
    # ...but should a future code path write one, its bundle is refused, not truncated.
    monkeypatch.setattr(sequencer, "MAX_STATEMENT", 10 * tiles.MAX_ENTRY_SIZE)
    log = make_tiled_log(ledger_env)
    try:
        (outcome,) = ledger_env.ledger.append([Submission(signed)])
        assert isinstance(outcome, Receipt), outcome
        size = outcome.seq + 1
        path = TileId(0, 0, size).to_entries_path()
        response = log.http.get(f"/{path}")
        assert response.status_code == 500
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["code"] == "entry-too-large"
        assert f"entry {outcome.seq} is" in body["detail"]
        # the tree itself is fine: its tiles still give the signed root
        checkpoint = log.open(log.http.get("/checkpoint").text)
        assert tiles.root_from_tiles(size, log.fetch()) == checkpoint.root_hash
    finally:
        log.http.close()


def test_tiles_of_a_new_log(ledger_env: LedgerEnv) -> None:
    log = make_tiled_log(ledger_env)
    try:
        checkpoint = log.open(log.http.get("/checkpoint").text)
        size = checkpoint.size
        assert 0 < size < 256
        assert tiles.root_from_tiles(size, log.fetch()) == checkpoint.root_hash
        assert log.http.get(f"/tile/0/000.p/{size}").status_code == 200
        assert log.http.get(f"/tile/0/000.p/{size + 1}").status_code == 404
        assert log.http.get("/tile/0/000").status_code == 404
        assert log.http.get("/tile/1/000.p/1").status_code == 404
        bundle = log.http.get(f"/tile/entries/000.p/{size}")
        assert [leaf_hash(e) for e in tiles.decode_entry_bundle(bundle.content)] == [
            ledger_env.ledger.reader.record(i).leaf_hash for i in range(size)
        ]
    finally:
        log.http.close()


def test_junk_paths_never_make_a_500(tiled: TiledLog) -> None:
    rng = random.Random(20260101)
    alphabet = "0123456789x./p-entriesX"
    for _ in range(40):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16)))
        for prefix in ("/tile/", "/tile/0/", "/tile/entries/"):
            response = tiled.http.get(prefix + junk)
            assert response.status_code in (200, 400, 404), (prefix + junk, response.text)
            assert response.status_code == 200 or response.json()["code"] in (
                "bad-tile-path",
                "not-found",
            )

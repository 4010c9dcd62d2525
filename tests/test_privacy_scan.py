"""No patient identity and no drug name in clear, anywhere the ledger writes.

After a demo run (on SQLite and on PostgreSQL), the whole database is read
generically, by reflection: every column of every table, each value as bytes
(text as UTF-8, binary as is, anything else as its text). On SQLite the
database file itself (and its ``-wal`` and ``-journal`` when there) is
scanned too, so that no page, index or free-list left-over escapes. Then
bundles exported from the ledger (``export_bundle``, as ``rxledger export``)
are scanned member by member, decompressed, with every base64 string in
their JSON decoded as well (a record travels as base64).

What is looked for, case-insensitively: each demo patient's synthetic
identity number (and its first 17 digits) and name, and every drug name the
demo prescribed (the full name and its first word). The scans are not
vacuous: the identities are the ones the pseudonyms were derived from, the
drug names are found in the payloads the vault opens, and the same scanner
finds the patients' pseudonyms, which are stored.
"""

from __future__ import annotations

import base64
import binascii
import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, select
from sqlalchemy.engine import make_url

from ledger.auditing import DbSource, export_bundle
from ledger.demo import CATALOGUE, DemoReport, id_check_character, run_demo
from ledger.store.schema import payloads
from tests.conftest import LedgerEnv, make_ledger_env


@dataclass(frozen=True)
class Needle:
    """A secret to look for: what it is (no secret in it), and its lowered bytes."""

    what: str
    text: bytes


def needle(what: str, text: str) -> Needle:
    return Needle(what, text.encode().lower())


def render(value: Any) -> bytes:
    """A stored value as bytes: text as UTF-8, binary as is, anything else as text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def found(haystack: bytes, needles: Iterable[Needle]) -> list[str]:
    lowered = haystack.lower()
    return [n.what for n in needles if n.text in lowered]


def database_columns(engine: Engine) -> Iterator[tuple[str, bytes]]:
    """``(table.column, every value of it)`` for every column of every table."""
    meta = MetaData()
    meta.reflect(bind=engine)
    assert {"records", "payloads", "data_keys", "projections"} <= set(meta.tables)
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            values: list[list[bytes]] = [[] for _ in table.columns]
            for row in conn.execute(select(table)):
                for i, value in enumerate(row):
                    if value is not None:
                        values[i].append(render(value))
            for column, rendered in zip(table.columns, values, strict=True):
                yield f"{table.name}.{column.name}", b"\x00".join(rendered)


def sqlite_files(url: str) -> list[Path]:
    database = make_url(url).database
    assert database
    path = Path(database)
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.is_file()]


def json_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)


def member_views(data: bytes) -> bytes:
    """A bundle member, and every base64 string in it (JSON or JSON lines) decoded."""
    parts = [data]
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data
    documents: list[Any] = []
    try:
        documents.append(json.loads(text))
    except json.JSONDecodeError:
        documents.extend(json.loads(line) for line in text.splitlines() if line.strip())
    for document in documents:
        for string in json_strings(document):
            if len(string) < 8 or len(string) % 4:
                continue
            try:
                parts.append(base64.b64decode(string, validate=True))
            except (binascii.Error, ValueError):
                continue
    return b"\x00".join(parts)


def bundle_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def opened_payloads(env: LedgerEnv) -> list[dict[str, Any]]:
    """Every stored payload, opened by the vault (the operator holds the master key)."""
    with env.ledger.engine.connect() as conn:
        seqs = [int(s) for s in conn.execute(select(payloads.c.seq)).scalars()]
    opened = []
    for seq in seqs:
        plain = env.ledger.reader.payload(seq)
        assert plain is not None, f"the payload of record {seq} does not open"
        opened.append(json.loads(plain))
    return opened


def drug_names(opened: list[dict[str, Any]]) -> set[str]:
    return {
        item["drug_name"]
        for content in opened
        for item in content.get("items", [])
        if "drug_name" in item
    }


def identity_needles(env: LedgerEnv, report: DemoReport) -> list[Needle]:
    """Each patient's ID number (whole and without its check character) and name,
    after checking that they are what the patient's pseudonym was derived from."""
    identities = report.identities
    assert len(identities) == sum(report.patients.values()) >= 40
    assert len({i.id_number for i in identities.values()}) == len(identities)
    out = []
    for n, (pseudonym, identity) in enumerate(sorted(identities.items())):
        number = identity.id_number
        assert len(number) == 18, "not a resident identity number"
        assert number[:17].isdigit(), "not a resident identity number"
        assert number[17] == id_check_character(number[:17]), "a wrong check character"
        assert 2 <= len(identity.name) <= 3
        assert env.ledger.vault.master.pseudonym(number) == pseudonym
        out += [
            needle(f"the ID number of patient #{n}", number),
            needle(f"the ID number (17 digits) of patient #{n}", number[:17]),
            needle(f"the name of patient #{n}", identity.name),
        ]
    return out


def drug_needles(names: set[str]) -> list[Needle]:
    out = {needle(f"drug name {name!r}", name) for name in names}
    out |= {needle(f"drug word {name.split()[0]!r}", name.split()[0]) for name in names}
    return sorted(out, key=lambda n: n.what)


def test_no_identity_or_drug_name_in_clear(database_url: str, backend: str, tmp_path: Path) -> None:
    env = make_ledger_env(database_url, tmp_path / "keys")
    try:
        report = run_demo(
            env.ledger,
            env.registrar,
            prescriptions=80,
            seed=17,
            key_dir=tmp_path / "settlement",
            batch_size=100,
        )
        assert report.unexpected == {}
        assert "identities" not in json.dumps(report.to_json())
        assert "identities" not in repr(report)

        # the secrets exist and were used: the scans below are not vacuous
        opened = opened_payloads(env)
        names = drug_names(opened)
        assert len(names) >= 10
        assert names <= {d.name for d in CATALOGUE}
        secrets = identity_needles(env, report) + drug_needles(names)
        plaintext = b"\x00".join(json.dumps(o, ensure_ascii=False).encode() for o in opened)
        assert set(found(plaintext, drug_needles(names))) == {
            n.what for n in drug_needles(names)
        }, "the scanner does not find the drug names where they are"
        pseudonyms = [needle(f"pseudonym {p}", p) for p in report.identities]

        # every column of every table
        leaks: dict[str, list[str]] = {}
        stored: set[str] = set()
        columns = 0
        for column, values in database_columns(env.ledger.engine):
            columns += 1
            if hits := found(values, secrets):
                leaks[column] = hits
            stored.update(found(values, pseudonyms))
        assert columns > 20
        # (a patient never enrolled and without a wallet may be named by no record)
        assert len(stored) >= len(pseudonyms) * 9 // 10, "the scan misses stored pseudonyms"
        assert leaks == {}, f"in clear in the database: {leaks}"

        # the SQLite file itself, and its write-ahead log
        if backend == "sqlite":
            files = sqlite_files(env.url)
            assert files
            assert files[0].stat().st_size > 0
            for path in files:
                hits = found(path.read_bytes(), secrets)
                assert not hits, f"in clear in {path.name}: {hits}"
            whole = b"".join(p.read_bytes() for p in files)
            assert set(found(whole, pseudonyms)) >= stored

        # bundles: the whole log, and a range (with its anchor and registry members)
        source = DbSource(env.ledger.engine)
        whole_log = tmp_path / "all.zip"
        export_bundle(source, whole_log, log_vkey=env.log_vkey, registrar_vkey=env.registrar_vkey)
        ranged = tmp_path / "range.zip"
        result = export_bundle(
            source,
            ranged,
            first=report.tree_size // 2,
            log_vkey=env.log_vkey,
            registrar_vkey=env.registrar_vkey,
        )
        assert result.registry_records > 0
        exported: set[str] = set()
        for bundle in (whole_log, ranged):
            members = bundle_members(bundle)
            assert "records.jsonl" in members
            for name, data in members.items():
                view = member_views(data)
                hits = found(view, secrets)
                assert not hits, f"in clear in {bundle.name}:{name}: {hits}"
                exported.update(found(view, pseudonyms))
        # the records in the bundle name the patients by pseudonym: they were scanned
        assert len(exported) > len(pseudonyms) // 2
    finally:
        env.ledger.close()

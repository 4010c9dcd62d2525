"""The master key (issue 6): sealing, pseudonyms, and how the service handles the key.

The service refuses to start without its master key, or with another
ledger's, with one clear line; no key material appears in what it prints.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.core.sealing import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    MasterKey,
    MasterKeyError,
    SealError,
    new_data_key,
    normalize_identifier,
    open_payload,
    seal_payload,
)
from ledger.service import Ledger, init_ledger

BIN = Path(sys.executable).parent
DIGEST = bytes(range(32))


# --- the primitives ---------------------------------------------------------------


def test_a_sealed_payload_opens_only_with_its_key_record_and_digest() -> None:
    key = new_data_key()
    sealed = seal_payload(key, 7, DIGEST, b'{"drug":"x"}')
    assert b"drug" not in sealed
    assert open_payload(key, 7, DIGEST, sealed) == b'{"drug":"x"}'
    for bad in (
        lambda: open_payload(new_data_key(), 7, DIGEST, sealed),  # another key
        lambda: open_payload(key, 8, DIGEST, sealed),  # moved to another record
        lambda: open_payload(key, 7, bytes(32), sealed),  # another commitment
        lambda: open_payload(key, 7, DIGEST, sealed[:-1] + bytes([sealed[-1] ^ 1])),
        lambda: open_payload(key, 7, DIGEST, b"\x02" + sealed[1:]),  # unknown format
    ):
        with pytest.raises(SealError):
            bad()


def test_a_wrapped_data_key_opens_only_for_its_owner_under_its_master_key() -> None:
    master, data_key = MasterKey.generate(), new_data_key()
    wrapped = master.wrap("P-1", data_key)
    assert master.unwrap("P-1", wrapped) == data_key
    with pytest.raises(SealError):
        master.unwrap("P-2", wrapped)
    with pytest.raises(SealError):
        MasterKey.generate().unwrap("P-1", wrapped)


def test_pseudonyms_are_stable_keyed_and_reveal_nothing() -> None:
    one, two = MasterKey.generate(), MasterKey.generate()
    ident = "11010519491231002X"
    first = one.pseudonym(ident)
    assert first == one.pseudonym(" 110105 19491231002x ")  # as typed: case, spaces
    assert first.startswith("P-")
    assert len(first) == 34  # "P-" and 128 bits in hex
    assert two.pseudonym(ident) != first  # nobody without the key can test a guess
    assert one.pseudonym("110105194912310038") != first
    assert normalize_identifier(" ab c ") == "ABC"
    with pytest.raises(ValueError, match="empty"):
        one.pseudonym("  ")


def test_the_master_key_never_shows_itself() -> None:
    key = MasterKey.generate()
    assert key.encoded() not in repr(key)
    assert key.secret.hex() not in repr(key)
    assert len(key.key_id) == 16
    assert key.key_id not in key.encoded()
    with pytest.raises(MasterKeyError) as caught:
        MasterKey.parse("c2VjcmV0LXNob3J0", source="TEST")  # base64 of 12 bytes
    assert "c2VjcmV0LXNob3J0" not in str(caught.value)
    with pytest.raises(MasterKeyError) as caught:
        MasterKey.parse("not base64 but a secret!", source="TEST")
    assert "secret" not in str(caught.value)


# --- the service ----------------------------------------------------------------------


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, MASTER_KEY_FILE_ENV)}
    env.update(RXLEDGER_HOME=str(home), **extra)
    return env


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rxledger"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def initialized(tmp_path: Path) -> tuple[Path, str, Path]:
    """``rxledger init`` with no key configured: it writes ``master.key`` (0600)."""
    home = tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    done = _run("init", "--db", url, env=_env(home))
    assert done.returncode == 0, done.stderr
    key_file = home / "keys" / "master.key"
    assert f"master key written (mode 0600): {key_file}" in done.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    MasterKey.parse(key_file.read_text(), source="test")  # well-formed
    return home, url, key_file


def test_serve_refuses_to_start_without_its_master_key(initialized: tuple[Path, str, Path]) -> None:
    home, url, key_file = initialized
    secret = key_file.read_text().strip()
    key_file.unlink()
    done = _run("serve", "--db", url, "--port", "1", env=_env(home))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "master key" in lines[0]
    assert MASTER_KEY_ENV in lines[0]
    assert "Traceback" not in done.stderr
    assert secret not in done.stderr + done.stdout


def test_serve_refuses_another_ledgers_master_key_without_showing_either(
    initialized: tuple[Path, str, Path],
) -> None:
    home, url, key_file = initialized
    ours = key_file.read_text().strip()
    theirs = MasterKey.generate().encoded()
    done = _run("serve", "--db", url, "--port", "1", env=_env(home, **{MASTER_KEY_ENV: theirs}))
    assert done.returncode != 0
    assert "not this ledger's" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    for secret in (ours, theirs):
        assert secret not in done.stderr + done.stdout


def test_a_malformed_key_is_refused_without_echoing_it(
    initialized: tuple[Path, str, Path],
) -> None:
    home, url, _ = initialized
    bad = "this-is-not-a-key-but-looks-secret"
    done = _run("serve", "--db", url, "--port", "1", env=_env(home, **{MASTER_KEY_ENV: bad}))
    assert done.returncode != 0
    assert MASTER_KEY_ENV in done.stderr
    assert bad not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_the_key_can_come_from_a_named_file(tmp_path: Path) -> None:
    key = MasterKey.generate()
    key_path = tmp_path / "elsewhere.key"
    key_path.write_text(key.encoded())
    session_key = os.environ.pop(MASTER_KEY_ENV)
    os.environ[MASTER_KEY_FILE_ENV] = str(key_path)
    try:
        url = f"sqlite:///{tmp_path / 'l.db'}"
        result = init_ledger(url, key_dir=tmp_path / "keys")
        assert not (tmp_path / "keys" / "master.key").exists()  # the named file is used
        ledger = Ledger.open(url, log_key_file=result.log_key_file)
        try:
            assert ledger.vault.master.key_id == key.key_id
        finally:
            ledger.close()
    finally:
        os.environ.pop(MASTER_KEY_FILE_ENV)
        os.environ[MASTER_KEY_ENV] = session_key  # the session's, restored


def test_verify_without_the_master_key_checks_all_but_the_flow_rules(
    initialized: tuple[Path, str, Path],
) -> None:
    home, url, key_file = initialized
    with_key = _run("verify", "--db", url, "--json", env=_env(home))
    assert with_key.returncode == 0, with_key.stderr
    assert '"rules": "all"' in with_key.stdout
    key_file.unlink()
    without = _run("verify", "--db", url, env=_env(home))
    assert without.returncode == 0, without.stderr
    assert "no master key" in without.stdout
    assert "signers only" in without.stdout

"""The layering of ARCHITECTURE §2, and the repo's own lint and type configuration.

The import contracts live in pyproject.toml ([tool.importlinter]); ruff and
mypy run in the configuration the repo declares. A violation fails the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_import_contracts_hold() -> None:
    result = run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    "module", ["ledger.core.merkle", "ledger.core.verify", "ledger.domain.rules"]
)
def test_pure_layers_load_without_frameworks(module: str) -> None:
    """Importing the pure core pulls in no database, web or CLI framework at run time."""
    code = (
        f"import sys, {module}; "
        "bad = [m for m in ('sqlalchemy', 'fastapi', 'click', 'httpx') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_ruff_is_clean() -> None:
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout[-4000:]
    result = run(str(BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_strict_is_clean() -> None:
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout[-4000:]

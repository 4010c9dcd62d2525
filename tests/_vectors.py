"""Where the shared conformance vectors live: ``../shared/vectors`` from the project root.

They are loaded from there, never copied into the project. ``RXLEDGER_VECTORS``
overrides the location. A missing folder is an error, not a skip: the vectors are
the conformance bar.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VECTORS_DIR = Path(os.environ.get("RXLEDGER_VECTORS", PROJECT_ROOT.parent / "shared" / "vectors"))


def load_vectors(name: str) -> Any:
    path = VECTORS_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"conformance vectors not found at {path}; "
            "set RXLEDGER_VECTORS to the shared/vectors folder"
        )
    return json.loads(path.read_text(encoding="utf-8"))

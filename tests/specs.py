"""Where the API specs live: `RELAYBIRD_SPECS`, by default `../shared/specs` beside the project root.

The specs are read, never copied into the project. Conformance tests may skip only when that folder
does not exist at all; a folder that exists but lacks a file is a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def specs_dir() -> Path:
    configured = os.environ.get("RELAYBIRD_SPECS")
    folder = Path(configured) if configured else PROJECT_ROOT.parent / "shared" / "specs"
    if not folder.is_dir():
        if os.environ.get("RELAYBIRD_REQUIRE_SPECS"):
            pytest.fail(f"API specs folder {folder} is missing and RELAYBIRD_REQUIRE_SPECS is set")
        pytest.skip(f"API specs folder {folder} does not exist (set RELAYBIRD_SPECS)")
    return folder


def load_spec(relative: str) -> Any:
    return json.loads((specs_dir() / relative).read_text(encoding="utf-8"))

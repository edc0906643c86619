"""The public API: what trioserve exports is what docs/api.md documents."""

from __future__ import annotations

import re
from pathlib import Path

import trioserve

API_DOC = Path(__file__).parents[2] / "docs" / "api.md"


def test_exports_match_the_api_page():
    """Every name in trioserve.__all__ has a row in docs/api.md, and every row is exported."""
    documented = set(re.findall(r"^\| `([A-Za-z_]+)` \|", API_DOC.read_text(), re.MULTILINE))
    assert documented == set(trioserve.__all__)


def test_exports_exist_and_private_modules_are_not_exported():
    """Each exported name resolves, and no private module leaks into __all__."""
    for name in trioserve.__all__:
        assert hasattr(trioserve, name), name
        assert not name.startswith("_") or name == "__version__"

"""The install line of docs/testing.md works before trioserve has a release on PyPI."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).parents[2] / "docs" / "testing.md"


def test_testing_doc_installs_trioserve_from_a_checkout() -> None:
    """docs/testing.md installs trioserve from a path, not by a name PyPI does not have."""
    lines = [line.strip() for line in DOC.read_text().splitlines() if "pip install" in line]
    assert lines, "docs/testing.md says how to install"
    for line in lines:
        words = line.split("pip install", 1)[1].split()
        assert "trioserve" not in words and not re.match(r"'?trioserve\[", words[0]), line
        assert any(word.startswith(("/", "./", ".")) for word in words), line

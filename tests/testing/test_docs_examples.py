"""The examples of docs/testing.md run as they are written.

Each tested block is a ```python fence right after a ``<!-- test: NAME -->`` line; the
pytest ones run in a pytester directory in trio mode, the other one as a script.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOC = Path(__file__).parents[2] / "docs" / "testing.md"
BLOCK = re.compile(r"^<!-- test: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)^```$", re.M | re.S)


def examples() -> dict[str, str]:
    """NAME -> code of each tested block of docs/testing.md."""
    return {match["name"]: match["code"] for match in BLOCK.finditer(DOC.read_text())}


def test_the_tested_examples_are_there() -> None:
    """The page still has its three tested examples, and the two tests are short."""
    found = examples()
    assert set(found) == {"starlette", "tcp", "without-pytest"}
    for name in ("starlette", "tcp"):
        assert len([line for line in found[name].splitlines() if line.strip()]) <= 10, name


def test_the_starlette_and_tcp_examples_pass(pytester: pytest.Pytester) -> None:
    """The Starlette test and the raw TCP handler test pass as written, with the plugin."""
    found = examples()
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_starlette=found["starlette"], test_tcp=found["tcp"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    result.assert_outcomes(passed=2)


def test_the_example_without_pytest_runs(tmp_path: Path) -> None:
    """The serving() example runs to completion as a script."""
    script = tmp_path / "example.py"
    script.write_text(examples()["without-pytest"])
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr

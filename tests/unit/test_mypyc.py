"""The optional build compiled with mypyc: which modules it compiles, how a running
server says it is in use, and a build backend that asks for mypy only when told to."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

import trioserve
from trioserve import _mypyc
from trioserve._mypyc import COMPILED_MODULES, build_description, compiled_modules

ROOT = Path(__file__).parents[2]


def test_the_modules_under_test_are_the_build_asked_for() -> None:
    """Every listed module is compiled when TRIOSERVE_TEST_MYPYC=1 says the tests run
    against the compiled build (.ci/run's second venv), and none is otherwise (a stale
    extension beside the source would shadow it)."""
    if os.environ.get("TRIOSERVE_TEST_MYPYC") == "1":
        assert compiled_modules() == list(COMPILED_MODULES)
        assert build_description() == "compiled with mypyc"
    else:
        assert compiled_modules() == []
        assert build_description() == ""


def test_compiled_modules_reads_where_each_module_loads_from() -> None:
    """A module counts as compiled when it loads from an extension module, and the
    listed modules are all trioserve's (setup.py builds each from its .py file, which
    the compiled build installs beside it)."""
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        source = (Path(trioserve.__file__).parents[1] / Path(*name.split("."))).with_suffix(".py")
        assert source.is_file(), name
    assert _mypyc.compiled_modules() == [
        name
        for name in COMPILED_MODULES
        if not str(importlib.util.find_spec(name).origin).endswith(".py")  # type: ignore[union-attr]
    ]


@pytest.mark.parametrize(
    ("compiled", "text"),
    [
        ([], ""),
        (list(COMPILED_MODULES), "compiled with mypyc"),
        (
            ["trioserve._serve_http", "trioserve._proto.http"],
            "compiled with mypyc: _serve_http, _proto.http only",
        ),
    ],
)
def test_build_description(monkeypatch: pytest.MonkeyPatch, compiled: list[str], text: str) -> None:
    """Nothing for pure Python, a short note for the whole compiled build, and the
    modules by name for a partial one."""
    monkeypatch.setattr(_mypyc, "compiled_modules", lambda: compiled)
    assert build_description() == text


def _backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "trioserve_backend", ROOT / "_build_backend" / "trioserve_backend.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_needs_mypy_only_when_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain wheel build asks for no mypy; TRIOSERVE_MYPYC=1 adds mypy and the
    dependencies mypy reads the types of. An editable install is never compiled."""
    backend = _backend()
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("TRIOSERVE_MYPYC", raising=False)
    plain = backend.get_requires_for_build_wheel()
    assert not any(requirement.startswith("mypy") for requirement in plain)
    monkeypatch.setenv("TRIOSERVE_MYPYC", "0")
    assert backend.get_requires_for_build_wheel() == plain
    monkeypatch.setenv("TRIOSERVE_MYPYC", "1")
    compiled = backend.get_requires_for_build_wheel()
    assert "mypy>=1.11" in compiled
    assert any(requirement.startswith("trio>=") for requirement in compiled)
    assert os.environ["TRIOSERVE_MYPYC"] == "1"  # restored after setuptools' question
    with pytest.raises(RuntimeError, match="editable install"):
        backend.get_requires_for_build_editable()
    with pytest.raises(RuntimeError, match="editable install"):
        backend.build_editable(str(ROOT / "dist-never-written"))
    monkeypatch.delenv("TRIOSERVE_MYPYC")
    assert not any(r.startswith("mypy") for r in backend.get_requires_for_build_editable())
    assert sys.modules.get("trioserve_backend") is None

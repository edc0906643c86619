"""The import graph of trioserve/: no circles, and the layers import downwards only.

The graph is read from the source (every ``import`` and ``from ... import`` anywhere in
a module, including those inside functions and under ``if TYPE_CHECKING:``), so an
import hidden from the interpreter's import order still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trioserve

PACKAGE = Path(trioserve.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The trioserve modules that module ``name`` imports, wherever in it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {
                f"{target}.{alias.name}"
                for alias in node.names
                if f"{target}.{alias.name}" in modules
            }
            found.update(submodules)
            # ``from . import _x`` imports the submodule; the package is loaded anyway.
            if len(submodules) < len(node.names) and target in modules:
                found.add(target)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as the path round it), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph[node]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


def test_graph_reader_sees_local_and_type_checking_imports(tmp_path: Path) -> None:
    """The reader counts imports inside functions and under TYPE_CHECKING, and finds a circle."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .b import g\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    modules = {"pkg": package / "__init__.py", "pkg.a": package / "a.py", "pkg.b": package / "b.py"}
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert _find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_no_import_circle() -> None:
    """No module of trioserve/ imports, even lazily or for typing only, one that imports it back."""
    assert _find_cycle(_graph()) is None


# From the top down: each layer may import the ones below it, never one above.
LAYERS = [
    ["trioserve._cli"],
    ["trioserve._server"],
    ["trioserve._master"],
    ["trioserve._worker"],
    ["trioserve._pipeline"],
    ["trioserve._serve_http", "trioserve._serve_h2", "trioserve._serve_ws", "trioserve._serve_tcp"],
    ["trioserve._exchange"],
    ["trioserve._proto"],
]


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_layers_import_downwards(layer: int) -> None:
    """cli -> entry (_server) -> master -> worker -> pipeline -> edges -> exchange -> proto,
    one way."""
    graph = _graph()
    above = {name for upper in LAYERS[:layer] for name in upper}
    for name in LAYERS[layer]:
        members = [module for module in graph if module == name or module.startswith(name + ".")]
        assert members, name
        for module in members:
            reached = _reachable(graph, module)
            assert not reached & above, f"{module} imports (through others) {reached & above}"


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


# Above every layer: what starts one (the package, the docs generator, the preloader
# process, the testing helpers). Every other module is a helper any layer may use.
TOPS = (
    "trioserve",
    "trioserve.__main__",
    "trioserve._docs",
    "trioserve._preload",
    "trioserve._worker_main",
)
# Run as ``python -m``: a module the package imports would be loaded twice (runpy warns).
PROCESS_ENTRIES = ("trioserve.__main__", "trioserve._preload", "trioserve._worker_main")


def test_helper_modules_import_no_layer() -> None:
    """A module outside the layers (settings, hooks, errors, ...) reaches none of them
    but the sans-IO protocol at the bottom."""
    graph = _graph()
    layered = {
        module
        for layer in LAYERS[:-1]
        for name in layer
        for module in graph
        if module == name or module.startswith(name + ".")
    }
    for module in graph:
        if (
            module in layered
            or module in TOPS
            or module.startswith(("trioserve.testing", "trioserve._proto"))
        ):
            continue
        reached = _reachable(graph, module) & layered
        assert not reached, f"{module} imports (through others) {reached}"


@pytest.mark.parametrize("entry", PROCESS_ENTRIES)
def test_process_entries_are_imported_by_no_module(entry: str) -> None:
    """What runs as ``python -m`` (the command line, the preloader, a worker) is imported
    by no module of the package, so it is loaded once, as ``__main__``."""
    graph = _graph()
    assert entry in graph
    assert [module for module, targets in graph.items() if entry in targets] == []

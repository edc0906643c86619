"""The optional build of trioserve with its hot modules compiled by mypyc (see
docs/deployment.md, "The compiled build"): which modules it compiles, and whether they
are in use. (The decorator that lets pure-Python classes extend compiled ones is in
_proto/compiled.py.)

The package is pure Python; ``TRIOSERVE_MYPYC=1 pip install .`` builds the modules named
in :data:`COMPILED_MODULES` with mypyc from the same source (setup.py reads the list from
here), and the ``.py`` files stay beside them as the fallback source. This module imports
nothing of trioserve, so setup.py can load it before the package is installed.
"""

from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES

# The keep-alive and connection-per-request path of HTTP/1.1 (issue 16): the edge, the
# exchange, the response serializer, the head split and checks, the llhttp parser's
# adapter, the prefixed stream. (docs/performance.md, "Issue 16: mypyc", measures each.)
COMPILED_MODULES = (
    "trioserve._serve_http",
    "trioserve._exchange",
    "trioserve._streams",
    "trioserve._proto.http",
    "trioserve._proto.http1",
    "trioserve._proto.validate",
    "trioserve._proto.llhttp",
)


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED_MODULES` that load (or were loaded) from a compiled
    extension rather than their ``.py`` file. Imports none of them."""
    found = []
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(name)
    return found


def build_description() -> str:
    """How this installation runs the hot modules, for ``--version`` and the start-up
    log: empty for pure Python (the default build), else which are compiled."""
    compiled = compiled_modules()
    if not compiled:
        return ""
    if len(compiled) == len(COMPILED_MODULES):
        return "compiled with mypyc"
    # A partial build (a module failed to build, or a stale extension): say which.
    short = ", ".join(name.removeprefix("trioserve.") for name in compiled)
    return f"compiled with mypyc: {short} only"

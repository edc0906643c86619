"""Build script: everything is in pyproject.toml, except the optional build with the hot
modules compiled by mypyc (``TRIOSERVE_MYPYC=1 pip install .``; see docs/deployment.md,
"The compiled build"). Without the switch the package is pure Python and needs no mypy."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import setup

ext_modules = []
if os.environ.get("TRIOSERVE_MYPYC", "") not in ("", "0"):
    from mypyc.build import mypycify

    # The list of modules lives in the package (trioserve/_mypyc.py, which imports
    # nothing of trioserve), so that the running server can say which are compiled.
    spec = importlib.util.spec_from_file_location("_trioserve_mypyc", "trioserve/_mypyc.py")
    assert spec is not None and spec.loader is not None
    listing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(listing)
    paths = [str(Path(*name.split("."))) + ".py" for name in listing.COMPILED_MODULES]
    # The build environment has the dependencies but not the optional extras (h2,
    # watchfiles...): modules that only other parts of the package import are taken as
    # Any, and errors in the modules not compiled are not reported (CI runs mypy --strict
    # on the whole package).
    flags = ["--ignore-missing-imports", "--follow-imports=silent"]
    ext_modules = mypycify([*paths, *flags], opt_level="3")

setup(ext_modules=ext_modules)

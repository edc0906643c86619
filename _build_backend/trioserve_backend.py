"""trioserve's build backend: setuptools', plus mypy as a build dependency when
``TRIOSERVE_MYPYC=1`` asks for the build with the hot modules compiled by mypyc (see
setup.py and docs/deployment.md, "The compiled build"). A plain build needs setuptools
only."""

from __future__ import annotations

import os
import tomllib
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the PEP 517 hooks, passed through)


def _mypyc_requires() -> list[str]:
    """What mypyc needs to compile the modules: mypy itself, and the packages they import,
    for their types (the project's dependencies, and httptools for ``--http httptools``;
    setup.py tells mypy to take the optional extras' modules as Any)."""
    with open("pyproject.toml", "rb") as file:
        dependencies: list[str] = tomllib.load(file)["project"]["dependencies"]
    return ["mypy>=1.11", "httptools>=0.6.0", *dependencies]


def _compiled() -> bool:
    return os.environ.get("TRIOSERVE_MYPYC", "") not in ("", "0")


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """setuptools' wheel requirements, and mypy's when the build compiles."""
    if not _compiled():
        return _setuptools.get_requires_for_build_wheel(config_settings)
    # setuptools runs setup.py to ask: without the switch then, since mypy (which setup.py
    # imports for the compiled build) is what this adds.
    switch = os.environ.pop("TRIOSERVE_MYPYC")
    try:
        requires = _setuptools.get_requires_for_build_wheel(config_settings)
    finally:
        os.environ["TRIOSERVE_MYPYC"] = switch
    return requires + _mypyc_requires()


def _refuse_editable() -> None:
    if _compiled():
        raise RuntimeError(
            "TRIOSERVE_MYPYC=1 builds a wheel: an editable install (pip install -e) "
            "runs the source as it is; build the compiled modules with pip install ."
        )


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    """An editable install is never compiled: refused with the switch (see build_editable)."""
    _refuse_editable()
    return _setuptools.get_requires_for_build_editable(config_settings)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    """An editable install, always pure Python: compiled extensions beside the source
    would shadow every later edit of it."""
    _refuse_editable()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)

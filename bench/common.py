"""What the benchmark scripts share: ports, the facts a result belongs to, argument types."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import hashlib
import importlib.util
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    """A port that was free a moment ago.

    The hypercorn and uvicorn CLIs cannot report the port they bound for ``:0``, so
    the port is picked here right before the server starts. The race with other
    programs is acceptable in a benchmark script, not in tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def sources_fingerprint() -> dict[str, str]:
    """A hash of each of trioserve's source files, to notice a tree that changed.

    ``git describe --dirty`` cannot tell two uncommitted states apart, and the tree
    may be edited while a benchmark runs.
    """
    package = REPO_ROOT / "trioserve"
    hashes = {}
    for path in sorted(package.rglob("*.py")):
        with contextlib.suppress(OSError):
            hashes[str(path.relative_to(package))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def changed_sources(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The source files whose hash differs between two fingerprints."""
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


def machine_facts(distributions: Iterable[str]) -> dict[str, Any]:
    """The machine, the package versions and the trioserve tree a result belongs to."""
    versions: dict[str, str] = {}
    for dist in distributions:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    # The tree under test is often a work in progress: say which one it was.
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "trioserve_tree": git.stdout.strip() or None,
        "trioserve_sources_sha256": sources_fingerprint(),
    }


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def accepts(port: int) -> bool:
    """Whether a server on ``HOST`` takes connections on ``port`` (tried for 0.5 s)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def names_arg(kind: str, known: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated list of ``kind`` names out of ``known``
    (an unknown one is refused with the closest known name as a hint)."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {name!r}{hint} (choose from {', '.join(known)})"
                )
        if not names:
            raise argparse.ArgumentTypeError(f"expected at least one {kind}")
        return names

    return parse


def importable_servers(names: Sequence[str], servers: Mapping[str, Any]) -> list[str]:
    """The servers of ``names`` whose module this Python can import (each entry of
    ``servers`` has ``module`` and ``note``); each other one is said on stderr."""
    kept = []
    for name in names:
        server = servers[name]
        # A server with an interpreter of its own (``python``) is there when that is.
        python = getattr(server, "python", None)
        if python is not None and not python.exists():
            print(f"skipping {name}: no {python} ({server.note})", file=sys.stderr)
        elif python is None and importlib.util.find_spec(server.module) is None:
            extra = f" ({server.note})" if server.note else ""
            print(
                f"skipping {name}: module {server.module!r} is not importable by "
                f"{sys.executable}{extra}",
                file=sys.stderr,
            )
        else:
            kept.append(name)
    return kept

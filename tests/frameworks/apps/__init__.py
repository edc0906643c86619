"""Framework apps that tests/frameworks/test_differential.py serves with trioserve and a peer.

Each app answers the same routes the same way under any server; what differs between
servers is what the test compares. The apps tell the test what they saw through
``say()`` (a line on stderr) and ``mark()`` (a file in $DIFF_MARKS).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STATIC = Path(__file__).parent / "static"
HELLO = STATIC / "hello.txt"
# Lifespan startup of the *_failing apps raises this.
STARTUP_ERROR = "database down (differential check)"


def say(event: str) -> None:
    """One stderr line the test waits for: ``app: <event>``."""
    print(f"app: {event}", file=sys.stderr, flush=True)


def mark(name: str) -> None:
    """Create $DIFF_MARKS/<name>: a fact the test can check at an exact moment."""
    (Path(os.environ["DIFF_MARKS"]) / name).touch()


def has_mark(name: str) -> bool:
    return (Path(os.environ["DIFF_MARKS"]) / name).exists()

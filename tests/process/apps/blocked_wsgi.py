"""A WSGI app whose request blocks its thread far longer than any test waits."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    print("app: request started", file=sys.stderr, flush=True)
    time.sleep(120)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"too late\n"]

"""An ASGI app that leaks memory on request: every path answers ``PID WORKER_ID`` (as
``pid_app``), and ``/leak`` first keeps 20 MiB more for good in a module-level list."""

from __future__ import annotations

import os
from typing import Any

LEAK = 20 * 1024 * 1024
kept: list[bytes] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan: with lifespan 'auto' the server serves without it
    if scope["path"] == "/leak":
        kept.append(b"\x01" * LEAK)  # written, so resident: a real leak
    body = f"{os.getpid()} {os.environ.get('TRIOSERVE_WORKER_ID', '-')}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

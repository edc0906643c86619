"""An ASGI app that says which worker process served the request: ``/`` answers
``PID WORKER_ID`` (os.getpid() and TRIOSERVE_WORKER_ID), and ``/stuck`` never returns:
its loop blocks the worker's event loop, as a CPU-bound bug would. When imported it
prints the pid and worker id it sees to stderr."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

# One write(2): the line must not interleave with other processes' lines on the pipe.
os.write(
    sys.stderr.fileno(),
    f"pid_app: imported in pid {os.getpid()} with TRIOSERVE_WORKER_ID="
    f"{os.environ.get('TRIOSERVE_WORKER_ID', '-')}\n".encode(),
)


def stuck_forever() -> None:
    while True:  # blocks the trio loop: no heartbeat is sent any more
        time.sleep(0.01)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan: with lifespan 'auto' the server serves without it
    if scope["path"] == "/stuck":
        stuck_forever()
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

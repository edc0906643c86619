"""An ASGI app whose response is slow: the head and a first chunk go out at once, the
rest after a second, so a test can stop the server while a request is in flight."""

from __future__ import annotations

from typing import Any

import trio

FIRST = b"first part\n"
LAST = b"last part\n"
DELAY = 1.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan: with lifespan 'auto' the server serves without it
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(FIRST + LAST)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": FIRST, "more_body": True})
    await trio.sleep(DELAY)
    await send({"type": "http.response.body", "body": LAST})

"""The hello-world ASGI 3 app every server in the benchmark serves.

Kept to the bare protocol (no framework) so the numbers measure the servers,
and identical for all of them. It answers lifespan too, so each server runs
its startup/shutdown path the way it would for a real app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b"Hello, world!"
HEADERS = [
    (b"content-type", b"text/plain"),
    (b"content-length", str(len(BODY)).encode("ascii")),
]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Complete lifespan startup and shutdown (shared with bench/ws_app.py)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request with 200 "Hello, world!" and complete lifespan."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})

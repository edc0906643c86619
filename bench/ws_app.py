"""The WebSocket echo every server in the idle-memory benchmark serves.

``app`` is an ASGI 3 app: it echoes every websocket message back, answers
lifespan (so each server runs its startup and shutdown path, as it would for a
real app) and answers plain HTTP requests with a short text, so a server can be
checked without a websocket client. ``handler`` is the same echo as a native
trio-websocket handler, for ``trioserve bench.ws_app:handler --interface websocket``.

Both are kept to the bare protocol (no framework), so the numbers measure the
servers, and both keep nothing per connection beyond what the echo needs.
"""

from __future__ import annotations

import trio_websocket

from bench.app import Receive, Scope, Send, answer_lifespan

HTTP_BODY = b"websocket echo\n"
HTTP_HEADERS = [
    (b"content-type", b"text/plain"),
    (b"content-length", str(len(HTTP_BODY)).encode("ascii")),
]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo websocket messages, complete lifespan, and answer HTTP with 200."""
    if scope["type"] == "websocket":
        await _echo(receive, send)
    elif scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HTTP_HEADERS})
        await send({"type": "http.response.body", "body": HTTP_BODY})


async def _echo(receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def handler(request: trio_websocket.WebSocketRequest) -> None:
    """Accept the websocket and echo every message until the peer closes."""
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except trio_websocket.ConnectionClosed:
        return

"""The HTTP edge hands WebSocket upgrade requests over, replaying the bytes it read."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from tests.helpers import hello_app, read_until_eof, serve_http_connection
from trioserve import Config
from trioserve._serve_http import HTTPOptions
from trioserve._state import ServerState

UPGRADE = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class RecordingUpgrade:
    def __init__(self) -> None:
        self.replayed = b""
        self.kwargs: dict[str, Any] = {}

    async def __call__(self, stream: trio.abc.Stream, **kwargs: Any) -> None:
        self.kwargs = kwargs
        while len(self.replayed) < len(UPGRADE) + 5:
            self.replayed += await stream.receive_some()
        await stream.send_all(b"upgraded")


def serving_with(websocket: Any) -> Callable[[trio.abc.Stream, Any], Awaitable[None]]:
    """Serves one connection with ``websocket`` as the server's upgrade handler."""
    state = ServerState(Config())
    options = HTTPOptions(state.config, websocket=websocket)
    return functools.partial(serve_http_connection, state=state, options=options)


async def test_upgrade_request_is_handed_over_with_its_bytes(nursery):
    """The upgrade handler gets a stream replaying the head and what followed it."""
    upgrade = RecordingUpgrade()
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serving_with(upgrade), server, hello_app)
    await client.send_all(UPGRADE + b"frame")
    with trio.fail_after(5):
        assert await read_until_eof(client) == b"upgraded"
    assert upgrade.replayed == UPGRADE + b"frame"
    assert not upgrade.kwargs["peer"].secure


async def test_without_websocket_support_upgrade_is_plain_http(nursery):
    """With --ws off the upgrade request reaches the app as an ordinary HTTP request."""
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello_app(scope, receive, send)

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serving_with(None), server, app)
    await client.send_all(UPGRADE.replace(b"Connection: Upgrade", b"Connection: Upgrade, close"))
    with trio.fail_after(5):
        data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert scopes[0]["type"] == "http"


async def test_other_upgrades_are_plain_http(nursery):
    """An Upgrade that is not websocket (h2c) is served as plain HTTP."""
    upgrade = RecordingUpgrade()
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serving_with(upgrade), server, hello_app)
    await client.send_all(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, close\r\n\r\n"
    )
    with trio.fail_after(5):
        data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert upgrade.kwargs == {}

"""Real Starlette and FastAPI WebSocket endpoints under the real CLI, whose client
leaves while they keep sending: the loop must end at once (ASGI 2.4: send() raises an
OSError, which Starlette turns into WebSocketDisconnect), and the log must stay free of
ERROR lines even though the endpoint lets that exception propagate."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from tests.frameworks.test_frameworks import needs, stop
from tests.process.test_cli import APPS, assert_clean_log, serving
from trioserve.testing import ServerProcess

HANDSHAKE = (
    b"GET /ticker HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def leave_with_a_close_frame(server: ServerProcess) -> None:
    """A well-behaved client: reads three ticks, then closes the websocket (1000)."""
    url = server.url.replace("http://", "ws://") + "/ticker"
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(url) as ws:
            for _ in range(3):
                message = await ws.get_message()
                assert isinstance(message, str)
                assert message.startswith("tick ")


async def leave_by_dropping_tcp(server: ServerProcess) -> None:
    """A client that vanishes: reads three ticks, then closes its socket, no close frame."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    received = b""
    with trio.fail_after(10):
        await stream.send_all(HANDSHAKE)
        while received.count(b"tick ") < 3:
            chunk = await stream.receive_some()
            assert chunk, received
            received += chunk
    assert received.startswith(b"HTTP/1.1 101 ")
    await stream.aclose()


@pytest.mark.parametrize("leave", [leave_with_a_close_frame, leave_by_dropping_tcp])
@pytest.mark.parametrize(
    "module",
    [
        pytest.param("starlette_ws_ticker", marks=needs("starlette"), id="starlette"),
        pytest.param("fastapi_ws_ticker", marks=needs("fastapi"), id="fastapi"),
    ],
)
async def test_framework_sender_stops_within_a_second_of_the_client_leaving(module, leave) -> None:
    """The endpoint's send() raises once the client has gone: its loop ends within a
    second, and the WebSocketDisconnect it lets out is not logged at ERROR."""
    async with serving("--app-dir", APPS, f"{module}:app", "-b", "127.0.0.1:0") as server:
        await leave(server)
        with trio.fail_after(1):
            line = await server.wait_for_line("ticker ended:")
        assert line == "ticker ended: WebSocketDisconnect"
        await stop(server)
    assert_clean_log(server.lines)

"""Closing an idle kept-alive connection over real TCP, where a close with unread bytes
turns into a reset: a request already in the socket as the close is decided is answered."""

from __future__ import annotations

import functools
import os
from typing import Any

import h11
import trio
import trio.testing

from tests.helpers import (
    H11Client,
    header,
    hello_app,
    read_until_eof,
    serve_http_connection,
    tcp_connection,
)
from trioserve import Config
from trioserve._serve_http import expire
from trioserve._state import ServerState


async def test_request_in_the_socket_when_the_drain_closes_is_answered(nursery):
    """During a stop, a request already in the socket when the idle wait's deadline
    passes is answered with Connection: close, then the connection ends cleanly."""
    state = ServerState(Config(keep_alive=60))
    raw, stream, sock = await tcp_connection()
    app: Any = hello_app
    nursery.start_soon(functools.partial(serve_http_connection, stream, app, state, sock=sock))
    client = H11Client(raw)
    await client.request()
    await trio.testing.wait_all_tasks_blocked()
    state.request_stop()
    client.conn.start_next_cycle()
    get = h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"a")])
    request = client.conn.send(get) + client.conn.send(h11.EndOfMessage())
    # In the server's socket at once (a plain write, no checkpoint), and the deadline
    # passes before the server task gets to read it.
    os.write(raw.socket.fileno(), request)
    (connection,) = state.connections
    expire(connection)
    with trio.fail_after(5):
        response, body = await client.read_response()
        assert (response.status_code, body) == (200, b"Hello, world!")
        assert header(response, b"connection") == b"close"
        assert await read_until_eof(client.stream) == b""

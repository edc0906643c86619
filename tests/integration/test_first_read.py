"""A connection whose request is in the socket before its first read, over real TCP:
it is served without waiting, so it never enters its timer (the cancel scope the
deadline watchdog cancels), and every deadline still holds on that path."""

from __future__ import annotations

import functools
import logging
from typing import Any

import h11
import pytest
import trio
import trio.testing

from tests.helpers import (
    H11Client,
    echo_body_app,
    hello_app,
    read_until_eof,
    serve_http_connection,
    tcp_connection,
)
from trioserve import Config
from trioserve._state import ServerState

GET_CLOSE = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def timer_entered(state: ServerState) -> bool:
    """Whether the one connection of ``state`` entered its timer (trio's public
    ``CancelScope.is_relative`` is None once a scope was entered)."""
    [connection] = state.connections
    return connection.timer.is_relative is None


async def serve_with_bytes_waiting(
    nursery: trio.Nursery, app: Any, state: ServerState, data: bytes
) -> trio.SocketStream:
    """Serve one TCP connection of ``app`` whose client sent ``data`` before the server
    looked at it (as when the accept loop's task first runs): the client's end."""
    client, stream, sock = await tcp_connection()
    await client.send_all(data)
    with trio.fail_after(5):
        # (One small segment over loopback: readable means all of it is there.)
        await trio.lowlevel.wait_readable(sock)
    nursery.start_soon(functools.partial(serve_http_connection, stream, app, state, sock=sock))
    return client


async def test_a_request_whole_in_its_first_read_enters_no_timer(nursery):
    """A request whose head is whole in the first read is answered without the
    connection's timer ever being entered (no cancel scope per such connection)."""
    state = ServerState(Config())
    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(timer_entered(state))
        await hello_app(scope, receive, send)

    client = await serve_with_bytes_waiting(nursery, app, state, GET_CLOSE)
    with trio.fail_after(5):
        response = await read_until_eof(client)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b"Hello, world!")
    assert seen == [False]


async def test_a_partial_first_read_that_stalls_gets_408_at_the_header_timeout(
    nursery, autojump_clock
):
    """A head whose first part is in the first read and whose rest never comes is
    answered 408 at header_timeout, counted from that read."""
    state = ServerState(Config(header_timeout=4, keep_alive=60))
    client = await serve_with_bytes_waiting(nursery, hello_app, state, b"GET / HTTP/1.1\r\nHo")
    await trio.testing.wait_all_tasks_blocked()
    start = trio.current_time()
    response = await read_until_eof(client)
    assert response.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - start == pytest.approx(4, abs=0.01)


async def test_keep_alive_deadline_holds_after_a_first_request_read_at_once(
    nursery, autojump_clock
):
    """After a first request read without waiting, the next idle wait enters the timer
    and the connection is closed at its keep-alive deadline."""
    state = ServerState(Config(keep_alive=5))
    client = await serve_with_bytes_waiting(nursery, hello_app, state, GET)
    response, body = await H11Client(client).read_response()
    assert (response.status_code, body) == (200, b"Hello, world!")
    answered = trio.current_time()
    await trio.testing.wait_all_tasks_blocked()
    assert timer_entered(state)
    assert await read_until_eof(client) == b""
    assert trio.current_time() - answered == pytest.approx(5, abs=0.01)


async def test_body_min_rate_holds_on_a_connection_that_never_waited(nursery, autojump_clock):
    """A body that stops after its first bytes (head and bytes in the first read) is
    cut with 408 by body_min_rate, the connection's timer never entered."""
    state = ServerState(Config(read_timeout=60, body_min_rate=100))
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"
    client = await serve_with_bytes_waiting(nursery, echo_body_app, state, head + b"x" * 10)
    await trio.testing.wait_all_tasks_blocked()
    assert not timer_entered(state)
    start = trio.current_time()
    response = await read_until_eof(client)
    assert response.startswith(b"HTTP/1.1 408 ")
    # The grace (10 s) and a second per 100 bytes received.
    assert trio.current_time() - start == pytest.approx(10.1, abs=0.01)


async def test_a_graceful_stop_ends_a_connection_that_never_waited(autojump_clock):
    """A request read at once whose app never answers is cancelled at the drain deadline
    of a graceful stop (as the server's connection nursery does), the connection closed."""
    state = ServerState(Config(graceful_timeout=3))
    cancelled = trio.Event()

    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with trio.open_nursery() as connections:
        client = await serve_with_bytes_waiting(connections, stuck, state, GET)
        await trio.testing.wait_all_tasks_blocked()
        assert not timer_entered(state)
        stop = trio.current_time()
        state.request_stop()
        connections.cancel_scope.deadline = state.drain_deadline
    assert cancelled.is_set()
    assert trio.current_time() - stop == pytest.approx(3, abs=0.01)
    assert await read_until_eof(client) == b""


async def test_a_handover_from_a_task_that_never_waited(nursery, caplog):
    """A connection handed over to a new task (its app works on after its response)
    when the old task never entered its timer: the new task enters its own at its idle
    wait and serves the next request; the old task, once its app returns, leaves no
    scope behind and logs no error."""
    state = ServerState(Config(keep_alive=5))
    release = trio.Event()
    returned = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await hello_app(scope, receive, send)
        if scope["path"] == "/background":
            await release.wait()
            returned.set()

    first = h11.Request(method=b"GET", target=b"/background", headers=[(b"host", b"a")])
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(first) + conn.send(h11.EndOfMessage())
    client = await serve_with_bytes_waiting(nursery, app, state, data)
    h11_client = H11Client(client)
    h11_client.conn = conn
    with trio.fail_after(5):
        response, _ = await h11_client.read_response()
        assert response.status_code == 200
        # Answered while the first app still works: the connection was handed over.
        response, body = await h11_client.request()
        assert (response.status_code, body) == (200, b"Hello, world!")
        assert not returned.is_set()
        await trio.testing.wait_all_tasks_blocked()
        assert timer_entered(state)  # (the new task's, at its idle wait)
        release.set()
        await returned.wait()
        await client.send_eof()
        assert await read_until_eof(client) == b""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

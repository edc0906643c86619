"""A graceful stop (and the idle deadline) on kept-alive connections, over memory
streams with virtual time: an idle connection gets until its keep-alive deadline to send
one more request, answered with Connection: close; only a silent one is closed."""

from __future__ import annotations

from typing import Any

import h11
import pytest
import trio
import trio.testing

from tests.helpers import H11Client, header, hello_app, read_until_eof, serve_http_connection
from trioserve import Config
from trioserve._serve_http import LINGER_SECONDS, expire
from trioserve._state import ServerState


async def start(nursery: trio.Nursery, app: Any, **settings: Any) -> tuple[H11Client, ServerState]:
    state = ServerState(Config(**settings))
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, state)
    return H11Client(client), state


async def test_idle_connection_gets_one_more_request_answered_with_close(nursery, autojump_clock):
    """After a stop began, the next request of an idle kept-alive connection is
    answered, with Connection: close, and the connection then ends."""
    client, state = await start(nursery, hello_app, keep_alive=5)
    await client.request()
    await trio.testing.wait_all_tasks_blocked()
    state.request_stop()
    await trio.sleep(3)
    response, body = await client.request()
    assert (response.status_code, body) == (200, b"Hello, world!")
    assert header(response, b"connection") == b"close"
    assert await read_until_eof(client.stream) == b""


async def test_silent_connection_is_closed_at_its_keep_alive_deadline(nursery, autojump_clock):
    """A stop does not close an idle connection early: it ends at its keep-alive
    deadline, counted from its last response."""
    client, state = await start(nursery, hello_app, keep_alive=5, graceful_timeout=30)
    await client.request()
    answered = trio.current_time()
    await trio.sleep(2)
    state.request_stop()
    assert await client.stream.receive_some() == b""
    assert trio.current_time() - answered == pytest.approx(5, abs=0.01)


async def test_idle_wait_is_bounded_by_the_graceful_timeout(nursery, autojump_clock):
    """With a keep-alive longer than the graceful timeout, an idle connection is closed
    when the graceful timeout ends."""
    client, state = await start(nursery, hello_app, keep_alive=60, graceful_timeout=3)
    await client.request()
    await trio.testing.wait_all_tasks_blocked()
    stop = trio.current_time()
    state.request_stop()
    assert await client.stream.receive_some() == b""
    assert trio.current_time() - stop == pytest.approx(3, abs=0.01)


async def test_response_sent_kept_alive_during_a_stop_leaves_room_for_one_more_request(
    nursery, autojump_clock
):
    """A response that went out without Connection: close (it started before the stop)
    does not end the connection: the client's next request is answered, with close."""
    started = trio.Event()
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"2")],
                }
            )
            started.set()
            await release.wait()
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await hello_app(scope, receive, send)

    client, state = await start(nursery, app, keep_alive=5)
    async with trio.open_nursery() as inner:
        results: list[Any] = []

        async def slow_request() -> None:
            results.append(await client.request(target=b"/slow"))

        inner.start_soon(slow_request)
        await started.wait()
        state.request_stop()
        release.set()
    response, body = results[0]
    assert (body, header(response, b"connection")) == (b"ok", None)
    response, body = await client.request()
    assert (response.status_code, body) == (200, b"Hello, world!")
    assert header(response, b"connection") == b"close"
    assert await read_until_eof(client.stream) == b""


async def test_request_read_as_the_idle_deadline_passes_is_answered(nursery, autojump_clock):
    """A request whose bytes were read just as the idle wait's deadline passed is
    answered, not cut by the connection's timer."""
    client, state = await start(nursery, hello_app, keep_alive=5)
    await client.request()
    await trio.testing.wait_all_tasks_blocked()
    client.conn.start_next_cycle()
    get = h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"test")])
    request = client.conn.send(get) + client.conn.send(h11.EndOfMessage())
    # The request reaches the server's pending read (it is woken, not run yet), and the
    # deadline watchdog acts before the server task runs.
    await client.stream.send_all(request)
    (connection,) = state.connections
    expire(connection)
    response, body = await client.read_response()
    assert (response.status_code, body) == (200, b"Hello, world!")


async def test_request_read_as_the_drain_deadline_passes_without_idle_timeout_is_answered(
    nursery, autojump_clock
):
    """Without an idle timeout (keep-alive off, no header timeout: a fresh connection's
    wait is unbounded), a request read just as a stop's drain deadline passed is still
    answered, not cut by the connection's timer."""
    client, state = await start(
        nursery, hello_app, keep_alive=0, header_timeout=0, graceful_timeout=5
    )
    await trio.testing.wait_all_tasks_blocked()
    state.request_stop()
    get = h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"test")])
    request = client.conn.send(get) + client.conn.send(h11.EndOfMessage())
    await client.stream.send_all(request)
    (connection,) = state.connections
    expire(connection)
    response, body = await client.read_response()
    assert (response.status_code, body) == (200, b"Hello, world!")


async def test_silent_connection_is_closed_with_a_lingering_read(nursery, autojump_clock):
    """At its deadline a silent connection is half-closed, and a request that crosses
    that close is read and dropped rather than refused; the connection ends once the
    lingering read is over."""
    client, _ = await start(nursery, hello_app, keep_alive=5)
    await client.request()
    assert await client.stream.receive_some() == b""
    await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await trio.sleep(LINGER_SECONDS + 0.1)
    with pytest.raises(trio.BrokenResourceError):
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

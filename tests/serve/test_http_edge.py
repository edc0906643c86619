"""The HTTP/1.1 edge driven over memory streams: no sockets, virtual time."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import h11
import pytest
import trio
import trio.testing

from tests.helpers import (
    H11Client,
    echo_body_app,
    header,
    hello_app,
    read_until_eof,
    serve_http_connection,
)
from trioserve import ClientDisconnected, Config
from trioserve._state import ServerState

# Every test runs on each HTTP/1.1 parser (--http; see tests/conftest.py's http_parser).
pytestmark = pytest.mark.usefixtures("http_parser")


def make_state(**settings: Any) -> ServerState:
    return ServerState(Config(**settings))


async def start_connection(
    nursery: trio.Nursery, app: Any, state: ServerState | None = None
) -> H11Client:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, state or make_state())
    return H11Client(client)


async def test_get_then_second_request_on_same_connection(nursery):
    """A keep-alive connection answers several requests in turn."""
    client = await start_connection(nursery, hello_app)
    for _ in range(3):
        response, body = await client.request()
        assert response.status_code == 200
        assert response.reason == b"OK"
        assert body == b"Hello, world!"
        assert header(response, b"server") == b"trioserve"
        assert header(response, b"date") is not None


async def test_idle_keep_alive_connection_is_closed(nursery, autojump_clock):
    """An idle keep-alive connection is closed after keep_alive seconds, not before."""
    client = await start_connection(nursery, hello_app, make_state(keep_alive=5))
    await client.request()
    start = trio.current_time()
    assert await client.stream.receive_some() == b""
    assert trio.current_time() - start == pytest.approx(5, abs=0.01)


async def test_connection_without_any_request_is_closed_after_keep_alive(nursery, autojump_clock):
    """A client that connects and says nothing is dropped after keep_alive seconds."""
    client = await start_connection(nursery, hello_app, make_state(keep_alive=2))
    with trio.fail_after(2.5):
        assert await client.stream.receive_some() == b""


async def test_keep_alive_0_closes_after_each_response(nursery, autojump_clock):
    """keep_alive=0 turns keep-alive off: the response says Connection: close and the
    connection ends right after it, as gunicorn's keepalive = 0 does."""
    client = await start_connection(nursery, hello_app, make_state(keep_alive=0))
    response, body = await client.request()
    assert (response.status_code, body) == (200, b"Hello, world!")
    assert header(response, b"connection") == b"close"
    with trio.fail_after(0.01):
        assert await read_until_eof(client.stream) == b""


async def test_keep_alive_0_waits_header_timeout_for_a_first_request(nursery, autojump_clock):
    """With keep-alive off, a fresh connection still waits for its first request, up to
    the header timeout (not 0 seconds)."""
    client = await start_connection(nursery, hello_app, make_state(keep_alive=0, header_timeout=7))
    start = trio.current_time()
    assert await client.stream.receive_some() == b""
    assert trio.current_time() - start == pytest.approx(7, abs=0.01)


async def test_request_body_is_streamed_to_receive(nursery):
    """A Content-Length body reaches the app in chunks as it arrives, then more_body=False."""
    client = await start_connection(nursery, echo_body_app)
    h11_client = client.conn
    head = h11_client.send(
        h11.Request(
            method=b"POST",
            target=b"/",
            headers=[(b"host", b"t"), (b"content-length", b"10")],
        )
    )
    await client.stream.send_all(head + h11_client.send(h11.Data(data=b"01234")))
    await trio.testing.wait_all_tasks_blocked()
    await client.stream.send_all(
        h11_client.send(h11.Data(data=b"56789")) + h11_client.send(h11.EndOfMessage())
    )
    response, body = await client.read_response()
    assert body == b"0123456789"
    # Two data chunks, then the empty closing message: nothing was buffered whole.
    assert header(response, b"x-chunks") == b"3"


async def test_chunked_request_body(nursery):
    """A chunked request body is decoded for the app."""
    client = await start_connection(nursery, echo_body_app)
    response, body = await client.request(
        b"POST", headers=[(b"transfer-encoding", b"chunked")], body=b"abc" * 100
    )
    assert response.status_code == 200
    assert body == b"abc" * 100


async def test_streamed_response_without_length_is_chunked(nursery):
    """A streamed response with no Content-Length goes out chunked and arrives whole."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    client = await start_connection(nursery, app)
    response, body = await client.request()
    assert header(response, b"transfer-encoding") == b"chunked"
    assert body == b"part0;part1;part2;"


async def test_pipelined_requests_are_answered_in_order(nursery):
    """Requests sent back to back before any answer get their responses in order."""

    async def app(scope, receive, send):
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(
        b"GET /one HTTP/1.1\r\nhost: t\r\n\r\n"
        b"GET /two HTTP/1.1\r\nhost: t\r\n\r\n"
        b"GET /three HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    data = await read_until_eof(client)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"/one") < data.index(b"/two") < data.index(b"/three")


async def test_malformed_request_gets_400_and_close_without_error_log(nursery, caplog):
    """Garbage instead of a request is answered 400 and closed, with nothing at error level."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, hello_app, make_state())
    await client.send_all(b"NOT HTTP AT ALL\r\n\r\n")
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in data
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_app_exception_before_response_is_500(nursery, caplog):
    """An app raising before http.response.start gets a 500 with Connection: close."""

    async def app(scope, receive, send):
        raise ValueError("boom")

    client = await start_connection(nursery, app)
    response, _ = await client.request()
    assert response.status_code == 500
    assert header(response, b"connection") == b"close"
    assert await client.stream.receive_some() == b""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "exception in ASGI app" in errors[0].getMessage()


async def test_app_exception_after_response_start_closes_connection(nursery):
    """An app raising mid-response leaves the client a cut-off response and a closed connection."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom")

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"partial" in data
    assert not data.endswith(b"0\r\n\r\n")  # the chunked body never ended


async def test_app_returning_without_response_is_500(nursery, caplog):
    """An app that returns without sending anything produces a 500 and an error log line."""

    async def app(scope, receive, send):
        return None

    client = await start_connection(nursery, app)
    response, _ = await client.request()
    assert response.status_code == 500
    assert any("without sending a response" in r.getMessage() for r in caplog.records)


async def test_bad_message_from_app_is_logged_and_becomes_500(nursery, caplog):
    """A message of the wrong type is a clear error in the log and a 500 for the client."""

    async def app(scope, receive, send):
        await send({"type": "http.response.body", "body": b"no start"})

    client = await start_connection(nursery, app)
    response, _ = await client.request()
    assert response.status_code == 500
    assert any("expected 'http.response.start' first" in r.getMessage() for r in caplog.records)


async def test_head_response_has_no_body(nursery):
    """HEAD gets the GET headers, including Content-Length, but no body bytes."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, hello_app, make_state())
    await client.send_all(b"HEAD / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
    data = await read_until_eof(client)
    assert b"content-length: 13" in data
    assert data.endswith(b"\r\n\r\n")


async def test_100_continue_is_sent_only_when_the_app_reads_the_body(nursery):
    """Expect: 100-continue is answered with 100 when the app first asks for the body."""
    reading = trio.Event()
    go = trio.Event()

    async def app(scope, receive, send):
        await go.wait()
        reading.set()
        await echo_body_app(scope, receive, send)

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
    )
    await trio.testing.wait_all_tasks_blocked()
    with trio.move_on_after(0.01) as scope:
        await client.receive_some()
    assert scope.cancelled_caught, "100 Continue was sent before the app read the body"
    go.set()
    await reading.wait()
    assert (await client.receive_some()).startswith(b"HTTP/1.1 100 ")
    await client.send_all(b"ping")
    rest = await client.receive_some()
    assert rest.startswith(b"HTTP/1.1 200 OK")
    assert rest.endswith(b"content-length: 4\r\n\r\nping")


async def test_receive_after_body_reports_disconnect_when_client_leaves(nursery):
    """An app waiting on receive() after the body learns http.disconnect when the client closes."""
    got: list[dict[str, Any]] = []
    done = trio.Event()

    async def app(scope, receive, send):
        await receive()  # the (empty) body
        got.append(await receive())
        done.set()

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    await trio.testing.wait_all_tasks_blocked()
    await client.aclose()
    with trio.fail_after(1):
        await done.wait()
    assert got == [{"type": "http.disconnect"}]


async def test_receive_returns_disconnect_once_response_is_done(nursery):
    """A receive() pending while the response completes returns http.disconnect."""
    results: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        await receive()

        async def listen() -> None:
            results.append(await receive())

        async with trio.open_nursery() as inner:
            inner.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            await hello_app(scope, receive, send)
        app_done.set()

    app_done = trio.Event()
    client = await start_connection(nursery, app)
    response, _ = await client.request()
    assert response.status_code == 200
    with trio.fail_after(1):
        await app_done.wait()
    assert results == [{"type": "http.disconnect"}]


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_send_after_client_left_raises_client_disconnected(nursery, caplog):
    """Once the client has gone, the app's send() raises ClientDisconnected, an
    OSError (ASGI 2.4), and keeps raising it; nothing is logged at ERROR."""
    raised: list[BaseException] = []
    finished = trio.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(50):
            try:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            except OSError as exc:
                raised.append(exc)
                if len(raised) == 2:
                    break
        finished.set()

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    await client.receive_some(10)
    await client.aclose()
    with trio.fail_after(1):
        await finished.wait()
    assert [type(exc) for exc in raised] == [ClientDisconnected, ClientDisconnected]
    assert not error_records(caplog)


async def test_app_letting_client_disconnected_propagate_is_not_an_error(nursery, caplog):
    """An app that lets ClientDisconnected propagate ends the exchange quietly: no
    ERROR log, no 500 attempt, the connection closed."""
    ended = trio.Event()
    stopped_by: list[type[BaseException]] = []

    async def app(scope, receive, send):
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(1000):
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except BaseException as exc:
            stopped_by.append(type(exc))
            raise
        finally:
            ended.set()

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    await client.receive_some(10)
    await client.aclose()
    with trio.fail_after(1):
        await ended.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert stopped_by == [ClientDisconnected]
    assert not error_records(caplog)


async def test_framework_error_raised_from_client_disconnected_is_not_an_error(nursery, caplog):
    """A framework's own disconnect error raised while handling ClientDisconnected
    (as Starlette's StreamingResponse does) is not logged at ERROR either."""

    class FrameworkDisconnect(Exception):
        pass

    ended = trio.Event()
    stopped_by: list[type[BaseException]] = []

    async def app(scope, receive, send):
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(1000):
                try:
                    await send({"type": "http.response.body", "body": b"x", "more_body": True})
                except OSError:
                    raise FrameworkDisconnect() from None
            await send({"type": "http.response.body", "body": b""})
        except BaseException as exc:
            stopped_by.append(type(exc))
            raise
        finally:
            ended.set()

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    await client.receive_some(10)
    await client.aclose()
    with trio.fail_after(1):
        await ended.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert stopped_by == [FrameworkDisconnect]
    assert not error_records(caplog)


async def test_unrelated_app_error_after_client_left_is_still_logged(nursery, caplog):
    """An app error that did not come from the client leaving is logged at ERROR even
    after the client has gone (but no 500 is attempted)."""

    async def app(scope, receive, send):
        await receive()  # the (empty) body
        assert await receive() == {"type": "http.disconnect"}
        raise ValueError("a bug in the app")

    client, server = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def serve_then_note() -> None:
        await serve_http_connection(server, app, make_state())
        done.set()

    nursery.start_soon(serve_then_note)
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    await client.aclose()
    with trio.fail_after(1):
        await done.wait()
    assert [r.getMessage() for r in error_records(caplog)] == [
        "exception in ASGI app while serving GET /"
    ]


async def test_send_after_receive_reported_disconnect_raises(nursery, caplog):
    """An app told http.disconnect by receive() that then answers gets
    ClientDisconnected from send(), for the response start too."""
    raised: list[BaseException] = []
    done = trio.Event()

    async def app(scope, receive, send):
        await receive()  # the (empty) body
        assert await receive() == {"type": "http.disconnect"}
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except ClientDisconnected as exc:
            raised.append(exc)
        done.set()

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    await client.aclose()
    with trio.fail_after(1):
        await done.wait()
    assert len(raised) == 1
    assert not error_records(caplog)


async def test_app_that_stops_at_client_disconnected_is_not_an_error(nursery, caplog):
    """An app that catches ClientDisconnected and returns with its response unfinished
    is not reported as an app that "returned before finishing its response"."""
    done = trio.Event()
    stopped: list[bool] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(1000):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
        except ClientDisconnected:
            stopped.append(True)
        done.set()

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    await client.receive_some(10)
    await client.aclose()
    with trio.fail_after(1):
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert stopped == [True]
    assert not error_records(caplog)


async def test_app_that_ignores_client_disconnected_still_lets_others_run(nursery):
    """An app that catches ClientDisconnected and sends again in a loop still lets
    other tasks run: each send() that raises is a checkpoint."""
    turns = 0
    counting = True

    async def other_task() -> None:
        nonlocal turns
        while counting:
            turns += 1
            await trio.lowlevel.checkpoint()

    done = trio.Event()

    async def app(scope, receive, send):
        await receive()  # the (empty) body
        assert await receive() == {"type": "http.disconnect"}
        nursery.start_soon(other_task)
        for _ in range(50):
            with contextlib.suppress(ClientDisconnected):
                await send({"type": "http.response.start", "status": 200, "headers": []})
        done.set()

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_http_connection, server, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    await client.aclose()
    with trio.fail_after(1):
        await done.wait()
    counting = False
    assert turns >= 45


async def test_graceful_stop_serves_the_first_request_of_a_fresh_connection(
    nursery, autojump_clock
):
    """A connection accepted before the stop but not read yet gets its request served."""
    state = make_state(keep_alive=5)
    client = await start_connection(nursery, hello_app, state)
    await trio.testing.wait_all_tasks_blocked()
    state.request_stop()
    await trio.sleep(1)  # the client's request arrives a moment after the stop began
    response, body = await client.request()
    assert (response.status_code, body) == (200, b"Hello, world!")
    assert header(response, b"connection") == b"close"


async def test_graceful_stop_bounds_a_fresh_connection_by_keep_alive(nursery, autojump_clock):
    """A fresh connection that never sends a request is closed after keep_alive."""
    state = make_state(keep_alive=5)
    client = await start_connection(nursery, hello_app, state)
    await trio.testing.wait_all_tasks_blocked()
    start = trio.current_time()
    state.request_stop()
    assert await client.stream.receive_some() == b""
    assert trio.current_time() - start == pytest.approx(5, abs=0.5)


async def test_graceful_stop_lets_in_flight_request_finish_with_connection_close(nursery):
    """A request in flight when the stop begins completes, marked Connection: close."""
    state = make_state()
    in_app = trio.Event()
    release = trio.Event()

    async def app(scope, receive, send):
        in_app.set()
        await release.wait()
        await hello_app(scope, receive, send)

    client = await start_connection(nursery, app, state)
    async with trio.open_nursery() as inner:
        results: list[tuple[h11.Response, bytes]] = []

        async def do_request() -> None:
            results.append(await client.request())

        inner.start_soon(do_request)
        await in_app.wait()
        state.request_stop()
        release.set()
    response, body = results[0]
    assert body == b"Hello, world!"
    assert header(response, b"connection") == b"close"


async def test_scope_has_lifespan_state_copy_and_root_path(nursery):
    """Each request scope gets root_path and a shallow copy of the lifespan state."""
    state = make_state(root_path="/api")
    state.lifespan_state = {"db": "conn"}
    scopes: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        scopes.append(scope)
        scope["state"]["per_request"] = True
        await hello_app(scope, receive, send)

    client = await start_connection(nursery, app, state)
    await client.request(target=b"/caf%C3%A9?x=1")
    scope = scopes[0]
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/café"
    assert scope["raw_path"] == b"/api/caf%C3%A9"
    assert scope["query_string"] == b"x=1"
    assert scope["state"] == {"db": "conn", "per_request": True}
    assert state.lifespan_state == {"db": "conn"}

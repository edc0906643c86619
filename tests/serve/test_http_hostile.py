"""Hostile and odd clients against the HTTP edge: timeouts, limits, framing, headers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers import (
    H11Client,
    echo_body_app,
    header,
    hello_app,
    http_options,
    read_until_eof,
    serve_http_connection,
    served_connection,
)
from trioserve import ClientDisconnected, Config
from trioserve._accesslog import AccessLog
from trioserve._serve_http import LINGER_SECONDS, HTTPOptions
from trioserve._state import ServerState

# Every test runs on each HTTP/1.1 parser (--http; see tests/conftest.py's http_parser).
pytestmark = pytest.mark.usefixtures("http_parser")


def make_state(**settings: Any) -> ServerState:
    return ServerState(Config(**settings))


# Each test runs over a memory stream and over a real TCP socket on 127.0.0.1, whose
# socket the edge reads and writes directly (as behind the accept loop).
_transport = "memory"
# The server's socket of the last connection start() made over TCP.
_server_socket: Any = None


@pytest.fixture(autouse=True, params=["memory", "socket"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    global _transport
    _transport = request.param
    yield request.param
    _transport = "memory"


async def start(
    nursery: trio.Nursery, app: Any, state: ServerState, options: HTTPOptions | None = None
) -> trio.abc.HalfCloseableStream:
    """Serve one connection of ``app`` in ``nursery``; the client's end of it."""
    global _server_socket
    client, sock = await served_connection(nursery, app, state, options, transport=_transport)
    if sock is not None:
        _server_socket = sock
    return client


def no_errors(caplog: pytest.LogCaptureFixture) -> bool:
    return not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_slow_request_head_gets_408(nursery, autojump_clock, caplog):
    """A head that starts but does not finish within header_timeout gets 408 and a close."""
    client = await start(nursery, hello_app, make_state(header_timeout=4, keep_alive=60))
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
    begin = trio.current_time()
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert trio.current_time() - begin == pytest.approx(4, abs=0.1)
    assert no_errors(caplog)


async def test_head_refused_near_its_deadline_gets_one_answer(nursery, autojump_clock, caplog):
    """A head refused (400) just before header_timeout ends gets that answer only: the
    head's deadline no longer runs while the 400 goes out and the connection lingers."""
    caplog.set_level(logging.INFO, logger="trioserve.http")
    client = await start(nursery, hello_app, make_state(header_timeout=4, keep_alive=60))
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
    await trio.sleep(3.5)
    await client.send_all(b"X-Bad: \x01\r\n")
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    # The server lingers (reading what the client still sends) past the head's deadline.
    await trio.sleep(LINGER_SECONDS)
    assert "not received in time" not in caplog.text


async def test_header_timeout_counts_from_the_first_byte_not_idle_time(nursery, autojump_clock):
    """Idle time before a request counts against keep_alive only, not header_timeout."""
    client = H11Client(await start(nursery, hello_app, make_state(header_timeout=2, keep_alive=10)))
    await trio.sleep(5)  # idle, under keep_alive: virtual time, the clock autojumps
    response, _ = await client.request()
    assert response.status_code == 200


async def test_stalled_body_is_cut_after_read_timeout(nursery, autojump_clock, caplog):
    """A request body that stops arriving is cut after read_timeout; the app sees a disconnect."""
    seen: list[dict[str, Any]] = []
    done = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())
        done.set()

    client = await start(nursery, app, make_state(read_timeout=3))
    await client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
    begin = trio.current_time()
    await done.wait()
    assert trio.current_time() - begin == pytest.approx(3, abs=0.1)
    assert seen[0]["body"] == b"12345"
    assert seen[1] == {"type": "http.disconnect"}
    assert await read_until_eof(client) == b""
    assert no_errors(caplog)


async def test_client_that_stops_reading_is_cut_after_write_timeout(
    nursery, autojump_clock, caplog
):
    """A client that never reads a large response is cut after write_timeout: the
    app's send() raises ClientDisconnected, and the connection is closed."""
    raised: list[tuple[float, BaseException]] = []
    connection_done = trio.Event()

    async def big(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(100):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except ClientDisconnected as exc:
            raised.append((trio.current_time(), exc))
            raise

    async def serve_then_note(stream: Any) -> None:
        await serve_http_connection(stream, big, make_state(write_timeout=7))
        connection_done.set()

    client, server = trio.testing.lockstep_stream_pair()
    nursery.start_soon(serve_then_note, server)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    begin = trio.current_time()
    with trio.fail_after(60):
        await connection_done.wait()
    assert trio.current_time() - begin == pytest.approx(7, abs=0.1)
    assert [when - begin for when, _ in raised] == [pytest.approx(7, abs=0.1)]
    assert no_errors(caplog)


async def test_streaming_app_learns_at_its_next_send_that_the_client_closed(nursery, caplog):
    """A streaming app that never calls receive() gets ClientDisconnected from its very
    next send() after the client closed, not one send later (over a socket, that first
    write after the close would succeed: the kernel takes it)."""
    client_closed = trio.Event()
    decided = trio.Event()
    outcome: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await client_closed.wait()
        try:
            await send({"type": "http.response.body", "body": b"second", "more_body": True})
        except ClientDisconnected:
            outcome.append("raised")
        else:
            outcome.append("returned")
        decided.set()

    client = await start(nursery, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    received = b""
    while not received.endswith(b"first\r\n"):
        received += await client.receive_some()
    await client.aclose()
    if _transport == "socket":
        # The server's end has seen the close once it is readable (the end of input).
        await trio.lowlevel.wait_readable(_server_socket)
    client_closed.set()
    with trio.fail_after(1):
        await decided.wait()
    assert outcome == ["raised"]
    assert no_errors(caplog)


async def test_error_response_is_readable_despite_extra_bytes(nursery):
    """After a 400, the server half-closes and drains, so the client reads the whole answer."""
    client = await start(nursery, hello_app, make_state())
    await client.send_all(b"BROKEN\r\n\r\n" + b"junk" * 1000)
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"\n")


async def test_concurrency_limit_answers_503_at_once(nursery):
    """Past limit_concurrency, a new request gets 503 immediately while the first runs."""
    release = trio.Event()
    entered = trio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        entered.set()
        await release.wait()
        await hello_app(scope, receive, send)

    state = make_state(limit_concurrency=1)
    first = H11Client(await start(nursery, slow, state))
    second = await start(nursery, slow, state)
    results: list[int] = []

    async def first_request() -> None:
        response, _ = await first.request()
        results.append(response.status_code)

    nursery.start_soon(first_request)
    await entered.wait()
    await second.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    data = await read_until_eof(second)
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert results == [200]
    assert state.active_requests == 0


async def test_response_header_with_crlf_is_refused_with_500(nursery, caplog):
    """A header value with CR/LF from the app is never written: the client gets a 500."""

    async def injecting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-evil", b"a\r\nSet-Cookie: stolen=1")],
            }
        )
        await send({"type": "http.response.body", "body": b"never"})

    client = await start(nursery, injecting, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"stolen" not in data
    assert b"never" not in data


async def test_server_header_off_and_default_headers(nursery):
    """--no-server-header drops Server; --header adds defaults unless the app sets them."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-b", b"app")]})
        await send({"type": "http.response.body", "body": b"ok"})

    state = make_state(server_header=False, header=["X-A: one", "X-B: default"])
    response, _ = await H11Client(await start(nursery, app, state)).request()
    assert header(response, b"server") is None
    assert header(response, b"x-a") == b"one"
    assert header(response, b"x-b") == b"app"


async def test_http10_keep_alive_with_known_length(nursery):
    """An HTTP/1.0 client asking keep-alive keeps its connection when the length is known."""
    client = await start(nursery, hello_app, make_state())
    request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    await client.send_all(request)
    first = await client.receive_some()
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: keep-alive\r\n" in first
    await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
    second = await read_until_eof(client)
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in second


async def test_http10_keep_alive_with_streamed_body_closes(nursery):
    """A streamed response of unknown length to HTTP/1.0 is close-delimited."""

    async def streamed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    client = await start(nursery, streamed, make_state())
    await client.send_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    data = await read_until_eof(client)
    assert b"Connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nab")


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_send_no_body(nursery, status):
    """204 and 304 responses carry no body bytes even if the app sends some."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"dropped"})

    client = await start(nursery, app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data = await read_until_eof(client)
    assert data.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"dropped" not in data


async def test_content_length_over_limit_is_413_without_calling_app(nursery, caplog):
    """A declared body over limit_request_body gets 413 and the app is never called."""
    called: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(True)

    client = await start(nursery, app, make_state(limit_request_body=10))
    await client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n01234567890")
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert called == []
    assert no_errors(caplog)


async def test_chunked_body_over_limit_is_413_while_app_reads(nursery, caplog):
    """A chunked body growing past the limit is answered 413; the app sees a disconnect."""
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await hello_app(scope, receive, send)

    client = await start(nursery, app, make_state(limit_request_body=8))
    await client.send_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    await trio.testing.wait_all_tasks_blocked()
    await client.send_all(b"5\r\nworld\r\n0\r\n\r\n")
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert seen[-1] == {"type": "http.disconnect"}
    assert data.count(b"HTTP/1.1") == 1
    assert no_errors(caplog)


async def test_bad_chunk_after_head_is_400(nursery, caplog):
    """A chunk-size line ending in a bare LF (h11 would wait forever) is answered 400."""
    client = await start(nursery, echo_body_app, make_state())
    await client.send_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
    )
    with trio.fail_after(5):
        data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert no_errors(caplog)


async def test_access_log_line_per_request(nursery, caplog):
    """With an access log, each request produces one line with method, path and status."""
    logger = logging.getLogger("tests.access")
    caplog.set_level(logging.INFO, "tests.access")
    state = make_state()
    options = http_options(
        state.config, access_log=AccessLog('%(m)s %(U)s %(s)s %(b)s "%(a)s"', logger)
    )
    client = H11Client(await start(nursery, hello_app, state, options))
    await client.request(target=b"/path?q=1", headers=[(b"user-agent", b"tester")])
    lines = [r.getMessage() for r in caplog.records if r.name == "tests.access"]
    assert lines == ['GET /path 200 13 "tester"']


async def test_proxy_option_rewrites_scope(nursery):
    """The proxy option sees each scope before the app does."""
    scopes: list[dict[str, Any]] = []

    def pretend_proxy(scope: Any) -> None:
        scope["client"] = ("203.0.113.9", 0)
        scope["scheme"] = "https"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello_app(scope, receive, send)

    state = make_state()
    options = http_options(state.config, proxy=pretend_proxy)
    await H11Client(await start(nursery, app, state, options)).request()
    assert scopes[0]["client"] == ("203.0.113.9", 0)
    assert scopes[0]["scheme"] == "https"


async def test_app_hint_is_added_to_the_error_log(nursery, caplog):
    """An app error's log line carries the hint the server was given."""

    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("no running event loop")

    state = make_state()
    options = http_options(state.config, app_hint=lambda exc: "try --app-loop asyncio")
    response, _ = await H11Client(await start(nursery, failing, state, options)).request()
    assert response.status_code == 500
    assert any("(try --app-loop asyncio)" in r.getMessage() for r in caplog.records)


# -- responses trioserve frames itself ----------------------------------------------------


def respond(headers: list[tuple[bytes, bytes]], *bodies: bytes) -> Any:
    """An app sending a 200 with ``headers`` and each of ``bodies`` as a body message."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, chunk in enumerate(bodies):
            more = i < len(bodies) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


TWO_GETS = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"


async def test_app_connection_close_ends_the_connection(nursery):
    """An app's own Connection: close ends the connection after its response."""
    client = await start(nursery, respond([(b"connection", b"close")], b"one"), make_state())
    await client.send_all(TWO_GETS)
    data = await read_until_eof(client)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 1
    assert data.lower().count(b"\r\nconnection: close\r\n") == 1
    assert data.endswith(b"\r\n\r\none")


async def test_body_shorter_than_its_length_closes_the_connection(nursery, caplog):
    """A body shorter than its Content-Length goes out, then the connection closes (a
    client must not read the next response as the rest), with an error logged."""
    app = respond([(b"content-length", b"10")], b"four", b"")
    client = await start(nursery, app, make_state())
    await client.send_all(TWO_GETS)
    data = await read_until_eof(client)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 1
    assert data.endswith(b"\r\n\r\nfour")
    assert "6 bytes less than its Content-Length to GET /1" in caplog.text


async def test_body_longer_than_its_length_breaks_the_connection(nursery, caplog):
    """More body than the Content-Length once the head is out: the app gets an error, the
    extra bytes are never sent and the connection closes."""
    errors: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}
        )
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        try:
            await send({"type": "http.response.body", "body": b"cd"})
        except RuntimeError as exc:
            errors.append(exc)

    client = await start(nursery, app, make_state())
    await client.send_all(TWO_GETS)
    data = await read_until_eof(client)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 1
    assert data.endswith(b"\r\n\r\nab")
    assert "longer than its Content-Length" in str(errors[0])


async def test_first_body_longer_than_its_length_gets_500(nursery, caplog):
    """A single body message longer than the Content-Length sends nothing of it: 500."""
    app = respond([(b"content-length", b"3")], b"four")
    client = await start(nursery, app, make_state())
    await client.send_all(TWO_GETS)
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"four" not in data
    assert "longer than its Content-Length" in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-bad", b"a\r\nx-injected: 1")],
        [(b"bad name", b"v")],
        [(b"transfer-encoding", b"gzip")],
    ],
)
async def test_invalid_response_header_gets_500_and_never_goes_out(nursery, caplog, headers):
    """A response header that is not valid HTTP is never sent: the client gets a 500."""
    client = await start(nursery, respond(headers, b"body"), make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"injected" not in data
    assert "invalid response header" in caplog.text


async def test_non_websocket_upgrade_keeps_the_connection(nursery):
    """A request with an Upgrade the server does not take (h2c) is plain HTTP, and the
    connection carries on to the next request."""
    client = H11Client(await start(nursery, hello_app, make_state()))
    for _ in range(2):
        response, body = await client.request(
            headers=[(b"upgrade", b"h2c"), (b"connection", b"Upgrade, HTTP2-Settings")]
        )
        assert response.status_code == 200
        assert body == b"Hello, world!"


async def test_100_continue_is_sent_once(nursery):
    """A body read in several parts after Expect: 100-continue gets one 100 only."""
    client = await start(nursery, echo_body_app, make_state())
    await client.send_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert await client.receive_some() == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send_all(b"pi")
    await trio.testing.wait_all_tasks_blocked()
    await client.send_all(b"ng")
    data = await read_until_eof(client)
    assert b" 100 " not in data
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\nping")


async def test_no_100_continue_once_the_response_is_out(nursery):
    """An app that starts its answer before it reads the body sends no 100 Continue."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"got:", "more_body": True})
        message = await receive()
        await send({"type": "http.response.body", "body": message["body"]})

    client = await start(nursery, app, make_state())
    await client.send_all(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n"
    )
    first = await client.receive_some()
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    await trio.testing.wait_all_tasks_blocked()
    await client.send_all(b"ping")
    data = first + await read_until_eof(client)
    assert b" 100 " not in data
    assert data.endswith(b"4\r\ngot:\r\n4\r\nping\r\n0\r\n\r\n")


async def test_request_then_eof_is_answered(nursery):
    """A client that sends its request and half-closes still gets the whole response."""
    client = await start(nursery, hello_app, make_state())
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await client.send_eof()
    data = await read_until_eof(client)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"Hello, world!")

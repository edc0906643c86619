"""The HTTP/2 edge driven over memory streams, with h2 as the client: no sockets,
virtual time."""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any
from unittest.mock import ANY

import pytest

pytest.importorskip("h2", reason="HTTP/2 needs the http2 extra: pip install 'trioserve[http2]'")

import h2.config
import h2.connection
import h2.events
import h2.frame_buffer
import h2.settings
import h11
import hpack
import trio
import trio.testing
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.helpers import echo_body_app, hello_app
from trioserve import ClientDisconnected, Config
from trioserve._lograte import LIMITED_LOGGERS
from trioserve._peer import Peer
from trioserve._proto.http2 import Guards
from trioserve._serve_h2 import LOGGER as H2_LOGGER
from trioserve._serve_h2 import H2Options, serve_h2_connection
from trioserve._serve_http import HTTPOptions, watch_deadlines, watch_handovers
from trioserve._state import ServerState

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"test"), (b":path", b"/")]


def post(path: bytes = b"/") -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"test"),
            (b":path", path)]  # fmt: skip


def make_state(**settings: Any) -> ServerState:
    return ServerState(Config(**settings))


async def serve(
    stream: trio.abc.Stream,
    app: Any,
    state: ServerState,
    *,
    guards: Guards | None = None,
    **kwargs: Any,
) -> None:
    """One HTTP/2 connection served as the server would, with the deadline watchdog and
    the HTTP/1.1 edge's handover watcher beside it."""
    options = H2Options(HTTPOptions(state.config), guards=guards)
    async with trio.open_nursery() as watchers:
        watchers.start_soon(watch_deadlines, state, options.http)
        await watchers.start(watch_handovers, options.http)
        peer = Peer(stream, None, ("127.0.0.1", 4321), ("127.0.0.1", 8000))
        # Bound as the pipeline binds it, and called as the HTTP/1.1 edge calls its
        # HTTP2Connection (branch h2neg): (stream, *, peer, settings, upgrade_request).
        edge = functools.partial(serve_h2_connection, app=app, state=state, options=options)
        await edge(stream, peer=peer, **kwargs)
        watchers.cancel_scope.cancel()


class Client:
    """An h2 client over a memory stream."""

    def __init__(self, stream: trio.abc.Stream, *, window: int | None = None) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        self.events: list[Any] = []
        self.eof = False
        self.auto_ack = True
        # Everything the server sent (h2 as a client stops at a GOAWAY: see frames()).
        self.received = bytearray()

    async def start(self) -> Client:
        self.conn.initiate_connection()
        await self.flush()
        return self

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def receive(self) -> list[Any]:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            return []
        self.received += data
        if self.goaway() is not None:
            return []
        events = self.conn.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.DataReceived) and self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        with contextlib.suppress(trio.BrokenResourceError):
            await self.flush()
        self.events += events
        return events

    async def request(
        self, headers: list[tuple[bytes, bytes]] = GET, body: bytes = b"", *, end: bool = True
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=end and not body)
        if body:
            await self.flush()
            await self.send_body(stream_id, body, end=end)
        await self.flush()
        return stream_id

    async def send_body(self, stream_id: int, body: bytes, *, end: bool = True) -> None:
        """Send ``body`` as the windows allow (reading the server's updates)."""
        while body:
            window = min(self.conn.local_flow_control_window(stream_id), 16384)
            if not window:
                await self.flush()
                await self.receive()
                continue
            self.conn.send_data(stream_id, body[:window], end_stream=end and len(body) <= window)
            body = body[window:]
        await self.flush()

    def of(self, kind: type | tuple[type, ...], stream_id: int | None = None) -> list[Any]:
        events: list[Any] = self.events
        return [
            e
            for e in events
            if isinstance(e, kind) and stream_id in (None, getattr(e, "stream_id", None))
        ]

    async def response(self, stream_id: int) -> tuple[dict[bytes, bytes], bytes]:
        """The response on ``stream_id``: its headers and body, once it ended."""
        with trio.fail_after(30):
            while not self.of((h2.events.StreamEnded, h2.events.StreamReset), stream_id):
                await self.receive()
                assert not self.eof, "the connection closed"
        (head,) = self.of(h2.events.ResponseReceived, stream_id)
        body = b"".join(e.data for e in self.of(h2.events.DataReceived, stream_id))
        return dict(head.headers), body

    async def until_closed(self) -> None:
        with trio.fail_after(60):
            while not self.eof:
                await self.receive()

    def frames(self) -> list[tuple[Any, Any]]:
        """Every frame the server sent, HEADERS decoded: (frame, headers or None)."""
        buffer = h2.frame_buffer.FrameBuffer()
        buffer.max_frame_size = 2**24
        buffer.add_data(bytes(self.received))
        decoder = hpack.Decoder()
        return [
            (
                frame,
                decoder.decode(frame.data, raw=True) if isinstance(frame, HeadersFrame) else None,
            )
            for frame in buffer
        ]

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        ends = self.of(h2.events.ConnectionTerminated)
        return ends[-1] if ends else None


async def connect(
    nursery: trio.Nursery, app: Any, state: ServerState | None = None, **kwargs: Any
) -> Client:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    window = kwargs.pop("window", None)
    nursery.start_soon(lambda: serve(server_stream, app, state or make_state(), **kwargs))
    return await Client(client_stream, window=window).start()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- requests and responses -------------------------------------------------------------


async def test_a_get_is_answered(nursery):
    """A GET over HTTP/2 gets the app's response, with date and server headers."""
    client = await connect(nursery, hello_app)
    headers, body = await client.response(await client.request())
    assert headers[b":status"] == b"200"
    assert body == b"Hello, world!"
    assert headers[b"server"] == b"trioserve" and b"date" in headers


async def test_the_scope_says_http_2(nursery):
    """The app's scope: http_version "2", the connection's scheme, the path and query
    apart, :authority as Host, the client and server, the trailers extension."""
    scopes: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await hello_app(scope, receive, send)

    client = await connect(nursery, app)
    headers = [*GET[:3], (b":path", b"/a%2Fb?q=1"), (b"x-y", b"z")]
    await client.response(await client.request(headers))
    (scope,) = scopes
    assert scope["http_version"] == "2" and scope["scheme"] == "http"
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/a/b", b"/a%2Fb", b"q=1")
    assert scope["headers"] == [(b"host", b"test"), (b"x-y", b"z")]
    assert scope["client"] == ("127.0.0.1", 4321) and scope["server"] == ("127.0.0.1", 8000)
    assert "http.response.trailers" in scope["extensions"]


async def test_streams_run_concurrently(nursery):
    """Each stream runs in its own task: a response can wait for a later request."""
    second_arrived = trio.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/first":
            await second_arrived.wait()
        else:
            second_arrived.set()
        await hello_app(scope, receive, send)

    client = await connect(nursery, app)
    first = await client.request([*GET[:3], (b":path", b"/first")])
    second = await client.request([*GET[:3], (b":path", b"/second")])
    with trio.fail_after(5):
        assert (await client.response(first))[1] == b"Hello, world!"
        assert (await client.response(second))[1] == b"Hello, world!"


async def test_large_bodies_flow_both_ways(nursery):
    """A request body larger than every window is read by the app as it comes, and the
    echo goes back as the client's windows open."""
    client = await connect(nursery, echo_body_app)
    body = bytes(range(256)) * 1200  # 300 KiB
    stream_id = await client.request(post(), body)
    headers, echoed = await client.response(stream_id)
    assert headers[b":status"] == b"200" and echoed == body


async def test_an_app_that_raises_gets_a_500(nursery, caplog):
    """An app that fails before its response gets a 500 on its stream; the connection
    serves on."""

    async def app(scope, receive, send):
        if scope["path"] == "/fail":
            raise ValueError("boom")
        await hello_app(scope, receive, send)

    client = await connect(nursery, app)
    headers, _ = await client.response(await client.request([*GET[:3], (b":path", b"/fail")]))
    assert headers[b":status"] == b"500"
    headers, _ = await client.response(await client.request())
    assert headers[b":status"] == b"200"
    assert any("exception in ASGI app" in m for m in errors(caplog))


async def test_trailers_reach_the_client(nursery):
    """http.response.trailers becomes a trailing HEADERS frame for a client that sent
    te: trailers."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"x"})
        await send({"type": "http.response.trailers", "headers": [(b"digest", b"1")]})

    client = await connect(nursery, app)
    stream_id = await client.request([*GET, (b"te", b"trailers")])
    await client.response(stream_id)
    (trailers,) = client.of(h2.events.TrailersReceived, stream_id)
    assert trailers.headers == [(b"digest", b"1")]


async def test_a_bad_request_head_is_answered_on_its_stream(nursery):
    """A head the HTTP/1.1 rules refuse gets 400 on its stream, counted as a rejection
    (--metrics-bind); the connection lives."""
    state = make_state()
    client = await connect(nursery, hello_app, state)
    headers, _ = await client.response(await client.request([*GET, (b"x", b"a\x01")]))
    assert headers[b":status"] == b"400"
    assert state.rejected == {400: 1}
    headers, _ = await client.response(await client.request())
    assert headers[b":status"] == b"200"


async def test_a_body_over_the_limit_is_answered_413(nursery):
    """--limit-request-body holds for a streamed body: the app reading it is refused and
    the client gets 413."""
    state = make_state(limit_request_body=1000)
    client = await connect(nursery, echo_body_app, state)
    stream_id = await client.request(post(), b"x" * 2000)
    headers, _ = await client.response(stream_id)
    assert headers[b":status"] == b"413"
    assert state.rejected == {413: 1}


async def test_limit_concurrency_answers_503(nursery):
    """Past --limit-concurrency requests in progress a stream gets 503, counted as a
    rejection (--metrics-bind)."""
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await hello_app(scope, receive, send)

    state = make_state(limit_concurrency=1)
    client = await connect(nursery, app, state)
    first = await client.request()
    await trio.testing.wait_all_tasks_blocked()
    headers, _ = await client.response(await client.request())
    assert headers[b":status"] == b"503"
    assert state.rejected == {503: 1}
    release.set()
    assert (await client.response(first))[0][b":status"] == b"200"


async def test_an_app_working_after_its_response_keeps_only_its_task(
    nursery, autojump_clock, caplog
):
    """An app that works on after its response (a background task) is nothing for the
    HTTP/1.1 edge's handovers: its stream's task runs it to its end, the connection
    serves on meanwhile."""
    finished: list[float] = []
    both = trio.Event()

    async def app(scope, receive, send):
        await hello_app(scope, receive, send)
        await trio.sleep(3)
        finished.append(trio.current_time())
        if len(finished) == 2:
            both.set()

    client = await connect(nursery, app)
    for _ in range(2):
        headers, _ = await client.response(await client.request())
        assert headers[b":status"] == b"200"
    assert trio.current_time() < 1 and finished == []
    with trio.fail_after(10):
        await both.wait()
    assert errors(caplog) == []


async def test_requests_are_counted(nursery):
    """Each stream counts as a served request; max-requests is noticed."""
    state = make_state()
    state.request_limit = 2
    client = await connect(nursery, hello_app, state)
    await client.response(await client.request())
    await trio.testing.wait_all_tasks_blocked()
    assert state.requests_served == 1 and not state.limit_reached.is_set()
    await client.response(await client.request())
    await trio.testing.wait_all_tasks_blocked()
    assert state.requests_served == 2 and state.limit_reached.is_set()
    assert state.active_requests == 0


# -- departures -------------------------------------------------------------------------


async def test_a_reset_stream_tells_the_app(nursery, caplog):
    """A stream the client resets: the app's receive() says http.disconnect and its
    send() raises ClientDisconnected; nothing is logged as an error."""
    seen: list[Any] = []
    started = trio.Event()
    returned = trio.Event()

    async def app(scope, receive, send):
        started.set()
        try:
            seen.append(await receive())
            seen.append(await receive())
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"x"})
        except ClientDisconnected:
            seen.append("gone")
            raise
        finally:
            returned.set()

    client = await connect(nursery, app)
    stream_id = await client.request()
    await started.wait()
    client.conn.reset_stream(stream_id)
    await client.flush()
    with trio.fail_after(5):
        await returned.wait()
    assert seen[1] == {"type": "http.disconnect"} and seen[2] == "gone"
    assert errors(caplog) == []


async def test_a_client_vanishing_mid_response_logs_nothing(nursery, caplog, autojump_clock):
    """A client that closes the connection while responses stream (as h2load does at
    its end) costs no error log, and the connection ends."""
    done = trio.Event()

    async def app(scope, receive, send):
        try:
            await send({"type": "http.response.start", "status": 200})
            while True:
                await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
                await trio.sleep(0.01)
        finally:
            done.set()

    client_stream, server_stream = trio.testing.memory_stream_pair()
    ended = trio.Event()

    async def run():
        await serve(server_stream, app, make_state())
        ended.set()

    nursery.start_soon(run)
    client = await Client(client_stream).start()
    for _ in range(3):
        await client.request()
    await client.receive()
    await client_stream.aclose()
    with trio.fail_after(5):
        await done.wait()
        await ended.wait()
    assert errors(caplog) == []


# -- time -------------------------------------------------------------------------------


async def test_a_ping_is_answered(nursery):
    """A PING gets its acknowledgement with the same payload."""
    client = await connect(nursery, hello_app)
    client.conn.ping(b"8 bytes!")
    await client.flush()
    with trio.fail_after(5):
        while not client.of(h2.events.PingAckReceived):
            await client.receive()
    assert client.of(h2.events.PingAckReceived)[0].ping_data == b"8 bytes!"


async def test_an_idle_connection_closes_after_keep_alive(nursery, autojump_clock):
    """With no stream in flight for --keep-alive seconds, GOAWAY(NO_ERROR), then close."""
    client = await connect(nursery, hello_app, make_state(keep_alive=5))
    await client.response(await client.request())
    start = trio.current_time()
    await client.until_closed()
    assert trio.current_time() - start == pytest.approx(5, abs=0.01)
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == 0 and goaway.last_stream_id == 1


async def test_a_busy_connection_does_not_idle_out(nursery, autojump_clock):
    """A stream in flight longer than --keep-alive keeps the connection."""

    async def app(scope, receive, send):
        await trio.sleep(20)
        await hello_app(scope, receive, send)

    client = await connect(nursery, app, make_state(keep_alive=5))
    headers, _ = await client.response(await client.request())
    assert headers[b":status"] == b"200" and client.goaway() is None


async def test_a_graceful_stop_lets_streams_finish(nursery, autojump_clock):
    """A graceful stop sends GOAWAY with the last stream taken; that stream is still
    answered, then the connection closes."""
    state = make_state()
    started = trio.Event()

    async def app(scope, receive, send):
        started.set()
        await trio.sleep(3)
        await hello_app(scope, receive, send)

    client = await connect(nursery, app, state)
    stream_id = await client.request()
    await started.wait()
    state.request_stop()
    await client.until_closed()
    frames = [(type(f).__name__, f.stream_id, h) for f, h in client.frames()][-3:]
    assert frames == [
        ("GoAwayFrame", 0, None),
        ("HeadersFrame", stream_id, [
            (b":status", b"200"), (b"content-type", b"text/plain"), (b"date", ANY),
            (b"server", b"trioserve"), (b"content-length", b"13")]),
        ("DataFrame", stream_id, None),
    ]  # fmt: skip
    goaway = client.goaway()
    assert goaway is not None and goaway.last_stream_id == stream_id and goaway.error_code == 0


async def test_a_zero_window_stall_resets_the_stream(nursery, autojump_clock, caplog):
    """A client that never opens its window: after --write-timeout the stream is reset
    and the app's send() raises ClientDisconnected."""
    outcome: list[str] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        try:
            await send({"type": "http.response.body", "body": b"x" * 100})
        except ClientDisconnected:
            outcome.append(f"gone at {trio.current_time():.0f}")
            raise

    client = await connect(nursery, app, make_state(write_timeout=7), window=0)
    stream_id = await client.request()
    _, body = await client.response(stream_id)
    assert outcome == ["gone at 7"]
    assert client.of(h2.events.StreamReset, stream_id)[0].error_code == 8  # CANCEL
    assert body == b""
    assert errors(caplog) == []


async def test_an_incomplete_header_block_times_out(nursery, autojump_clock):
    """A header block that never ends closes the connection after --header-timeout."""
    client = await connect(nursery, hello_app, make_state(header_timeout=4))
    await client.receive()  # (the server's SETTINGS, acknowledged before the block)
    await client.stream.send_all(HeadersFrame(1, b"\x82").serialize())
    await client.stream.send_all(ContinuationFrame(1, b"\x84").serialize())
    start = trio.current_time()
    await client.until_closed()
    assert trio.current_time() - start == pytest.approx(4, abs=0.01)
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == 1


async def test_a_stalled_request_body_reset_after_read_timeout(nursery, autojump_clock):
    """A request body that stops coming: after --read-timeout the app hears
    http.disconnect and the stream is reset."""
    seen: list[Any] = []

    async def app(scope, receive, send):
        seen.append(await receive())
        seen.append(await receive())
        seen.append(trio.current_time())

    client = await connect(nursery, app, make_state(read_timeout=6))
    stream_id = await client.request(post(), b"abc", end=False)
    with trio.fail_after(10):
        while not client.of(h2.events.StreamReset, stream_id):
            await client.receive()
    assert seen[0]["body"] == b"abc" and seen[1] == {"type": "http.disconnect"}
    assert seen[2] == pytest.approx(6, abs=0.01)


# -- h2c and hostile clients --------------------------------------------------------------


async def test_an_h2c_upgrade_request_is_answered_on_stream_1(nursery):
    """After Upgrade: h2c, the upgrade request is served as stream 1."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    settings = client.conn.initiate_upgrade_connection()
    assert settings is not None
    request = h11.Request(
        method="GET",
        target="/up",
        headers=[("Host", "test"), ("Upgrade", "h2c"), ("HTTP2-Settings", settings.decode())],
    )

    async def run():
        await serve(
            server_stream, hello_app, make_state(), settings=settings, upgrade_request=request
        )

    nursery.start_soon(run)
    await client.flush()
    headers, body = await client.response(1)
    assert headers[b":status"] == b"200" and body == b"Hello, world!"


async def test_rapid_reset_is_cut_off_without_error_logs(nursery, caplog):
    """Streams opened and reset at once, past the limit: GOAWAY(ENHANCE_YOUR_CALM), the
    apps are cancelled, nothing is logged above info."""
    cancelled: list[bool] = []

    async def app(scope, receive, send):
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    client = await connect(nursery, app, guards=Guards(resets_per_second=20))
    for _ in range(30):
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, GET, end_stream=True)
        client.conn.reset_stream(stream_id)
    await client.flush()
    await client.until_closed()
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == 11
    assert cancelled
    assert errors(caplog) == []


async def test_tls_extensions_join_the_trailers_extension(nursery):
    """On a TLS connection the scope has the peer's tls extension and, still, the
    trailers extension of HTTP/2."""
    scopes: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await hello_app(scope, receive, send)

    client_stream, server_stream = trio.testing.memory_stream_pair()
    state = make_state()
    options = H2Options(HTTPOptions(state.config))
    peer = Peer(server_stream, None, None, None, secure=True, extensions={"tls": {"x": 1}})
    nursery.start_soon(
        lambda: serve_h2_connection(server_stream, peer=peer, app=app, state=state, options=options)
    )
    client = await Client(client_stream).start()
    await client.response(await client.request())
    (scope,) = scopes
    assert scope["scheme"] == "https"
    assert scope["extensions"]["tls"] == {"x": 1}
    assert "http.response.trailers" in scope["extensions"]


async def test_pathsend_sends_the_file(nursery, tmp_path):
    """http.response.pathsend over HTTP/2 (with --pathsend): the file is the body, framed
    by its length, sent as the client's windows allow."""
    content = bytes(range(256)) * 700  # larger than one stream window
    path = tmp_path / "file.bin"
    path.write_bytes(content)

    async def app(scope, receive, send):
        assert "http.response.pathsend" in scope["extensions"]
        headers = [(b"content-length", b"%d" % len(content))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(path)})

    client = await connect(nursery, app, make_state(pathsend=True))
    headers, body = await client.response(await client.request())
    assert headers[b"content-length"] == b"%d" % len(content)
    assert body == content


def test_the_edge_logs_where_client_caused_lines_are_rate_limited():
    """The HTTP/2 edge's log lines (a hostile client cut off, a stalled stream) go to a
    logger whose lines are rate-limited, as the HTTP/1.1 edge's are."""
    assert H2_LOGGER.name in LIMITED_LOGGERS

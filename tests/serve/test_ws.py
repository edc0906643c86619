"""The WebSocket edge driven over memory streams: trio-websocket's client, or wsproto by
hand for what that client would never send."""

from __future__ import annotations

import collections
import functools
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from examples import ws_echo
from trioserve import ClientDisconnected, Config
from trioserve._peer import Peer
from trioserve._serve_ws import (
    CLOSE_TIMEOUT,
    WSOptions,
    serve_asgi_websocket,
    serve_native_websocket,
    watch_websockets,
)
from trioserve._state import ServerState
from trioserve._streams import PrefixedStream

CLIENT = ("127.0.0.1", 50000)
SERVER = ("127.0.0.1", 8000)


def make_state(**settings: Any) -> ServerState:
    return ServerState(Config(**settings))


class App:
    """An ASGI websocket app that echoes, and records what it was given and told."""

    def __init__(self, *, accept: bool = True, close_after: int | None = None) -> None:
        self.accept = accept
        self.close_after = close_after
        self.scope: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []
        self.disconnect: dict[str, Any] | None = None
        self.disconnected = trio.Event()
        self.error: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        connect = await receive()
        assert connect == {"type": "websocket.connect"}
        offered = scope["subprotocols"]
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": offered[0] if offered else None,
                "headers": [(b"x-accepted", b"yes")],
            }
        )
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                self.disconnect = message
                self.disconnected.set()
                return
            await send(
                {
                    "type": "websocket.send",
                    "text": message.get("text"),
                    "bytes": message.get("bytes"),
                }
            )
            if self.close_after is not None and len(self.received) >= self.close_after:
                await send({"type": "websocket.close", "code": 4001, "reason": "enough"})
                self.disconnect = await receive()
                self.disconnected.set()
                return


class Served:
    """A server side started over one half of a memory stream pair."""

    def __init__(self) -> None:
        self.done = trio.Event()

    async def asgi(
        self,
        stream: trio.abc.Stream,
        app: Any,
        state: ServerState,
        options: WSOptions | None = None,
    ) -> None:
        peer = Peer(stream, None, CLIENT, SERVER, extensions={"tls": {"server_cert": None}})
        try:
            await serve_asgi_websocket(
                stream, app, state, options or WSOptions(state.config), peer=peer
            )
        finally:
            self.done.set()

    async def native(self, stream: trio.abc.Stream, handler: Any, state: ServerState) -> None:
        try:
            await serve_native_websocket(stream, handler, state, WSOptions(state.config))
        finally:
            self.done.set()


def start_asgi(
    nursery: trio.Nursery,
    app: Any,
    state: ServerState | None = None,
    options: WSOptions | None = None,
) -> tuple[trio.abc.Stream, Served]:
    """Serve one websocket of ``app``; ``options`` (with the server's watcher) default
    to a fresh WSOptions, whose watcher does not run: the websocket then has its own."""
    client, server = trio.testing.memory_stream_pair()
    served = Served()
    nursery.start_soon(served.asgi, server, app, state or make_state(), options)
    return client, served


async def open_client(
    nursery: trio.Nursery,
    app: Any,
    state: ServerState | None = None,
    options: WSOptions | None = None,
    *,
    resource: str = "/ws",
    subprotocols: tuple[str, ...] = (),
) -> tuple[trio_websocket.WebSocketConnection, Served]:
    stream, served = start_asgi(nursery, app, state, options)
    ws = await trio_websocket.wrap_client_stream(
        nursery,
        stream,  # type: ignore[arg-type]
        "test.example:8000",
        resource,
        subprotocols=subprotocols,
        max_message_size=16 * 1024 * 1024,
    )
    return ws, served


class RawClient:
    """A wsproto client driven by hand: sends what it is told, answers nothing itself."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: collections.deque[Event] = collections.deque()

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def handshake(self, target: str = "/ws", subprotocols: tuple[str, ...] = ()) -> Event:
        await self.send(Request(host="test", target=target, subprotocols=list(subprotocols)))
        return await self.next_event()

    async def next_event(self) -> Event:
        while not self.pending:
            self.pending.extend(self.ws.events())
            if self.pending:
                break
            data = await self.stream.receive_some(65536)
            if not data and self.ws.state.name in ("CONNECTING", "REJECTING"):
                raise EOFError("the server closed the connection during the handshake")
            self.ws.receive_data(bytes(data) if data else None)
        return self.pending.popleft()

    async def rejection(self) -> tuple[int, dict[bytes, bytes], bytes]:
        """The status, headers and body of a refused handshake."""
        event = await self.handshake()
        assert isinstance(event, RejectConnection), event
        body = b""
        while event.has_body:
            data = await self.next_event()
            assert isinstance(data, RejectData)
            body += data.data
            if data.body_finished:
                break
        return event.status_code, dict(event.headers), body


def start_raw(
    nursery: trio.Nursery,
    app: Any,
    state: ServerState | None = None,
    options: WSOptions | None = None,
) -> tuple[RawClient, Served]:
    stream, served = start_asgi(nursery, app, state, options)
    return RawClient(stream), served


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_echo_text_and_bytes(nursery):
    """Text and binary messages reach the app as text and bytes, and come back."""
    app = App()
    ws, _ = await open_client(nursery, app)
    await ws.send_message("héllo")
    assert await ws.get_message() == "héllo"
    await ws.send_message(b"\x00\x01binary")
    assert await ws.get_message() == b"\x00\x01binary"
    assert app.received == [
        {"type": "websocket.receive", "text": "héllo"},
        {"type": "websocket.receive", "bytes": b"\x00\x01binary"},
    ]


async def test_scope_follows_the_asgi_spec(nursery):
    """The websocket scope has every key the ASGI spec lists, with the request's values."""
    state = make_state(root_path="/mount")
    state.lifespan_state = {"db": "conn"}
    app = App()
    ws, _ = await open_client(
        nursery, app, state, resource="/caf%C3%A9/x%2Fy?q=1&r=%20", subprotocols=("chat", "v2")
    )
    scope = app.scope
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/mount/café/x/y"
    assert scope["raw_path"] == b"/mount/caf%C3%A9/x%2Fy"
    assert scope["query_string"] == b"q=1&r=%20"
    assert scope["root_path"] == "/mount"
    assert scope["client"] == CLIENT
    assert scope["server"] == SERVER
    assert scope["subprotocols"] == ["chat", "v2"]
    assert scope["state"] == {"db": "conn"}
    assert scope["state"] is not state.lifespan_state
    assert scope["extensions"] == {"websocket.http.response": {}, "tls": {"server_cert": None}}
    headers = scope["headers"]
    assert all(isinstance(n, bytes) and n == n.lower() and isinstance(v, bytes) for n, v in headers)
    names = dict(headers)
    assert names[b"host"] == b"test.example:8000"
    assert names[b"upgrade"].lower() == b"websocket"
    assert names[b"sec-websocket-version"] == b"13"
    assert names[b"sec-websocket-protocol"] == b"chat, v2"
    assert b"sec-websocket-key" in names
    await ws.aclose()


async def test_subprotocol_and_headers_of_accept_reach_the_client(nursery):
    """websocket.accept's subprotocol is negotiated and its headers sent with the 101."""
    ws, _ = await open_client(nursery, App(), subprotocols=("chat", "superchat"))
    assert ws.subprotocol == "chat"
    assert (b"x-accepted", b"yes") in ws.handshake_headers


async def test_no_subprotocol_when_none_offered(nursery):
    """Without an offer the scope lists no subprotocols and none is negotiated."""
    app = App()
    ws, _ = await open_client(nursery, app)
    assert app.scope["subprotocols"] == []
    assert ws.subprotocol is None


async def test_close_before_accept_is_403(nursery):
    """websocket.close before accepting answers the handshake with HTTP 403."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close"})
        assert (await receive())["type"] == "websocket.disconnect"

    raw, served = start_raw(nursery, app)
    status, _, body = await raw.rejection()
    assert status == 403
    assert body == b""
    with trio.fail_after(1):
        await served.done.wait()


async def test_denial_response_has_custom_status_headers_and_body(nursery):
    """The websocket.http.response extension sends the app's own status, headers, body."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"token"})

    raw, _ = start_raw(nursery, app)
    status, headers, body = await raw.rejection()
    assert status == 401
    assert headers[b"www-authenticate"] == b"Bearer"
    assert headers[b"content-type"] == b"text/plain"
    assert headers[b"content-length"] == b"8"
    assert body == b"no token"


async def test_oversized_message_closes_with_1009(nursery):
    """A message over ws_max_message_size closes with 1009, seen by client and app."""
    app = App()
    ws, _ = await open_client(nursery, app, make_state(ws_max_message_size=1000))
    await ws.send_message(b"x" * 1000)
    assert await ws.get_message() == b"x" * 1000
    await ws.send_message(b"x" * 1001)
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1009
    with trio.fail_after(1):
        await app.disconnected.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1009


async def test_oversized_message_in_fragments_closes_with_1009(nursery):
    """The limit counts a fragmented message as a whole."""
    app = App()
    raw, _ = start_raw(nursery, app, make_state(ws_max_message_size=1000))
    assert isinstance(await raw.handshake(), AcceptConnection)
    for _ in range(3):
        await raw.send(BytesMessage(data=b"y" * 400, message_finished=False))
    event = await raw.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == 1009


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        # A masked text frame (zero mask) whose payload is not UTF-8.
        (b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),
        # A client frame without a mask.
        (b"\x81\x02hi", 1002),
        # A reserved opcode.
        (b"\x83\x80\x00\x00\x00\x00", 1002),
    ],
    ids=["invalid-utf8", "unmasked", "reserved-opcode"],
)
async def test_bad_frames_close_with_1007_or_1002(nursery, caplog, frame, code):
    """Invalid UTF-8 closes with 1007, a protocol violation with 1002: the peer hears it."""
    app = App()
    raw, served = start_raw(nursery, app)
    assert isinstance(await raw.handshake(), AcceptConnection)
    await raw.stream.send_all(frame)
    event = await raw.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == code
    with trio.fail_after(1):
        await app.disconnected.wait()
        await served.done.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == code
    assert not errors(caplog)


async def _pinged_websocket(nursery: trio.Nursery, *, shared: bool = True) -> tuple[Any, App, Any]:
    """A websocket past its handshake, pinged every 5 s with its pong due within 3 s,
    by the server's watcher (``shared``) or its own: (raw client, app, served)."""
    state = make_state(ws_ping_interval=5, ws_ping_timeout=3)
    options = WSOptions(state.config)
    if shared:
        await nursery.start(watch_websockets, state, options)
    app = App()
    raw, served = start_raw(nursery, app, state, options)
    assert isinstance(await raw.handshake(), AcceptConnection)
    return raw, app, served


@pytest.mark.parametrize("shared", [False, True], ids=["own-watcher", "server-watcher"])
async def test_peer_that_does_not_answer_pings_is_closed(nursery, autojump_clock, shared):
    """No pong within ws_ping_timeout after a ping closes with 1011."""
    raw, app, served = await _pinged_websocket(nursery, shared=shared)
    start = trio.current_time()
    with trio.fail_after(60):
        await app.disconnected.wait()
    assert trio.current_time() - start == pytest.approx(8, abs=0.01)
    assert app.disconnect == {
        "type": "websocket.disconnect",
        "code": 1011,
        "reason": "keepalive ping timeout",
    }
    assert isinstance(await raw.next_event(), Ping)
    close = await raw.next_event()
    assert isinstance(close, CloseConnection)
    assert close.code == 1011
    with trio.fail_after(60):
        await served.done.wait()
    assert trio.current_time() - start == pytest.approx(8 + CLOSE_TIMEOUT, abs=0.01)


async def _trickle_frame(raw: RawClient, size: int, seconds: int) -> None:
    """Send one binary frame of ``size`` bytes in ``seconds`` equal parts, a second
    apart: a client on a slow link, which cannot answer a ping before the frame ends."""
    frame = raw.ws.send(BytesMessage(data=b"x" * size))
    part = -(-len(frame) // seconds)
    for start in range(0, len(frame), part):
        await raw.stream.send_all(frame[start : start + part])
        await trio.sleep(1)


async def test_peer_sending_a_long_frame_outlives_the_ping_timeout(nursery, autojump_clock):
    """A peer still sending a frame when a ping comes answers after the frame: it is
    kept, however long the frame takes, and its message is echoed."""
    raw, app, _ = await _pinged_websocket(nursery)
    start = trio.current_time()
    await _trickle_frame(raw, 100_000, 20)
    assert trio.current_time() - start == pytest.approx(20, abs=0.01)
    ping = await raw.next_event()
    assert isinstance(ping, Ping)
    await raw.send(ping.response())
    echoed = b""
    while True:
        part = await raw.next_event()
        assert isinstance(part, BytesMessage)
        echoed += part.data
        if part.message_finished:
            break
    assert echoed == b"x" * 100_000
    assert not app.disconnected.is_set()


async def test_ping_timeout_counts_from_the_peers_last_bytes(nursery, autojump_clock):
    """A peer that stops sending and never answers the ping is closed with 1011
    ws_ping_timeout seconds after the last bytes it sent."""
    raw, app, _ = await _pinged_websocket(nursery)
    start = trio.current_time()
    # Ten parts of a frame of 11: the peer is silent from 9 s on, mid-frame.
    frame = raw.ws.send(BytesMessage(data=b"x" * 11_000))
    for start_byte in range(0, 10_000, 1000):
        await raw.stream.send_all(frame[start_byte : start_byte + 1000])
        await trio.sleep(1)
    with trio.fail_after(60):
        await app.disconnected.wait()
    assert trio.current_time() - start == pytest.approx(9 + 3, abs=0.01)
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1011


async def test_peer_that_answers_pings_stays_connected(nursery, autojump_clock):
    """A peer answering every ping is pinged every ws_ping_interval and kept."""
    state = make_state(ws_ping_interval=10, ws_ping_timeout=5)
    options = WSOptions(state.config)
    await nursery.start(watch_websockets, state, options)
    app = App()
    raw, _ = start_raw(nursery, app, state, options)
    assert isinstance(await raw.handshake(), AcceptConnection)
    start = trio.current_time()
    times: list[float] = []
    while len(times) < 5:
        event = await raw.next_event()
        assert isinstance(event, Ping)
        times.append(trio.current_time() - start)
        await raw.send(event.response())
    assert times == pytest.approx([10, 20, 30, 40, 50], abs=0.01)
    await raw.send(TextMessage(data="still here"))
    assert await raw.next_event() == TextMessage(data="still here")
    assert not app.disconnected.is_set()


async def test_no_pings_when_interval_is_zero(nursery, autojump_clock):
    """ws_ping_interval=0 sends no pings, however long the websocket idles."""
    app = App()
    raw, _ = start_raw(nursery, app, make_state(ws_ping_interval=0))
    assert isinstance(await raw.handshake(), AcceptConnection)
    with trio.move_on_after(3600):
        await raw.next_event()
        pytest.fail("the server sent something")


async def test_client_close_code_reaches_the_app(nursery):
    """A client closing with 4000 gives the app websocket.disconnect with 4000."""
    app = App()
    ws, served = await open_client(nursery, app)
    with trio.fail_after(1):
        await ws.aclose(4000, "bye")
        await app.disconnected.wait()
        await served.done.wait()
    assert app.disconnect == {"type": "websocket.disconnect", "code": 4000, "reason": "bye"}


async def test_client_close_without_code_is_1005(nursery):
    """A close frame without a code reaches the app as 1005, as the spec says."""
    app = App()
    raw, _ = start_raw(nursery, app)
    assert isinstance(await raw.handshake(), AcceptConnection)
    await raw.stream.send_all(b"\x88\x80\x00\x00\x00\x00")
    with trio.fail_after(1):
        await app.disconnected.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1005


async def test_client_vanishing_is_1006_and_not_an_error(nursery, caplog):
    """A client dropping TCP gives the app code 1006 and logs no error."""
    app = App()
    raw, served = start_raw(nursery, app)
    assert isinstance(await raw.handshake(), AcceptConnection)
    await raw.stream.aclose()
    with trio.fail_after(1):
        await app.disconnected.wait()
        await served.done.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1006
    assert not errors(caplog)


async def test_app_close_code_reaches_the_client(nursery):
    """An app closing with 4001 closes the client with 4001 and its reason."""
    app = App(close_after=1)
    ws, served = await open_client(nursery, app)
    await ws.send_message("one")
    assert await ws.get_message() == "one"
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert (info.value.reason.code, info.value.reason.reason) == (4001, "enough")
    await ws.aclose()
    with trio.fail_after(1):
        await served.done.wait()
    assert app.disconnect == {"type": "websocket.disconnect", "code": 4001, "reason": "enough"}


async def test_app_returning_after_accept_closes_with_1000(nursery):
    """An app that returns without closing closes the websocket normally."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bye"})

    ws, _ = await open_client(nursery, app)
    assert await ws.get_message() == "bye"
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1000


async def test_app_error_before_accept_is_500(nursery, caplog):
    """An app that raises before accepting answers 500 and logs the traceback."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise ValueError("boom")

    raw, _ = start_raw(nursery, app)
    status, _, body = await raw.rejection()
    assert status == 500
    assert body == b"Internal Server Error\n"
    (record,) = errors(caplog)
    assert record.name == "trioserve.ws"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def asgi_app_raising_after_accept(
    nursery: trio.Nursery,
) -> tuple[trio_websocket.WebSocketConnection, Served]:
    """A client of an ASGI app that raises after accepting and reading one message."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise ValueError("boom")

    return await open_client(nursery, app)


async def native_handler_raising_after_accept(
    nursery: trio.Nursery,
) -> tuple[trio_websocket.WebSocketConnection, Served]:
    """A client of a native handler that raises after accepting and reading one message."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.get_message()
        raise ValueError("boom")

    client, server = trio.testing.memory_stream_pair()
    served = Served()
    nursery.start_soon(served.native, server, handler, make_state())
    ws = await trio_websocket.wrap_client_stream(nursery, client, "t", "/")  # type: ignore[arg-type]
    return ws, served


@pytest.mark.parametrize(
    "open_raising",
    [asgi_app_raising_after_accept, native_handler_raising_after_accept],
    ids=["asgi", "native"],
)
async def test_app_error_after_accept_closes_with_1011(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    open_raising: Callable[
        [trio.Nursery], Awaitable[tuple[trio_websocket.WebSocketConnection, Served]]
    ],
) -> None:
    """An ASGI app or a native handler that raises after accepting closes with 1011 and
    logs the traceback."""
    ws, served = await open_raising(nursery)
    await ws.send_message("go")
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1011
    await ws.aclose()
    with trio.fail_after(1):
        await served.done.wait()
    (record,) = errors(caplog)
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)


async def test_app_returning_without_answering_the_handshake_is_500(nursery, caplog):
    """An app that returns without accepting or closing answers 500 and logs an error."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    raw, _ = start_raw(nursery, app)
    status, _, _ = await raw.rejection()
    assert status == 500
    (record,) = errors(caplog)
    assert "without accepting" in record.getMessage()


async def test_message_in_the_wrong_state_after_accept_closes_with_1011(nursery, caplog):
    """A second websocket.accept is logged, raised into the app, and closes with 1011."""
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await send({"type": "websocket.http.response.start", "status": 200})
        except RuntimeError as exc:
            raised.append(exc)
            raise

    ws, served = await open_client(nursery, app)
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1011
    await ws.aclose()
    with trio.fail_after(1):
        await served.done.wait()
    assert len(raised) == 1
    (record,) = errors(caplog)
    assert "websocket.http.response.start" in record.getMessage()
    assert record.exc_info is None


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.send", "text": "too early"},
        {"type": "websocket.accept", "subprotocol": "never-offered"},
        {"type": "websocket.accept", "headers": [(b"bad header", b"x")]},
        {"type": "websocket.http.response.start", "status": 101},
        {"type": "http.response.start", "status": 200},
    ],
    ids=["send", "subprotocol", "header", "status", "http"],
)
async def test_bad_message_before_accept_is_500(nursery, caplog, message):
    """A message that cannot be sent before the handshake is answered gives 500."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(message)

    raw, _ = start_raw(nursery, app)
    status, _, _ = await raw.rejection()
    assert status == 500
    (record,) = errors(caplog)
    assert record.name == "trioserve.ws"


async def test_send_after_the_client_left_raises_oserror(nursery):
    """websocket.send on a websocket the client closed raises an OSError (ASGI 2.4)."""
    raised: list[BaseException] = []
    left = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:
            raised.append(exc)
        await send({"type": "websocket.close"})
        left.set()

    ws, _ = await open_client(nursery, app)
    await ws.aclose()
    with trio.fail_after(1):
        await left.wait()
    assert len(raised) == 1
    # The documented, exported class: an app can catch it by name.
    assert isinstance(raised[0], ClientDisconnected)


@pytest.mark.parametrize("shared", [False, True], ids=["own-watcher", "server-watcher"])
async def test_stop_requested_closes_with_1001(nursery, shared):
    """A graceful stop closes open websockets with 1001; the app hears 1001 too."""
    state = make_state()
    options = WSOptions(state.config)
    if shared:
        await nursery.start(watch_websockets, state, options)
    apps = [App() for _ in range(3)]
    clients = [await open_client(nursery, app, state, options) for app in apps]
    if shared:
        assert len(options.watcher.connections) == 3
    state.request_stop()
    with trio.fail_after(1):
        for (ws, served), app in zip(clients, apps, strict=True):
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1001
            await app.disconnected.wait()
            assert app.disconnect is not None
            assert app.disconnect["code"] == 1001
            await served.done.wait()
    if shared:
        assert not options.watcher.connections


async def test_websocket_accepted_during_a_stop_is_closed_with_1001(nursery):
    """An app that accepts after the stop began gets its websocket closed at once."""
    state = make_state()
    options = WSOptions(state.config)
    await nursery.start(watch_websockets, state, options)
    go = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await go.wait()
        await send({"type": "websocket.accept"})
        assert (await receive())["code"] == 1001

    stream, served = start_asgi(nursery, app, state, options)
    async with trio.open_nursery() as inner:
        inner.start_soon(
            functools.partial(trio_websocket.wrap_client_stream, inner, stream, "t", "/")  # type: ignore[arg-type]
        )
        await trio.testing.wait_all_tasks_blocked()
        state.request_stop()
        go.set()
        with trio.fail_after(1):
            await served.done.wait()
        inner.cancel_scope.cancel()


async def test_bad_handshake_is_answered_400_at_once(nursery):
    """A handshake wsproto refuses gets its 400 and the connection ends without waiting."""
    stream, served = start_asgi(nursery, App())
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    with trio.fail_after(1):
        await served.done.wait()
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


async def test_non_ascii_target_is_answered_400(nursery, caplog):
    """A target wsproto cannot decode is a bad request, not an error in the log."""
    stream, served = start_asgi(nursery, App())
    await stream.send_all(
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(1):
        await served.done.wait()
    assert (await stream.receive_some()).startswith(b"HTTP/1.1 400 ")
    assert not errors(caplog)


async def test_client_leaving_mid_handshake_ends_the_connection(nursery, caplog):
    """A client that leaves halfway through its handshake costs nothing afterwards."""
    stream, served = start_asgi(nursery, App())
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nUpgr")
    await stream.aclose()
    with trio.fail_after(1):
        await served.done.wait()
    assert not errors(caplog)


async def test_slow_handshake_times_out(nursery, autojump_clock):
    """A handshake not complete within header_timeout ends the connection."""
    stream, served = start_asgi(nursery, App(), make_state(header_timeout=7))
    await stream.send_all(b"GET / HTTP/1.1\r\n")
    start = trio.current_time()
    await served.done.wait()
    assert trio.current_time() - start == pytest.approx(7, abs=0.01)


async def native_echo(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept(subprotocol=(request.proposed_subprotocols or (None,))[0])
    while True:
        await ws.send_message(await ws.get_message())


async def test_native_handler_echo(nursery, caplog):
    """A native trio-websocket handler accepts and echoes; a client leaving is no error."""
    client, server = trio.testing.memory_stream_pair()
    served = Served()
    nursery.start_soon(served.native, server, native_echo, make_state())
    ws = await trio_websocket.wrap_client_stream(
        nursery,
        client,  # type: ignore[arg-type]
        "t",
        "/",
        subprotocols=["echo"],
    )
    assert ws.subprotocol == "echo"
    await ws.send_message("hi")
    assert await ws.get_message() == "hi"
    await ws.send_message(b"bin")
    assert await ws.get_message() == b"bin"
    await ws.aclose()
    with trio.fail_after(1):
        await served.done.wait()
    assert not errors(caplog)


async def test_native_handler_that_rejects(nursery, caplog):
    """A handler's own rejection goes out as it asked, and is no error."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(404, body=b"nothing here")

    client, server = trio.testing.memory_stream_pair()
    served = Served()
    nursery.start_soon(served.native, server, handler, make_state())
    status, _, body = await RawClient(client).rejection()
    assert (status, body) == (404, b"nothing here")
    with trio.fail_after(1):
        await served.done.wait()
    assert not errors(caplog)


async def test_native_handler_stop_requested_closes_with_1001(nursery):
    """A graceful stop closes a native handler's websocket with 1001."""
    state = make_state()
    client, server = trio.testing.memory_stream_pair()
    served = Served()
    nursery.start_soon(served.native, server, native_echo, state)
    ws = await trio_websocket.wrap_client_stream(nursery, client, "t", "/")  # type: ignore[arg-type]
    state.request_stop()
    with pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    assert info.value.reason is not None
    assert info.value.reason.code == 1001
    with trio.fail_after(1):
        await served.done.wait()


async def test_upgrade_handed_over_with_the_head_already_read(nursery):
    """A PrefixedStream replaying the head read by the HTTP edge serves as well."""
    client, server = trio.testing.memory_stream_pair()
    raw = RawClient(client)
    head = raw.ws.send(Request(host="test", target="/handed?over=1"))
    app = App()
    served = Served()
    nursery.start_soon(served.asgi, PrefixedStream(server, head), app, make_state())
    assert isinstance(await raw.next_event(), AcceptConnection)
    await raw.send(TextMessage(data="after the head"))
    assert await raw.next_event() == TextMessage(data="after the head")
    assert app.scope["query_string"] == b"over=1"
    await raw.send(CloseConnection(code=1000))
    with trio.fail_after(1):
        await served.done.wait()


async def test_example_app_and_handler_echo(nursery):
    """examples/ws_echo.py: the ASGI app and the native handler both echo."""
    ws, _ = await open_client(nursery, ws_echo.app, subprotocols=("first", "second"))
    assert ws.subprotocol == "first"
    await ws.send_message("text")
    assert await ws.get_message() == "text"
    await ws.send_message(b"bytes")
    assert await ws.get_message() == b"bytes"

    client, server = trio.testing.memory_stream_pair()
    served = Served()
    nursery.start_soon(served.native, server, ws_echo.handler, make_state())
    native = await trio_websocket.wrap_client_stream(nursery, client, "t", "/")  # type: ignore[arg-type]
    await native.send_message("native")
    assert await native.get_message() == "native"
    await native.aclose()
    with trio.fail_after(1):
        await served.done.wait()


async def test_example_app_answers_plain_http():
    """examples/ws_echo.py answers a plain HTTP request with a text page."""
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await ws_echo.app({"type": "http", "path": "/"}, receive, send)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == ws_echo.PAGE


async def test_native_handler_returning_without_answering_is_500(nursery, caplog):
    """A handler that neither accepts nor rejects gets its request answered 500."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        pass

    client, server = trio.testing.memory_stream_pair()
    served = Served()
    nursery.start_soon(served.native, server, handler, make_state())
    status, _, _ = await RawClient(client).rejection()
    assert status == 500
    (record,) = errors(caplog)
    assert "without accepting or rejecting" in record.getMessage()


# -- a client's protocol error while the app sends; a message announced too big ----------

# A masked text frame "hello" and a frame with the reserved opcode 3, in one packet
# (zero masks: the payload reads as is).
HELLO_THEN_OPCODE_3 = b"\x81\x85\x00\x00\x00\x00hello" + b"\x83\x80\x00\x00\x00\x00"


def frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """The header of a masked client frame (zero mask) announcing ``length`` bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = bytes([first, 0x80 | length])
    elif length < 2**16:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", length)
    return head + b"\x00\x00\x00\x00"


async def test_send_during_the_close_for_a_protocol_error_raises_client_disconnected(
    nursery, caplog
):
    """A send that meets our 1002 close frame on its way raises ClientDisconnected into
    the app, which may let it propagate: nothing is logged at ERROR."""
    raised: list[BaseException] = []
    tried = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        # The client does not read (a lockstep stream): our close frame, answering the
        # opcode 3 frame, waits to be written when the app echoes "hello".
        await trio.testing.wait_all_tasks_blocked()
        try:
            await send({"type": "websocket.send", "text": message["text"]})
        except BaseException as exc:
            raised.append(exc)
            raise
        finally:
            tried.set()

    client, server = trio.testing.lockstep_stream_pair()
    served = Served()
    nursery.start_soon(served.asgi, server, app, make_state())
    raw = RawClient(client)
    assert isinstance(await raw.handshake(), AcceptConnection)
    await raw.stream.send_all(HELLO_THEN_OPCODE_3)
    with trio.fail_after(1):
        await tried.wait()
        event = await raw.next_event()
        await served.done.wait()
    assert isinstance(event, CloseConnection)
    assert event.code == 1002
    assert [type(exc) for exc in raised] == [ClientDisconnected]
    assert not errors(caplog)


async def test_native_send_during_the_close_for_a_protocol_error_is_connection_closed(
    nursery, caplog
):
    """A native handler's send that meets our 1002 close frame gets ConnectionClosed,
    not wsproto's LocalProtocolError, and nothing is logged at ERROR."""
    raised: list[BaseException] = []
    tried = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        message = await ws.get_message()
        await trio.testing.wait_all_tasks_blocked()
        try:
            await ws.send_message(message)
        except BaseException as exc:
            raised.append(exc)
            raise
        finally:
            tried.set()

    client, server = trio.testing.lockstep_stream_pair()
    served = Served()
    nursery.start_soon(served.native, server, handler, make_state())
    raw = RawClient(client)
    assert isinstance(await raw.handshake(), AcceptConnection)
    await raw.stream.send_all(HELLO_THEN_OPCODE_3)
    with trio.fail_after(1):
        await tried.wait()
        event = await raw.next_event()
        await served.done.wait()
    assert isinstance(event, CloseConnection)
    assert event.code == 1002
    assert [type(exc) for exc in raised] == [trio_websocket.ConnectionClosed]
    assert not errors(caplog)


async def test_example_echo_with_a_protocol_error_logs_no_error(nursery, caplog):
    """examples.ws_echo:app given "hello" and an opcode 3 frame in one packet: the
    client hears 1002, and no interleaving of the echo and the close logs an ERROR."""
    for _ in range(10):
        raw, served = start_raw(nursery, ws_echo.app)
        assert isinstance(await raw.handshake(), AcceptConnection)
        await raw.stream.send_all(HELLO_THEN_OPCODE_3)
        with trio.fail_after(1):
            event = await raw.next_event()
            if isinstance(event, TextMessage):
                event = await raw.next_event()
            await served.done.wait()
        assert isinstance(event, CloseConnection)
        assert event.code == 1002
    assert not errors(caplog)


async def test_app_passing_on_client_disconnected_as_its_own_error_logs_no_error(nursery, caplog):
    """An exception the app raises while handling the ClientDisconnected of its send()
    (Starlette's WebSocketDisconnect) is the client leaving, not an app error."""

    class FrameworkDisconnect(Exception):
        pass

    ended = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            while True:
                await send({"type": "websocket.send", "text": "tick"})
                await trio.sleep(0.01)
        except OSError:
            raise FrameworkDisconnect(1006) from None
        finally:
            ended.set()

    ws, served = await open_client(nursery, app)
    assert await ws.get_message() == "tick"
    await ws.aclose()
    with trio.fail_after(1):
        await ended.wait()
        await served.done.wait()
    assert not errors(caplog)


async def test_frame_announcing_too_big_a_message_closes_with_1009_at_once(nursery, autojump_clock):
    """A frame header announcing more than ws_max_message_size (2**62 bytes) is closed
    with 1009 as soon as it is read, without waiting for the payload."""
    app = App()
    raw, _ = start_raw(nursery, app, make_state(ws_max_message_size=1000))
    assert isinstance(await raw.handshake(), AcceptConnection)
    start = trio.current_time()
    await raw.stream.send_all(frame_header(0x2, 2**62))
    with trio.fail_after(1):
        event = await raw.next_event()
        await app.disconnected.wait()
    assert trio.current_time() == start
    assert isinstance(event, CloseConnection)
    assert event.code == 1009
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1009


async def test_frame_header_read_before_the_101_is_written_out_is_checked(nursery, autojump_clock):
    """The size check also holds for a header that the client sends as soon as it has
    the 101, while the server is still finishing that write."""
    to_client, from_server = trio.testing.memory_stream_one_way_pair()
    to_server, from_client = trio.testing.memory_stream_one_way_pair()
    pump = to_client.send_all_hook
    assert pump is not None
    writes = 0

    async def deliver_then_linger_on_the_first_write() -> None:
        nonlocal writes
        writes += 1
        await pump()
        if writes == 1:
            # The 101 is with the client; its answer is read before this write returns.
            await trio.testing.wait_all_tasks_blocked()

    to_client.send_all_hook = deliver_then_linger_on_the_first_write
    served = Served()
    server = trio.StapledStream(to_client, from_client)
    nursery.start_soon(served.asgi, server, App(), make_state(ws_max_message_size=1000))
    raw = RawClient(trio.StapledStream(to_server, from_server))
    assert isinstance(await raw.handshake(), AcceptConnection)
    await raw.stream.send_all(frame_header(0x2, 2**62))
    with trio.fail_after(1):
        event = await raw.next_event()
    assert isinstance(event, CloseConnection)
    assert event.code == 1009


async def test_continuation_announcing_too_big_a_message_closes_with_1009_at_once(
    nursery, autojump_clock
):
    """The announced size counts what the message already holds: a continuation frame
    taking it over the limit is closed with 1009 from its header."""
    raw, _ = start_raw(nursery, App(), make_state(ws_max_message_size=1000))
    assert isinstance(await raw.handshake(), AcceptConnection)
    start = trio.current_time()
    await raw.stream.send_all(frame_header(0x2, 600, fin=False) + b"a" * 600)
    await raw.stream.send_all(frame_header(0x0, 401))
    with trio.fail_after(1):
        event = await raw.next_event()
    assert trio.current_time() == start
    assert isinstance(event, CloseConnection)
    assert event.code == 1009


async def test_frame_announcing_a_message_at_the_limit_is_read(nursery):
    """A header announcing exactly ws_max_message_size is no reason to close: its
    payload, sent later, is read and echoed."""
    raw, _ = start_raw(nursery, App(), make_state(ws_max_message_size=1000))
    assert isinstance(await raw.handshake(), AcceptConnection)
    await raw.stream.send_all(frame_header(0x2, 600, fin=False) + b"a" * 600)
    await raw.stream.send_all(frame_header(0x0, 400))
    await trio.testing.wait_all_tasks_blocked()
    await raw.stream.send_all(b"b" * 400)
    with trio.fail_after(1):
        event = await raw.next_event()
    assert event == BytesMessage(data=b"a" * 600 + b"b" * 400)


# -- the opening handshake (RFC 6455 section 4.2.1) ----------------------------------------


def handshake_head(fields: bytes) -> bytes:
    return (
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + fields
        + b"\r\n"
    )


async def read_to_eof(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


@pytest.mark.parametrize(
    ("fields", "status_line"),
    [
        (b"Sec-WebSocket-Key: \r\nSec-WebSocket-Version: 13\r\n", b"HTTP/1.1 400 Bad Request"),
        (b"Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n", b"HTTP/1.1 400 Bad Request"),
        (
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n",
            b"HTTP/1.1 426 Upgrade Required",
        ),
        (b"Sec-WebSocket-Version: 13\r\n", b"HTTP/1.1 400 Bad Request"),
    ],
    ids=["empty-key", "short-key", "version-8", "no-key"],
)
@pytest.mark.parametrize("interface", ["asgi", "native"])
async def test_bad_handshake_is_refused_with_a_reason_phrase(
    nursery, caplog, fields, status_line, interface
):
    """A key that is not the base64 of 16 bytes is 400, another version 426 Upgrade
    Required naming version 13, each with Connection: close; the app never hears of
    it; logged at INFO."""
    caplog.set_level(logging.INFO, "trioserve.ws")
    called: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    async def handler(request: Any) -> None:
        called.append(request)

    client, server = trio.testing.memory_stream_pair()
    served = Served()
    if interface == "asgi":
        nursery.start_soon(served.asgi, server, app, make_state())
    else:
        nursery.start_soon(served.native, server, handler, make_state())
    await client.send_all(handshake_head(fields))
    with trio.fail_after(1):
        response = await read_to_eof(client)
        await served.done.wait()
    head = response.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == status_line
    fields = [line.lower() for line in head[1:]]
    assert b"connection: close" in fields
    if b"426" in status_line:
        assert b"sec-websocket-version: 13" in fields
    assert called == []
    assert not errors(caplog)
    assert any("bad websocket handshake" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("refusal", ["close", "denial"])
async def test_refusal_is_written_before_receive_reports_the_disconnect(nursery, refusal):
    """A receive() while the refusal (403, or the app's denial response) is being written
    waits for the write: an app that stops its sender on websocket.disconnect, as
    Quart-Trio does, must not cut its own refusal (the client got no answer at all)."""
    by_refusal: dict[str, list[dict[str, Any]]] = {
        "close": [{"type": "websocket.close"}],
        "denial": [
            {"type": "websocket.http.response.start", "status": 401, "headers": []},
            {"type": "websocket.http.response.body", "body": b"no"},
        ],
    }
    messages = by_refusal[refusal]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        sending = trio.Event()
        async with trio.open_nursery() as inner:

            async def refuse() -> None:
                for message in messages[:-1]:
                    await send(message)
                sending.set()
                await send(messages[-1])

            async def listen() -> None:
                await sending.wait()
                if (await receive())["type"] == "websocket.disconnect":
                    inner.cancel_scope.cancel()

            inner.start_soon(refuse)
            inner.start_soon(listen)

    stream, served = start_asgi(nursery, app)
    await stream.send_all(
        handshake_head(
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )
    )
    with trio.fail_after(1):
        response = await read_to_eof(stream)
        await served.done.wait()
    status = {"close": b"403 Forbidden", "denial": b"401 Unauthorized"}[refusal]
    assert response.startswith(b"HTTP/1.1 " + status + b"\r\n")


async def test_app_refusal_has_a_reason_phrase(nursery):
    """websocket.close before accepting is answered "403 Forbidden", phrase included."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close"})

    stream, served = start_asgi(nursery, app)
    await stream.send_all(
        handshake_head(
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )
    )
    with trio.fail_after(1):
        response = await read_to_eof(stream)
        await served.done.wait()
    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n")

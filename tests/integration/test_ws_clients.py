"""Real WebSocket clients (the ``websockets`` library, trio-websocket) against
serve_asgi_websocket on a real socket bound to 127.0.0.1:0."""

from __future__ import annotations

import functools
import gc
import json
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from websockets.exceptions import ConnectionClosed as WebsocketsClosed
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from trioserve import Config
from trioserve._accept import accept_connections
from trioserve._peer import Peer
from trioserve._serve_ws import (
    WSOptions,
    serve_asgi_websocket,
    serve_native_websocket,
    watch_websockets,
)
from trioserve._state import ServerState
from trioserve._streams import stream_addresses

# Every blocking call of the websockets client is bounded by this many seconds.
WAIT = 5.0


class Recorder:
    """Echoes every message; closes with 4001 on "close please"; records the disconnect."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.disconnect: dict[str, Any] | None = None
        self.disconnected = trio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/deny":
            await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"who are you?"})
            return
        offered = scope["subprotocols"]
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnect = message
                self.disconnected.set()
                return
            if message.get("text") == "close please":
                await send({"type": "websocket.close", "code": 4001, "reason": "as asked"})
                self.disconnect = await receive()
                self.disconnected.set()
                return
            await send(
                {
                    "type": "websocket.send",
                    "text": message.get("text"),
                    "bytes": message.get("bytes"),
                }
            )


async def start_server(
    nursery: trio.Nursery, app: Any, state: ServerState, options: WSOptions | None = None
) -> str:
    """Serve ``app`` on 127.0.0.1:0 with serve_asgi_websocket; the ws:// base URL."""
    ws_options = options or WSOptions(state.config)

    async def handler(peer: Peer) -> None:
        # As trioserve serves it: the accept loop's Peer carries the plain socket.
        await serve_asgi_websocket(peer.stream, app, state, ws_options, peer=peer)

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(accept_connections, listener, handler, nursery)
    host, port = listener.socket.getsockname()[:2]
    return f"ws://{host}:{port}"


def state_with(**settings: Any) -> ServerState:
    return ServerState(Config(**settings))


async def test_websockets_client_echo_and_subprotocol(nursery):
    """The websockets client negotiates a subprotocol and gets text and bytes echoed."""
    app = Recorder()
    url = await start_server(nursery, app, state_with())

    def client() -> tuple[str | None, object, object]:
        with connect(
            f"{url}/chat?room=1",
            subprotocols=[Subprotocol("chat"), Subprotocol("v2")],
            open_timeout=WAIT,
            close_timeout=WAIT,
        ) as ws:
            ws.send("hello")
            text = ws.recv(timeout=WAIT)
            ws.send(b"\x00\xff")
            data = ws.recv(timeout=WAIT)
            return ws.subprotocol, text, data

    subprotocol, text, data = await trio.to_thread.run_sync(client)
    assert subprotocol == "chat"
    assert (text, data) == ("hello", b"\x00\xff")
    with trio.fail_after(WAIT):
        await app.disconnected.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1000
    assert app.scope["path"] == "/chat"
    assert app.scope["query_string"] == b"room=1"
    assert app.scope["client"][0] == "127.0.0.1"
    assert dict(app.scope["headers"])[b"host"] == url.removeprefix("ws://").encode()


async def test_websockets_client_close_codes_both_ways(nursery):
    """The client's 4000 reaches the app; the app's 4001 reaches the client."""
    app = Recorder()
    url = await start_server(nursery, app, state_with())

    def client_closes() -> None:
        with connect(url, open_timeout=WAIT, close_timeout=WAIT) as ws:
            ws.close(code=4000, reason="client done")

    await trio.to_thread.run_sync(client_closes)
    with trio.fail_after(WAIT):
        await app.disconnected.wait()
    assert app.disconnect == {"type": "websocket.disconnect", "code": 4000, "reason": "client done"}

    app = Recorder()
    url = await start_server(nursery, app, state_with())

    def server_closes() -> tuple[int, str]:
        with connect(url, open_timeout=WAIT, close_timeout=WAIT) as ws:
            ws.send("close please")
            try:
                ws.recv(timeout=WAIT)
            except WebsocketsClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code, exc.rcvd.reason
        raise AssertionError("the server did not close")

    assert await trio.to_thread.run_sync(server_closes) == (4001, "as asked")


async def test_websockets_client_sees_the_denial_response(nursery):
    """A denial response reaches the websockets client as its status and body."""
    url = await start_server(nursery, Recorder(), state_with())

    def client() -> tuple[int, bytes]:
        try:
            with connect(f"{url}/deny", open_timeout=WAIT, close_timeout=WAIT):
                pass
        except InvalidStatus as exc:
            return exc.response.status_code, bytes(exc.response.body or b"")
        raise AssertionError("the handshake was accepted")

    assert await trio.to_thread.run_sync(client) == (401, b"who are you?")


async def test_trio_websocket_client_echo_and_oversized_message(nursery):
    """trio-websocket's client gets its echo, then 1009 for a message over the limit."""
    app = Recorder()
    url = await start_server(nursery, app, state_with(ws_max_message_size=64 * 1024))
    with trio.fail_after(WAIT):
        async with trio_websocket.open_websocket_url(url + "/", max_message_size=1024 * 1024) as ws:
            await ws.send_message("ping?")
            assert await ws.get_message() == "ping?"
            await ws.send_message(b"z" * 64 * 1024)
            assert await ws.get_message() == b"z" * 64 * 1024
            await ws.send_message(b"z" * (64 * 1024 + 1))
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason is not None
            assert info.value.reason.code == 1009
        await app.disconnected.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1009


async def test_websockets_client_sees_1009_for_a_large_message(nursery):
    """A message far over the limit still ends with 1009 at the websockets client."""
    url = await start_server(nursery, Recorder(), state_with(ws_max_message_size=1024))

    def client() -> int:
        with connect(url, open_timeout=WAIT, close_timeout=WAIT, max_size=None) as ws:
            try:
                ws.send(b"x" * 4 * 1024 * 1024)
                ws.recv(timeout=WAIT)
            except WebsocketsClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code
        raise AssertionError("the server did not close")

    assert await trio.to_thread.run_sync(client) == 1009


async def test_graceful_stop_closes_open_websockets_with_1001(nursery):
    """A graceful stop closes every open websocket with 1001 (trio-websocket clients)."""
    state = state_with()
    options = WSOptions(state.config)
    await nursery.start(watch_websockets, state, options)
    apps = [Recorder() for _ in range(3)]
    urls = [await start_server(nursery, app, state, options) for app in apps]
    codes = []
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as clients:
            sockets = [
                await trio_websocket.connect_websocket_url(clients, url + "/") for url in urls
            ]
            state.request_stop()
            for ws in sockets:
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason is not None
                codes.append(info.value.reason.code)
                await ws.aclose()
        for app in apps:
            await app.disconnected.wait()
    assert codes == [1001, 1001, 1001]
    assert [app.disconnect["code"] for app in apps if app.disconnect] == [1001, 1001, 1001]


# permessage-deflate (RFC 7692)


class CountingStream(trio.abc.Stream):
    """A stream that counts the bytes it carries each way (to see compression on the wire)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.received = 0
        self.sent = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.stream.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def start_counted_server(
    nursery: trio.Nursery, app: Any, state: ServerState, counters: list[CountingStream]
) -> str:
    """Like start_server, counting each connection's bytes in ``counters``."""
    options = WSOptions(state.config)

    async def handler(stream: trio.SocketStream) -> None:
        client, server = stream_addresses(stream)
        counted = CountingStream(stream)
        counters.append(counted)
        peer = Peer(counted, None, client, server)
        await serve_asgi_websocket(counted, app, state, options, peer=peer)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    host, port = listeners[0].socket.getsockname()[:2]
    return f"ws://{host}:{port}"


# About 1 MB of JSON that compresses well, as a real app's payload would.
BIG_JSON = json.dumps(
    [
        {"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "price": i * 0.25}
        for i in range(14000)
    ]
)


async def test_websockets_client_negotiates_deflate_and_round_trips_1mb_json(nursery):
    """The websockets client's permessage-deflate offer is accepted (without context
    takeover, by default); a 1 MB JSON message goes and comes back compressed."""
    assert len(BIG_JSON) > 1_000_000
    counters: list[CountingStream] = []
    url = await start_counted_server(nursery, Recorder(), state_with(), counters)

    def client() -> tuple[str | None, str]:
        with connect(
            url, open_timeout=WAIT, close_timeout=WAIT, compression="deflate", max_size=None
        ) as ws:
            ws.send(BIG_JSON)
            echo = ws.recv(timeout=WAIT)
            assert isinstance(echo, str)
            return ws.response.headers.get(  # type: ignore[union-attr]
                "Sec-WebSocket-Extensions"
            ), echo

    extensions, echo = await trio.to_thread.run_sync(client)
    assert extensions is not None
    assert extensions.startswith(
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    assert echo == BIG_JSON
    (counted,) = counters
    assert counted.received < len(BIG_JSON) // 5
    assert counted.sent < len(BIG_JSON) // 5


async def test_websockets_client_without_compression_gets_none(nursery):
    """A client that offers no extension gets none and plain frames."""
    counters: list[CountingStream] = []
    url = await start_counted_server(nursery, Recorder(), state_with(), counters)

    def client() -> str | None:
        with connect(url, open_timeout=WAIT, close_timeout=WAIT, compression=None) as ws:
            ws.send("x" * 10000)
            assert ws.recv(timeout=WAIT) == "x" * 10000
            return ws.response.headers.get(  # type: ignore[union-attr]
                "Sec-WebSocket-Extensions"
            )

    assert await trio.to_thread.run_sync(client) is None
    assert counters[0].sent > 10000


async def test_no_ws_per_message_deflate_means_no_extension_in_the_101(nursery):
    """With ws_per_message_deflate off, an offer is declined: no extension in the 101."""
    url = await start_server(nursery, Recorder(), state_with(ws_per_message_deflate=False))

    def client() -> str | None:
        with connect(
            url, open_timeout=WAIT, close_timeout=WAIT, compression="deflate", max_size=None
        ) as ws:
            ws.send(BIG_JSON)
            assert ws.recv(timeout=WAIT) == BIG_JSON
            return ws.response.headers.get(  # type: ignore[union-attr]
                "Sec-WebSocket-Extensions"
            )

    assert await trio.to_thread.run_sync(client) is None


@pytest.mark.parametrize(
    ("settings", "offer", "expected"),
    [
        (
            {"ws_deflate_context_takeover": True, "ws_deflate_window_bits": 11},
            {"server_max_window_bits": 10, "client_max_window_bits": True},
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=11",
        ),
        (
            {"ws_deflate_context_takeover": True},
            {"server_no_context_takeover": True},
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
        ),
        (
            {"ws_deflate_window_bits": 9},
            {"client_max_window_bits": 12},
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "client_max_window_bits=9",
        ),
    ],
    ids=["windows", "server-reset-asked", "small-window"],
)
async def test_deflate_parameters_are_honoured(nursery, settings, offer, expected):
    """The settings and the client's parameters shape the answer, and messages still
    round trip both ways under them (the websockets client checks the windows)."""
    url = await start_server(nursery, Recorder(), state_with(**settings))

    def client() -> str | None:
        factory = ClientPerMessageDeflateFactory(**offer)
        with connect(
            url, open_timeout=WAIT, close_timeout=WAIT, extensions=[factory], max_size=None
        ) as ws:
            for _ in range(3):
                ws.send(BIG_JSON)
                assert ws.recv(timeout=WAIT) == BIG_JSON
            return ws.response.headers.get(  # type: ignore[union-attr]
                "Sec-WebSocket-Extensions"
            )

    assert await trio.to_thread.run_sync(client) == expected


async def test_native_handler_negotiates_deflate(nursery):
    """A native trio-websocket handler gets permessage-deflate too."""
    state = state_with()
    options = WSOptions(state.config)

    async def echo(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(await ws.get_message())

    async def handler(peer: Peer) -> None:
        await serve_native_websocket(peer.stream, echo, state, options, sock=peer.sock)

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(accept_connections, listener, handler, nursery)
    port = listener.socket.getsockname()[1]

    def client() -> str | None:
        with connect(
            f"ws://127.0.0.1:{port}", open_timeout=WAIT, close_timeout=WAIT, max_size=None
        ) as ws:
            ws.send(BIG_JSON)
            assert ws.recv(timeout=WAIT) == BIG_JSON
            return ws.response.headers.get(  # type: ignore[union-attr]
                "Sec-WebSocket-Extensions"
            )

    extensions = await trio.to_thread.run_sync(client)
    assert extensions is not None
    assert extensions.startswith("permessage-deflate")


async def test_trio_websocket_client_offers_nothing_and_gets_nothing(nursery):
    """trio-websocket's client, which never offers an extension, is answered without
    one (its wsproto would refuse the 101 otherwise) and gets plain frames."""
    url = await start_server(nursery, Recorder(), state_with())
    with trio.fail_after(WAIT):
        async with trio_websocket.open_websocket_url(url + "/") as ws:
            await ws.send_message(BIG_JSON[:50000])
            assert await ws.get_message() == BIG_JSON[:50000]


def _awaited_names(coro: Any) -> list[str]:
    """The qualified names of the coroutines and generators ``coro`` is awaiting through."""
    names = []
    while coro is not None:
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is None:
            break
        names.append(code.co_qualname)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return names


def _all_tasks() -> list[trio.lowlevel.Task]:
    tasks, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        tasks.append(task)
        for child in task.child_nurseries:
            todo.extend(child.child_tasks)
    return tasks


async def test_idle_websocket_waits_on_its_socket_directly(nursery):
    """An idle websocket on a plain socket waits for the socket in its reader task, in
    none of SocketStream's frames (which every idle websocket would keep, ~1.2 KB)."""
    url = await start_server(nursery, Recorder(), state_with())
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message("hello")
        with trio.fail_after(WAIT):
            assert await ws.get_message() == "hello"
        await trio.testing.wait_all_tasks_blocked()
        readers = [t for t in _all_tasks() if t.name == "trioserve websocket reader"]
        assert len(readers) == 1
        waiting = _awaited_names(readers[0].coro)
        assert "wait_readable" in waiting
        assert not any(name.startswith("SocketStream.") for name in waiting), waiting


async def test_idle_websocket_keeps_nothing_of_its_last_read(nursery):
    """While an idle websocket waits, its reader holds neither the last bytes it read
    nor the last event (a message's data), nor the BlockingIOError of an empty socket."""
    url = await start_server(nursery, Recorder(), state_with())
    message = b"\x01" * 100_000
    async with trio_websocket.open_websocket_url(url, max_message_size=2**20) as ws:
        await ws.send_message(message)
        with trio.fail_after(WAIT):
            assert await ws.get_message() == message
        await trio.testing.wait_all_tasks_blocked()
        [reader] = [t for t in _all_tasks() if t.name == "trioserve websocket reader"]
        frame = reader.coro.cr_frame
        assert frame is not None
        local_names = frame.f_locals
        assert local_names["data"] is None
        assert local_names["event"] is None
        gc.collect()
        assert not [o for o in gc.get_objects() if isinstance(o, BlockingIOError)]


async def test_idle_asgi_app_waits_in_receive_itself(nursery):
    """An ASGI app waiting for a message waits in its receive() itself, through no
    frame of a channel's (each would be kept by every idle websocket)."""
    url = await start_server(nursery, Recorder(), state_with())
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message("hello")
        with trio.fail_after(WAIT):
            assert await ws.get_message() == "hello"
        await trio.testing.wait_all_tasks_blocked()
        chains = [_awaited_names(t.coro) for t in _all_tasks()]
        [chain] = [c for c in chains if "_ASGISession.receive" in c]
        after = chain[chain.index("_ASGISession.receive") + 1 :]
        assert after[0] == "wait_task_rescheduled", chain

"""permessage-deflate at the WebSocket edge, over memory streams: a wsproto client that
offers it, compressed echoes, and compressed messages over the size limit."""

from __future__ import annotations

import os
import tracemalloc
from typing import Any

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from tests.proto.test_deflate import bomb, masked_frame
from tests.serve.test_ws import App, make_state, start_asgi
from trioserve._state import ServerState

MiB = 1024 * 1024


class DeflateClient:
    """A wsproto client offering permessage-deflate, driven by hand."""

    def __init__(self, stream: trio.abc.Stream, offer: PerMessageDeflate | None = None) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.offer = offer or PerMessageDeflate()
        self.pending: list[Event] = []
        self.received_bytes = 0

    async def handshake(self) -> AcceptConnection:
        request = Request(host="test", target="/ws", extensions=[self.offer])
        await self.stream.send_all(self.ws.send(request))
        event = await self.next_event()
        assert isinstance(event, AcceptConnection), event
        return event

    async def send(self, event: Event) -> int:
        data = self.ws.send(event)
        await self.stream.send_all(data)
        return len(data)

    async def next_event(self) -> Event:
        while not self.pending:
            self.pending.extend(self.ws.events())
            if self.pending:
                break
            data = await self.stream.receive_some(65536)
            self.received_bytes += len(data)
            self.ws.receive_data(bytes(data) if data else None)
        return self.pending.pop(0)

    async def message(self) -> bytes | str:
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            assert isinstance(event, BytesMessage | TextMessage), event
            parts.append(event.data)
            if event.message_finished:
                return b"".join(parts) if isinstance(parts[0], bytes) else "".join(parts)


def start(
    nursery: trio.Nursery, app: Any, state: ServerState, offer: PerMessageDeflate | None = None
) -> tuple[DeflateClient, Any]:
    stream, served = start_asgi(nursery, app, state)
    return DeflateClient(stream, offer), served


async def test_compressed_echo_both_ways(nursery):
    """A compressed text message reaches the app whole and its echo goes back compressed."""
    app = App()
    client, _ = start(nursery, app, make_state())
    with trio.fail_after(5):
        await client.handshake()
        assert client.offer.enabled()
        text = '{"a": 1, "b": [true, false, null]}' * 3000
        sent = await client.send(TextMessage(data=text))
        assert sent < len(text) // 10
        before = client.received_bytes
        assert await client.message() == text
        assert client.received_bytes - before < len(text) // 10
    assert app.received[0] == {"type": "websocket.receive", "text": text}


async def test_inflate_bomb_closes_with_1009_after_bounded_work(nursery):
    """A ~1 MB compressed frame that would inflate to 1 GiB, limit 1 MiB: the peer gets
    1009 (and can answer it), the app a 1009 disconnect, and no more than a few MiB are
    ever allocated on the way (inflating it whole would take 64 MiB a read, 1 GiB in all)."""
    app = App()
    client, served = start(nursery, app, make_state(ws_max_message_size=MiB))
    payload = bomb(1024)
    frame = masked_frame(0x2, payload, rsv1=True)
    with trio.fail_after(10):
        await client.handshake()
        tracemalloc.start()
        try:
            await client.stream.send_all(frame)
            close = await client.next_event()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(close, CloseConnection), close
        assert close.code == 1009
        assert close.reason == f"Exceeded maximum message size: {MiB} bytes"
        await client.send(close.response())
        await app.disconnected.wait()
        await served.done.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1009
    assert app.received == [app.disconnect]
    # The frame itself (1 MB) is in the memory stream's buffer once or twice.
    assert peak < 8 * MiB


async def test_endless_compressed_frame_is_refused_while_it_comes(nursery):
    """A compressed frame announcing 1 TiB is refused with 1009 as soon as what came of
    it inflates past the limit, while the peer is still sending it."""
    app = App()
    client, _ = start(nursery, app, make_state(ws_max_message_size=MiB))
    header = b"\xc2\xff" + (2**40).to_bytes(8, "big") + b"\0\0\0\0"
    with trio.fail_after(5):
        await client.handshake()
        await client.stream.send_all(header + bomb(4))
        close = await client.next_event()
        assert isinstance(close, CloseConnection), close
        assert close.code == 1009
        # What else the peer sends of it is read and dropped.
        await client.stream.send_all(bomb(4))
        await app.disconnected.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1009


async def test_compressed_message_just_over_the_limit_closes_with_1009(nursery):
    """A compressed message one byte over the limit (found on its last piece) is 1009,
    one exactly at the limit is echoed."""
    app = App()
    client, _ = start(nursery, app, make_state(ws_max_message_size=50_000))
    with trio.fail_after(5):
        await client.handshake()
        await client.send(BytesMessage(data=b"q" * 50_000))
        assert await client.message() == b"q" * 50_000
        await client.send(BytesMessage(data=b"q" * 50_001))
        close = await client.next_event()
        assert isinstance(close, CloseConnection), close
        assert close.code == 1009
        await app.disconnected.wait()
    assert app.disconnect is not None
    assert app.disconnect["code"] == 1009


async def test_compressed_fragments_count_together(nursery):
    """Compressed fragments over the limit together are 1009, though each is small."""
    app = App()
    client, _ = start(nursery, app, make_state(ws_max_message_size=10_000))
    with trio.fail_after(5):
        await client.handshake()
        for last in (False, False, False, True):
            await client.send(BytesMessage(data=os.urandom(3000), message_finished=last))
        close = await client.next_event()
        assert isinstance(close, CloseConnection), close
        assert close.code == 1009


async def test_large_compressed_frame_under_the_limit_is_not_refused_by_its_length(nursery):
    """A compressed frame longer on the wire than the limit (incompressible data plus
    deflate's framing) whose message inflates to no more than the limit is accepted: the
    frame's length does not count, the inflated bytes do."""
    limit = 200_000
    app = App()
    client, _ = start(nursery, app, make_state(ws_max_message_size=limit))
    data = os.urandom(limit)
    with trio.fail_after(5):
        await client.handshake()
        sent = await client.send(BytesMessage(data=data))
        assert sent > limit
        assert await client.message() == data


async def test_no_extension_when_off(nursery):
    """With ws_per_message_deflate off the offer is declined and messages go plain."""
    app = App()
    client, _ = start(nursery, app, make_state(ws_per_message_deflate=False))
    with trio.fail_after(5):
        accept = await client.handshake()
        assert accept.extensions == []
        assert not client.offer.enabled()
        text = "plain " * 1000
        assert await client.send(TextMessage(data=text)) > len(text)
        assert await client.message() == text


async def test_app_answering_sec_websocket_extensions_itself_gets_no_deflate(nursery):
    """An app that puts Sec-WebSocket-Extensions in websocket.accept's headers answers
    the offer itself: the 101 carries its field only, not a second one of ours."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {"type": "websocket.accept", "headers": [(b"sec-websocket-extensions", b"x-own")]}
        )
        await receive()

    stream, _ = start_asgi(nursery, app, make_state())
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some()
    fields = [line.lower() for line in head.split(b"\r\n") if b":" in line]
    assert head.startswith(b"HTTP/1.1 101 ")
    assert [f for f in fields if f.startswith(b"sec-websocket-extensions")] == [
        b"sec-websocket-extensions: x-own"
    ]

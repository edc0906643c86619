"""WebSocket abuse against the real ``trioserve`` command: raw packets a browser would
never send, answered as RFC 6455 says and never logged as the app's fault."""

from __future__ import annotations

import signal

import trio
from wsproto.events import AcceptConnection, CloseConnection, TextMessage

from tests.process.test_cli import assert_clean_log, serving
from tests.serve.test_ws import HELLO_THEN_OPCODE_3, RawClient, frame_header
from tests.serve.test_ws_deflate import DeflateClient
from trioserve.testing import ServerProcess

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: %s\r\n\r\n"
)


async def open_raw(server: ServerProcess) -> RawClient:
    """A hand-driven wsproto client connected to ``server``, handshake done."""
    raw = RawClient(await trio.open_tcp_stream("127.0.0.1", server.port))
    assert isinstance(await raw.handshake(), AcceptConnection)
    return raw


async def stop_cleanly(server: ServerProcess) -> None:
    assert await server.stop(signal.SIGTERM) == 0
    assert_clean_log(server.lines)


async def test_protocol_error_while_the_example_echoes_is_not_an_app_error() -> None:
    """ "hello" and an opcode 3 frame in one packet to examples.ws_echo:app, ten times:
    each client hears 1002, and the log has no ERROR (the app's echo may meet the close)."""
    async with serving("examples.ws_echo:app", "-b", "127.0.0.1:0", "-w", "0") as server:
        with trio.fail_after(10):
            for _ in range(10):
                raw = await open_raw(server)
                await raw.stream.send_all(HELLO_THEN_OPCODE_3)
                event = await raw.next_event()
                if isinstance(event, TextMessage):
                    event = await raw.next_event()
                assert isinstance(event, CloseConnection)
                assert event.code == 1002
                await raw.stream.aclose()
        await stop_cleanly(server)


async def test_frame_header_over_the_size_limit_is_closed_with_1009_at_once() -> None:
    """A frame header announcing 2**62 bytes is answered 1009 without its payload."""
    async with serving(
        "examples.ws_echo:app", "-b", "127.0.0.1:0", "-w", "0", "--ws-max-message-size", "1000"
    ) as server:
        raw = await open_raw(server)
        await raw.stream.send_all(frame_header(0x2, 2**62))
        with trio.fail_after(1):
            event = await raw.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1009
        await raw.stream.aclose()
        await stop_cleanly(server)


async def test_handshake_with_a_bad_key_or_version_is_refused() -> None:
    """An empty Sec-WebSocket-Key is 400 Bad Request; version 8 is 426 Upgrade Required."""

    async def status_line(request: bytes) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(request)
        response = b""
        with trio.fail_after(5):
            while b"\r\n" not in response:
                chunk = await stream.receive_some()
                assert chunk, response
                response += chunk
        await stream.aclose()
        return response.split(b"\r\n")[0]

    async with serving("examples.ws_echo:app", "-b", "127.0.0.1:0", "-w", "0") as server:
        empty_key = HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"") % b"13"
        assert await status_line(empty_key) == b"HTTP/1.1 400 Bad Request"
        assert await status_line(HANDSHAKE % b"8") == b"HTTP/1.1 426 Upgrade Required"
        assert await status_line(HANDSHAKE % b"13") == b"HTTP/1.1 101 Switching Protocols"
        await stop_cleanly(server)


async def test_cli_negotiates_permessage_deflate_unless_told_not_to() -> None:
    """The real command (one worker) accepts permessage-deflate by default, for the
    ASGI and the native example; with --no-ws-per-message-deflate its 101 has none."""
    for extra in ((), ("--interface", "websocket")):
        target = "examples.ws_echo:handler" if extra else "examples.ws_echo:app"
        for flag, expected in ((), True), (("--no-ws-per-message-deflate",), False):
            async with serving(target, "-b", "127.0.0.1:0", "-w", "1", *extra, *flag) as server:
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                client = DeflateClient(stream)
                with trio.fail_after(10):
                    accept = await client.handshake()
                    await client.send(TextMessage(data="zip " * 1000))
                    assert await client.message() == "zip " * 1000
                assert bool(accept.extensions) is expected
                assert client.offer.enabled() is expected
                await stream.aclose()
                await stop_cleanly(server)

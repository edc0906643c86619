"""The HTTP edge on a real TCP socket, which it reads and writes directly.

Given the socket under a plain ``trio.SocketStream`` (as the accept loop does), the
edge calls the socket's ``recv``/``send`` itself and waits only when the kernel has
nothing to give or cannot take more; such calls are not checkpoints, so it checkpoints
once per request when it did not wait. These tests hold that path to the same
behaviour as the stream path: whole responses to slow readers, a write timeout for
readers that stop, and other tasks running while a client pipelines.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

import h11
import trio
import trio.testing

from tests.helpers import H11Client, hello_app
from trioserve import Config
from trioserve._serve_http import serve_http_connection
from trioserve._state import ServerState
from trioserve._types import Receive, Scope, Send


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream, socket.socket]:
    """(client, server, server's socket): one TCP connection over 127.0.0.1, the server
    end as the accept loop gives it (a SocketStream over a socket we hold)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        sock, _ = listener.accept()
    return client, trio.SocketStream(trio.socket.from_stdlib_socket(sock)), sock


def serve(nursery: trio.Nursery, app: Any, state: ServerState, server: Any) -> None:
    stream, sock = server
    nursery.start_soon(functools.partial(serve_http_connection, stream, app, state, sock=sock))


async def test_pipelined_requests_let_other_tasks_run(nursery):
    """50 requests arriving in one packet are answered in order, and the server lets
    other tasks run between them although no read or write had to wait."""
    client, *server = await tcp_pair()
    serve(nursery, hello_app, ServerState(Config()), server)
    count = 50
    request = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"
    answered = trio.Event()
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while not answered.is_set():
            turns += 1
            await trio.lowlevel.checkpoint()

    nursery.start_soon(other_task)
    with trio.fail_after(10):
        await client.send_all(b"".join(request % i for i in range(count)))
        received = b""
        while received.count(b"Hello, world!") < count:
            received += await client.receive_some()
    answered.set()
    assert received.count(b"HTTP/1.1 200 OK\r\n") == count
    await client.aclose()
    # One turn at least per request: without the edge's checkpoint, the 50 requests
    # would be served in one go and the other task would run only a few times.
    assert turns >= count


BIG_BODY = b"".join(bytes([i]) * 65536 for i in range(128))


async def big_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """8 MiB in two messages, each far more than the kernel buffers take at once."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    half = len(BIG_BODY) // 2
    await send({"type": "http.response.body", "body": BIG_BODY[:half], "more_body": True})
    await send({"type": "http.response.body", "body": BIG_BODY[half:]})


async def test_large_response_reaches_a_slow_reader_whole(nursery):
    """A response far larger than the socket buffers, read slowly, arrives whole and in
    order, and the connection then serves another request."""
    client, *server = await tcp_pair()
    serve(nursery, big_app, ServerState(Config()), server)
    reader = H11Client(client)
    with trio.fail_after(30):
        request = h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"a")])
        await client.send_all(reader.conn.send(request) + reader.conn.send(h11.EndOfMessage()))
        body = bytearray()
        while True:
            event = reader.conn.next_event()
            if event is h11.NEED_DATA:
                # A slow reader: small reads, each after other tasks had their turn.
                await trio.lowlevel.checkpoint()
                reader.conn.receive_data(bytes(await client.receive_some(4096)))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert body == BIG_BODY
        response, _ = await reader.request(target=b"/again")
    assert response.status_code == 200
    await client.aclose()


async def test_client_that_stops_reading_is_cut_after_write_timeout(nursery, autojump_clock):
    """On a real socket too, a client that stops reading is cut after write_timeout,
    the app with it, and the server's end of the connection is closed."""
    app_cancelled = trio.Event()
    connection_done = trio.Event()

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except trio.Cancelled:
            app_cancelled.set()
            raise

    client, server, sock = await tcp_pair()
    state = ServerState(Config(write_timeout=7))

    async def serve_then_note() -> None:
        await serve_http_connection(server, endless, state, sock=sock)
        connection_done.set()

    nursery.start_soon(serve_then_note)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    begin = trio.current_time()
    with trio.fail_after(60):
        await connection_done.wait()
    assert 7 <= trio.current_time() - begin < 8
    assert app_cancelled.is_set()
    assert server.socket.fileno() == -1
    await client.aclose()

"""The HTTP edge on a real TCP socket, which it reads and writes directly.

Given the socket under a plain ``trio.SocketStream`` (as the accept loop does), the
edge calls the socket's ``recv``/``send`` itself and waits only when the kernel has
nothing to give or cannot take more; such calls are not checkpoints, so it checkpoints
once between two requests. These tests hold that path to the same
behaviour as the stream path: whole responses to slow readers, a write timeout for
readers that stop, and other tasks running while a client pipelines.
"""

from __future__ import annotations

import fcntl
import functools
import socket
import struct
import termios
from typing import Any

import h11
import pytest
import trio
import trio.testing

from tests.helpers import H11Client, hello_app, http_options, serve_http_connection, tcp_connection
from trioserve import ClientDisconnected, Config
from trioserve._peer import Peer
from trioserve._serve_http import serve_http_connection as serve_peer
from trioserve._state import ServerState
from trioserve._types import Receive, Scope, Send

# Every test runs on each HTTP/1.1 parser (--http; see tests/conftest.py's http_parser).
pytestmark = pytest.mark.usefixtures("http_parser")


def serve(nursery: trio.Nursery, app: Any, state: ServerState, server: Any) -> None:
    stream, sock = server
    nursery.start_soon(functools.partial(serve_http_connection, stream, app, state, sock=sock))


async def test_pipelined_requests_let_other_tasks_run(nursery):
    """50 requests arriving in one packet are answered in order, and the server lets
    other tasks run between them although no read or write had to wait."""
    client, *server = await tcp_connection()
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
    # About a turn per request (trio varies the order within a round, so give or take
    # a few): without the edge's checkpoint, the 50 requests are served in one go and
    # the other task runs only a few times.
    assert turns >= count - 5


async def test_a_client_answering_each_response_is_read_without_waiting(nursery, monkeypatch):
    """Between two requests the edge checkpoints even when the last one had to wait:
    a client that sends its next request as soon as it has the response then finds it
    read at once, rather than by a failed read and a wait in epoll every time."""
    import trioserve._serve_http as serve_http

    waits = 0
    wait_readable = serve_http._wait_readable

    async def counted(sock: Any) -> None:
        nonlocal waits
        waits += 1
        await wait_readable(sock)

    monkeypatch.setattr(serve_http, "_wait_readable", counted)
    client, *server = await tcp_connection()
    serve(nursery, hello_app, ServerState(Config()), server)
    count = 40
    with trio.fail_after(10):
        for i in range(count):
            await client.send_all(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            received = b""
            while b"Hello, world!" not in received:
                received += await client.receive_some()
    await client.aclose()
    # The first request is waited for (the edge starts before the client sends). Here
    # the client runs in the same thread: it sends its next request when trio runs it
    # before the edge after the checkpoint, about every other time (trio varies the
    # order within a round). With the next read right after each response, every
    # request was waited for (40 waits).
    assert waits <= 30


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
    client, *server = await tcp_connection()
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
    """On a real socket too, a client that stops reading is cut after write_timeout:
    the app's send() raises ClientDisconnected, and the server's end of the connection
    is closed."""
    raised: list[float] = []
    connection_done = trio.Event()

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except ClientDisconnected:
            raised.append(trio.current_time())
            raise

    client, server, sock = await tcp_connection()
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
    assert len(raised) == 1
    assert 7 <= raised[0] - begin < 8
    assert server.socket.fileno() == -1
    await client.aclose()


async def test_streaming_app_that_never_receives_ends_soon_after_client_leaves(
    nursery, autojump_clock
):
    """An app streaming an endless response, one chunk every 0.1 s, without ever calling
    receive(), gets ClientDisconnected from send() within 0.2 s of the client closing
    its socket, although the kernel would take a write or more after the close."""
    ended: list[float] = []
    done = trio.Event()

    async def ticker(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await trio.sleep(0.1)
        except ClientDisconnected:
            ended.append(trio.current_time())
            done.set()

    client, *server = await tcp_connection()
    serve(nursery, ticker, ServerState(Config()), server)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    received = b""
    with trio.fail_after(5):
        while received.count(b"tick") < 3:
            received += await client.receive_some()
    await client.aclose()
    left = trio.current_time()
    with trio.fail_after(5):
        await done.wait()
    assert ended[0] - left <= 0.2


class Turns:
    """Counts the turns another task gets while ``active`` is set."""

    def __init__(self) -> None:
        self.active = False
        self.count = 0
        self.done = False

    async def run(self) -> None:
        while not self.done:
            self.count += self.active
            await trio.lowlevel.checkpoint()


async def test_disconnect_waits_until_the_last_body_is_written(nursery):
    """http.disconnect comes only once the final body is written out: an app that cancels
    its sender on http.disconnect (Quart-Trio does) must not cut its own last write, which
    here is too large for the kernel to take at once."""
    last = b"last part " * 400_000

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        async with trio.open_nursery() as inner:

            async def listen() -> None:
                if (await receive())["type"] == "http.disconnect":
                    inner.cancel_scope.cancel()

            inner.start_soon(listen)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first ", "more_body": True})
            await send({"type": "http.response.body", "body": last})

    client, *server = await tcp_connection()
    serve(nursery, app, ServerState(Config()), server)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn = h11.Connection(h11.CLIENT)
    body = bytearray()
    with trio.fail_after(10):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await client.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    assert body == b"first " + last
    await client.aclose()


async def test_streamed_response_lets_other_tasks_run(nursery):
    """An app sending 50 small body messages in a row, each taken by the kernel at
    once, still lets other tasks run between its sends."""
    turns = Turns()

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        turns.active = True
        for _ in range(50):
            await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
        turns.active = False
        await send({"type": "http.response.body", "body": b""})

    nursery.start_soon(turns.run)
    client, *server = await tcp_connection()
    serve(nursery, streaming, ServerState(Config()), server)
    with trio.fail_after(10):
        response, body = await H11Client(client).request()
    turns.done = True
    assert (response.status_code, body) == (200, b"x" * 5000)
    assert turns.count >= 45  # about one per send (none without the checkpoint)


async def test_request_body_already_received_lets_other_tasks_run(nursery):
    """An app reading a body the kernel already holds whole (each read finds data at
    once) still lets other tasks run between its reads."""
    turns = Turns()
    go = trio.Event()
    read: list[int] = []

    async def reading(scope: Scope, receive: Receive, send: Send) -> None:
        await go.wait()
        turns.active = True
        more = True
        while more:
            message = await receive()
            read.append(len(message["body"]))
            more = message["more_body"]
        turns.active = False
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    nursery.start_soon(turns.run)
    client, stream, sock = await tcp_connection()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
    # Half a megabyte, or what the kernel lets the socket hold (net.core.rmem_max).
    size = min(512 * 1024, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 4)
    serve(nursery, reading, ServerState(Config()), (stream, sock))
    with trio.fail_after(10):
        await client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        await client.send_all(b"b" * size)
        # Once the client's kernel has nothing left to deliver, the server's holds the
        # rest of the body (what its first read took with the head aside): the app
        # may read. (A kernel count has no event to wait on; the loop is bounded.)
        while _unsent(client.socket.fileno()):
            await trio.lowlevel.checkpoint()
        go.set()
        response, _ = await H11Client(client).read_response()
    turns.done = True
    assert response.status_code == 204
    assert sum(read) == size
    # About one turn per socket read (64 KiB each): none without the checkpoint.
    assert turns.count >= size // 65536 // 2 >= 1


def _unsent(fd: int) -> int:
    """Bytes the kernel still holds in a socket's send queue (TIOCOUTQ)."""
    raw = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4)
    return int(struct.unpack("i", raw)[0])


class _CountingSocket:
    """The server's socket, counting the reads that found nothing (EAGAIN)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.empty_reads = 0

    def recv(self, *args: Any) -> bytes:
        try:
            return self._sock.recv(*args)
        except BlockingIOError:
            self.empty_reads += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def test_a_cancellation_reaches_a_connection_that_never_waits():
    """A connection whose requests are all there already (none of its reads or writes
    has to wait) still takes a cancellation between two requests: cancelled before it
    starts, it answers the first request and no other."""
    client, stream, sock = await tcp_connection()
    count = 50
    state = ServerState(Config())
    with trio.fail_after(10):
        await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * count)
        async with trio.open_nursery() as tasks:
            # (The edge itself, without the helper's watchers: only it is cancelled.)
            with trio.CancelScope() as serving:
                serving.cancel()
                app: Any = hello_app
                await serve_peer(
                    Peer(stream, sock, None, None),
                    app,
                    state,
                    http_options(state.config),
                    tasks=tasks,
                )
        received = b""
        while data := await client.receive_some():
            received += data
    assert serving.cancelled_caught
    assert received.count(b"Hello, world!") == 1


async def test_a_write_taken_at_once_needs_no_coroutine(nursery, monkeypatch):
    """A response the kernel takes whole at once goes out from write_now itself: the
    coroutine of write (a checkpoint, a deadline) is made only when a write must wait
    or is not the exchange's first."""
    from trioserve import _serve_http

    writes = 0
    write = _serve_http._Connection.write

    async def counted(self: Any, data: Any) -> bool:
        nonlocal writes
        writes += 1
        return await write(self, data)

    monkeypatch.setattr(_serve_http._Connection, "write", counted)
    client, *server = await tcp_connection()
    serve(nursery, hello_app, ServerState(Config()), server)
    with trio.fail_after(10):
        for _ in range(3):
            await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            received = b""
            while b"Hello, world!" not in received:
                received += await client.receive_some()
    assert writes == 0


async def test_an_idle_wait_reads_once_before_it_waits(nursery):
    """Between two requests on a kept-alive connection the edge tries one read, and when
    it finds nothing waits for the next request: no second read that must find nothing
    too (a syscall and an exception for nothing)."""
    client, stream, sock = await tcp_connection()
    counting = _CountingSocket(sock)
    serve(nursery, hello_app, ServerState(Config()), (stream, counting))
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    with trio.fail_after(10):
        for _ in range(3):
            await trio.testing.wait_all_tasks_blocked()
            before = counting.empty_reads
            await client.send_all(request)
            received = b""
            while b"Hello, world!" not in received:
                received += await client.receive_some()
            await trio.testing.wait_all_tasks_blocked()
            # The server is waiting for the next request now: it read once and found
            # nothing, after this response.
            assert counting.empty_reads - before == 1

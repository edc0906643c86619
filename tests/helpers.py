"""Small HTTP client and apps shared by the memory-stream and integration tests."""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence
from typing import Any

import h11
import pytest
import trio
import trio.testing

from trioserve import Config
from trioserve._cli import build_parser, cli_layer
from trioserve._config import load_config
from trioserve._peer import Peer
from trioserve._serve_http import HTTPOptions, watch_deadlines, watch_handovers
from trioserve._serve_http import serve_http_connection as serve_peer
from trioserve._state import ServerState
from trioserve._types import ASGIApp

Headers = Sequence[tuple[bytes, bytes]]

# The HTTP/1.1 parsers a server can run on (--http): the tests of the request rules
# run on each (see the ``http_parser`` fixture in tests/conftest.py).
PARSERS = ("h11", "h11-compiled", "httptools")
# What serve_http_connection and http_options use when not told: set by http_parser.
parser_choice = "h11"


def parser_module(choice: str | None = None) -> Any:
    """The module the server parses with for ``--http choice`` (default: the current
    ``parser_choice``); the test is skipped when that parser is not installed."""
    choice = choice or parser_choice
    if choice == "h11":
        return h11
    if choice == "h11-compiled":
        return pytest.importorskip(
            "h11_mypyc", reason="--http h11-compiled needs the speed extra (trioserve[speed])"
        )
    pytest.importorskip(
        "httptools", reason="--http httptools needs the speed extra (trioserve[speed])"
    )
    from trioserve._proto import llhttp

    return llhttp


def http_options(config: Config, **kwargs: Any) -> HTTPOptions:
    """The edge's options for ``config``, parsing with the current ``parser_choice``."""
    return HTTPOptions(config, h11_module=parser_module(), **kwargs)


def require_ipv6_loopback() -> None:
    """Skip the calling test where this Python or this machine has no IPv6 on ::1."""
    if not socket.has_ipv6:
        pytest.skip("this Python was built without IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback on this machine: {exc}")


async def serve_http_connection(
    stream: trio.abc.Stream,
    app: ASGIApp,
    state: ServerState,
    *,
    options: HTTPOptions | None = None,
    sock: socket.socket | None = None,
    client: tuple[str, int] | None = None,
    server: tuple[str, int | None] | None = None,
) -> None:
    """Serve one connection over ``stream`` as the server does (the HTTP edge's
    ``serve_http_connection``), with the deadline watchdog and the handover watcher
    beside it as the server runs them; ``options`` default to those of
    ``state.config``. ``sock``: the socket under a plain ``trio.SocketStream``, which
    the edge then reads and writes directly. Returns once the connection ended and
    every app call it made returned (a connection handed over to a new task carries
    on in a nursery of its own here, as in the server's connection nursery)."""
    if options is None:
        options = http_options(state.config)
    async with trio.open_nursery() as watchers:
        watchers.start_soon(watch_deadlines, state, options)
        await watchers.start(watch_handovers, options)
        async with trio.open_nursery() as tasks:
            await serve_peer(Peer(stream, sock, client, server), app, state, options, tasks=tasks)
        watchers.cancel_scope.cancel()


def config_from_argv(argv: Sequence[str]) -> Config:
    """The Config that command-line arguments ``argv`` resolve to, through the command
    line's own parser and settings layer (as ``trioserve.__main__`` reads them)."""
    return load_config(cli=cli_layer(build_parser().parse_args(argv))).config


async def tcp_connection() -> tuple[trio.SocketStream, trio.SocketStream, socket.socket]:
    """(client, server, the server's socket): one TCP connection over 127.0.0.1, the
    server's end as the accept loop gives it (a SocketStream over a socket we hold, for
    the HTTP edge's ``sock=``)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = await trio.open_tcp_stream("127.0.0.1", listener.getsockname()[1])
        sock, _ = listener.accept()  # (connected already: it waits in the backlog)
    return client, trio.SocketStream(trio.socket.from_stdlib_socket(sock)), sock


async def served_connection(
    nursery: trio.Nursery,
    app: Any,
    state: ServerState,
    options: HTTPOptions | None = None,
    *,
    transport: str = "memory",
) -> tuple[trio.abc.HalfCloseableStream, socket.socket | None]:
    """Serve one HTTP connection of ``app`` in ``nursery``, over a memory stream or (with
    ``transport="socket"``) a real TCP socket on 127.0.0.1 that the edge reads and writes
    directly, as behind the accept loop: (the client's end, the server's socket or None)."""
    if transport == "memory":
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(
            functools.partial(serve_http_connection, server, app, state, options=options)
        )
        return client, None
    stream, server_stream, sock = await tcp_connection()
    nursery.start_soon(
        functools.partial(
            serve_http_connection, server_stream, app, state, options=options, sock=sock
        )
    )
    return stream, sock


class H11Client:
    """An HTTP/1.1 client over any trio stream, one request at a time, built on h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self,
        method: bytes = b"GET",
        target: bytes = b"/",
        headers: Headers = (),
        body: bytes = b"",
    ) -> tuple[h11.Response, bytes]:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [(b"host", b"test"), *headers]
        framed = {b"content-length", b"transfer-encoding"}
        if body and not any(name.lower() in framed for name, _ in all_headers):
            all_headers.append((b"content-length", str(len(body)).encode()))
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        return await self.read_response()

    async def read_response(self) -> tuple[h11.Response, bytes]:
        response = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("connection closed before the response ended")


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    """Everything the peer sends until it closes."""
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


def header(response: h11.Response, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key == name:
            return bytes(value)
    return None


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request with 200 "Hello, world!"."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def echo_body_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the request body, noting in a header how many chunks it came in."""
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        chunks.append(message["body"])
        if not message["more_body"]:
            break
    body = b"".join(chunks)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-chunks", str(len(chunks)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})

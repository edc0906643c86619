"""serve() end to end for the ASGI response extensions: trailers and early hints as a
raw client and curl see them over a real socket on 127.0.0.1."""

from __future__ import annotations

import shutil

import pytest
import trio

from tests.serve.test_http_extensions import hint_app, trailer_app
from trioserve import Config, serve

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def start(nursery: trio.Nursery, app: object) -> tuple[str, int]:
    config = Config(app=app, bind=["127.0.0.1:0"], workers=0, lifespan="off")
    [(host, port)] = await nursery.start(serve, config)
    return host, port


async def exchange(host: str, port: int, request: bytes) -> bytes:
    """Send ``request`` (which asks to close) and read until the server closes."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    return data


async def test_trailers_on_the_wire(nursery):
    """A client sending TE: trailers reads a chunked body ending in the last chunk and
    the trailer section, byte for byte."""
    host, port = await start(nursery, trailer_app)
    data = await exchange(
        host, port, b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n"
    )
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert body == b"6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: abc\r\nx-count: 2\r\n\r\n"


async def test_early_hint_on_the_wire(nursery):
    """The 103 comes first, whole, then the final response."""
    host, port = await start(nursery, hint_app)
    data = await exchange(host, port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert data.startswith(
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n"
        b"HTTP/1.1 200 OK\r\n"
    )
    assert data.endswith(b"\r\n\r\npage")


@needs_curl
async def test_curl_shows_the_trailers(nursery):
    """curl, asked to send TE: trailers, prints the trailer fields after the body."""
    host, port = await start(nursery, trailer_app)
    with trio.fail_after(20):
        result = await trio.run_process(
            ["curl", "-sS", "-i", "-H", "TE: trailers", f"http://{host}:{port}/"],
            capture_stdout=True,
        )
    assert result.stdout.endswith(b"\r\n\r\nhello worldx-checksum: abc\r\nx-count: 2\r\n")


@needs_curl
async def test_curl_shows_the_early_hint(nursery):
    """curl prints the 103 with its Link field before the final response."""
    host, port = await start(nursery, hint_app)
    with trio.fail_after(20):
        result = await trio.run_process(
            ["curl", "-sS", "-i", f"http://{host}:{port}/"], capture_stdout=True
        )
    assert result.stdout.startswith(
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n"
        b"HTTP/1.1 200 OK\r\n"
    )

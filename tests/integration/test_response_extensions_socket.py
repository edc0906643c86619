"""serve() end to end for the ASGI response extensions: trailers and early hints as a
raw client and curl see them over a real socket on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

import trioserve._serve_http
from tests.serve.test_http_extensions import hint_app, trailer_app
from trioserve import Config, serve

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def start(nursery: trio.Nursery, app: object, **settings: Any) -> tuple[str, int]:
    config = Config(app=app, bind=["127.0.0.1:0"], workers=0, lifespan="off", **settings)
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


# -- pathsend with Starlette's FileResponse ----------------------------------------------


def file_response_app(path: Path, scopes: list[dict[str, Any]]) -> Any:
    """Starlette serving ``path`` with FileResponse, which uses http.response.pathsend
    when the scope offers it; the scopes it saw are kept."""

    async def download(request: Any) -> FileResponse:
        scopes.append(request.scope)
        return FileResponse(path, media_type="application/octet-stream")

    return Starlette(routes=[Route("/file", download)])


@pytest.fixture
def megabyte(tmp_path: Path) -> Path:
    path = tmp_path / "one-megabyte.bin"
    path.write_bytes(os.urandom(1024 * 1024))
    return path


async def test_starlette_file_response_goes_through_sendfile(nursery, megabyte, monkeypatch):
    """Starlette's FileResponse, offered pathsend (--pathsend), sends the path: the 1 MB
    body arrives byte for byte, through os.sendfile, with the file's length."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out: int, fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out, fd, offset, count)

    monkeypatch.setattr(trioserve._serve_http.os, "sendfile", counting)  # type: ignore[attr-defined]
    scopes: list[dict[str, Any]] = []
    host, port = await start(nursery, file_response_app(megabyte, scopes), pathsend=True)
    with trio.fail_after(20):
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{host}:{port}/file")
    assert response.content == megabyte.read_bytes()
    assert response.headers["content-length"] == str(1024 * 1024)
    assert "http.response.pathsend" in scopes[0]["extensions"]
    assert calls and sum(calls) >= 1024 * 1024


async def test_starlette_file_response_over_tls(nursery, megabyte, pki):
    """Over TLS the file is read in a worker thread and written through the TLS stream:
    the same bytes."""
    scopes: list[dict[str, Any]] = []
    config = Config(
        app=file_response_app(megabyte, scopes),
        bind=["127.0.0.1:0"],
        workers=0,
        lifespan="off",
        pathsend=True,
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(20):
        async with httpx.AsyncClient(verify=pki.client_context()) as client:
            response = await client.get(f"https://{host}:{port}/file")
    assert response.content == megabyte.read_bytes()
    assert "http.response.pathsend" in scopes[0]["extensions"]

"""http.response.pathsend over the HTTP/1.1 edge: os.sendfile on a plain socket, the
file read in a worker thread on any other stream; the bytes are the file's either way."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

import trioserve._serve_http
from tests.helpers import (
    H11Client,
    config_from_argv,
    header,
    hello_app,
    read_until_eof,
    served_connection,
)
from trioserve import ClientDisconnected, Config
from trioserve._exchange import FILE_CHUNK
from trioserve._state import ServerState

TRANSPORTS = ["memory", "socket"]


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    """A file of a few read chunks and a bit, with bytes that differ along it."""
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(2 * FILE_CHUNK + 12345))
    return path


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The counts asked of os.sendfile by the HTTP edge."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out: int, fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return real(out, fd, offset, count)

    monkeypatch.setattr(trioserve._serve_http.os, "sendfile", counting)  # type: ignore[attr-defined]
    return calls


def file_app(path: Path, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": headers or []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    return app


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pathsend_sends_the_file_and_the_connection_lives_on(
    nursery, big_file, sendfile_calls, transport
):
    """The body is the file's bytes, framed by its size; on a plain socket through
    os.sendfile, otherwise read in chunks; the next request is served on the same
    connection."""
    stream, _ = await served_connection(
        nursery, file_app(big_file), ServerState(Config(pathsend=True)), transport=transport
    )
    client = H11Client(stream)
    with trio.fail_after(10):
        for _ in range(2):
            response, body = await client.request()
            assert body == big_file.read_bytes()
            assert header(response, b"content-length") == str(big_file.stat().st_size).encode()
    assert bool(sendfile_calls) is (transport == "socket")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pathsend_with_the_apps_length_and_head(nursery, big_file, transport):
    """The app's Content-Length goes out as it set it; a HEAD request gets no body."""
    length = str(big_file.stat().st_size).encode()
    app = file_app(big_file, [(b"content-length", length), (b"content-type", b"x/y")])
    stream, _ = await served_connection(
        nursery, app, ServerState(Config(pathsend=True)), transport=transport
    )
    client = H11Client(stream)
    with trio.fail_after(10):
        response, body = await client.request(method=b"HEAD")
        assert (header(response, b"content-length"), body) == (length, b"")
        response, body = await client.request()
        assert body == big_file.read_bytes()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_file_shorter_than_the_apps_length_closes_the_connection(
    nursery, tmp_path, caplog, transport
):
    """A file shorter than the Content-Length the app gave is sent whole, the shortfall
    is logged at error level, and the connection closes (the client sees it short)."""
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 100)
    app = file_app(path, [(b"content-length", b"150")])
    stream, _ = await served_connection(
        nursery, app, ServerState(Config(pathsend=True)), transport=transport
    )
    with trio.fail_after(10), pytest.raises(h11.RemoteProtocolError):
        await H11Client(stream).request()
    assert "sent 50 bytes less than its Content-Length" in caplog.text


async def test_missing_file_is_the_apps_error(nursery, tmp_path, caplog):
    """A path that cannot be opened raises into the app (logged at error level); the
    head has not gone out, but the response had started: the connection closes."""
    raised: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": str(tmp_path / "nope")})
        except RuntimeError as exc:
            raised.append(exc)
            raise

    stream, _ = await served_connection(nursery, app, ServerState(Config(pathsend=True)))
    with trio.fail_after(10), pytest.raises(h11.RemoteProtocolError):
        await H11Client(stream).request()
    assert "cannot read" in str(raised[0])
    assert "http.response.pathsend for" in caplog.text


async def test_client_that_stops_reading_ends_the_sendfile_at_the_write_timeout(
    nursery, tmp_path, sendfile_calls
):
    """A client that stops reading a large file: after --write-timeout without progress
    the app's send() raises ClientDisconnected, and the connection is closed."""
    path = tmp_path / "large.bin"
    with path.open("wb") as file:
        file.truncate(64 * 1024 * 1024)
    raised: list[type[BaseException]] = []
    done = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": str(path)})
        except ClientDisconnected as exc:
            raised.append(type(exc))
        finally:
            done.set()

    state = ServerState(Config(write_timeout=0.5, pathsend=True))
    stream, _ = await served_connection(nursery, app, state, transport="socket")
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with trio.fail_after(10):
        await done.wait()
    assert raised == [ClientDisconnected]
    assert sendfile_calls


async def test_pathsend_logs_nothing_for_a_plain_file(nursery, big_file, caplog):
    """A successful pathsend logs nothing at warning level or above."""
    stream, _ = await served_connection(
        nursery, file_app(big_file), ServerState(Config(pathsend=True)), transport="socket"
    )
    with caplog.at_level(logging.WARNING), trio.fail_after(10):
        await H11Client(stream).request()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("argv", "offered"), [([], False), (["--pathsend"], True), (["--no-pathsend"], False)]
)
async def test_pathsend_is_offered_only_when_asked_for(nursery, argv, offered):
    """http.response.pathsend is offered only with --pathsend (off by default, and with
    --no-pathsend), to HTTP/1.1 and 1.0; the other extensions stay."""
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello_app(scope, receive, send)

    state = ServerState(config_from_argv(["app:app", *argv]))
    stream, _ = await served_connection(nursery, app, state)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    with trio.fail_after(5):
        await read_until_eof(stream)
    assert [("http.response.pathsend" in s["extensions"]) for s in scopes] == [offered] * 2
    assert "http.response.trailers" in scopes[0]["extensions"]

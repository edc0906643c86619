"""Streamed responses stop once their client leaves, under the real CLI.

trioserve speaks ASGI 2.4: ``send()`` raises ``ClientDisconnected`` (an ``OSError``)
once the client has gone. Starlette's and FastAPI's ``StreamingResponse`` rely on it
under 2.4 (they no longer watch for ``http.disconnect``), a raw ASGI app that never
calls ``receive()`` has nothing else to go by, and a WSGI response is closed (PEP
3333). Each app prints a line when its stream stops; that line must come within a
second of the client leaving, and nothing may be logged at ERROR for it.
"""

from __future__ import annotations

import signal

import httpx
import trio

from tests.frameworks.test_frameworks import needs
from tests.process.test_cli import APPS, assert_clean_log, serving
from trioserve.testing import ServerProcess

APP = "examples.frameworks.endless_streams"
ENDLESS = APPS.replace("/", ".") + ".endless"
REQUEST = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def read_then_leave(server: ServerProcess, marker: bytes, count: int = 3) -> None:
    """GET /events over a raw socket, read until ``count`` markers arrived, then close."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    received = b""
    with trio.fail_after(10):
        await stream.send_all(REQUEST)
        while received.count(marker) < count:
            data = await stream.receive_some()
            assert data, received
            received += data
    await stream.aclose()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received


async def stops_within_a_second(server: ServerProcess, line: str) -> None:
    """The app prints ``line`` within a second from now (the client just left)."""
    with trio.fail_after(1):
        await server.wait_for_line(line)


async def still_serves_then_stops(server: ServerProcess) -> None:
    """A new client is served, and SIGTERM stops the server with exit 0."""
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=5) as client,
        client.stream("GET", "/events") as response,
    ):
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            break
    with trio.fail_after(5):
        assert await server.stop(signal.SIGTERM) == 0


@needs("fastapi")
async def test_starlette_streaming_response_stops_when_the_client_leaves() -> None:
    """Starlette: an endless StreamingResponse read by httpx is closed within a second
    of httpx closing it mid-stream, with nothing logged at ERROR."""
    async with serving(f"{APP}:starlette_app", "-b", "127.0.0.1:0") as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=5) as client,
            client.stream("GET", "/events") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = 0
            async for line in response.aiter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break
        await stops_within_a_second(server, "starlette stream closed after")
        await still_serves_then_stops(server)
    assert "starlette stream started" in server.lines
    assert_clean_log(server.lines)


@needs("fastapi")
async def test_fastapi_streaming_response_stops_when_the_client_leaves() -> None:
    """FastAPI: an endless StreamingResponse of a plain generator (iterated in a thread)
    is closed within a second of a raw client closing its socket mid-stream."""
    async with serving(f"{APP}:fastapi_app", "-b", "127.0.0.1:0") as server:
        await read_then_leave(server, b"data: ")
        await stops_within_a_second(server, "fastapi stream closed after")
        await still_serves_then_stops(server)
    assert "fastapi stream started" in server.lines
    assert_clean_log(server.lines)


async def test_raw_asgi_stream_that_never_receives_stops_when_the_client_leaves() -> None:
    """A raw ASGI app streaming without ever calling receive() stops within a second of
    the client closing its socket: its send() raised ClientDisconnected."""
    async with serving(f"{ENDLESS}:asgi_app", "-b", "127.0.0.1:0") as server:
        await read_then_leave(server, b"tick")
        await stops_within_a_second(server, "asgi stream stopped after")
        await still_serves_then_stops(server)
    assert_clean_log(server.lines)


async def test_wsgi_stream_is_closed_when_the_client_leaves() -> None:
    """A WSGI app's endless response iterable is no longer iterated, and its close() is
    called, within a second of the client closing its socket."""
    async with serving(f"{ENDLESS}:wsgi_app", "-b", "127.0.0.1:0", "--interface", "wsgi") as server:
        await read_then_leave(server, b"tick")
        await stops_within_a_second(server, "wsgi stream closed after")
        await still_serves_then_stops(server)
    assert_clean_log(server.lines)

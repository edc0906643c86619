"""The HTTP edge against floods and stragglers: timeouts of 0, the request head limit,
bytes that cannot start a request, and the minimum body rate."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers import (
    H11Client,
    echo_body_app,
    hello_app,
    http_options,
    read_until_eof,
    serve_http_connection,
    served_connection,
)
from trioserve import Config
from trioserve._serve_http import HTTPOptions
from trioserve._state import ServerState

# Every test runs on each HTTP/1.1 parser (--http; see tests/conftest.py's http_parser).
pytestmark = pytest.mark.usefixtures("http_parser")

# Each test runs over a memory stream and over a real TCP socket on 127.0.0.1, whose
# socket the edge reads and writes directly (as behind the accept loop).
_transport = "memory"


@pytest.fixture(autouse=True, params=["memory", "socket"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    global _transport
    _transport = request.param
    yield request.param
    _transport = "memory"


async def start(
    nursery: trio.Nursery, app: Any, state: ServerState, options: HTTPOptions | None = None
) -> trio.abc.HalfCloseableStream:
    """Serve one connection of ``app`` in ``nursery``; the client's end of it."""
    client, _ = await served_connection(nursery, app, state, options, transport=_transport)
    return client


def make_state(**settings: Any) -> ServerState:
    return ServerState(Config(**settings))


def client_hello() -> bytes:
    """The first bytes a TLS client sends: its ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="a")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# -- a timeout of 0 is no limit -----------------------------------------------------------


async def test_header_timeout_0_lets_a_head_take_its_time(nursery, autojump_clock):
    """With header_timeout 0, a head whose second half comes an hour later is served."""
    client = await start(nursery, hello_app, make_state(header_timeout=0))
    await client.send_all(b"GET / HTTP/1.1\r\n")
    await trio.sleep(3600)
    await client.send_all(b"Host: a\r\nConnection: close\r\n\r\n")
    assert (await read_until_eof(client)).startswith(b"HTTP/1.1 200 ")


async def test_read_timeout_0_lets_a_body_pause(nursery, autojump_clock):
    """With read_timeout 0 (and no body rate), a body that pauses for an hour is served."""
    client = await start(nursery, echo_body_app, make_state(read_timeout=0, body_min_rate=0))
    await client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
    await trio.sleep(3600)
    await client.send_all(b"67890")
    response, body = await H11Client(client).read_response()
    assert (response.status_code, body) == (200, b"1234567890")


async def test_write_timeout_0_waits_for_a_slow_reader(nursery, autojump_clock):
    """With write_timeout 0, a 6 MB response to a client that starts reading an hour
    later arrives whole."""
    size = 6 * 1024 * 1024

    async def big(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"%d" % size)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(size // 65536):
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    client, server = trio.testing.lockstep_stream_pair()
    nursery.start_soon(serve_http_connection, server, big, make_state(write_timeout=0))
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await trio.sleep(3600)
    response = await read_until_eof(client)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b"\r\n\r\n" + b"x" * size)


# -- the request head limit ---------------------------------------------------------------


async def test_head_over_the_limit_gets_431_before_it_ends(nursery, autojump_clock):
    """A head growing past limit_request_head is refused with 431 as soon as it does, its
    fields each within their own limits, without waiting for its end or a timeout."""
    client = await start(nursery, hello_app, make_state(limit_request_head=4096))
    await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
    for i in range(5):
        await client.send_all(b"X-%d: %s\r\n" % (i, b"v" * 1000))
    begin = trio.current_time()
    response = await read_until_eof(client)
    assert response.startswith(b"HTTP/1.1 431 ")
    assert b"request head larger than 4096 bytes" in response
    assert trio.current_time() == begin


async def test_head_at_the_limit_is_served(nursery):
    """A head of exactly limit_request_head bytes is served."""
    client = await start(nursery, hello_app, make_state(limit_request_head=1000))
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n"
    head = head.replace(b"X: ", b"X: " + b"v" * (1000 - len(head)))
    assert len(head) == 1000
    await client.send_all(head)
    response, _ = await H11Client(client).read_response()
    assert response.status_code == 200
    await client.send_all(head.replace(b"X: v", b"X: vv"))
    assert (await read_until_eof(client)).startswith(b"HTTP/1.1 431 ")


# -- bytes that cannot start a request ----------------------------------------------------


async def test_tls_on_the_plain_port_is_answered_at_once_and_logged_once(
    nursery, autojump_clock, caplog
):
    """A TLS ClientHello gets 400 and a close at once (not 408 after the header timeout),
    and "TLS on a plain HTTP port" is logged once per server, at warning level."""
    caplog.set_level(logging.DEBUG, logger="trioserve")
    state = make_state()
    options = http_options(state.config)  # one server's: the log line comes once per server
    for _ in range(2):
        client = await start(nursery, hello_app, state, options)
        await client.send_all(client_hello())
        begin = trio.current_time()
        response = await read_until_eof(client)
        assert response.startswith(b"HTTP/1.1 400 ")
        assert trio.current_time() == begin
    tls_lines = [r for r in caplog.records if "TLS on a plain HTTP port" in r.getMessage()]
    assert [r.levelno for r in tls_lines] == [logging.WARNING, logging.DEBUG]


@pytest.mark.parametrize(
    "start_bytes",
    [b"\x00\x01\x02\x03", b"\xff\xfe", b"\rGET", b"\nGET", b"GET /\x01", b"GET / HTTPS/1.1"],
    ids=["binary", "binary-high", "lone-cr", "lone-lf", "control-in-target", "bad-version"],
)
async def test_bytes_that_cannot_start_a_request_get_400_at_once(
    nursery, autojump_clock, start_bytes
):
    """Bytes that cannot begin a request line get 400 and a close at once, not 408 after
    the header timeout."""
    client = await start(nursery, hello_app, make_state())
    await client.send_all(start_bytes)
    begin = trio.current_time()
    response = await read_until_eof(client)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert trio.current_time() == begin


# -- the minimum body rate ----------------------------------------------------------------

_UPLOAD = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"


async def test_trickled_body_is_cut_with_408_within_30_seconds(nursery, autojump_clock, caplog):
    """A 100,000-byte body trickled at one byte a second is cut with 408 within 30 s, by
    the default body_min_rate."""
    client = await start(nursery, echo_body_app, make_state())
    await client.send_all(_UPLOAD)
    begin = trio.current_time()

    async def trickle() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for _ in range(100_000):
                await client.send_all(b"x")
                await trio.sleep(1)

    nursery.start_soon(trickle)
    response = await read_until_eof(client)
    assert response.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - begin < 30
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_slow_mobile_upload_is_never_cut(nursery, autojump_clock):
    """A 100,000-byte body sent at 2 KB/s (a slow mobile upload) is served whole."""
    client = await start(nursery, echo_body_app, make_state())
    await client.send_all(_UPLOAD)
    body = bytes(range(256)) * 390 + b"x" * 160
    for offset in range(0, len(body), 2048):
        await client.send_all(body[offset : offset + 2048])
        await trio.sleep(1)
    response, received = await H11Client(client).read_response()
    assert (response.status_code, received) == (200, body)


async def test_body_min_rate_0_lets_a_trickle_through(nursery, autojump_clock):
    """With body_min_rate 0, a body trickled at one byte a second is served."""
    client = await start(nursery, echo_body_app, make_state(body_min_rate=0))
    await client.send_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\n")
    for _ in range(40):
        await client.send_all(b"x")
        await trio.sleep(1)
    response, received = await H11Client(client).read_response()
    assert (response.status_code, received) == (200, b"x" * 40)

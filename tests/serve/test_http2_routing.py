"""The HTTP/1.1 edge hands HTTP/2 connections to ``HTTPOptions.http2``: prior knowledge
(the preface), ``Upgrade: h2c`` when on, TLS ALPN; HTTP/1.1 is served as before.

The HTTP/2 edge is a test double here that records what it was given: the replayed
bytes, the peer, the upgrade's settings and request. That is all the routing decides.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers import (
    H11Client,
    hello_app,
    read_until_eof,
    serve_http_connection,
    served_connection,
)
from tests.pki import Pki
from trioserve import Config
from trioserve._peer import Peer
from trioserve._proto.h2c import PREFACE
from trioserve._serve_http import HTTPOptions
from trioserve._serve_http import serve_http_connection as serve_peer
from trioserve._state import ServerState
from trioserve._tls import ssl_context, tls_handshake
from trioserve._versions import INSTALL_HINT, h2_installed

SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HTTP2_SETTINGS = b"AAMAAABkAAQAAP__"
H2C_UPGRADE = (
    b"GET /up?x=1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: " + HTTP2_SETTINGS + b"\r\n\r\n"
)
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
SERVED = b"served as HTTP/2"


class RecordingHTTP2:
    """A stand-in for the HTTP/2 edge: reads ``want`` bytes from the stream it is given,
    records them and its arguments, answers SERVED and returns."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.calls: list[dict[str, Any]] = []

    async def __call__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: Any,
        settings: bytes | None = None,
        upgrade_request: Any = None,
    ) -> None:
        received = b""
        with trio.fail_after(5):
            while len(received) < self.want:
                data = await stream.receive_some()
                if not data:
                    break
                received += data
        self.calls.append(
            {
                "received": received,
                "peer": peer,
                "settings": settings,
                "request": upgrade_request,
            }
        )
        await stream.send_all(SERVED)


def options_for(http2: Any, **settings: Any) -> tuple[ServerState, HTTPOptions]:
    state = ServerState(Config(**settings))
    cleartext = state.config.http2_cleartext
    options = HTTPOptions(
        state.config,
        http2=http2,
        h2_prior_knowledge=cleartext in ("prior-knowledge", "both"),
        h2c_upgrade=cleartext in ("upgrade", "both"),
    )
    return state, options


@pytest.mark.parametrize("transport", ["memory", "socket"])
async def test_preface_is_handed_over_with_every_byte(nursery, transport):
    """A connection that opens with the preface goes to the HTTP/2 edge, which reads the
    preface and the frames after it again; the stream is closed after it returns."""
    http2 = RecordingHTTP2(len(PREFACE) + len(SETTINGS_FRAME))
    state, options = options_for(http2)
    client, _ = await served_connection(nursery, hello_app, state, options, transport=transport)
    await client.send_all(PREFACE + SETTINGS_FRAME)
    with trio.fail_after(5):
        assert await read_until_eof(client) == SERVED
    [call] = http2.calls
    assert call["received"] == PREFACE + SETTINGS_FRAME
    assert (call["settings"], call["request"]) == (None, None)
    assert not call["peer"].secure
    assert state.requests_served == 0


async def test_preface_in_pieces_is_handed_over(nursery, autojump_clock):
    """A preface that arrives a few bytes at a time is handed over once its head is
    here, with what came of the rest; the HTTP/2 edge reads on from the stream."""
    http2 = RecordingHTTP2(len(PREFACE) + len(SETTINGS_FRAME))
    state, options = options_for(http2)
    client, _ = await served_connection(nursery, hello_app, state, options)
    for start in range(0, len(PREFACE), 5):
        await client.send_all(PREFACE[start : start + 5])
        await trio.sleep(0.1)
    await client.send_all(SETTINGS_FRAME)
    with trio.fail_after(5):
        assert await read_until_eof(client) == SERVED
    assert http2.calls[0]["received"] == PREFACE + SETTINGS_FRAME


async def test_http1_requests_are_served_as_before_with_http2_on(nursery):
    """With HTTP/2 on, HTTP/1.1 requests (pipelined ones too) reach the app, not HTTP/2."""
    http2 = RecordingHTTP2(1)
    state, options = options_for(http2)
    client, _ = await served_connection(nursery, hello_app, state, options, transport="socket")
    h11_client = H11Client(client)
    with trio.fail_after(5):
        for _ in range(2):
            response, body = await h11_client.request(target=b"/")
            assert (response.status_code, body) == (200, b"Hello, world!")
    assert http2.calls == []
    assert state.requests_served == 2


async def _error_reply(client: trio.abc.Stream) -> bytes:
    with trio.fail_after(5):
        return await read_until_eof(client)


@pytest.mark.parametrize(
    "settings",
    [{"http2_cleartext": "off"}, {"http2_cleartext": "upgrade"}],
    ids=["cleartext-off", "upgrade-only"],
)
async def test_preface_without_prior_knowledge_gets_400(nursery, settings, caplog):
    """Without prior knowledge on, the preface is refused as an HTTP/1.1 request with a
    400 naming it, and the connection closes; nothing logged above info."""
    http2 = RecordingHTTP2(1)
    state, options = options_for(http2, **settings)
    client, _ = await served_connection(nursery, hello_app, state, options)
    await client.send_all(PREFACE + SETTINGS_FRAME)
    reply = await _error_reply(client)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"HTTP/2 connection preface where an HTTP/1.1 request was expected" in reply
    assert http2.calls == []
    assert not [r for r in caplog.records if r.levelno > logging.INFO]


async def test_preface_without_http2_gets_400(nursery):
    """A server without HTTP/2 (no ``http2``, as with --http-protocols h1) answers the
    preface with a 400 and closes, as before HTTP/2 existed."""
    state = ServerState(Config())
    client, _ = await served_connection(nursery, hello_app, state, HTTPOptions(state.config))
    await client.send_all(PREFACE + SETTINGS_FRAME)
    reply = await _error_reply(client)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"HTTP/2 connection preface" in reply


async def test_preface_after_a_request_gets_400(nursery):
    """The preface after an HTTP/1.1 request on the same connection is a client's error:
    400, not HTTP/2."""
    http2 = RecordingHTTP2(1)
    state, options = options_for(http2)
    client, _ = await served_connection(nursery, hello_app, state, options)
    await client.send_all(GET)
    with trio.fail_after(5):
        response = b""
        while not response.endswith(b"Hello, world!"):
            response += await client.receive_some()
    await client.send_all(PREFACE)
    reply = await _error_reply(client)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert http2.calls == []


async def test_h2c_upgrade_answers_101_and_hands_over_the_request(nursery):
    """With --http2-cleartext upgrade, an Upgrade: h2c request is answered 101, and the
    HTTP/2 edge gets the request, its HTTP2-Settings and what followed it."""
    http2 = RecordingHTTP2(len(PREFACE))
    state, options = options_for(http2, http2_cleartext="upgrade")
    apps: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        apps.append(scope)
        await hello_app(scope, receive, send)

    client, _ = await served_connection(nursery, app, state, options, transport="socket")
    await client.send_all(H2C_UPGRADE + PREFACE)
    with trio.fail_after(5):
        reply = await read_until_eof(client)
    assert reply == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + SERVED
    )
    [call] = http2.calls
    assert call["received"] == PREFACE
    assert call["settings"] == HTTP2_SETTINGS
    request = call["request"]
    assert (request.method, request.target, request.http_version) == (b"GET", b"/up?x=1", b"1.1")
    assert (b"http2-settings", HTTP2_SETTINGS) in list(request.headers)
    assert apps == []


@pytest.mark.parametrize(
    ("cleartext", "request_bytes"),
    [
        ("prior-knowledge", H2C_UPGRADE),
        ("off", H2C_UPGRADE),
        (
            "both",
            H2C_UPGRADE.replace(b"GET", b"POST").replace(b"\r\n\r\n", b"\r\n")
            + b"Content-Length: 2\r\n\r\nhi",
        ),
    ],
    ids=["prior-knowledge-only", "off", "with-a-body"],
)
async def test_h2c_upgrade_is_plain_http_when_not_granted(nursery, cleartext, request_bytes):
    """Without the upgrade on (the default), or for a request with a body, Upgrade: h2c
    is ignored: the app answers the request over HTTP/1.1."""
    http2 = RecordingHTTP2(1)
    state, options = options_for(http2, http2_cleartext=cleartext)
    client, _ = await served_connection(nursery, hello_app, state, options)
    await client.send_all(request_bytes)
    with trio.fail_after(5):
        response = b""
        while not response.endswith(b"Hello, world!"):
            response += await client.receive_some()
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert http2.calls == []


async def test_h2c_upgrade_during_a_stop_is_served_as_http1_and_closed(nursery):
    """Once a graceful stop began, Upgrade: h2c is not granted: the request is answered
    over HTTP/1.1 with Connection: close."""
    http2 = RecordingHTTP2(1)
    state, options = options_for(http2, http2_cleartext="upgrade")
    state.request_stop()
    client, _ = await served_connection(nursery, hello_app, state, options)
    await client.send_all(H2C_UPGRADE)
    with trio.fail_after(5):
        reply = await read_until_eof(client)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in reply.lower()
    assert http2.calls == []


async def test_h2c_upgrade_over_tls_is_served_as_http1(nursery):
    """h2c is cleartext HTTP/2: on a TLS connection (the peer says so) Upgrade: h2c is
    ignored, whatever --http2-cleartext says."""
    http2 = RecordingHTTP2(1)
    state, options = options_for(http2, http2_cleartext="both")
    client, server = trio.testing.memory_stream_pair()
    peer = Peer(server, None, None, None, secure=True)

    async def serve() -> None:
        async with trio.open_nursery() as tasks:
            await serve_peer(peer, hello_app, state, options, tasks=tasks)  # type: ignore[arg-type]

    nursery.start_soon(serve)
    await client.send_all(H2C_UPGRADE.replace(b"Host: a", b"Host: a\r\nConnection: close"))
    with trio.fail_after(5):
        reply = await read_until_eof(client)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert http2.calls == []


async def test_an_error_of_the_http2_edge_costs_only_its_connection(nursery, caplog):
    """An exception out of the HTTP/2 edge is logged once and closes that connection;
    the server's connection nursery does not see it."""

    async def broken(stream: trio.abc.Stream, **kwargs: Any) -> None:
        raise ValueError("a bug")

    state, options = options_for(broken)
    client, _ = await served_connection(nursery, hello_app, state, options)
    await client.send_all(PREFACE)
    with trio.fail_after(5):
        assert await read_until_eof(client) == b""
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "unexpected error while serving an HTTP/2 connection"


async def _tls_pair(
    pki: Pki, server_context: ssl.SSLContext, alpn: list[str]
) -> tuple[trio.SSLStream[trio.SocketStream], trio.abc.Stream]:
    """A real TLS connection over 127.0.0.1: (the client's end, the server's end after
    the server side's handshake), the client offering ``alpn``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        client_context = pki.client_context()
        client_context.set_alpn_protocols(alpn)
        client_stream = await trio.open_tcp_stream("127.0.0.1", port)
        accepted = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    client = trio.SSLStream(
        client_stream, client_context, server_hostname="localhost", https_compatible=True
    )
    server: trio.abc.Stream | None = None

    async def server_side() -> None:
        nonlocal server
        server = await tls_handshake(accepted, server_context, 5)

    with trio.fail_after(5):
        async with trio.open_nursery() as handshakes:
            handshakes.start_soon(server_side)
            await client.do_handshake()
    assert server is not None
    return client, server


# HTTP/2 is served by default only with h2 installed (without it, ALPN offers http/1.1).
needs_h2 = pytest.mark.skipif(
    not h2_installed(), reason=f"HTTP/2 needs the http2 extra: {INSTALL_HINT}"
)


@pytest.mark.parametrize(
    ("alpn", "chosen"),
    [
        pytest.param(["h2", "http/1.1"], "h2", id="h2-first", marks=needs_h2),
        pytest.param(["http/1.1", "h2"], "h2", id="h2-second", marks=needs_h2),
        pytest.param(["http/1.1"], "http/1.1", id="http1-only"),
    ],
)
async def test_tls_context_offers_h2_first(pki, monkeypatch, alpn, chosen):
    """With HTTP/2 served, the server's TLS context offers h2 before http/1.1: a client
    offering both gets h2 whatever its order; one offering http/1.1 gets it."""
    context = ssl_context(Config(certfile=str(pki.cert_file), keyfile=str(pki.key_file)))
    assert context is not None
    client, server = await _tls_pair(pki, context, alpn)
    assert client.selected_alpn_protocol() == chosen
    await client.aclose()
    await server.aclose()


async def test_tls_context_without_http2_offers_http1_only(pki, monkeypatch):
    """With --http-protocols h1, a client offering h2 first gets http/1.1."""
    config = Config(certfile=str(pki.cert_file), keyfile=str(pki.key_file), http_protocols="h1")
    context = ssl_context(config)
    assert context is not None
    client, server = await _tls_pair(pki, context, ["h2", "http/1.1"])
    assert client.selected_alpn_protocol() == "http/1.1"
    await client.aclose()
    await server.aclose()


@pytest.mark.parametrize(
    "alpn",
    [
        pytest.param(["h2", "http/1.1"], id="h2", marks=needs_h2),
        pytest.param(["http/1.1"], id="http1"),
    ],
)
async def test_tls_connection_that_chose_h2_is_handed_over_at_once(nursery, pki, monkeypatch, alpn):
    """A TLS connection whose handshake chose h2 goes to the HTTP/2 edge before a byte
    is read (the edge reads the preface itself); one that chose http/1.1 is served
    HTTP/1.1, and its preface would be a 400 (no prior knowledge over TLS)."""
    context = ssl_context(Config(certfile=str(pki.cert_file), keyfile=str(pki.key_file)))
    assert context is not None
    client, server = await _tls_pair(pki, context, alpn)
    http2 = RecordingHTTP2(len(PREFACE))
    state, options = options_for(http2)
    peer = Peer(server, None, ("127.0.0.1", 1), ("127.0.0.1", 2), secure=True)

    async def serve() -> None:
        async with trio.open_nursery() as tasks:
            await serve_peer(peer, hello_app, state, options, tasks=tasks)  # type: ignore[arg-type]

    nursery.start_soon(serve)
    await client.send_all(PREFACE)
    with trio.fail_after(5):
        reply = await read_until_eof(client)
    if alpn[0] == "h2":
        assert reply == SERVED
        [call] = http2.calls
        assert call["received"] == PREFACE
        assert call["peer"] is peer
    else:
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert http2.calls == []


async def test_without_an_http2_edge_neither_cleartext_route_is_taken(nursery):
    """Options asking for both cleartext routes but given no HTTP/2 edge serve HTTP/1.1:
    the preface gets a 400, Upgrade: h2c is ignored."""
    state = ServerState(Config())
    options = HTTPOptions(state.config, http2=None, h2_prior_knowledge=True, h2c_upgrade=True)
    client, _ = await served_connection(nursery, hello_app, state, options)
    await client.send_all(H2C_UPGRADE.replace(b"Host: a", b"Host: a\r\nConnection: close"))
    reply = await _error_reply(client)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    client, _ = await served_connection(nursery, hello_app, state, options)
    await client.send_all(PREFACE)
    reply = await _error_reply(client)
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_upgrade_client_that_left_before_101_is_closed(nursery):
    """A client that asks for h2c and leaves before reading the 101 gets no HTTP/2 edge;
    the connection just ends."""
    http2 = RecordingHTTP2(1)
    state, options = options_for(http2, http2_cleartext="upgrade")
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(H2C_UPGRADE)
    await client.aclose()
    with trio.fail_after(5):
        await serve_http_connection(server, hello_app, state, options=options)  # type: ignore[arg-type]
    assert http2.calls == []

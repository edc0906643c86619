"""serve() end to end on 127.0.0.1: the pipeline routes HTTP/2 connections (prior
knowledge, after a PROXY header too; TLS ALPN) to the HTTP/2 edge it builds.

The HTTP/2 edge is replaced by a recording double (``_pipeline._http2_edge`` is where
the pipeline gets it): what is tested is the routing and what the edge is given.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
import trio

from tests.helpers import hello_app, read_until_eof
from trioserve import Config, serve
from trioserve._proto.h2c import PREFACE
from trioserve._versions import INSTALL_HINT, h2_installed

SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SERVED = b"served as HTTP/2"
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class RecordingEdge:
    """What the pipeline's HTTP/2 edge would be: records each connection it is given
    (the bytes it reads, up to the preface and a SETTINGS frame, and the peer)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.built_for: list[Any] = []

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
            while len(received) < len(PREFACE + SETTINGS_FRAME):
                data = await stream.receive_some()
                if not data:
                    break
                received += data
        self.calls.append({"received": received, "peer": peer, "settings": settings})
        await stream.send_all(SERVED)


# These serve HTTP/2 by default, which needs h2 installed (the edge is a double).
needs_h2 = pytest.mark.skipif(
    not h2_installed(), reason=f"HTTP/2 needs the http2 extra: {INSTALL_HINT}"
)


@pytest.fixture
def edge(monkeypatch: pytest.MonkeyPatch) -> RecordingEdge:
    """The recording double as the pipeline's HTTP/2 edge, in a build that has one."""
    recording = RecordingEdge()

    def build(app: Any, state: Any, config: Config, http: Any) -> RecordingEdge:
        recording.built_for.append(config)
        assert http.h2_prior_knowledge == (config.http2_cleartext in ("prior-knowledge", "both"))
        return recording

    monkeypatch.setattr("trioserve._pipeline._http2_edge", build)
    return recording


async def _exchange(host: str, port: int, data: bytes) -> bytes:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(data)
        reply = await read_until_eof(stream)
        await stream.aclose()
    return reply


@needs_h2
async def test_prior_knowledge_is_routed_to_the_http2_edge(nursery, edge):
    """By default, a connection that opens with the preface is served by the HTTP/2 edge
    the pipeline built, with the bytes read replayed; HTTP/1.1 still works beside it."""
    config = Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, lifespan="off")
    [(host, port)] = await nursery.start(serve, config)
    assert await _exchange(host, port, PREFACE + SETTINGS_FRAME) == SERVED
    [call] = edge.calls
    assert call["received"] == PREFACE + SETTINGS_FRAME
    assert call["peer"].client[0] == "127.0.0.1"
    assert edge.built_for[0].http2_max_concurrent_streams == 100
    reply = await _exchange(host, port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert reply.endswith(b"Hello, world!")


def _proxy_v2_tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    block = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return PROXY_V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(block)) + block


@pytest.mark.parametrize(
    ("mode", "header"),
    [
        ("v1", b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n"),
        ("v2", _proxy_v2_tcp4("203.0.113.7", "198.51.100.1", 40000, 443)),
    ],
    ids=["v1", "v2"],
)
@needs_h2
async def test_proxy_header_then_preface(nursery, edge, mode, header):
    """A PROXY header (v1 or v2) from a trusted peer, then the preface in the same
    packet: the HTTP/2 edge reads the preface (not the header) and sees the client the
    header named."""
    config = Config(
        app=hello_app, bind=["127.0.0.1:0"], workers=0, lifespan="off", proxy_protocol=mode
    )
    [(host, port)] = await nursery.start(serve, config)
    assert await _exchange(host, port, header + PREFACE + SETTINGS_FRAME) == SERVED
    [call] = edge.calls
    assert call["received"] == PREFACE + SETTINGS_FRAME
    assert call["peer"].client == ("203.0.113.7", 40000)
    assert call["peer"].server == ("198.51.100.1", 443)


async def test_http1_only_server_answers_the_preface_with_400(nursery, edge):
    """With --http-protocols h1 no HTTP/2 edge is built, and the preface gets a 400
    naming it and the connection closes."""
    config = Config(
        app=hello_app, bind=["127.0.0.1:0"], workers=0, lifespan="off", http_protocols="h1"
    )
    [(host, port)] = await nursery.start(serve, config)
    reply = await _exchange(host, port, PREFACE + SETTINGS_FRAME)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b"HTTP/2 connection preface" in reply
    assert edge.built_for == []
    assert edge.calls == []


@needs_h2
async def test_tls_alpn_h2_is_routed_to_the_http2_edge(nursery, edge, pki):
    """Over TLS, a client offering h2 by ALPN gets it and is served by the HTTP/2 edge,
    which sees a secure peer; a client offering http/1.1 only gets HTTP/1.1."""
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        lifespan="off",
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
    )
    [(host, port)] = await nursery.start(serve, config)
    for alpn in (["h2", "http/1.1"], ["http/1.1"]):
        context = pki.client_context()
        context.set_alpn_protocols(alpn)
        with trio.fail_after(5):
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=context, https_compatible=True
            )
            await stream.do_handshake()
            assert stream.selected_alpn_protocol() == alpn[0]
            request = (
                PREFACE + SETTINGS_FRAME
                if alpn[0] == "h2"
                else (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            )
            await stream.send_all(request)
            reply = await read_until_eof(stream)
            await stream.aclose()
        if alpn[0] == "h2":
            assert reply == SERVED
        else:
            assert reply.startswith(b"HTTP/1.1 200 OK")
    [call] = edge.calls
    assert call["peer"].secure
    assert call["received"] == PREFACE + SETTINGS_FRAME

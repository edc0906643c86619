"""serve() end to end for TLS, proxies, the compiled parser, the access log and aborts."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.helpers import echo_body_app, hello_app
from trioserve import Config, ConfigError, serve
from trioserve._mypyc import compiled_modules


def scope_recorder(scopes: list[dict[str, Any]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
        await hello_app(scope, receive, send)

    return app


async def test_https_with_httpx(nursery, pki):
    """With a certificate, the server speaks HTTPS: scheme https and the tls extension."""
    scopes: list[dict[str, Any]] = []
    config = Config(
        app=scope_recorder(scopes),
        bind=["127.0.0.1:0"],
        workers=0,
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
        lifespan="off",
    )
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient(verify=pki.client_context()) as client:
        response = await client.get(f"https://{host}:{port}/")
    assert response.text == "Hello, world!"
    assert scopes[0]["scheme"] == "https"
    assert scopes[0]["extensions"]["tls"]["tls_version"] in (0x0303, 0x0304)


async def test_plaintext_request_on_tls_port_is_dropped_quietly(nursery, pki, caplog):
    """Plain HTTP sent to a TLS port gets the connection closed, nothing logged at warning."""
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        await stream.aclose()
    assert b"Hello" not in data
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_proxy_protocol_sets_the_client(nursery):
    """A PROXY v1 header from a trusted peer gives the scope the original client address."""
    scopes: list[dict[str, Any]] = []
    config = Config(
        app=scope_recorder(scopes),
        bind=["127.0.0.1:0"],
        workers=0,
        proxy_protocol="v1",
        lifespan="off",
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(
            b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n"
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert scopes[0]["client"] == ("203.0.113.7", 40000)
    assert scopes[0]["server"] == ("198.51.100.1", 443)


@pytest.mark.parametrize(
    ("allowed", "client", "scheme"),
    [
        pytest.param("127.0.0.1", "198.51.100.20", "https", id="trusted"),
        pytest.param("10.0.0.0/8", "127.0.0.1", "http", id="untrusted"),
    ],
)
async def test_proxy_headers_count_from_trusted_peers_only(nursery, allowed, client, scheme):
    """X-Forwarded-For and -Proto from a trusted peer set client and scheme; from a peer
    outside --forwarded-allow-ips they change nothing."""
    scopes: list[dict[str, Any]] = []
    config = Config(
        app=scope_recorder(scopes),
        bind=["127.0.0.1:0"],
        workers=0,
        proxy_headers=True,
        forwarded_allow_ips=[allowed],
        lifespan="off",
    )
    [(host, port)] = await nursery.start(serve, config)
    headers = {"x-forwarded-for": "198.51.100.20", "x-forwarded-proto": "https"}
    async with httpx.AsyncClient() as http:
        await http.get(f"http://{host}:{port}/", headers=headers)
    assert scopes[0]["client"][0] == client
    assert scopes[0]["scheme"] == scheme


@pytest.mark.skipif(
    importlib.util.find_spec("h11_mypyc") is None,
    reason="--http h11-compiled needs the speed extra (trioserve[speed])",
)
async def test_compiled_parser_serves(nursery):
    """--http h11-compiled serves the same responses through h11_mypyc."""
    config = Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, http="h11-compiled")
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}:{port}/")
    assert response.text == "Hello, world!"


async def test_compiled_parser_missing_is_a_config_error(nursery, monkeypatch):
    """Asking for h11-compiled without it installed is a one-line ConfigError."""
    import sys

    monkeypatch.setitem(sys.modules, "h11_mypyc", None)
    with pytest.raises(ConfigError, match=r"trioserve\[speed\]"):
        await nursery.start(
            serve, Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, http="h11-compiled")
        )


@pytest.mark.skipif(
    importlib.util.find_spec("httptools") is None,
    reason="--http httptools needs the speed extra (trioserve[speed])",
)
async def test_httptools_parser_serves(nursery):
    """--http httptools serves requests parsed by llhttp, bodies and keep-alive included."""
    config = Config(app=echo_body_app, bind=["127.0.0.1:0"], workers=0, http="httptools")
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient() as client:
        for _ in range(2):
            response = await client.post(f"http://{host}:{port}/", content=b"abc" * 1000)
            assert response.content == b"abc" * 1000


@pytest.mark.skipif(
    "trioserve._proto.llhttp" in compiled_modules(),
    reason="compiled with mypyc, _proto.llhttp is initialised once per process: it cannot "
    "be imported again without httptools",
)
async def test_httptools_missing_is_a_config_error(nursery, monkeypatch):
    """Asking for httptools without it installed is a one-line ConfigError naming the extra."""
    import sys

    monkeypatch.setitem(sys.modules, "httptools", None)
    monkeypatch.delitem(sys.modules, "trioserve._proto.llhttp", raising=False)
    with pytest.raises(ConfigError, match=r"--http httptools: .*trioserve\[speed\]"):
        await nursery.start(
            serve, Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, http="httptools")
        )


async def test_access_log_line(nursery, caplog):
    """With access_log set, each request is logged on trioserve.access in the given format."""
    caplog.set_level(logging.INFO, "trioserve.access")
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        access_log="-",
        access_log_format="%(m)s %(U)s %(s)s",
    )
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient() as client:
        await client.get(f"http://{host}:{port}/hello")
    lines = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
    assert lines == ["GET /hello 200"]


async def test_access_log_escapes_what_the_client_sent(nursery, caplog):
    """A hostile Referer, User-Agent and path reach the access log escaped, fields intact."""
    caplog.set_level(logging.INFO, "trioserve.access")
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        access_log="-",
        access_log_format='%(h)s "%(r)s" %(s)s "%(f)s" "%(a)s" %(U)s',
    )
    [(host, port)] = await nursery.start(serve, config)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(
            b"GET /%1B[2J%07\\x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
            b'Referer: a" "b\r\nUser-Agent: caf\xe9 \xff\r\n\r\n'
        )
        with trio.fail_after(10):
            while await stream.receive_some():
                pass
    [line] = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
    assert line == (
        r'127.0.0.1 "GET /%1B[2J%07\x5Cx HTTP/1.1" 200 "a\x22 \x22b" "caf\xE9 \xFF" '
        r"/\x1B[2J\x07\x5Cx"
    )


async def test_aborted_clients_leak_no_descriptors(caplog):
    """Clients vanishing mid-head, mid-body and mid-response leave no fd and no error log."""

    async def slow_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await hello_app(scope, receive, send)

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(
            serve, Config(app=slow_body, bind=["127.0.0.1:0"], workers=0, lifespan="off")
        )
        before = open_fds()
        partial = [
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
        with trio.fail_after(10):
            for _ in range(20):
                for data in partial:
                    stream = await trio.open_tcp_stream(host, port)
                    await stream.send_all(data)
                    await trio.aclose_forcefully(stream)
            # One full request proves the server is fine and lets it reap the aborts.
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{host}:{port}/")
            assert response.status_code == 200
            # Until the server has handled every end of stream it was sent (bounded above).
            while open_fds() > before:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_websocket_clients_vanishing_leak_nothing(caplog):
    """Websocket clients vanishing mid-handshake or mid-message leave no fd and no error log."""
    from examples.ws_echo import app as ws_echo

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    handshake = (
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    # A masked text frame announcing 100 bytes, of which only 3 are sent.
    partial_frame = b"\x81\xe4\x00\x00\x00\x00abc"
    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(
            serve, Config(app=ws_echo, bind=["127.0.0.1:0"], workers=0, lifespan="off")
        )
        before = open_fds()
        with trio.fail_after(10):
            for _ in range(20):
                for data in (handshake[:40], handshake, handshake + partial_frame):
                    stream = await trio.open_tcp_stream(host, port)
                    await stream.send_all(data)
                    if data.endswith(b"abc"):
                        await stream.receive_some()  # the 101, so the frame is read as one
                    await trio.aclose_forcefully(stream)
            # Until the server has handled every end of stream it was sent (bounded above).
            while open_fds() > before:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

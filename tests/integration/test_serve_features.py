"""serve() end to end for TLS, proxies, the compiled parser, the access log and aborts."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trustme

from tests.helpers import hello_app
from trioserve import Config, ConfigError, serve


def scope_recorder(scopes: list[dict[str, Any]]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
        await hello_app(scope, receive, send)

    return app


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile = tmp_path / "cert.pem"
    keyfile = tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    return ca, certfile, keyfile


async def test_https_with_httpx(nursery, tls_files):
    """With a certificate, the server speaks HTTPS: scheme https and the tls extension."""
    ca, certfile, keyfile = tls_files
    scopes: list[dict[str, Any]] = []
    config = Config(
        app=scope_recorder(scopes),
        bind=["127.0.0.1:0"],
        workers=0,
        certfile=str(certfile),
        keyfile=str(keyfile),
        lifespan="off",
    )
    [(host, port)] = await nursery.start(serve, config)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with httpx.AsyncClient(verify=context) as client:
        response = await client.get(f"https://{host}:{port}/")
    assert response.text == "Hello, world!"
    assert scopes[0]["scheme"] == "https"
    assert scopes[0]["extensions"]["tls"]["tls_version"] in (0x0303, 0x0304)


async def test_plaintext_request_on_tls_port_is_dropped_quietly(nursery, tls_files, caplog):
    """Plain HTTP sent to a TLS port gets the connection closed, nothing logged at warning."""
    _, certfile, keyfile = tls_files
    config = Config(
        app=hello_app, bind=["127.0.0.1:0"], workers=0, certfile=str(certfile), keyfile=str(keyfile)
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


async def test_proxy_headers_from_trusted_peer(nursery):
    """X-Forwarded-For and -Proto from a trusted peer set client and scheme."""
    scopes: list[dict[str, Any]] = []
    config = Config(
        app=scope_recorder(scopes),
        bind=["127.0.0.1:0"],
        workers=0,
        proxy_headers=True,
        forwarded_allow_ips=["127.0.0.1"],
        lifespan="off",
    )
    [(host, port)] = await nursery.start(serve, config)
    headers = {"x-forwarded-for": "198.51.100.20", "x-forwarded-proto": "https"}
    async with httpx.AsyncClient() as client:
        await client.get(f"http://{host}:{port}/", headers=headers)
    assert scopes[0]["client"][0] == "198.51.100.20"
    assert scopes[0]["scheme"] == "https"


async def test_proxy_headers_ignored_from_untrusted_peer(nursery):
    """Forwarded headers from a peer outside --forwarded-allow-ips change nothing."""
    scopes: list[dict[str, Any]] = []
    config = Config(
        app=scope_recorder(scopes),
        bind=["127.0.0.1:0"],
        workers=0,
        proxy_headers=True,
        forwarded_allow_ips=["10.0.0.0/8"],
        lifespan="off",
    )
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient() as client:
        await client.get(f"http://{host}:{port}/", headers={"x-forwarded-for": "198.51.100.20"})
    assert scopes[0]["client"][0] == "127.0.0.1"


async def test_compiled_parser_serves(nursery):
    """--http h11-compiled serves the same responses through h11_mypyc."""
    pytest.importorskip("h11_mypyc", reason="the [speed] extra is not installed")
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

"""tls_handshake() and tls_extension() on real sockets bound to 127.0.0.1:0."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trustme

from tests.pki import Pki
from trioserve._config import Config
from trioserve._tls import ssl_context, tls_extension, tls_handshake

LOGGER_NAME = "trioserve.tls"
Result = trio.SSLStream[trio.abc.Stream] | None


@pytest.fixture
def tls_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog wired straight to trioserve.tls at DEBUG, whatever logging setup ran before.

    Propagation is off meanwhile so each record is captured once; other loggers still
    reach caplog through the root logger.
    """
    logger = logging.getLogger(LOGGER_NAME)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def server_context(pki: Pki, **settings: Any) -> ssl.SSLContext:
    context = ssl_context(
        Config(certfile=str(pki.cert_file), keyfile=str(pki.key_file), **settings)
    )
    assert context is not None
    return context


def client_context(pki: Pki, *, cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if cert:
        pki.client.configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def handshake_one(
    context: ssl.SSLContext,
    handshake_timeout: float,
    *,
    task_status: trio.TaskStatus[tuple[int, trio.MemoryReceiveChannel[Result]]],
) -> None:
    """Accept one connection on 127.0.0.1:0 and send tls_handshake()'s result back."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    send, receive = trio.open_memory_channel[Result](1)
    async with listener:
        task_status.started((listener.socket.getsockname()[1], receive))
        stream = await listener.accept()
    await send.send(await tls_handshake(stream, context, handshake_timeout))


async def start_server(
    nursery: trio.Nursery, context: ssl.SSLContext, handshake_timeout: float = 60.0
) -> tuple[int, trio.MemoryReceiveChannel[Result]]:
    result: tuple[int, trio.MemoryReceiveChannel[Result]] = await nursery.start(
        handshake_one, context, handshake_timeout
    )
    return result


async def tls_client(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    return trio.SSLStream(stream, context, server_hostname="127.0.0.1", https_compatible=True)


async def rejected_client(port: int, context: ssl.SSLContext) -> None:
    """Connect and try the handshake; the server may refuse it now or on the first read."""
    client = await tls_client(port, context)
    async with client:
        with contextlib.suppress(trio.BrokenResourceError):
            await client.do_handshake()
            await client.receive_some()


def warnings_or_worse(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_handshake_then_bytes_both_ways(nursery, pki):
    """A TLS client completes the handshake and exchanges bytes; with HTTP/1.1 only
    (--http-protocols h1), ALPN picks http/1.1 for a client that offers h2 first."""
    with trio.fail_after(5):
        port, results = await start_server(nursery, server_context(pki, http_protocols="h1"))
        client = await tls_client(port, client_context(pki))
        async with client:
            await client.do_handshake()
            server = await results.receive()
            assert server is not None
            async with server:
                await client.send_all(b"ping")
                assert await server.receive_some() == b"ping"
                await server.send_all(b"pong")
                assert await client.receive_some() == b"pong"
                assert server.selected_alpn_protocol() == "http/1.1"
                assert client.selected_alpn_protocol() == "http/1.1"
                extension = tls_extension(server)
                our_cert = client.getpeercert(binary_form=True)
    assert ssl.PEM_cert_to_DER_cert(extension["server_cert"]) == our_cert
    assert extension["client_cert_chain"] == []
    assert extension["client_cert_name"] is None
    assert extension["client_cert_error"] is None
    assert extension["tls_version"] == 0x0304
    assert extension["cipher_suite"] in {0x1301, 0x1302, 0x1303}


async def test_tls12_extension_reports_version_and_cipher_suite(nursery, pki):
    """Over TLS 1.2 the extension gives 0x0303 and the IANA number of the suite."""
    iana = {"ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B, "ECDHE-RSA-AES128-GCM-SHA256": 0xC02F}
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(":".join(iana))
    with trio.fail_after(5):
        port, results = await start_server(nursery, server_context(pki))
        client = await tls_client(port, context)
        async with client:
            await client.do_handshake()
            server = await results.receive()
            assert server is not None
            async with server:
                extension = tls_extension(server)
                name = client.cipher()[0]
    assert extension["tls_version"] == 0x0303
    assert extension["cipher_suite"] == iana[name]


def capped_at_tls12(pki: Pki) -> ssl.SSLContext:
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def offering_aes128_only(pki: Pki) -> ssl.SSLContext:
    context = capped_at_tls12(pki)
    context.set_ciphers("ECDHE+AES128")
    return context


def with_cert_from_another_ca(pki: Pki) -> ssl.SSLContext:
    context = client_context(pki)
    trustme.CA().issue_cert("intruder.example").configure_cert(context)
    return context


@pytest.mark.parametrize(
    ("settings", "client", "reason"),
    [
        pytest.param(
            {"tls_min_version": "1.3"},
            capped_at_tls12,
            "unsupported protocol",
            id="tls13-only-server-tls12-client",
        ),
        pytest.param(
            {"ciphers": "ECDHE+AES256"}, offering_aes128_only, "", id="ciphers-without-overlap"
        ),
        pytest.param({"cert_reqs": "required"}, client_context, "", id="client-cert-missing"),
        pytest.param(
            {"cert_reqs": "required"},
            with_cert_from_another_ca,
            "",
            id="client-cert-from-another-ca",
        ),
    ],
)
async def test_refused_handshake_is_dropped_with_a_debug_line(
    nursery: trio.Nursery,
    pki: Pki,
    tls_log: pytest.LogCaptureFixture,
    settings: dict[str, str],
    client: Callable[[Pki], ssl.SSLContext],
    reason: str,
) -> None:
    """A handshake the server refuses (a TLS 1.2 client of a TLS 1.3-only server, no cipher
    in common, a required client certificate missing or from another CA) gives None and
    one DEBUG line naming the client (and why), no warning."""
    if "cert_reqs" in settings:
        settings = {**settings, "ca_certs": str(pki.ca_file)}
    with trio.fail_after(5):
        port, results = await start_server(nursery, server_context(pki, **settings))
        await rejected_client(port, client(pki))
        assert await results.receive() is None
    assert not warnings_or_worse(tls_log)
    [record] = tls_log.records
    assert record.levelno == logging.DEBUG
    assert "TLS handshake with 127.0.0.1:" in record.getMessage()
    assert reason in record.getMessage()


@pytest.mark.parametrize(
    ("cert_reqs", "cert", "name"),
    [
        pytest.param("required", True, "CN=client,OU=unit\\, one,O=trioserve tests", id="required"),
        pytest.param("optional", False, None, id="optional-absent"),
    ],
)
async def test_client_cert_shows_in_extension(
    nursery: trio.Nursery, pki: Pki, cert_reqs: str, cert: bool, name: str | None
) -> None:
    """cert_reqs required with a client cert: the extension has its PEM and RFC 4514 name;
    optional without one: the handshake passes, with no chain and no name."""
    context = server_context(pki, cert_reqs=cert_reqs, ca_certs=str(pki.ca_file))
    with trio.fail_after(5):
        port, results = await start_server(nursery, context)
        client = await tls_client(port, client_context(pki, cert=cert))
        async with client:
            await client.do_handshake()
            server = await results.receive()
            assert server is not None
            async with server:
                extension = tls_extension(server)
    if cert:
        client_pem = pki.client.cert_chain_pems[0].bytes().decode("ascii")
        [chain_pem] = extension["client_cert_chain"]
        assert ssl.PEM_cert_to_DER_cert(chain_pem) == ssl.PEM_cert_to_DER_cert(client_pem)
    else:
        assert extension["client_cert_chain"] == []
    assert extension["client_cert_name"] == name
    assert extension["client_cert_error"] is None


async def test_plaintext_http_on_tls_port_is_dropped_quietly(nursery, pki, tls_log):
    """Plain `GET / HTTP/1.1` on the TLS port: None at once, one DEBUG line, no warning."""
    with trio.fail_after(5):  # far below the 60 s handshake timeout
        port, results = await start_server(nursery, server_context(pki))
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert await results.receive() is None
            # The server closed the connection without answering in plaintext.
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.receive_some() == b""
    assert not warnings_or_worse(tls_log)
    [record] = tls_log.records
    assert record.levelno == logging.DEBUG
    assert record.getMessage().endswith("failed: http request")


async def test_client_vanishing_mid_handshake_is_dropped_quietly(nursery, pki, tls_log):
    """A client that connects and closes at once: None, one DEBUG line, no warning."""
    with trio.fail_after(5):
        port, results = await start_server(nursery, server_context(pki))
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.aclose()
        assert await results.receive() is None
    assert not warnings_or_worse(tls_log)
    assert [r.levelno for r in tls_log.records] == [logging.DEBUG]


async def test_silent_client_is_dropped_after_the_timeout(nursery, pki, tls_log):
    """A client that never speaks is dropped after the handshake timeout and sees EOF."""
    with trio.fail_after(5):
        port, results = await start_server(nursery, server_context(pki), handshake_timeout=0.5)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            started = trio.current_time()
            assert await results.receive() is None
            assert trio.current_time() - started >= 0.4
            assert await client.receive_some() == b""
    assert not warnings_or_worse(tls_log)
    [record] = tls_log.records
    assert record.levelno == logging.DEBUG
    assert "timed out after 0.5s" in record.getMessage()

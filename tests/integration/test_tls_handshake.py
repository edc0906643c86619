"""tls_handshake() and tls_extension() on real sockets bound to 127.0.0.1:0."""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from trioserve._config import Config
from trioserve._tls import ssl_context, tls_extension, tls_handshake

LOGGER_NAME = "trioserve.tls"
Result = trio.SSLStream[trio.abc.Stream] | None


@attrs.frozen
class Pki:
    """A trustme CA with a server cert for localhost/127.0.0.1 and a client cert."""

    ca: trustme.CA
    client: trustme.LeafCert
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert(
        "client.example.org",
        common_name="client",
        organization_name="trioserve tests",
        organization_unit_name="unit, one",
    )
    ca.cert_pem.write_to_path(tmp / "ca.pem")
    server.cert_chain_pems[0].write_to_path(tmp / "cert.pem")
    server.private_key_pem.write_to_path(tmp / "key.pem")
    return Pki(ca, client, tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem")


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
    """A TLS client completes the handshake and exchanges bytes; ALPN picks http/1.1."""
    with trio.fail_after(5):
        port, results = await start_server(nursery, server_context(pki))
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


async def test_tls13_only_server_refuses_tls12_client(nursery, pki, tls_log):
    """With tls_min_version 1.3 a client capped at TLS 1.2 is dropped: None, DEBUG log."""
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with trio.fail_after(5):
        port, results = await start_server(nursery, server_context(pki, tls_min_version="1.3"))
        await rejected_client(port, context)
        assert await results.receive() is None
    assert not warnings_or_worse(tls_log)
    [record] = tls_log.records
    assert record.levelno == logging.DEBUG
    assert "TLS handshake with 127.0.0.1:" in record.getMessage()
    assert "unsupported protocol" in record.getMessage()


async def test_server_ciphers_without_overlap_refuse_client(nursery, pki):
    """A client offering none of the --ciphers suites (TLS 1.2) fails the handshake."""
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AES128")
    with trio.fail_after(5):
        port, results = await start_server(nursery, server_context(pki, ciphers="ECDHE+AES256"))
        await rejected_client(port, context)
        assert await results.receive() is None


async def test_required_client_cert_missing_is_refused(nursery, pki):
    """cert_reqs required: a client without a certificate is dropped (None)."""
    context = server_context(pki, cert_reqs="required", ca_certs=str(pki.ca_file))
    with trio.fail_after(5):
        port, results = await start_server(nursery, context)
        await rejected_client(port, client_context(pki))
        assert await results.receive() is None


async def test_required_client_cert_from_another_ca_is_refused(nursery, pki):
    """cert_reqs required: a client certificate from an untrusted CA is dropped (None)."""
    context = server_context(pki, cert_reqs="required", ca_certs=str(pki.ca_file))
    client = client_context(pki)
    trustme.CA().issue_cert("intruder.example").configure_cert(client)
    with trio.fail_after(5):
        port, results = await start_server(nursery, context)
        await rejected_client(port, client)
        assert await results.receive() is None


async def test_required_client_cert_shows_in_extension(nursery, pki):
    """cert_reqs required with a client cert: the extension has its PEM and RFC 4514 name."""
    context = server_context(pki, cert_reqs="required", ca_certs=str(pki.ca_file))
    with trio.fail_after(5):
        port, results = await start_server(nursery, context)
        client = await tls_client(port, client_context(pki, cert=True))
        async with client:
            await client.do_handshake()
            server = await results.receive()
            assert server is not None
            async with server:
                extension = tls_extension(server)
    client_pem = pki.client.cert_chain_pems[0].bytes().decode("ascii")
    [chain_pem] = extension["client_cert_chain"]
    assert ssl.PEM_cert_to_DER_cert(chain_pem) == ssl.PEM_cert_to_DER_cert(client_pem)
    assert extension["client_cert_name"] == "CN=client,OU=unit\\, one,O=trioserve tests"
    assert extension["client_cert_error"] is None


async def test_optional_client_cert_may_be_absent(nursery, pki):
    """cert_reqs optional: a client without a certificate gets through, with no chain."""
    context = server_context(pki, cert_reqs="optional", ca_certs=str(pki.ca_file))
    with trio.fail_after(5):
        port, results = await start_server(nursery, context)
        client = await tls_client(port, client_context(pki))
        async with client:
            await client.do_handshake()
            server = await results.receive()
            assert server is not None
            async with server:
                extension = tls_extension(server)
    assert extension["client_cert_chain"] == []
    assert extension["client_cert_name"] is None


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

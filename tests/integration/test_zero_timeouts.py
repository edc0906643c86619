"""serve() end to end with timeouts of 0, which mean no limit: TLS handshakes, PROXY
headers and the lifespan startup still complete."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.helpers import hello_app
from trioserve import Config, serve


async def test_tls_handshake_timeout_0_lets_handshakes_complete(nursery, pki):
    """With tls_handshake_timeout 0 (no limit), an HTTPS request is answered."""
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        certfile=str(pki.cert_file),
        keyfile=str(pki.key_file),
        lifespan="off",
        tls_handshake_timeout=0,
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        async with httpx.AsyncClient(verify=pki.client_context()) as client:
            response = await client.get(f"https://{host}:{port}/")
    assert response.text == "Hello, world!"


async def test_header_timeout_0_lets_a_proxy_header_through(nursery):
    """With header_timeout 0 (no limit), a PROXY header and its request are served."""
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        proxy_protocol="v1",
        lifespan="off",
        header_timeout=0,
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(
            b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n"
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")


async def test_lifespan_startup_timeout_0_waits_for_startup(nursery):
    """With lifespan_startup_timeout 0 (no limit), the app's startup completes and the
    server serves."""
    started: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await trio.sleep(0.01)
                    started.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await hello_app(scope, receive, send)

    config = Config(
        app=app, bind=["127.0.0.1:0"], workers=0, lifespan="on", lifespan_startup_timeout=0
    )
    with trio.fail_after(10):
        [(host, port)] = await nursery.start(serve, config)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{host}:{port}/")
    assert started == ["startup"]
    assert response.text == "Hello, world!"

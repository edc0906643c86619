"""--metrics-bind in process (workers=0, serve()): the same process serves /metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from tests.helpers import hello_app
from tests.process.test_metrics_cli import metric, scrape
from trioserve import Config, ConfigError, serve
from trioserve import _exchange as exchange_module
from trioserve import _metrics_server as metrics_server
from trioserve._proto import http as http_module


async def ws_or_http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """hello_app, and a websocket that accepts then waits for the client to close."""
    if scope["type"] != "websocket":
        await hello_app(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_serve_in_process_counts_requests_rejections_and_websockets(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """serve() with workers=0 answers /metrics itself: requests by status class, a 431
    rejection, and an open websocket moved from the HTTP connections to its own kind."""
    sock = tmp_path / "metrics.sock"
    config = Config(
        app=ws_or_http_app,
        bind=["127.0.0.1:0"],
        workers=0,
        lifespan="off",
        metrics_bind=f"unix:{sock}",
        limit_request_field_size=100,
    )
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        for _ in range(3):
            assert (await client.get("/")).status_code == 200
        response = await client.get("/", headers={"x-big": "a" * 200})
        assert response.status_code == 431
    assert await metric(sock, "trioserve_requests_total", status="2xx") == 3
    rejected = await metric(sock, "trioserve_request_rejections_total", status="431")
    assert rejected == 1
    assert await metric(sock, "trioserve_response_body_bytes_total") == 3 * len(b"Hello, world!")
    async with trio_websocket.open_websocket_url(f"ws://{host}:{port}/ws"):
        assert await metric(sock, "trioserve_connections_open", kind="websocket") == 1
        assert await metric(sock, "trioserve_connections_open", kind="http") == 0
    assert await metric(sock, "trioserve_connections_total", kind="websocket") == 1
    assert await metric(sock, "trioserve_listen_queue_limit") > 0


async def test_openmetrics_scrape_over_the_socket(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Accept: application/openmetrics-text is answered in OpenMetrics; HEAD has no body."""
    sock = tmp_path / "metrics.sock"
    config = Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, metrics_bind=f"unix:{sock}")
    await nursery.start(serve, config)
    accept = b"accept: application/openmetrics-text; version=1.0.0\r\n"
    data = await scrape(sock, b"GET /metrics HTTP/1.1\r\nhost: m\r\n" + accept + b"\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/openmetrics-text" in head.lower()
    assert body.endswith(b"# EOF\n")
    head_only = await scrape(sock, b"HEAD /metrics HTTP/1.1\r\nhost: m\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200 ") and head_only.endswith(b"\r\n\r\n")
    post = await scrape(sock, b"POST /metrics HTTP/1.1\r\nhost: m\r\ncontent-length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405 ")


async def test_without_prometheus_client_the_error_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--metrics-bind without prometheus_client fails at startup, naming the extra."""
    monkeypatch.setattr(metrics_server, "available", False)
    config = Config(
        app=hello_app, bind=["127.0.0.1:0"], workers=0, metrics_bind=f"unix:{tmp_path}/m.sock"
    )
    with pytest.raises(ConfigError, match=r"pip install 'trioserve\[metrics\]'"):
        await serve(config)


async def test_connections_are_counted_with_connection_hooks(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """With connection_made set, connections are still counted as open and accepted."""
    sock = tmp_path / "metrics.sock"
    made: list[object] = []
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        metrics_bind=f"unix:{sock}",
        connection_made=lambda conn, exc=None: made.append(conn),
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            assert b"Hello, world!" in await stream.receive_some()
            assert await metric(sock, "trioserve_connections_open", kind="http") == 1
    assert len(made) == 1
    assert await metric(sock, "trioserve_connections_total", kind="http") == 1


async def test_an_http_connection_counts_as_open_while_it_lasts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Without connection hooks (the accept loop counts), a keep-alive connection counts
    as open and accepted while it lasts (its close: see tests/integration/test_accept.py)."""
    sock = tmp_path / "metrics.sock"
    config = Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, metrics_bind=f"unix:{sock}")
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            for _ in range(2):
                await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                assert b"Hello, world!" in await stream.receive_some()
            assert await metric(sock, "trioserve_connections_open", kind="http") == 1
    assert await metric(sock, "trioserve_connections_total", kind="http") == 1
    assert await metric(sock, "trioserve_requests_total", status="2xx") == 2


async def test_http2_requests_are_counted(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Requests over HTTP/2 (prior knowledge) count as requests of their connection."""
    pytest.importorskip("h2", reason="HTTP/2 needs the http2 extra: pip install 'trioserve[http2]'")
    sock = tmp_path / "metrics.sock"
    config = Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, metrics_bind=f"unix:{sock}")
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        for _ in range(3):
            response = await client.get(f"http://{host}:{port}/")
            assert response.http_version == "HTTP/2"
    assert await metric(sock, "trioserve_requests_total", method="GET", status="2xx") == 3
    assert await metric(sock, "trioserve_connections_total", kind="http") == 1


async def test_access_log_and_metrics_both_see_each_request(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With an access log and --metrics-bind both on, each request gets its log line and
    is counted, once each (the exchange tells both)."""
    caplog.set_level(logging.INFO, "trioserve.access")
    sock = tmp_path / "metrics.sock"
    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        lifespan="off",
        metrics_bind=f"unix:{sock}",
        access_log="-",
        access_log_format="%(m)s %(U)s %(s)s",
    )
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        for path in ("/a", "/b"):
            assert (await client.get(path)).status_code == 200
        assert (await client.delete("/c")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
    assert lines == ["GET /a 200", "GET /b 200", "DELETE /c 200"]
    assert await metric(sock, "trioserve_requests_total", method="GET", status="2xx") == 2
    assert await metric(sock, "trioserve_requests_total", method="DELETE", status="2xx") == 1
    assert await metric(sock, "trioserve_request_duration_seconds_count") == 3


async def test_a_response_written_at_once_is_timed_by_its_own_clock_reading(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A response serialized whole and written out at once ends at the time read for
    its Date line (no second clock reading per request); one whose write had to wait
    for the client ends when the exchange reads the clock after it."""
    # The exchange's clock says 1000.0 whenever it is read; the response's says 1000.25.
    # So each request that takes the response's reading lasts 0.25 s, and one for
    # which the exchange reads its own clock again lasts 0.0 s.
    exchange_reads = [0]

    def exchange_clock() -> float:
        exchange_reads[0] += 1
        return 1000.0

    monkeypatch.setattr(exchange_module, "_wall_clock", exchange_clock)
    monkeypatch.setattr(http_module, "_time", lambda: 1000.25)
    big = b"x" * (32 * 1024 * 1024)  # more than the loopback socket buffers hold

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = big if scope["path"] == "/big" else b"Hello, world!"
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    sock = tmp_path / "metrics.sock"
    config = Config(
        app=app, bind=["127.0.0.1:0"], workers=0, lifespan="off", metrics_bind=f"unix:{sock}"
    )
    [(host, port)] = await nursery.start(serve, config)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        for _ in range(3):
            assert (await client.get("/")).status_code == 200
        assert exchange_reads[0] == 3  # as each request began, and no more
        assert await metric(sock, "trioserve_request_duration_seconds_sum") == 0.75
        response = await client.get("/big")
        assert response.status_code == 200 and len(response.content) == len(big)
    assert exchange_reads[0] == 5  # as it began, and as its waiting write ended
    assert await metric(sock, "trioserve_request_duration_seconds_sum") == 0.75
    assert await metric(sock, "trioserve_request_duration_seconds_count") == 4

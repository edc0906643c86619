"""A stop's deadline holds for a WSGI app blocked in its thread (the real CLI)."""

from __future__ import annotations

import signal

import pytest
import trio

from tests.process.test_cli import APPS, serving


@pytest.mark.parametrize("workers", ["0", "1"])
async def test_graceful_timeout_holds_for_a_wsgi_app_blocked_in_its_thread(workers: str) -> None:
    """SIGTERM with a request blocked in a WSGI thread: the process exits 0 once
    --graceful-timeout has passed (the thread is abandoned), not when the app returns."""
    async with serving(
        f"{APPS.replace('/', '.')}.blocked_wsgi:app",
        "-b",
        "127.0.0.1:0",
        "-w",
        workers,
        "--graceful-timeout",
        "1",
    ) as server:
        client = await trio.open_tcp_stream("127.0.0.1", server.port)
        await client.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await server.wait_for_line("app: request started")
        begin = trio.current_time()
        server.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            status = await server.wait()
        elapsed = trio.current_time() - begin
        await client.aclose()
    assert status == 0
    assert 0.9 <= elapsed < 6, elapsed
    assert any("graceful timeout reached" in line for line in server.lines), server.lines

"""--metrics-bind under the real CLI: the master's /metrics sums every worker, and keeps
the counts of a worker killed with SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.process.test_cli import APPS, TIMEOUT, serving
from tests.process.test_master import wait_until, workers
from trioserve.testing import ServerProcess

SCRAPE = b"GET /metrics HTTP/1.1\r\nhost: metrics\r\n\r\n"


async def scrape(path: Path, request: bytes = SCRAPE) -> bytes:
    """The raw response of the metrics listener at unix socket ``path``."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    return data


async def metric(path: Path, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    head, _, body = (await scrape(path)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def get(server: ServerProcess, count: int) -> None:
    """``count`` requests, each on a connection of its own (so both workers get some)."""
    for _ in range(count):
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            assert (await client.get("/")).status_code == 200


async def wait_for_requests(path: Path, expected: int) -> None:
    """Until /metrics counts ``expected`` requests (the workers report twice a second)."""
    with trio.move_on_after(TIMEOUT):
        # The workers' reports have no event to wait on from here: poll, bounded.
        while await metric(path, "trioserve_requests_total") != expected:  # noqa: ASYNC110
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {TIMEOUT}s: {expected} requests counted")


async def test_master_sums_two_workers_and_keeps_a_killed_workers_counts(tmp_path: Path) -> None:
    """N requests over two workers count N; after one worker is killed with SIGKILL and
    replaced, M more count N+M, and the restart is counted as a crash."""
    sock = tmp_path / "metrics.sock"
    args = ("--app-dir", APPS, "pid_app:app", "-b", "127.0.0.1:0", "-w", "2")
    async with serving(*args, "--metrics-bind", f"unix:{sock}") as server:
        await get(server, 12)
        await wait_for_requests(sock, 12)
        assert await metric(sock, "trioserve_workers") == 2
        assert await metric(sock, "trioserve_worker_resident_memory_bytes") > 0
        before = workers(server.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        await wait_until(
            lambda: len(workers(server.pid) - before) == 1 and victim not in workers(server.pid),
            "the killed worker replaced",
        )
        await server.wait_for_line("ready", timeout=TIMEOUT)
        await get(server, 5)
        await wait_for_requests(sock, 17)
        assert await metric(sock, "trioserve_worker_restarts_total", cause="crash") == 1
        assert await metric(sock, "trioserve_request_duration_seconds_count") == 17
        head = (await scrape(sock, b"GET /other HTTP/1.1\r\nhost: m\r\n\r\n")).split(b"\r\n")[0]
        assert head == b"HTTP/1.1 404 "


async def keep_alive_load(server: ServerProcess, clients: int, each: int) -> None:
    """``clients`` concurrent keep-alive clients sending ``each`` requests apiece, as a
    load tool does (every response checked)."""

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            for _ in range(each):
                assert (await client.get("/")).status_code == 200

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client_loop)


async def test_requests_total_sums_to_what_a_keep_alive_load_sent(tmp_path: Path) -> None:
    """Concurrent keep-alive clients over two workers: the sum of requests_total, and
    the histogram's count, equal the requests the clients completed, exactly."""
    sock = tmp_path / "metrics.sock"
    args = ("--app-dir", APPS, "pid_app:app", "-b", "127.0.0.1:0", "-w", "2")
    async with serving(*args, "--metrics-bind", f"unix:{sock}") as server:
        await keep_alive_load(server, clients=8, each=40)
        await wait_for_requests(sock, 320)
        assert await metric(sock, "trioserve_requests_total", method="GET", status="2xx") == 320
        assert await metric(sock, "trioserve_request_duration_seconds_count") == 320


async def test_restarts_are_counted_by_cause(tmp_path: Path) -> None:
    """A worker retiring after --max-requests counts as max_requests, SIGHUP's rolling
    restart as reload (one per worker), and no count is lost across either."""
    sock = tmp_path / "metrics.sock"
    args = ("--app-dir", APPS, "pid_app:app", "-b", "127.0.0.1:0", "-w", "1")
    limits = ("--max-requests", "3", "--max-requests-jitter", "0")
    async with serving(*args, *limits, "--metrics-bind", f"unix:{sock}") as server:
        await get(server, 3)
        await server.wait_for_line("retiring", timeout=TIMEOUT)
        await server.wait_for_line("ready", timeout=TIMEOUT)
        assert await metric(sock, "trioserve_worker_restarts_total", cause="max_requests") == 1
        await get(server, 2)
        server.send_signal(signal.SIGHUP)
        await server.wait_for_line("reloaded", timeout=TIMEOUT)
        await wait_for_requests(sock, 5)
        assert await metric(sock, "trioserve_worker_restarts_total", cause="reload") == 1
        assert await metric(sock, "trioserve_worker_restarts_total", cause="crash") == 0


async def test_a_stuck_worker_counts_as_timeout_not_crash(tmp_path: Path) -> None:
    """A worker aborted for --timeout is counted as a timeout restart, not a crash."""
    sock = tmp_path / "metrics.sock"
    args = ("--app-dir", APPS, "pid_app:app", "-b", "127.0.0.1:0", "-w", "1", "--timeout", "1")
    async with serving(*args, "--metrics-bind", f"unix:{sock}") as server:
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET /stuck HTTP/1.1\r\nhost: test\r\n\r\n")
            await server.wait_for_line("sent no heartbeat for ", timeout=TIMEOUT)
            await server.wait_for_line("booting worker 0 (pid ", timeout=TIMEOUT)
        assert await metric(sock, "trioserve_worker_restarts_total", cause="timeout") == 1
        assert await metric(sock, "trioserve_worker_restarts_total", cause="crash") == 0

"""Retiring workers under keep-alive load: no request fails across HUP, --max-requests,
TTOU and a USR2 hand-over.

Each client keeps one connection alive and sends GET / on it in a loop, and never
retries: a reset, or a connection closed before the response, is a failed request. A
retiring worker must answer the next request of each of its kept-alive connections with
``Connection: close`` (the client then opens a new connection, which a new worker
accepts), and close only connections that stayed silent.

``TRIOSERVE_TEST_DRAIN_SECONDS`` sets how long each scenario keeps the load on (3 by
default; docs/signals.md gives the figures of a 10 s run).
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from collections.abc import Awaitable, Callable

import h11
import trio

from tests.process.test_cli import TIMEOUT, serving
from tests.process.test_master import PID_APP, alive, wait_for_line_from, wait_until, workers
from trioserve.testing import ServerProcess

CLIENTS = 50
SECONDS = float(os.environ.get("TRIOSERVE_TEST_DRAIN_SECONDS", "3"))
# Longer than any drain under load; the keep-alive deadline is what bounds a drain.
ARGS = ("--graceful-timeout", "10", "--keep-alive", "5")
# One request: far less than the time a worker takes to boot, so a stall is a failure.
REQUEST_TIMEOUT = 5.0
# A client closes its connection itself after this many requests, as a connection pool
# does now and then: connections move to the workers started meanwhile.
REQUESTS_PER_CONNECTION = 100


class KeepAliveLoad:
    """``CLIENTS`` clients, each sending GET / to ``pid_app`` over one kept-alive
    connection until told to stop; a new connection after ``Connection: close``, after
    REQUESTS_PER_CONNECTION requests, or after a failure (counted, never retried)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered: Counter[int] = Counter()  # pid -> requests it answered
        self.closed_by_server = 0  # answers that carried Connection: close
        self.failures: Counter[str] = Counter()
        self.stopped = False
        self._progress = trio.Event()

    @property
    def total(self) -> int:
        return sum(self.answered.values())

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(CLIENTS):
                nursery.start_soon(self._client)

    async def _client(self) -> None:
        while not self.stopped:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError as exc:
                self.failures[f"connect: {exc.strerror}"] += 1
                await trio.sleep(0.1)  # (refused at once: do not spin)
                continue
            async with stream:
                await self._requests(stream)

    async def _requests(self, stream: trio.SocketStream) -> None:
        """Requests on one connection until it must be closed."""
        conn = h11.Connection(h11.CLIENT)
        for _ in range(REQUESTS_PER_CONNECTION):
            if self.stopped:
                return
            request = h11.Request(method="GET", target="/", headers=[("host", "drain")])
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
                    body = await self._response(stream, conn)
            except trio.TooSlowError:
                self.failures["no answer in time"] += 1
                return
            except (OSError, trio.BrokenResourceError) as exc:
                cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
                self.failures[type(cause).__name__] += 1
                return
            except h11.RemoteProtocolError:  # (h11's word for an end of input too early)
                self.failures["closed before the response"] += 1
                return
            self.answered[int(body.split()[0])] += 1
            self._progress.set()
            self._progress = trio.Event()
            if conn.our_state is h11.MUST_CLOSE:
                self.closed_by_server += 1
                return
            conn.start_next_cycle()

    async def _response(self, stream: trio.SocketStream, conn: h11.Connection) -> bytes:
        body = b""
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                assert isinstance(event, h11.EndOfMessage), event
                assert status == 200, (status, body)
                return body

    async def answered_by_others(self, pids: set[int], count: int) -> None:
        """Wait until ``count`` more requests were answered by processes not in ``pids``."""
        target = self._others(pids) + count
        with trio.fail_after(TIMEOUT):
            while self._others(pids) < target:
                await self._progress.wait()

    def _others(self, pids: set[int]) -> int:
        return sum(n for pid, n in self.answered.items() if pid not in pids)

    def report(self, what: str) -> str:
        return (
            f"{what}: {self.total} requests on {CLIENTS} kept-alive"
            f" connections, {self.closed_by_server} ended by Connection: close,"
            f" failed: {sum(self.failures.values())} {dict(self.failures)}"
        )


async def _under_load(
    server: ServerProcess, scenario: str, step: Callable[[KeepAliveLoad], Awaitable[None]]
) -> None:
    """Keep the load on for SECONDS while ``step(load)`` retires workers again and again;
    then no request may have failed."""
    load = KeepAliveLoad(server.port)
    events = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run)
        await load.answered_by_others(set(), 100)
        end = trio.current_time() + SECONDS
        while trio.current_time() < end or events < 2:
            await step(load)
            events += 1
        load.stopped = True
    report = load.report(f"{scenario} x{events} in {SECONDS:g}s")
    print(report)
    assert not load.failures, report
    # (Retiring workers did answer kept-alive connections with Connection: close.)
    assert load.closed_by_server > 0, report
    assert await server.stop() == 0


async def test_hup_fails_no_request_on_kept_alive_connections() -> None:
    """Rolling restarts (HUP) under keep-alive load from clients that never retry: every
    request is answered."""
    async with serving(*PID_APP, "--workers", "2", *ARGS) as server:
        master = server.pid

        async def reload(load: KeepAliveLoad) -> None:
            old = workers(master)
            server.send_signal(signal.SIGHUP)
            await server.wait_for_line("reloaded: 2 new workers ready")
            await wait_until(lambda: not workers(master) & old, "the old workers end")
            await load.answered_by_others(old, 100)

        await _under_load(server, "HUP", reload)


async def test_max_requests_fails_no_request_on_kept_alive_connections() -> None:
    """Workers recycled by --max-requests under keep-alive load: every request is
    answered."""
    args = ("--workers", "2", "--max-requests", "2000", "--max-requests-jitter", "0")
    async with serving(*PID_APP, *args, *ARGS) as server:
        master = server.pid

        async def retirement(load: KeepAliveLoad) -> None:
            old = workers(master)
            await wait_until(lambda: bool(old - workers(master)), "a worker retires")
            await load.answered_by_others(old, 100)

        await _under_load(server, "--max-requests 2000", retirement)


async def test_ttou_fails_no_request_on_kept_alive_connections() -> None:
    """A worker removed with TTOU (and added back with TTIN) under keep-alive load: every
    request is answered."""
    async with serving(*PID_APP, "--workers", "2", *ARGS) as server:
        master = server.pid

        async def fewer_then_more(load: KeepAliveLoad) -> None:
            old = workers(master)
            server.send_signal(signal.SIGTTOU)
            await server.wait_for_line("workers: 2 -> 1")
            await wait_until(lambda: len(workers(master)) == 1, "one worker")
            server.send_signal(signal.SIGTTIN)
            await server.wait_for_line("workers: 1 -> 2")
            await wait_until(lambda: len(workers(master)) == 2, "two workers")
            await load.answered_by_others(old, 100)

        await _under_load(server, "TTOU", fewer_then_more)


async def test_usr2_handover_fails_no_request_on_kept_alive_connections() -> None:
    """A USR2 hand-over under keep-alive load (a new master, then TERM to the old one,
    whose workers drain): every request is answered."""
    async with serving(*PID_APP, "--workers", "2", *ARGS) as server:
        old_master = server.pid
        new_master = 0
        load = KeepAliveLoad(server.port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.run)
                await load.answered_by_others(set(), 100)
                old = workers(old_master)
                server.send_signal(signal.SIGUSR2)
                line = await server.wait_for_line("SIGUSR2: started a new master (pid ")
                match = re.search(r"new master \(pid (\d+)\)", line)
                assert match is not None, line
                new_master = int(match[1])
                await wait_for_line_from(server, new_master, "worker(s) ready")
                server.send_signal(signal.SIGTERM)
                # Not its output too: the new master holds it open.
                assert await server.wait(timeout=TIMEOUT, output=False) == 0
                await load.answered_by_others(old, 100)
                load.stopped = True
            report = load.report("USR2, then TERM to the old master")
            print(report)
            assert not load.failures, report
            assert load.closed_by_server > 0, report
        finally:
            if new_master and alive(new_master):
                os.kill(new_master, signal.SIGTERM)
                with trio.CancelScope(shield=True):
                    await wait_until(lambda: not alive(new_master), "the new master ends")

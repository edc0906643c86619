"""Recycling workers by memory and by lifetime under the real CLI, with clients sending
requests the whole time: no request fails, the worker's pid changes, the log says why.

The master samples every 0.1 s here instead of every second (the tests' variable
``TRIOSERVE_TEST_RECYCLE_SECONDS``), so each test takes a few seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import trio

from tests.process.test_cli import APPS, TIMEOUT, serving
from tests.process.test_master import PID_APP, QUICK, Load, wait_until, workers
from trioserve._recycle import PERIOD_ENV

FAST_SAMPLES = {PERIOD_ENV: "0.1"}
# Hooks in gunicorn's form (no exc): they print why each worker exits, in one write(2).
HOOKS = """\
import os


def child_exit(server, worker):
    os.write(2, f"HOOK child_exit pid {worker.pid} reason {worker.exit_reason}\\n".encode())


def worker_exit(server, worker):
    os.write(2, f"HOOK worker_exit pid {worker.pid} reason {worker.exit_reason}\\n".encode())
"""
LIMIT_MIB = 100  # a fresh worker of leak_app holds about 35 MiB; five leaks add 100 MiB
BOOTED = re.compile(r"booting worker \d+ \(pid (\d+)\)")


async def test_a_leaking_worker_is_replaced_without_a_failed_request(tmp_path: Path) -> None:
    """A worker over --max-worker-memory for 3 samples is replaced while two clients keep
    sending requests: none fails, the pid changes, the log line gives the figures, and
    both child_exit (master) and worker_exit (worker) see exit_reason "memory"."""
    conf = tmp_path / "conf.py"
    conf.write_text(HOOKS)
    args = ("--app-dir", APPS, "leak_app:app", "-b", "127.0.0.1:0", "-c", str(conf))
    limit = ("--max-worker-memory", str(LIMIT_MIB))
    async with serving(*args, "--workers", "1", *limit, *QUICK, env=FAST_SAMPLES) as server:
        master = server.pid
        (old,) = workers(master)
        load = Load(server.url)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.run, 2)
            await load.answered_by({old}, 5)
            async with httpx.AsyncClient(timeout=5) as client:
                for _ in range(5):
                    response = await client.get(server.url + "/leak")
                    assert response.text.split()[0] == str(old)
            line = await server.wait_for_line("--max-worker-memory", timeout=TIMEOUT)
            await wait_until(lambda: workers(master) - {old} != set(), "a new worker")
            await wait_until(lambda: old not in workers(master), "the leaking worker ends")
            new = workers(master)
            assert len(new) == 1
            await load.answered_by(new, 10)
            load.stopped = True
        assert load.failures == []
        assert await server.stop() == 0
    pattern = (
        rf"worker 0 \(pid {old}\) uses (\d+) MiB > --max-worker-memory {LIMIT_MIB} MiB "
        r"for 3 samples; replacing"
    )
    match = re.search(pattern, line)
    assert match is not None and int(match[1]) > LIMIT_MIB, line
    assert f"HOOK worker_exit pid {old} reason memory" in server.lines
    assert f"HOOK child_exit pid {old} reason memory" in server.lines


async def test_lifetime_replaces_workers_one_after_another_without_a_failed_request() -> None:
    """Two workers with --max-worker-lifetime 5 and a jitter of 1 s are both replaced
    while clients keep sending requests: none fails, and the second is recycled only
    after the first one's replacement is ready (never both at once)."""
    lifetime = ("--max-worker-lifetime", "5", "--max-worker-lifetime-jitter", "1")
    async with serving(*PID_APP, "--workers", "2", *lifetime, *QUICK, env=FAST_SAMPLES) as server:
        master = server.pid
        old = workers(master)
        assert len(old) == 2
        load = Load(server.url)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.run, 2)
            await load.answered_by(old, 5)
            await wait_until(lambda: not workers(master) & old, "both first workers replaced")
            await load.answered_by(workers(master) - old, 10)
            load.stopped = True
        assert load.failures == []
        assert await server.stop() == 0
    lines = server.lines
    recycled = [
        (index, pid)
        for index, line in enumerate(lines)
        for pid in old
        if f"(pid {pid}) reached --max-worker-lifetime at " in line
    ]
    assert len(recycled) == 2, lines
    (first_at, _), (second_at, _) = sorted(recycled)
    assert re.search(r"at \d+\.\ds old \(5s \+ \d\.\ds jitter\); replacing$", lines[first_at])
    # The first one's replacement: the next worker booted after that line, then ready.
    successor = next(m[1] for m in map(BOOTED.search, lines[first_at:]) if m is not None)
    ready_at = next(i for i, line in enumerate(lines) if f"(pid {successor}) ready" in line)
    assert first_at < ready_at < second_at, lines

"""The pre-fork master under the real CLI: worker supervision, signals and exit codes.

Worker processes are the master's children as ``trioserve.testing.child_processes``
finds them; the test app ``pid_app`` says which process and worker id answered.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.process.test_cli import APPS, TIMEOUT, run_cli, serving
from trioserve.testing import ServerProcess, child_processes

PID_APP = ("--app-dir", APPS, "pid_app:app", "-b", "127.0.0.1:0")
# Stops are quick: the apps have no slow requests, idle connections close at once.
QUICK = ("--graceful-timeout", "1")
BOOTED = re.compile(r"booting worker (\d+) \(pid (\d+)\)")
IMPORTED = re.compile(r"pid_app: imported in pid (\d+) with TRIOSERVE_WORKER_ID=(\S+)")


# -- processes --------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid`` from /proc, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its end.
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    return state, int(ppid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def workers(master: int) -> set[int]:
    """The worker pids of ``master``: its children that are not a new master (USR2)."""
    return {pid for pid, title in child_processes(master).items() if "master" not in title}


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` for up to TIMEOUT seconds (process state in /proc)."""
    with trio.move_on_after(TIMEOUT):
        while not condition():  # noqa: ASYNC110 - /proc state has no event to wait on
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {TIMEOUT}s: {what}")


def booted(server: ServerProcess) -> dict[int, int]:
    """pid -> worker slot, from the master's ``booting worker N (pid P)`` lines so far."""
    return {
        int(match[2]): int(match[1])
        for line in server.lines
        if (match := BOOTED.search(line)) is not None
    }


async def wait_ready(server: ServerProcess, pid: int) -> None:
    """Wait for the line saying that the worker with ``pid`` is ready."""
    with trio.fail_after(TIMEOUT):
        while "ready" not in await server.wait_for_line(f"(pid {pid})"):
            pass


async def wait_for_line_from(server: ServerProcess, pid: int, needle: str) -> None:
    """Wait for a line with ``needle`` logged by process ``pid`` (several log to stderr)."""
    with trio.fail_after(TIMEOUT):
        while f"[{pid}]" not in await server.wait_for_line(needle):
            pass


# -- clients ----------------------------------------------------------------------------


def _client() -> httpx.AsyncClient:
    # One fresh connection per request ("Connection: close"). A kept-alive connection
    # that a retiring worker closes while idle races with the client's next request
    # (RFC 9112 9.3.1: clients retry such requests); that race is HTTP/1.1's, not the
    # master's. A new connection per request pins what the master promises: every
    # connection made to the listening socket is accepted and answered by some worker.
    return httpx.AsyncClient(timeout=5, headers={"connection": "close"})


async def get_pid(client: httpx.AsyncClient, url: str) -> tuple[int, str]:
    """GET / from ``pid_app``: (pid of the process that answered, its worker id)."""
    response = await client.get(url + "/")
    assert response.status_code == 200, response
    pid, worker_id = response.text.split()
    return int(pid), worker_id


class Load:
    """Clients sending GET / to ``pid_app`` in a loop until stopped; they record every
    answer and every failure (a refused connection, a connection closed early)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pids: list[int] = []
        self.failures: list[str] = []
        self.stopped = False
        self._progress = trio.Event()

    async def run(self, clients: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(self._one_client)

    async def _one_client(self) -> None:
        async with _client() as client:
            while not self.stopped:
                try:
                    response = await client.get(self.url + "/")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                else:
                    if response.status_code == 200:
                        self.pids.append(int(response.text.split()[0]))
                    else:
                        self.failures.append(f"status {response.status_code}: {response.text!r}")
                self._progress.set()
                self._progress = trio.Event()

    async def answered_by(self, pids: set[int], count: int) -> None:
        """Wait until ``count`` more requests were answered by a process in ``pids``."""
        target = self._count(pids) + count
        with trio.fail_after(TIMEOUT):
            while self._count(pids) < target:
                assert not self.failures, self.failures
                await self._progress.wait()

    def _count(self, pids: set[int]) -> int:
        return sum(pid in pids for pid in self.pids)


# -- supervision ------------------------------------------------------------------------


async def test_killed_worker_is_replaced_within_a_second() -> None:
    """A worker killed with SIGKILL is replaced at once; the server answers throughout."""
    async with serving(*PID_APP, "--workers", "2", *QUICK) as server, _client() as client:
        master = server.pid
        before = workers(master)
        assert len(before) == 2, child_processes(master)
        victim = min(before)
        slot = booted(server)[victim]
        os.kill(victim, signal.SIGKILL)
        # The other worker answers while the victim's slot is empty.
        pid, _ = await get_pid(client, server.url)
        assert pid in before - {victim}
        # Replaced within a second: the master reaps it and starts its successor.
        with trio.fail_after(1):
            line = await server.wait_for_line(f"booting worker {slot} (pid ")
        match = BOOTED.search(line)
        assert match is not None, line
        successor = int(match[2])
        await wait_ready(server, successor)
        assert workers(master) == before - {victim} | {successor}
        for _ in range(5):
            await get_pid(client, server.url)
        assert await server.stop() == 0
    assert any(f"(pid {victim}) was killed by SIGKILL; replacing it" in x for x in server.lines)


async def test_stuck_worker_is_dumped_aborted_and_replaced() -> None:
    """A worker whose loop is stuck past --timeout has its stack logged and is replaced."""
    async with (
        serving(*PID_APP, "--workers", "1", "--timeout", "1", *QUICK) as server,
        _client() as client,
    ):
        stuck_pid, _ = await get_pid(client, server.url)
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET /stuck HTTP/1.1\r\nhost: test\r\n\r\n")
            await server.wait_for_line(f"(pid {stuck_pid}) sent no heartbeat for ")
            # faulthandler's dump of the stuck loop names the app's file and function.
            line = await server.wait_for_line("pid_app.py")
            assert "in stuck_forever" in line
            line = await server.wait_for_line("booting worker 0 (pid ")
            match = BOOTED.search(line)
            assert match is not None, line
            successor = int(match[2])
            await wait_ready(server, successor)
            # The stuck request's connection ends without an answer.
            with trio.fail_after(TIMEOUT):
                assert await stream.receive_some() == b""
        assert await get_pid(client, server.url) == (successor, "0")
        assert not alive(stuck_pid)
        assert await server.stop() == 0


async def test_sigkill_of_the_master_leaves_no_worker() -> None:
    """Workers whose master was killed with SIGKILL stop by themselves."""
    async with serving(*PID_APP, "--workers", "2", *QUICK) as server:
        pids = workers(server.pid)
        assert len(pids) == 2
        server.send_signal(signal.SIGKILL)
        await server.wait(timeout=TIMEOUT, output=False)
        await wait_until(lambda: not any(alive(pid) for pid in pids), f"workers {pids} end")


async def test_worker_ids_are_stable_per_slot() -> None:
    """Two workers see TRIOSERVE_WORKER_ID 0 and 1; a replaced worker keeps its id."""
    async with serving(*PID_APP, "--workers", "2", *QUICK) as server, _client() as client:
        # pid_app prints what it sees in os.environ when imported (the master imports the
        # app too, to fail early: that one is not a worker).
        master = server.pid
        imports = [m for line in server.lines if (m := IMPORTED.search(line))]
        seen = {int(m[1]): m[2] for m in imports if int(m[1]) != master}
        assert sorted(seen.values()) == ["0", "1"], server.lines
        assert workers(master) == set(seen)
        pid, worker_id = await get_pid(client, server.url)
        assert seen[pid] == worker_id
        victim = next(pid for pid, worker_id in seen.items() if worker_id == "1")
        os.kill(victim, signal.SIGKILL)
        match = IMPORTED.search(await server.wait_for_line("pid_app: imported in pid"))
        assert match is not None
        assert int(match[1]) != victim
        assert match[2] == "1"
        assert await server.stop() == 0


async def test_max_requests_recycles_without_a_failed_request() -> None:
    """--max-requests replaces a worker that served its share; no request fails meanwhile."""
    args = ("--workers", "1", "--max-requests", "20", *QUICK)
    async with serving(*PID_APP, *args) as server, _client() as client:
        pids: list[int] = []
        # Sequential requests, past 100 until a successor answered: a worker retires at
        # its next heartbeat and serves until its successor is ready, then it is TERMed
        # while requests keep coming.
        with trio.fail_after(TIMEOUT):
            while len(pids) < 100 or len(set(pids)) < 2:
                pids.append((await get_pid(client, server.url))[0])
        assert await server.stop() == 0
    assert any("(max_requests): retiring" in line for line in server.lines), server.lines


async def test_workers_0_serves_in_the_master_process() -> None:
    """--workers 0 serves in the trioserve process itself: no child process."""
    async with serving(*PID_APP, "--workers", "0", *QUICK) as server, _client() as client:
        assert child_processes(server.pid) == {}
        assert await get_pid(client, server.url) == (server.pid, "-")
        assert await server.stop() == 0


@pytest.mark.parametrize(
    ("app", "code", "reason"),
    [
        pytest.param(("--app-dir", APPS, "failing_lifespan:app"), 3, "database down", id="boot"),
        pytest.param(("no_such_module_xyz:app",), 4, "'no_such_module_xyz'", id="import"),
    ],
)
async def test_worker_boot_failure_halts_the_master(
    app: tuple[str, ...], code: int, reason: str
) -> None:
    """A worker failing at boot halts the master: exit 3 or 4, its reason on the last line."""
    status, _, err = await run_cli(*app, "-b", "127.0.0.1:0", "--workers", "2", *QUICK)
    assert status == code, err
    last = err.splitlines()[-1]
    assert last.startswith("trioserve: error: "), err
    assert reason in last, err


# -- signals ----------------------------------------------------------------------------


async def test_hup_rolling_restart_loses_no_request() -> None:
    """SIGHUP replaces every worker while clients keep getting answers."""
    async with serving(*PID_APP, "--workers", "2", *QUICK) as server:
        master = server.pid
        old = workers(master)
        assert len(old) == 2
        load = Load(server.url)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load.run, 2)
            await load.answered_by(old, 10)
            server.send_signal(signal.SIGHUP)
            await server.wait_for_line("reloaded: 2 new workers ready")
            await wait_until(lambda: not workers(master) & old, "the old workers end")
            new = workers(master)
            assert len(new) == 2
            await load.answered_by(new, 10)
            load.stopped = True
        assert load.failures == []
        assert await server.stop() == 0
    assert any("SIGHUP received: reloading" in line for line in server.lines)


async def test_ttin_ttou_change_the_worker_count(tmp_path: Path) -> None:
    """SIGTTIN/SIGTTOU add/remove a worker process and call nworkers_changed."""
    conf = tmp_path / "conf.py"
    conf.write_text(
        "import os\n\n\n"
        "def nworkers_changed(server, new_value, old_value, *, exc=None):\n"
        "    # One write(2): the line must not interleave with the workers' lines.\n"
        '    os.write(2, f"HOOK nworkers_changed {old_value} -> {new_value}\\n".encode())\n'
    )
    async with serving("-c", str(conf), *PID_APP, "--workers", "1", *QUICK) as server:
        master = server.pid
        assert "HOOK nworkers_changed None -> 1" in server.lines
        assert len(workers(master)) == 1
        server.send_signal(signal.SIGTTIN)
        await server.wait_for_line("workers: 1 -> 2")
        await server.wait_for_line("HOOK nworkers_changed 1 -> 2")
        await wait_until(lambda: len(workers(master)) == 2, "two workers")
        server.send_signal(signal.SIGTTOU)
        await server.wait_for_line("workers: 2 -> 1")
        await server.wait_for_line("HOOK nworkers_changed 2 -> 1")
        await wait_until(lambda: len(workers(master)) == 1, "one worker")
        assert await server.stop() == 0


async def test_usr2_hands_the_sockets_to_a_new_master() -> None:
    """SIGUSR2 starts a new master on the same sockets; the handover refuses no connection."""
    async with serving(*PID_APP, "--workers", "1", *QUICK) as server:
        old_master = server.pid
        old_workers = workers(old_master)
        new_master = 0
        load = Load(server.url)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.run, 2)
                await load.answered_by(old_workers, 5)
                server.send_signal(signal.SIGUSR2)
                line = await server.wait_for_line("SIGUSR2: started a new master (pid ")
                match = re.search(r"new master \(pid (\d+)\)", line)
                assert match is not None, line
                new_master = int(match[1])
                assert new_master in child_processes(old_master)
                # It logs to the same stderr; its lines carry its pid.
                await wait_for_line_from(server, new_master, "listening on ")
                new_workers = workers(new_master)
                assert len(new_workers) == 1
                server.send_signal(signal.SIGTERM)
                # Not its output too: the new master holds it open.
                assert await server.wait(timeout=TIMEOUT, output=False) == 0
                await load.answered_by(new_workers, 10)
                load.stopped = True
            assert load.failures == []
            assert alive(new_master)
            os.kill(new_master, signal.SIGTERM)
            await wait_for_line_from(server, new_master, "SIGTERM received")
            await wait_until(lambda: not alive(new_master), "the new master ends")
            await wait_until(lambda: not any(map(alive, new_workers)), "its workers end")
        finally:
            if new_master and alive(new_master):
                os.kill(new_master, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await wait_until(lambda: not alive(new_master), "the new master is killed")

"""The master's other ways of running apps, under the real CLI: MultiApp, --preload,
--reuse-port, --reload, and the server hooks in the master and in the workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import httpx
import trio

from tests.process.test_cli import (
    APPS,
    READY,
    ROOT,
    TIMEOUT,
    TRIOSERVE,
    environment,
    run_cli,
    serving,
)
from tests.process.test_master import wait_until
from trioserve.testing import child_processes

PID_APP = ("--app-dir", APPS, "pid_app:app", "-b", "127.0.0.1:0", "--graceful-timeout", "1")
IMPORTED = re.compile(r"pid_app: imported in pid (\d+) with TRIOSERVE_WORKER_ID=(\S+)")


async def get(url: str) -> str:
    async with httpx.AsyncClient(timeout=5, headers={"connection": "close"}) as client:
        response = await client.get(url + "/")
    assert response.status_code == 200
    return response.text


async def test_multi_example_serves_http_and_tcp_with_a_ready_line_each() -> None:
    """examples.multi:site serves the web app and the echo server, each on its own bind."""
    args = ["examples.multi:site", "--web-bind", "127.0.0.1:0", "--echo-bind", "127.0.0.1:0"]
    async with serving(*args, "--graceful-timeout", "1") as server:
        second = READY.search(await server.wait_for_line("listening on "))
        assert second is not None
        urls = {server.url, second["url"]}
        http = next(url for url in urls if url.startswith("http://"))
        tcp = next(url for url in urls if url.startswith("tcp://"))
        assert await get(http) == "Hello, world!\n"
        port = int(tcp.rsplit(":", 1)[1])
        with trio.fail_after(TIMEOUT):
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(b"echo me")
                assert await stream.receive_some() == b"echo me"
        assert await server.stop(signal.SIGTERM) == 0
    assert any("booting web worker 0" in line for line in server.lines)
    assert any("booting echo worker 0" in line for line in server.lines)


async def test_preload_imports_the_app_once_and_forks_workers_from_the_preloader() -> None:
    """--preload: one import, in the preloader; the workers are its forked children."""
    async with serving(*PID_APP, "--preload", "--workers", "2") as server:
        # The master imports the target's module too (to see whether it names a
        # MultiApp), but builds and serves nothing from it.
        master = server.pid
        imports = [
            m for line in server.lines if (m := IMPORTED.search(line)) and int(m[1]) != master
        ]
        assert len(imports) == 1
        preloader = int(imports[0][1])
        assert imports[0][2] == "-"  # not a worker: no worker id
        assert len(child_processes(preloader)) == 2
        seen: set[str] = set()
        with trio.fail_after(TIMEOUT):
            while len(seen) < 2:
                pid, worker_id = (await get(server.url)).split()
                assert int(pid) in child_processes(preloader)
                seen.add(worker_id)
        assert seen == {"0", "1"}
        assert await server.stop(signal.SIGTERM) == 0
    await wait_until(lambda: not child_processes(preloader), "the preloaded workers exit")


async def test_reuse_port_workers_listen_on_their_own_sockets() -> None:
    """--reuse-port: each worker listens on its own socket for the same port; both serve."""
    async with serving(*PID_APP, "--reuse-port", "--workers", "2") as server:
        workers = set(child_processes(server.pid))
        assert len(workers) == 2
        for pid in workers:
            inodes = _listening_inodes(pid, server.port)
            assert len(inodes) == 1, (pid, inodes)
        first, second = (_listening_inodes(pid, server.port) for pid in workers)
        assert first != second
        # The master holds the port (bound) but does not listen: only workers accept.
        assert not _listening_inodes(server.pid, server.port)
        assert (await get(server.url)).split()[1] in {"0", "1"}
        assert await server.stop(signal.SIGTERM) == 0


def _listening_inodes(pid: int, port: int) -> set[str]:
    """Inodes of the sockets ``pid`` holds that listen (state 0A) on TCP ``port``."""
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            listening.add(fields[9])
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", str(target))
        if match:
            held.add(match[1])
    return listening & held


async def test_reload_restarts_workers_when_a_watched_file_changes(tmp_path: Path) -> None:
    """--reload: editing the app's file starts new workers that serve the new code."""
    app_file = tmp_path / "reloaded_app.py"
    app_file.write_text(_reloadable_app("one"))
    args = ["--app-dir", str(tmp_path), "reloaded_app:app", "-b", "127.0.0.1:0"]
    args += ["--reload", "--reload-dir", str(tmp_path), "--graceful-timeout", "1"]
    async with serving(*args) as server:
        assert await get(server.url) == "one"
        app_file.write_text(_reloadable_app("two"))
        await server.wait_for_line("reload: ")
        await server.wait_for_line("reloaded: 1 new workers ready")
        assert await get(server.url) == "two"
        assert await server.stop(signal.SIGTERM) == 0


def _reloadable_app(text: str) -> str:
    return textwrap.dedent(
        f"""
        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({{"type": "http.response.start", "status": 200, "headers": []}})
            await send({{"type": "http.response.body", "body": b"{text}"}})
        """
    )


HOOKS_CONFIG = """
import os


def _say(text):
    os.write(2, f"HOOK {text} in {os.getpid()}\\n".encode())


def on_starting(server, *, exc=None):
    _say(f"on_starting master={server.pid}")


def when_ready(server, *, exc=None):
    _say(f"when_ready workers={len(server.workers)}")


def pre_fork(server, worker, *, exc=None):
    _say(f"pre_fork {worker.id}")


async def post_fork(server, worker, *, exc=None):
    _say(f"post_fork {worker.id} master={server.pid}")


def post_worker_init(worker, *, exc=None):
    _say(f"post_worker_init {worker.id}")


def child_exit(server, worker, *, exc=None):
    _say(f"child_exit {worker.id} code={worker.exit_code} exc={type(exc).__name__}")


def worker_exit(server, worker, *, exc=None):
    _say(f"worker_exit {worker.id}")


def on_exit(server, *, exc=None):
    _say(f"on_exit exc={exc}")
"""


async def test_hooks_run_in_the_master_and_in_the_workers(tmp_path: Path) -> None:
    """Server hooks from a -c file run where docs/hooks.md says, in order, with exc."""
    config = tmp_path / "hooks.py"
    config.write_text(HOOKS_CONFIG)
    async with serving("-c", str(config), *PID_APP, "--workers", "1") as server:
        master = server.pid
        assert await server.stop(signal.SIGTERM) == 0
    hooks = [line.split("HOOK ", 1)[1] for line in server.lines if "HOOK " in line]
    worker = next(int(h.rsplit(" ", 1)[1]) for h in hooks if h.startswith("post_fork"))
    assert worker != master
    assert hooks == [
        f"on_starting master={master} in {master}",
        f"pre_fork 0 in {master}",
        f"post_fork 0 master={master} in {worker}",
        f"post_worker_init 0 in {worker}",
        f"when_ready workers=1 in {master}",
        f"worker_exit 0 in {worker}",
        f"child_exit 0 code=0 exc=NoneType in {master}",
        f"on_exit exc=None in {master}",
    ]


async def test_a_raising_boot_hook_halts_the_master_with_exit_3(tmp_path: Path) -> None:
    """post_fork raising in a worker is a boot failure: exit 3 naming the hook."""
    config = tmp_path / "hooks.py"
    config.write_text("def post_fork(server, worker, *, exc=None):\n    raise RuntimeError('no')\n")
    status, _, err = await run_cli("-c", str(config), *PID_APP, "--workers", "2")
    assert status == 3
    assert re.fullmatch(
        r"trioserve: error: worker [01] failed to boot: hook post_fork raised RuntimeError: no",
        err.splitlines()[-1],
    )


async def test_winch_stops_workers_hup_restarts_them_and_term_exits() -> None:
    """Detached from a terminal: WINCH stops the workers, HUP starts them, TERM exits 0."""
    async with serving(*PID_APP, "--workers", "2") as server:
        master = server.pid
        before = set(child_processes(master))
        server.send_signal(signal.SIGWINCH)
        await server.wait_for_line("all workers stopped (SIGWINCH)")
        await wait_until(lambda: not child_processes(master), "the workers exit after WINCH")
        server.send_signal(signal.SIGHUP)
        await wait_until(lambda: len(child_processes(master)) == 2, "HUP starts two workers again")
        assert not set(child_processes(master)) & before
        with trio.fail_after(TIMEOUT):
            while True:  # the new workers become ready in their own time
                try:
                    await get(server.url)
                    break
                except httpx.TransportError:
                    await trio.sleep(0.05)
        server.send_signal(signal.SIGWINCH)
        await server.wait_for_line("all workers stopped (SIGWINCH)")
        assert await server.stop(signal.SIGTERM) == 0


def write_partial_app(path: Path, first: bytes, then: str) -> None:
    """Write an app (``app`` in ``path``) that starts its body with ``first``, then runs
    the statement ``then``."""
    path.write_text(
        textwrap.dedent(
            f"""
            import trio

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                await send({{"type": "http.response.start", "status": 200, "headers": []}})
                await send({{"type": "http.response.body", "body": {first!r}, "more_body": True}})
                {then}
            """
        )
    )


async def test_second_term_turns_a_graceful_stop_into_a_fast_one(tmp_path: Path) -> None:
    """A request holding the drain open is cut short by a second TERM."""
    write_partial_app(tmp_path / "hanging_app.py", b"x", "await trio.sleep_forever()")
    args = ["--app-dir", str(tmp_path), "hanging_app:app", "-b", "127.0.0.1:0"]
    async with (
        serving(*args, "--graceful-timeout", "60") as server,
        httpx.AsyncClient(timeout=30) as client,
        client.stream("GET", server.url + "/") as response,
    ):
        assert response.status_code == 200
        server.send_signal(signal.SIGTERM)
        await server.wait_for_line("stopping: no new connections")
        with trio.fail_after(10):  # well inside the 60 s graceful timeout
            server.send_signal(signal.SIGTERM)
            assert await server.wait() == 0
    assert any("SIGTERM received again: stopping now" in line for line in server.lines)


async def test_raising_pre_fork_is_a_boot_failure(tmp_path: Path) -> None:
    """pre_fork raising in the master: no worker starts, exit 3 naming the hook."""
    config = tmp_path / "hooks.py"
    config.write_text("def pre_fork(server, worker, *, exc=None):\n    raise OSError('full')\n")
    status, _, err = await run_cli("-c", str(config), *PID_APP)
    assert status == 3
    assert err.splitlines()[-1] == (
        "trioserve: error: worker 0 was not started: hook pre_fork raised OSError: full"
    )


async def test_process_titles_name_the_master_and_each_worker() -> None:
    """With setproctitle, ps shows 'trioserve: master [NAME]' and 'trioserve: worker N [NAME]'."""
    async with serving(*PID_APP, "--workers", "2", "--name", "shop") as server:
        assert _cmdline(server.pid) == "trioserve: master [shop]"
        assert sorted(child_processes(server.pid).values()) == [
            "trioserve: worker 0 [shop]",
            "trioserve: worker 1 [shop]",
        ]
        assert await server.stop(signal.SIGTERM) == 0


async def test_usr1_reopens_the_log_files_of_master_and_workers(tmp_path: Path) -> None:
    """After logrotate moves the error log away, SIGUSR1 makes master and workers write a
    new file at the configured path."""
    log = tmp_path / "error.log"
    rotated = tmp_path / "error.log.1"
    args = [str(TRIOSERVE), *PID_APP, "--workers", "1", "--error-log", str(log)]
    process = await trio.lowlevel.open_process(
        args, cwd=ROOT, env=environment(), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await _wait_for_text(log, "listening on")
        log.rename(rotated)
        process.send_signal(signal.SIGUSR1)
        await _wait_for_text(log, "[worker 0] SIGUSR1: log files reopened")
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = log.read_text()
    assert "SIGUSR1 received: log files reopened" in text  # the master, in the new file
    assert "SIGTERM received" in text
    assert "SIGTERM" not in rotated.read_text()


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode()


def _has_text(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def _wait_for_text(path: Path, text: str) -> None:
    with trio.fail_after(TIMEOUT):
        while not _has_text(path, text):  # noqa: ASYNC110 - a file has no event to wait on
            await trio.sleep(0.05)


async def test_sigterm_to_the_whole_process_group_still_drains(tmp_path: Path) -> None:
    """TERM sent to the process group (systemd's default KillMode) is a graceful stop:
    a request in flight completes, though each worker gets TERM as well as the master."""
    write_partial_app(
        tmp_path / "slow_part_app.py",
        b"a",
        'await trio.sleep(1); await send({"type": "http.response.body", "body": b"b"})',
    )
    args = ["--app-dir", str(tmp_path), "slow_part_app:app", "-b", "127.0.0.1:0", "-w", "2"]
    async with (
        serving(*args) as server,
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", server.url + "/") as response,
    ):
        assert response.status_code == 200
        os.killpg(server.pid, signal.SIGTERM)
        assert await response.aread() == b"ab"
        assert await server.wait() == 0

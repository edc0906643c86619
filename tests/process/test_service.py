"""Running as a service, with the real CLI: daemon mode, the locked pid file, ``trioserve
ctl``, umask and socket modes, privileges, JSON logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.process.test_cli import (
    APPS,
    ROOT,
    TIMEOUT,
    TRIOSERVE,
    Server,
    environment,
    run_cli,
    serving,
)
from tests.process.test_master import alive, wait_until
from trioserve.testing import child_processes

HELLO = ("examples.hello:app", "--graceful-timeout", "1")


def _port_of(log: Path) -> int:
    for line in log.read_text().splitlines():
        if "listening on http://127.0.0.1:" in line:
            return int(line.rsplit(":", 1)[1])
    raise AssertionError(f"no ready line in {log}")


def _read_pid(path: Path) -> int:
    return int(path.read_text())


@asynccontextmanager
async def daemon(tmp_path: Path, *args: str) -> AsyncIterator[tuple[Path, Path]]:
    """Start ``trioserve -D`` with a pid file and an error log in tmp_path; always end it."""
    pid_file, log = tmp_path / "trioserve.pid", tmp_path / "error.log"
    argv = ["-D", "-p", str(pid_file), "--error-log", str(log), "-b", "127.0.0.1:0", *args]
    status, out, err = await run_cli(*argv)
    try:
        assert (status, out, err) == (0, "", "")
        yield pid_file, log
    finally:
        if pid_file.exists():
            pid = _read_pid(pid_file)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                await wait_until(lambda: not alive(pid), "the daemon is killed")


async def test_daemon_returns_at_once_and_serves_until_ctl_stop(tmp_path: Path) -> None:
    """-D returns when ready; the daemon serves; ctl status/stop work; the pid file goes."""
    async with daemon(tmp_path, *HELLO) as (pid_file, log):
        pid = _read_pid(pid_file)
        assert alive(pid)
        # Detached: another session (so no terminal), and not its leader (cannot get one).
        assert os.getsid(pid) not in (os.getsid(0), pid)
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{_port_of(log)}/")
        assert response.text == "Hello, world!\n"
        assert await run_cli("ctl", "status", "-p", str(pid_file)) == (
            0,
            f"trioserve: running as pid {pid}\n",
            "",
        )
        status, out, _ = await run_cli("ctl", "stop", "-p", str(pid_file))
        assert (status, out) == (0, f"trioserve: stopped (pid {pid})\n")
        assert not pid_file.exists()
        assert not alive(pid)
    status, out, _ = await run_cli("ctl", "status", "-p", str(pid_file))
    assert status == 3
    assert (await run_cli("ctl", "stop", "-p", str(pid_file)))[0] == 0  # nothing to stop


async def test_second_server_with_the_same_pid_file_fails_at_once(tmp_path: Path) -> None:
    """The pid file is locked: another trioserve with it exits 1 naming the running pid."""
    async with daemon(tmp_path, *HELLO) as (pid_file, _):
        pid = _read_pid(pid_file)
        status, _, err = await run_cli(*HELLO, "-b", "127.0.0.1:0", "-p", str(pid_file))
        assert status == 1
        assert err == (
            f"trioserve: error: --pid: already running as pid {pid} "
            f"(pid file {str(pid_file)!r} is locked)\n"
        )
        assert _read_pid(pid_file) == pid


async def test_stale_pid_file_is_taken_over(tmp_path: Path) -> None:
    """A pid file nobody holds (left by a dead process) is silently taken over."""
    pid_file = tmp_path / "stale.pid"
    pid_file.write_text("999999\n")
    async with serving(*HELLO, "-b", "127.0.0.1:0", "-p", str(pid_file)) as server:
        assert _read_pid(pid_file) == server.pid
        assert await server.stop(signal.SIGTERM) == 0
    assert not pid_file.exists()


async def test_ctl_reopen_logs_makes_a_new_log_file(tmp_path: Path) -> None:
    """After the log was moved away, ctl reopen-logs makes master and workers write anew."""
    async with daemon(tmp_path, *HELLO) as (pid_file, log):
        rotated = log.with_name("error.log.1")
        log.rename(rotated)
        status, out, _ = await run_cli("ctl", "reopen-logs", "-p", str(pid_file))
        assert (status, out) == (0, f"trioserve: sent SIGUSR1 to pid {_read_pid(pid_file)}\n")
        await wait_until(lambda: "[worker 0] SIGUSR1" in _text(log), "the new log file")
        assert "SIGUSR1 received: log files reopened" in _text(log)
        assert (await run_cli("ctl", "stop", "-p", str(pid_file)))[0] == 0


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_ctl_add_and_remove_worker(tmp_path: Path) -> None:
    """ctl add-worker / remove-worker change the number of workers (TTIN / TTOU)."""
    async with daemon(tmp_path, *HELLO, "--workers", "1") as (pid_file, _):
        pid = _read_pid(pid_file)
        assert (await run_cli("ctl", "add-worker", "-p", str(pid_file)))[0] == 0
        await wait_until(lambda: len(child_processes(pid)) == 2, "a second worker")
        assert (await run_cli("ctl", "remove-worker", "-p", str(pid_file)))[0] == 0
        await wait_until(lambda: len(child_processes(pid)) == 1, "back to one worker")
        assert (await run_cli("ctl", "stop", "-p", str(pid_file)))[0] == 0


async def test_umask_and_unix_socket_mode_are_applied(tmp_path: Path) -> None:
    """The daemon's files follow --umask; the unix socket file gets its bind spec's mode."""
    sock = tmp_path / "app.sock"
    access = tmp_path / "access"
    args = (*HELLO, "--umask", "077", "-b", f"unix:{sock}(0660)", "--access-log", str(access))
    async with daemon(tmp_path, *args, "--chdir", str(tmp_path)) as (pid_file, _):
        await wait_until(lambda: sock.exists(), "the socket file")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        # Opened by the daemon after the umask: no bits for group and others.
        assert stat.S_IMODE(access.stat().st_mode) == 0o600
        assert stat.S_IMODE(pid_file.stat().st_mode) == 0o600
        assert (await run_cli("ctl", "stop", "-p", str(pid_file)))[0] == 0
    assert not sock.exists()


async def test_daemon_start_failure_is_reported_by_the_command(tmp_path: Path) -> None:
    """A daemon that cannot start makes 'trioserve -D' fail with the error and its code."""
    pid_file = tmp_path / "x.pid"
    status, _, err = await run_cli(
        "-D", "-p", str(pid_file), "--app-dir", APPS, "no_such_module_here:app", "-b", "127.0.0.1:0"
    )
    assert status == 4
    assert "no_such_module_here" in err.splitlines()[-1]
    assert not pid_file.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
async def test_workers_run_as_user_and_group() -> None:
    """--user/--group: the workers run as that account; the master keeps its own."""
    async with serving(*HELLO, "-b", "127.0.0.1:0", "-u", "nobody", "-g", "nogroup") as server:
        [worker] = child_processes(server.pid)
        uid_line = _status_field(worker, "Uid")
        nobody = _status_field(worker, "Gid")
        import grp
        import pwd

        assert uid_line.split()[0] == str(pwd.getpwnam("nobody").pw_uid)
        assert nobody.split()[0] == str(grp.getgrnam("nogroup").gr_gid)
        assert _status_field(server.pid, "Uid").split()[0] == "0"
        assert await server.stop(signal.SIGTERM) == 0


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(name)


async def test_json_log_format_writes_one_object_per_line(tmp_path: Path) -> None:
    """--log-format json: every line the master and the workers log is a JSON object."""
    async with daemon(tmp_path, *HELLO, "--log-format", "json") as (pid_file, log):
        assert (await run_cli("ctl", "stop", "-p", str(pid_file)))[0] == 0
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert {"time", "level", "pid", "logger", "message"} <= set(records[0])
    assert any(r.get("worker") == "worker 0" for r in records)
    assert any(r["message"].startswith("listening on http://127.0.0.1:") for r in records)


async def _datagrams(sock: trio.socket.SocketType, until: str, seen: list[str]) -> None:
    """Receive datagrams into ``seen`` until one contains ``until``."""
    with trio.fail_after(TIMEOUT):
        while True:
            data = (await sock.recv(65536)).decode()
            seen.append(data)
            if until in data:
                return


async def test_sd_notify_reports_ready_reloading_and_stopping(tmp_path: Path) -> None:
    """NOTIFY_SOCKET gets READY=1 with a STATUS, RELOADING=1 on HUP, STOPPING=1 on TERM."""
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(str(tmp_path / "notify"))
        seen: list[str] = []
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
        async with serving(*HELLO, "-b", "127.0.0.1:0", "-w", "2", env=env) as server:
            await _datagrams(sock, "READY=1", seen)
            assert "STATUS=2 worker(s) serving" in seen[-1]
            server.send_signal(signal.SIGHUP)
            await _datagrams(sock, "RELOADING=1", seen)
            await _datagrams(sock, "READY=1", seen)
            server.send_signal(signal.SIGTERM)
            await _datagrams(sock, "STOPPING=1", seen)
            assert await server.wait() == 0


async def test_socket_activation_serves_on_the_passed_socket() -> None:
    """LISTEN_FDS/LISTEN_PID: the master serves on fd 3 instead of binding --bind."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        fd = listening.fileno()
        # As systemd does: the socket at fd 3, LISTEN_PID the server's own pid (the
        # wrapper execs trioserve, keeping its pid).
        wrapper = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); "
            "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
            "os.execv(sys.argv[2], sys.argv[2:])"
        )
        command = [sys.executable, "-c", wrapper, str(fd), str(TRIOSERVE)]
        command += ["examples.hello:app", "-b", "127.0.0.1:1", "--graceful-timeout", "1"]
        process = await trio.lowlevel.open_process(
            command,
            cwd=ROOT,
            env=environment(),
            pass_fds=[fd],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = Server(process)
        try:
            line = await server.wait_for_line("listening on ")
            assert line.endswith(f"listening on http://127.0.0.1:{port}")
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://127.0.0.1:{port}/")
            assert response.text == "Hello, world!\n"
            assert await server.stop(signal.SIGTERM) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert any("socket activation: 1 socket(s) from systemd" in line for line in server.lines)


async def test_statsd_receives_request_and_worker_metrics() -> None:
    """--statsd-host: per-request counters and timer, and the worker gauge, over UDP."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        args = (*HELLO, "-b", "127.0.0.1:0", "--statsd-host", f"127.0.0.1:{port}")
        async with serving(*args, "--statsd-prefix", "shop") as server:
            seen: list[str] = []
            await _datagrams(sock, "shop.gunicorn.workers:1|g", seen)
            async with httpx.AsyncClient(timeout=5) as client:
                assert (await client.get(server.url + "/")).status_code == 200
                assert (await client.get(server.url + "/missing")).status_code in (200, 404)
            await _datagrams(sock, "shop.gunicorn.requests:1|c", seen)
            await _datagrams(sock, "shop.gunicorn.request.status.", seen)
            assert any(
                re.fullmatch(r"shop\.gunicorn\.request\.duration:[\d.]+\|ms", d) for d in seen
            )
            assert await server.stop(signal.SIGTERM) == 0


async def test_usr2_moves_the_pid_file_to_oldbin_and_the_new_master_takes_it(
    tmp_path: Path,
) -> None:
    """On USR2 the old master's pid file becomes FILE.oldbin; the new master writes FILE."""
    pid_file = tmp_path / "app.pid"
    async with serving(*HELLO, "-b", "127.0.0.1:0", "-p", str(pid_file)) as server:
        old = server.pid
        server.send_signal(signal.SIGUSR2)
        line = await server.wait_for_line("started a new master (pid ")
        new = int(line.split("(pid ")[1].split(")")[0])
        try:
            await wait_until(
                lambda: pid_file.exists() and _read_pid(pid_file) == new, "the new pid file"
            )
            oldbin = tmp_path / "app.pid.oldbin"
            assert _read_pid(oldbin) == old
            server.send_signal(signal.SIGTERM)
            # (Not its output too: the new master writes to the same pipe.)
            assert await server.wait(timeout=TIMEOUT, output=False) == 0
            assert not oldbin.exists()
            assert _read_pid(pid_file) == new
            assert (await run_cli("ctl", "stop", "-p", str(pid_file)))[0] == 0
        finally:
            if alive(new):
                os.kill(new, signal.SIGKILL)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def _log_dir_for_nobody(request: pytest.FixtureRequest) -> Path:
    """A log directory the workers' user can reach to reopen files in: pytest's temporary
    directories are root's alone, so this one is made apart (and removed afterwards)."""
    logs = Path(tempfile.mkdtemp(prefix="trioserve-logs-"))
    request.addfinalizer(lambda: shutil.rmtree(logs, ignore_errors=True))
    logs.chmod(0o755)
    shutil.chown(logs, "nobody", "nogroup")
    return logs


async def test_reopened_log_files_stay_writable_for_the_workers_user(
    request: pytest.FixtureRequest,
) -> None:
    """USR1 after the access log was moved away (no logrotate 'create'): the master makes a
    new file and gives it to --user, so the workers log their requests into it."""
    logs = _log_dir_for_nobody(request)
    access = logs / "access.log"
    args = (*HELLO, "--user", "nobody", "--group", "nogroup", "--access-log", str(access))
    async with daemon(logs, *args) as (pid_file, log):
        url = f"http://127.0.0.1:{_port_of(log)}/"
        async with httpx.AsyncClient(timeout=5) as client:
            await client.get(url)
            access.rename(logs / "access.log.1")
            assert (await run_cli("ctl", "reopen-logs", "-p", str(pid_file)))[0] == 0
            await wait_until(
                lambda: "[worker 0] SIGUSR1: log files reopened" in _text(log), "reopen"
            )
            await client.get(url)
        await wait_until(lambda: '"GET / HTTP/1.1" 200' in _text(access), "a line in the new file")
        assert (await run_cli("ctl", "stop", "-p", str(pid_file)))[0] == 0

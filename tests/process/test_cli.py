"""The real ``trioserve`` command in a subprocess: ready line, clients, signals, exit codes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from trioserve import __version__
from trioserve._mypyc import build_description
from trioserve.testing import ServerProcess, running_process

ROOT = Path(__file__).resolve().parents[2]
TRIOSERVE = Path(sys.executable).parent / "trioserve"
APPS = "tests/process/apps"
TIMEOUT = 15
READY = re.compile(
    r"trioserve: listening on (?P<url>(?P<scheme>http|ws|tcp)://127\.0\.0\.1:(?P<port>\d+))$"
)


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without TRIOSERVE_* settings and WEB_CONCURRENCY (the
    default worker count), plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TRIOSERVE_") and name != "WEB_CONCURRENCY"
    }
    env.update(extra)
    return env


class Server:
    """A process these tests start otherwise than as ``trioserve ARGS`` (a script serving
    its app, an exec wrapper passing sockets as systemd does, gunicorn itself) and the
    stderr lines it printed so far. ``trioserve ARGS`` itself runs under :func:`serving`,
    the public helper's :class:`trioserve.testing.ServerProcess`."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""
        self.port = 0
        self._pending = b""

    async def _read_line(self) -> str | None:
        stderr = self.process.stderr
        assert stderr is not None
        while b"\n" not in self._pending:
            chunk = await stderr.receive_some()
            if not chunk:  # end of stderr: a last line may lack its newline
                if not self._pending:
                    return None
                chunk = b"\n"
            self._pending += chunk
        raw, _, self._pending = self._pending.partition(b"\n")
        line = raw.decode("utf-8", errors="replace")
        self.lines.append(line)
        return line

    async def wait_for_line(self, needle: str) -> str:
        """The first stderr line from now on that contains ``needle``."""
        with trio.fail_after(TIMEOUT):
            while (line := await self._read_line()) is not None:
                if needle in line:
                    return line
        raise AssertionError(f"it ended without printing {needle!r}: {self.lines}")

    async def wait_exit(self) -> int:
        """Read stderr to its end, then return the exit status."""
        with trio.fail_after(TIMEOUT):
            while await self._read_line() is not None:
                pass
            return await self.process.wait()

    async def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return await self.wait_exit()


@asynccontextmanager
async def serving(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[ServerProcess]:
    """Run ``trioserve *args`` from the project's root (``env`` added to the environment)
    with the public :func:`trioserve.testing.running_process`, in a session of its own,
    its stdout and stderr together in ``lines``; wait for its ready line, from which on
    ``wait_for_line`` looks. A server still running at the end is killed (SIGKILL: no
    graceful stop to wait for), with its workers, and reaped."""
    async with running_process(*args, env=env, cwd=ROOT, timeout=TIMEOUT) as server:
        try:
            line = await server.wait_for_line("listening on ", timeout=TIMEOUT)
            assert READY.search(line), line
            yield server
        finally:
            with trio.CancelScope(shield=True):
                if server.returncode is None:
                    # It leads a process group of its own: its workers are killed at once
                    # too, instead of stopping after they see it gone.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(server.pid, signal.SIGKILL)
                await server.stop()


async def run_cli(
    *args: str, env: dict[str, str] | None = None, command: list[str] | None = None
) -> tuple[int, str, str]:
    """Run the command to completion: (exit status, stdout, stderr)."""
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [*(command or [str(TRIOSERVE)]), *args],
            cwd=ROOT,
            env=environment(**(env or {})),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def assert_clean_log(lines: list[str]) -> None:
    assert not [line for line in lines if "Traceback" in line or "[ERROR]" in line], lines


# -- serving and stopping ---------------------------------------------------------------


async def test_hello_serves_curl_and_httpx_then_stops_on_sigterm() -> None:
    """The ready line names the HTTP URL; real clients get the app's answer; SIGTERM exits 0."""
    async with serving("examples.hello:app", "-b", "127.0.0.1:0") as server:
        ready = [line for line in server.lines if "listening on" in line]
        assert re.search(r"trioserve: listening on http://127\.0\.0\.1:\d+$", ready[0])
        assert server.url == f"http://127.0.0.1:{server.port}"
        curl = shutil.which("curl")
        if curl is not None:
            status, out, _ = await run_cli("-s", "--max-time", "5", server.url, command=[curl])
            assert (status, out) == (0, "Hello, world!\n")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(server.url + "/")
        assert response.status_code == 200
        assert response.text == "Hello, world!\n"
        assert response.headers["server"] == "trioserve"
        assert await server.stop(signal.SIGTERM) == 0
    assert any("SIGTERM received: stopping gracefully" in line for line in server.lines)
    assert_clean_log(server.lines)


async def test_sigint_stops_the_master_at_once() -> None:
    """With worker processes (the default), SIGINT stops at once, as in gunicorn; exit 0."""
    async with serving("examples.hello:app", "-b", "127.0.0.1:0") as server:
        assert await server.stop(signal.SIGINT) == 0
    assert any("SIGINT received: stopping now" in line for line in server.lines)
    assert_clean_log(server.lines)


async def test_sigint_stops_gracefully_in_process() -> None:
    """With --workers 0, SIGINT (Ctrl-C) is a graceful stop too, and exits 0."""
    async with serving("examples.hello:app", "-b", "127.0.0.1:0", "--workers", "0") as server:
        assert await server.stop(signal.SIGINT) == 0
    assert any("SIGINT received: stopping gracefully" in line for line in server.lines)
    assert_clean_log(server.lines)


async def test_request_in_flight_completes_after_sigterm() -> None:
    """A response under way when SIGTERM arrives is finished before the server exits 0."""
    async with (
        serving("--app-dir", APPS, "slow_app:app", "-b", "127.0.0.1:0") as server,
        httpx.AsyncClient(timeout=5) as client,
    ):
        async with client.stream("GET", server.url + "/") as response:
            assert response.status_code == 200
            server.send_signal(signal.SIGTERM)
            # The server is draining now; the app still has its second part to send.
            await server.wait_for_line("stopping: no new connections")
            body = await response.aread()
        assert body == b"first part\nlast part\n"
        assert await server.wait() == 0
    assert_clean_log(server.lines)


async def test_echo_stream_handler_over_tcp() -> None:
    """A raw stream handler is served on a tcp:// URL and echoes what a client sends."""
    async with serving("examples.echo:handler", "-b", "127.0.0.1:0") as server:
        assert server.url == f"tcp://127.0.0.1:{server.port}"
        received = b""
        with trio.fail_after(TIMEOUT):
            async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
                await stream.send_all(b"ping over tcp\n")
                while len(received) < len(b"ping over tcp\n"):
                    chunk = await stream.receive_some()
                    assert chunk, received
                    received += chunk
        assert received == b"ping over tcp\n"
        assert await server.stop(signal.SIGTERM) == 0
    assert_clean_log(server.lines)


async def test_web_concurrency_gives_the_number_of_workers() -> None:
    """WEB_CONCURRENCY in the environment sets how many workers the master starts."""
    async with serving(
        "examples.hello:app", "-b", "127.0.0.1:0", env={"WEB_CONCURRENCY": "2"}
    ) as server:
        await server.wait_for_line("2 worker(s) ready")
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(server.url + "/")
        assert response.text == "Hello, world!\n"
        assert await server.stop(signal.SIGTERM) == 0
    assert len([line for line in server.lines if "booting worker" in line]) == 2
    assert_clean_log(server.lines)


# -- failing to start -------------------------------------------------------------------


async def test_bad_option_value_exits_2_with_one_line() -> None:
    """A setting that does not parse is a usage error: exit 2 and one line naming it."""
    status, out, err = await run_cli("--workers", "four", "examples.hello:app")
    assert status == 2
    assert out == ""
    assert err == "trioserve: error: --workers: expected an integer >= 0, got 'four'\n"


async def test_unimportable_app_exits_4() -> None:
    """An app module that does not exist: exit 4 and one line saying which."""
    status, _, err = await run_cli("no_such_module_xyz:app", "-b", "127.0.0.1:0")
    assert status == 4
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("trioserve: error: cannot import 'no_such_module_xyz'")


async def test_busy_port_exits_1_naming_the_address() -> None:
    """A port another socket listens on: exit 1 and one line with the address."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        status, _, err = await run_cli("examples.hello:app", "-b", f"127.0.0.1:{port}")
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert "address already in use" in lines[0]
    assert f"127.0.0.1:{port}" in lines[0]


async def test_lifespan_startup_failure_exits_3_without_traceback() -> None:
    """lifespan.startup.failed: exit 3, one error line with the app's message, no traceback."""
    status, _, err = await run_cli("--app-dir", APPS, "failing_lifespan:app", "-b", "127.0.0.1:0")
    assert status == 3
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("trioserve: error:")]
    assert len(errors) == 1, lines
    assert "database down" in errors[0]
    assert not [line for line in lines if line.startswith("Traceback")], lines


# -- actions ----------------------------------------------------------------------------


async def test_print_config_shows_values_and_their_sources() -> None:
    """--print-config shows each value with the source it came from, and exits 0."""
    status, out, err = await run_cli("--print-config", "-w", "0", env={"TRIOSERVE_KEEP_ALIVE": "7"})
    assert (status, err) == (0, "")
    rows = {}
    for line in out.splitlines():
        match = re.fullmatch(r"(\w+) = (.*?) +# (.*)", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    assert rows["keep_alive"] == ("7.0", "environment TRIOSERVE_KEEP_ALIVE")
    assert rows["workers"] == ("0", "command line --workers")
    assert rows["graceful_timeout"] == ("30.0", "default")


async def test_check_config_accepts_a_loadable_app() -> None:
    """--check-config loads the app and exits 0 without serving."""
    status, out, err = await run_cli("--check-config", "examples.hello:app")
    assert status == 0, err
    assert "configuration OK" in out
    assert "examples.hello:app" in out


async def test_check_config_names_the_missing_attribute() -> None:
    """--check-config with a missing attribute exits 1 and says which one."""
    status, _, err = await run_cli("--check-config", "examples.hello:nope")
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("trioserve: error:")
    assert "has no attribute 'nope'" in lines[0]


async def test_python_m_trioserve_version() -> None:
    """``python -m trioserve --version`` prints the name and version and exits 0."""
    status, out, _ = await run_cli("--version", command=[sys.executable, "-m", "trioserve"])
    assert status == 0
    build = build_description()
    assert out == f"trioserve {__version__}" + (f" ({build})" if build else "") + "\n"

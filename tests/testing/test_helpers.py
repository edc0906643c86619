"""trioserve.testing without pytest's fixtures: serving(), running_process(), http_client()."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import hello_app
from trioserve import BindError, ConfigError
from trioserve.testing import (
    ServerErrorLogged,
    child_processes,
    http_client,
    running_process,
    serving,
    start_server,
)
from trioserve.testing._process import _proc_children, _ps_children


async def boom_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Fails every HTTP request."""
    if scope["type"] == "http":
        raise ValueError("boom")


async def echo(stream: trio.abc.Stream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def test_serving_raises_logged_errors_after_the_block() -> None:
    """An app that raised inside serving() is raised as ServerErrorLogged from its own
    exception once the block ends."""
    with pytest.raises(ServerErrorLogged, match=r"\[ValueError: boom\]") as caught:
        async with serving(boom_app) as server, http_client(server) as client:
            assert (await client.get("/")).status_code == 500
    assert isinstance(caught.value.__cause__, ValueError)
    [record] = caught.value.records
    assert record.levelno == logging.ERROR


async def test_taken_errors_do_not_fail() -> None:
    """Errors taken with take_errors() are not raised."""
    async with serving(boom_app) as server, http_client(server) as client:
        await client.get("/")
        assert len(server.errors) == 1
        assert [type(r.exc_info[1]) for r in server.take_errors() if r.exc_info] == [ValueError]
        assert server.errors == []


async def test_errors_are_those_of_their_own_server() -> None:
    """With two servers running, an error is recorded by the server whose app raised."""
    async with serving(boom_app) as failing, serving(hello_app) as fine:
        async with http_client(failing) as client:
            await client.get("/")
        async with http_client(fine) as client:
            await client.get("/")
        assert len(failing.take_errors()) == 1
        assert fine.errors == []


async def test_serving_raises_the_blocks_and_the_startup_errors_unwrapped() -> None:
    """What the block raises and startup errors come out as themselves, not in a group."""
    with pytest.raises(KeyError):
        async with serving(hello_app):
            raise KeyError("from the block")
    with pytest.raises(BindError):
        async with serving(hello_app, bind=["256.0.0.1:0"]):
            pass
    with pytest.raises(ConfigError, match="did you mean 'keep_alive'"):
        async with serving(hello_app, keepalive=1):
            pass
    with pytest.raises(ConfigError, match="unix=True or bind"):
        async with serving(hello_app, unix=True, bind=["127.0.0.1:0"]):
            pass


async def test_stop_is_graceful_and_frees_the_port(nursery: trio.Nursery) -> None:
    """stop() ends serving: the port then refuses connections; a second stop() is a no-op."""
    server = await start_server(nursery, echo)
    async with await server.connect() as stream:
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
    await server.stop()
    await server.stop()
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)


async def test_logger_levels_are_left_as_they_were() -> None:
    """Starting a server lowers no logger level for good."""
    names = ("trioserve", "trioserve.server", "trioserve.master")
    before = [logging.getLogger(name).level for name in names]
    async with serving(hello_app) as server:
        assert server.url.startswith("http://")
    assert [logging.getLogger(name).level for name in names] == before
    assert not any(
        type(handler).__module__.startswith("trioserve.testing")
        for handler in logging.getLogger("trioserve").handlers
    )


async def test_http_client_refuses_a_stream_handler() -> None:
    """http_client() of a raw TCP server is a ValueError naming its tcp:// URL."""
    async with serving(echo) as server:
        with pytest.raises(ValueError, match=r"tcp://127\.0\.0\.1"):
            http_client(server)
        with pytest.raises(ValueError, match="no WebSocket URL"):
            _ = server.ws_url


def test_http_client_without_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx, http_client() raises ImportError saying to install it."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ImportError, match="httpx is not installed"):
        http_client(object())  # type: ignore[arg-type]


def test_importing_needs_neither_pytest_nor_httpx() -> None:
    """trioserve.testing imports with pytest and httpx unavailable."""
    code = (
        "import sys\n"
        "sys.modules['pytest'] = sys.modules['httpx'] = None\n"
        "import trioserve.testing\n"
        "print(sorted(trioserve.testing.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "serving" in done.stdout


async def test_running_process_reports_an_app_that_cannot_start() -> None:
    """A server that exits before listening raises EOFError with its status and output."""
    with pytest.raises(EOFError, match=r"exited before listening \(exit status 4\)") as caught:
        async with running_process("tests.helpers:missing_app"):
            pass
    assert "has no attribute 'missing_app'" in str(caught.value)


async def test_running_process_lines_and_stop() -> None:
    """The given --bind is used as is; wait_for_line() goes forward from its last match
    and is bounded; stop() returns the exit status and the process is reaped."""
    args = ("tests.helpers:hello_app", "--workers", "0", "-b", "127.0.0.1:0")
    async with running_process(*args) as proc:
        assert "--bind" not in proc.args
        assert proc.url == f"http://127.0.0.1:{proc.port}"
        assert proc.worker_pids() == []
        async with http_client(proc) as client:
            assert (await client.get("/")).text == "Hello, world!"
        assert "listening on" in await proc.wait_for_line("listening on")
        with pytest.raises(TimeoutError, match="no line with 'listening on'"):
            await proc.wait_for_line("listening on", timeout=0)
        assert await proc.stop() == 0
        assert await proc.stop() == 0
        assert any("stopping" in line for line in proc.lines)
    assert proc.returncode == 0
    with pytest.raises(httpx.ConnectError):
        async with http_client(proc) as client:
            await client.get("/")


async def test_child_processes_and_a_stop_by_another_signal() -> None:
    """child_processes() lists the master's workers (as worker_pids() does), each with its
    command line; stop(SIGINT) stops the master at once, exit 0, and no child is left."""
    args = ("tests.helpers:hello_app", "--workers", "2", "--graceful-timeout", "1")
    async with running_process(*args) as proc:
        await proc.wait_for_line("2 worker(s) ready")
        children = child_processes(proc.pid)
        assert list(children) == proc.worker_pids()
        assert len(children) == 2
        assert all("trioserve" in command for command in children.values()), children
        assert await proc.stop(signal.SIGINT) == 0
        assert await proc.wait_for_line("SIGINT received: stopping now")
        assert child_processes(proc.pid) == {}


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="compares with /proc")
def test_children_from_ps_are_those_from_proc() -> None:
    """child_processes()'s fallback off Linux (ps) finds the children and command lines
    /proc shows."""
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            from_ps = _ps_children(os.getpid())
            assert from_ps[child.pid] == "sleep 30"
            assert from_ps == _proc_children(os.getpid())
            assert child_processes(os.getpid()) == _proc_children(os.getpid())
        finally:
            child.kill()

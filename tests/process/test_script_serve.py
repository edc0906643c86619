"""serve() from a script whose app is defined in that script (issue 12, bug 6).

The script is run as ``python script.py``, as its author would; its workers import it by
path as ``__mp_main__`` (multiprocessing's spawn does the same), and where that cannot
work (``python -c``) serve() refuses before any worker starts, in one line.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.process.test_cli import APPS, ROOT, Server, environment, run_cli

SCRIPT = str(ROOT / APPS / "script_serve.py")


@asynccontextmanager
async def running_script(*args: str) -> AsyncIterator[Server]:
    """``python script_serve.py *args`` until its "serving on" line; stopped by closing stdin."""
    process = await trio.lowlevel.open_process(
        [sys.executable, SCRIPT, *args],
        cwd="/",  # the script must not depend on being run from the project
        env=environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Server(process)
    try:
        line = await server.wait_for_line("script: serving on ")
        server.url = line.rsplit(" ", 1)[-1]
        yield server
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()
            for stream in (process.stdin, process.stderr):
                if stream is not None:
                    await stream.aclose()


async def stop_by_closing_stdin(server: Server) -> int:
    assert server.process.stdin is not None
    await server.process.stdin.aclose()
    return await server.wait_exit()


async def test_app_defined_in_the_script_is_served_by_two_workers() -> None:
    """python script.py with workers=2 and its own app: workers serve it from __mp_main__."""
    async with running_script("2") as server:
        async with httpx.AsyncClient(timeout=5) as client:
            bodies = {(await client.get(server.url)).text for _ in range(6)}
        assert await stop_by_closing_stdin(server) == 0
    assert all(body.startswith("served by __mp_main__ in pid ") for body in bodies), bodies
    assert not [line for line in server.lines if "Traceback" in line or "error" in line]


async def test_logging_follows_the_program_with_workers_as_without() -> None:
    """Without a logging setup in the program, workers print nothing, as workers=0 does."""
    for workers in ("0", "2"):
        async with running_script(workers, "--by-name") as server:
            assert await stop_by_closing_stdin(server) == 0
        assert [line for line in server.lines if not line.startswith("script: ")] == [], (
            workers,
            server.lines,
        )
    async with running_script("2", "--by-name", "--log") as server:
        assert await stop_by_closing_stdin(server) == 0
    # logging.basicConfig(level=INFO) in the program: the workers' INFO lines show.
    assert any("[worker 0] stopping: no new connections" in line for line in server.lines)


async def test_run_from_a_program_logs_as_the_program_does(tmp_path: Path) -> None:
    """trioserve.run() from a program with workers: no logging setup there, no lines printed."""
    socket_path = str(tmp_path / "s.sock")
    async with running_script("2", "--run", socket_path) as server:
        assert await server.stop(signal.SIGTERM) == 0
    assert [line for line in server.lines if not line.startswith("script: ")] == [], server.lines


PYTHON_C = """
import logging, trio, trioserve
logging.basicConfig(level=logging.INFO)
async def app(scope, receive, send):
    pass
trio.run(trioserve.serve, trioserve.Config(app=app, bind=["127.0.0.1:0"], workers=2))
"""


async def test_python_c_app_with_workers_is_refused_in_one_line() -> None:
    """An app from python -c cannot reach a worker: refused before one starts, in one line."""
    status, _, err = await run_cli("-c", PYTHON_C, command=[sys.executable])
    assert status == 1
    last = err.strip().splitlines()[-1]
    assert last == (
        "trioserve._errors.ConfigError: cannot send the settings to worker processes: "
        "__main__.app is defined in 'python -c' or an interactive session, which a worker "
        "process cannot import; define it in a file, or use workers=0 to serve in this process"
    )
    assert "booting worker" not in err


UNGUARDED = """
import trio, trioserve
async def app(scope, receive, send):
    pass
trio.run(trioserve.serve, trioserve.Config(app=app, bind=["127.0.0.1:0"], workers=1))
"""


async def test_unguarded_script_is_refused_in_the_worker_not_restarted(tmp_path: Path) -> None:
    """A script calling serve() unguarded fails once, naming the fix, instead of nesting servers."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    status, _, err = await run_cli(str(script), command=[sys.executable])
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "trioserve._hooks.WorkerBootError: worker 0 failed to boot: could not read its boot "
        f"message: a worker process imported {script} and it started the server again: "
        "put the call to serve() or run() under 'if __name__ == \"__main__\":'"
    )


INSIDE_THE_GUARD = """
import trio, trioserve
if __name__ == "__main__":
    async def app(scope, receive, send):
        pass
    trio.run(trioserve.serve, trioserve.Config(app=app, bind=["127.0.0.1:0"], workers=1))
"""


async def test_app_defined_under_the_main_guard_is_named_in_the_boot_error(
    tmp_path: Path,
) -> None:
    """An app defined under the main guard cannot reach a worker: the error says where it goes."""
    script = tmp_path / "inside.py"
    script.write_text(INSIDE_THE_GUARD)
    status, _, err = await run_cli(str(script), command=[sys.executable])
    assert status == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            f"Can't get attribute 'app' on <module '__mp_main__' from '{script}'>: define it at the"
            f" top level of {script}, outside 'if __name__ == \"__main__\":', so that worker"
            " processes can import it"
        )
    )

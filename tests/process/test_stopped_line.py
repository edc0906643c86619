"""The real command line's last line once it has stopped (gunicorn's "Shutting down: Master")."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from trioserve.testing import running_process

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("workers", "sig", "last"),
    [
        pytest.param("2", signal.SIGTERM, "master stopped: exit status 0 (SIGTERM)", id="master"),
        pytest.param(
            "0", signal.SIGTERM, "server stopped: exit status 0 (SIGTERM)", id="in-process"
        ),
        pytest.param("1", signal.SIGQUIT, "master stopped: exit status 0 (SIGQUIT)", id="fast"),
    ],
)
async def test_last_line_says_it_stopped_after_the_pidfile_is_gone(tmp_path, workers, sig, last):
    """After a stop signal, the last line of the output says the master (or the in-process
    server) stopped, with its exit status and the signal; its pid file is gone by then."""
    pidfile = tmp_path / "trioserve.pid"
    args = ("examples.hello:app", "-b", "127.0.0.1:0", "-w", workers, "--pid", str(pidfile))
    async with running_process(*args, cwd=ROOT) as server:
        assert pidfile.exists()
        assert await server.stop(sig) == 0
    assert not pidfile.exists()
    assert server.lines[-1].endswith(f"[INFO] trioserve: {last}"), server.lines[-5:]
    assert sum("stopped: exit status" in line for line in server.lines) == 1

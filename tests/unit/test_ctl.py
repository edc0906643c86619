"""``trioserve ctl``: exit statuses without a master, and the signals a live lock holder
gets for each action."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from trioserve import _cli
from trioserve._ctl import ACTIONS, EXIT_NOT_RUNNING, main

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10

# A stand-in master: locks the pid file as trioserve does, writes the name of every
# signal it gets to stdout, and exits 0.2 s after TERM or QUIT (unless "stubborn"), so
# that `ctl stop` has something to wait for. It holds the lock until it exits.
_MASTER = textwrap.dedent(
    """\
    import os, signal, sys, time
    from trioserve._daemon import PidFile
    stubborn = sys.argv[2] == "stubborn"
    PidFile.acquire(sys.argv[1])

    def record(signum, frame):
        os.write(1, (signal.Signals(signum).name + "\\n").encode())
        if signum in (signal.SIGTERM, signal.SIGQUIT) and not stubborn:
            time.sleep(0.2)
            os.write(1, b"exiting\\n")
            os._exit(0)

    for name in ("SIGHUP", "SIGUSR1", "SIGTTIN", "SIGTTOU", "SIGTERM", "SIGQUIT"):
        signal.signal(getattr(signal, name), record)
    os.write(1, b"ready\\n")
    sys.stdin.read()
    """
)


class Master:
    """The stand-in master process and the lines it wrote so far."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid = process.pid
        self._pending = b""

    def next_line(self) -> str:
        """The next line it writes (bounded by TIMEOUT)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no line from the stand-in master within {TIMEOUT}s"
            chunk = os.read(fd, 4096)
            assert chunk, "the stand-in master closed its stdout"
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def rest(self) -> str:
        """Everything it wrote until it exited."""
        assert self.process.stdout is not None
        self.process.wait(TIMEOUT)
        return (self._pending + self.process.stdout.read()).decode()


@contextmanager
def master(path: Path, *, stubborn: bool = False) -> Iterator[Master]:
    process = subprocess.Popen(
        [sys.executable, "-c", _MASTER, str(path), "stubborn" if stubborn else "polite"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        stand_in = Master(process)
        assert stand_in.next_line() == "ready"
        yield stand_in
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def ctl(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


# -- nothing running ----------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, "", "999999\n"])
def test_without_a_live_master(
    tmp_path: Path, content: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """No file, or one nobody holds: status 3, stop and quit 0, the signal actions 1."""
    path = tmp_path / "app.pid"
    if content is not None:
        path.write_text(content)
    said = f"trioserve: not running (no live master holds {str(path)!r})\n"
    expected = {"status": EXIT_NOT_RUNNING, "stop": 0, "quit": 0}
    for action in ACTIONS:
        assert ctl(action, "-p", str(path), capsys=capsys) == (
            expected.get(action, 1),
            said,
            "",
        ), action
    assert path.exists() == (content is not None)  # ctl never writes or removes it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explode", "-p", "x.pid"], "argument ACTION: invalid choice: 'explode' (choose from "),
        (["status"], "the following arguments are required: -p/--pid"),
        ([], "the following arguments are required: ACTION, -p/--pid"),
        (["stop", "-p", "x.pid", "--timeout", "soon"], "argument --timeout: invalid float "),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad action or missing --pid: exit 2 and one line on stderr, nothing on stdout."""
    status, out, err = ctl(*args, capsys=capsys)
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(f"trioserve: error: ctl: {message}")
    assert err.endswith(" (see 'trioserve ctl --help')\n")


def test_the_trioserve_command_runs_ctl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``trioserve ctl ...`` is dispatched before the server's own parser."""
    assert _cli.main(["ctl", "status", "--pid", str(tmp_path / "x.pid")]) == EXIT_NOT_RUNNING
    assert "not running" in capsys.readouterr().out


# -- a live master ----------------------------------------------------------------------


def test_status_names_the_running_pid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """status: exit 0, and the pid that holds the lock; no signal is sent."""
    path = tmp_path / "app.pid"
    with master(path) as stand_in:
        assert ctl("status", "-p", str(path), capsys=capsys) == (
            0,
            f"trioserve: running as pid {stand_in.pid}\n",
            "",
        )
        assert stand_in.process.poll() is None


def test_each_action_sends_its_signal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """reload HUP, reopen-logs USR1, add-worker TTIN, remove-worker TTOU; exit 0 at once."""
    path = tmp_path / "app.pid"
    with master(path) as stand_in:
        for action, name in [
            ("reload", "SIGHUP"),
            ("reopen-logs", "SIGUSR1"),
            ("add-worker", "SIGTTIN"),
            ("remove-worker", "SIGTTOU"),
        ]:
            assert ctl(action, "--pid", str(path), capsys=capsys) == (
                0,
                f"trioserve: sent {name} to pid {stand_in.pid}\n",
                "",
            )
            assert stand_in.next_line() == name
        assert stand_in.process.poll() is None


@pytest.mark.parametrize(("action", "name"), [("stop", "SIGTERM"), ("quit", "SIGQUIT")])
def test_stop_and_quit_signal_then_wait_until_the_master_exits(
    tmp_path: Path, action: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """stop (TERM) and quit (QUIT) return only once the master has exited."""
    path = tmp_path / "app.pid"
    with master(path) as stand_in:
        assert ctl(action, "-p", str(path), capsys=capsys) == (
            0,
            f"trioserve: stopped (pid {stand_in.pid})\n",
            "",
        )
        # It exits 0.2 s after the signal: "exiting" was written before ctl returned.
        assert stand_in.rest() == f"{name}\nexiting\n"
        assert stand_in.process.returncode == 0


def test_stop_gives_up_after_its_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A master that does not exit: stop says so after --timeout, and exits 1."""
    path = tmp_path / "app.pid"
    with master(path, stubborn=True) as stand_in:
        started = time.monotonic()
        assert ctl("stop", "-p", str(path), "--timeout", "0.3", capsys=capsys) == (
            1,
            "",
            f"trioserve: error: pid {stand_in.pid} still runs after 0.3s\n",
        )
        assert time.monotonic() - started >= 0.3
        assert stand_in.next_line() == "SIGTERM"
        assert stand_in.process.poll() is None


def test_a_locked_file_without_a_pid_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Locked, but no pid to signal: exit 1 rather than a guess."""
    path = tmp_path / "app.pid"
    code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert select.select([process.stdout], [], [], TIMEOUT)[0]
        assert process.stdout.readline() == b"locked\n"
        for action in ("status", "stop", "reload"):
            assert ctl(action, "-p", str(path), capsys=capsys) == (
                1,
                "",
                f"trioserve: error: {str(path)!r} is locked but holds no pid\n",
            )
    finally:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        process.wait(TIMEOUT)
        process.stdout.close()


def test_an_unreadable_pid_file_is_not_reported_as_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ctl cannot tell whether a master runs: it says so instead of 'not running'."""
    path = tmp_path / "app.pid"
    path.write_text("4242\n")
    real_open = os.open

    def open_as_another_user(file: str, flags: int, *args: int) -> int:
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args)

    # As a user without read access: the tests may run as root, who can read anything.
    monkeypatch.setattr(os, "open", open_as_another_user)
    status, out, _ = ctl("status", "-p", str(path), capsys=capsys)
    assert status != EXIT_NOT_RUNNING and "not running" not in out
    status, out, _ = ctl("stop", "-p", str(path), capsys=capsys)
    assert status != 0 and "not running" not in out


def test_stop_also_continues_a_stopped_master(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A master stopped with SIGSTOP gets SIGCONT after TERM, so it can exit."""
    path = tmp_path / "app.pid"
    with master(path) as stand_in:
        os.kill(stand_in.pid, signal.SIGSTOP)
        status, out, _ = ctl("stop", "-p", str(path), capsys=capsys)
        assert (status, out) == (0, f"trioserve: stopped (pid {stand_in.pid})\n")
        assert stand_in.rest() == "SIGTERM\nexiting\n"

"""The real ``trioserve`` command in a subprocess: ``running_process()`` and ``start_process()``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from .._errors import single_error
from ._listening import READY_LINE, Listening

# Bounds of the waits, so that none is unbounded; each method takes its own ``timeout``
# (hence the ASYNC109 exemptions: a default bound, with trio.fail_after still usable).
READY_TIMEOUT = 30.0
LINE_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# After SIGKILL, or for the last output once the process exited.
_AFTERMATH = 5.0
# How many of the last output lines an error message shows.
_SHOWN_LINES = 20


def _has_bind(args: Sequence[str]) -> bool:
    return any(
        arg in ("-b", "--bind")
        or arg.startswith("--bind=")
        or (arg.startswith("-b") and len(arg) > 2)
        for arg in args
    )


# Meant for the process running the tests, not for a server it starts: the worker count
# some platforms set, and a service manager's sockets and notifications.
_NOT_INHERITED = frozenset(
    {
        "WEB_CONCURRENCY",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    }
)


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    # Settings inherited from the shell running the tests would change what is tested.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TRIOSERVE_") and name not in _NOT_INHERITED
    }
    env["PYTHONUNBUFFERED"] = "1"  # an app's print() shows up in .lines when it happens
    env.update(extra or {})
    return env


def _proc_children(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # it exited meanwhile
        # The command name is in parentheses and may hold anything: split after it.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return dict(sorted(found.items()))


def _ps_children(pid: int) -> dict[int, str]:
    with subprocess.Popen(
        ["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "args="], stdout=subprocess.PIPE, text=True
    ) as ps:
        listing, _ = ps.communicate(timeout=10)
    found = {}
    for line in listing.splitlines():
        fields = line.split(None, 2)
        # ps is a child of this process while it runs: of no interest when pid is this one.
        if len(fields) >= 2 and int(fields[1]) == pid and int(fields[0]) != ps.pid:
            found[int(fields[0])] = fields[2].strip() if len(fields) == 3 else ""
    return dict(sorted(found.items()))


def child_processes(pid: int) -> dict[int, str]:
    """The live child processes of process ``pid``, each with its command line.

    For a master, its workers (with ``--preload``, the preloader, whose children are the
    workers; after SIGUSR2, also the new master). With setproctitle installed the command
    lines are trioserve's process titles, such as ``trioserve: worker 0 [myapp]``. Read
    from ``/proc`` on Linux, from ``ps -A -o pid= -o ppid= -o args=`` elsewhere; zombies
    (exited, not yet reaped) are left out.

    Args:
        pid: Any process id: the ``pid`` of a :class:`ServerProcess`, a preloader's, or
            the one a daemon wrote in its pid file.

    Returns:
        ``{pid: command line}``, in pid order; empty once it has no child left.
    """
    if Path("/proc/self/stat").exists():
        return _proc_children(pid)
    return _ps_children(pid)


class ServerProcess(Listening):
    """``python -m trioserve ...`` started by :func:`running_process`,
    :func:`start_process` or the ``trioserve_process`` fixture.

    Its standard output and error are read all along (stdout first merged into stderr),
    so a chatty server never blocks on a full pipe.

    Attributes:
        args: The command line it was started with.
        lines: Every line it wrote so far, in order, without line endings.
        urls: The URLs of its "listening on URL" lines so far, in order.
    """

    def __init__(self, process: trio.Process, args: list[str]) -> None:
        self.args = args
        self.lines: list[str] = []
        self.urls: list[str] = []
        self._process = process
        self._cursor = 0
        self._changed = trio.Event()
        self._output_ended = trio.Event()

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<trioserve.testing.ServerProcess pid {self.pid} {state}>"

    @property
    def pid(self) -> int:
        """The process id of the ``trioserve`` master (or single) process."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it exited and was reaped (``-N`` for signal N), else None."""
        return self._process.returncode

    def worker_pids(self) -> list[int]:
        """The live child processes of the master: its workers.

        As :func:`child_processes` finds them: with ``--preload`` the master's child is
        the preloader, whose children are the workers.
        """
        return list(child_processes(self.pid))

    def send_signal(self, sig: int) -> None:
        """Send signal ``sig`` to the master (nothing happens once it was reaped)."""
        self._process.send_signal(sig)

    async def wait_ready(self, *, timeout: float = READY_TIMEOUT) -> None:  # noqa: ASYNC109
        """Wait for its first "listening on URL" line (returns at once after it).

        Raises:
            EOFError: it ended its output (it exited) first; the message has its status
                and last lines.
            TimeoutError: no such line within ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            while not self.urls:
                if self._output_ended.is_set():
                    with trio.move_on_after(_AFTERMATH):
                        await self._process.wait()
                    raise EOFError(self._describe("exited before listening"))
                await self._changed.wait()
            return
        raise TimeoutError(self._describe(f"was not listening within {timeout:g}s"))

    async def wait_for_line(
        self,
        text: str,
        *,
        timeout: float = LINE_TIMEOUT,  # noqa: ASYNC109
    ) -> str:
        """The first line containing ``text`` after the line this method returned last
        (from the first line, on the first call); waits for it if needed.

        Raises:
            EOFError: its output ended (it exited) without such a line.
            TimeoutError: no such line within ``timeout`` seconds.
        """
        index = self._cursor
        with trio.move_on_after(timeout):
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    index += 1
                    if text in line:
                        self._cursor = index
                        return line
                if self._output_ended.is_set():
                    raise EOFError(self._describe(f"ended its output without {text!r}"))
                await self._changed.wait()
        raise TimeoutError(self._describe(f"wrote no line with {text!r} within {timeout:g}s"))

    async def wait(
        self,
        *,
        timeout: float = STOP_TIMEOUT,  # noqa: ASYNC109
        output: bool = True,
    ) -> int:
        """Wait for it to exit on its own, then for the rest of its output.

        Args:
            timeout: How long to wait for it to exit, in seconds.
            output: Also wait (at most 5 seconds more) for the end of its output, which
                its workers share; those still holding it then are killed. False returns
                as soon as it exited: for when another process writes there on purpose
                (the new master after SIGUSR2) or a test watches its workers end by
                themselves (after a SIGKILL of the master).

        Returns:
            The exit status.

        Raises:
            TimeoutError: it was still running after ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            await self._process.wait()
        status = self.returncode
        if status is None:
            raise TimeoutError(self._describe(f"still runs after {timeout:g}s"))
        if output:
            await self._drain()
        return status

    async def stop(
        self,
        sig: int = signal.SIGTERM,
        *,
        timeout: float = STOP_TIMEOUT,  # noqa: ASYNC109 - before SIGKILL
    ) -> int:
        """Stop it with signal ``sig``; SIGKILL it and its process group if it has not
        exited after ``timeout`` seconds. Does nothing but report once it exited.

        Args:
            sig: SIGTERM (the default) for a graceful stop; SIGINT or SIGQUIT stop a
                master at once, as in gunicorn; SIGKILL for no stop at all.
            timeout: How long to wait for it to exit before SIGKILL, in seconds.

        Returns:
            The exit status: 0 after a graceful stop, ``-9`` when it had to be killed.
        """
        if self._process.returncode is None:
            self._process.send_signal(sig)
            with trio.move_on_after(timeout):
                await self._process.wait()
            if self._process.returncode is None:
                self._kill_group()
                with trio.move_on_after(_AFTERMATH):
                    await self._process.wait()
        status = self.returncode
        if status is None:
            raise TimeoutError(self._describe("survived SIGKILL"))
        await self._drain()
        return status

    async def _drain(self) -> None:
        """Wait (bounded) for the end of the output: workers may hold the pipe a little
        after the master exited; any still there then are killed."""
        with trio.move_on_after(_AFTERMATH):
            await self._output_ended.wait()
        if not self._output_ended.is_set():
            self._kill_group()

    def _kill_group(self) -> None:
        # The process leads its own process group (start_new_session), which its
        # workers share unless they left it: this kills them too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self._process.kill()

    def _describe(self, what: str) -> str:
        status = f" (exit status {self.returncode})" if self.returncode is not None else ""
        shown = "\n".join(self.lines[-_SHOWN_LINES:]) or "(no output)"
        return f"trioserve {what}{status}: {' '.join(self.args)}\nlast lines:\n{shown}"

    def _add_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.lines.append(line)
        match = READY_LINE.search(line)
        if match is not None:
            self.urls.append(match["url"])
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _read_output(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        pending = b""
        try:
            async for chunk in stream:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    self._add_line(raw)
            if pending:  # a last line without its newline
                self._add_line(pending)
        finally:
            self._output_ended.set()
            self._notify()

    async def _supervise(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read its output until the end, then reap it; cancelled, stop it first."""
        try:
            task_status.started()
            await self._read_output()
            await self._process.wait()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.stop()
                finally:
                    if self._process.stdout is not None:
                        await self._process.stdout.aclose()


def command(args: Sequence[str]) -> list[str]:
    """The command line for ``trioserve *args``: this interpreter's ``-m trioserve``, bound
    to ``127.0.0.1:0`` unless ``args`` has ``-b``/``--bind``."""
    argv = [sys.executable, "-m", "trioserve", *args]
    if not _has_bind(args):
        argv += ["--bind", "127.0.0.1:0"]
    return argv


async def start_process(
    nursery: trio.Nursery,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    ready: bool = True,
    timeout: float = READY_TIMEOUT,  # noqa: ASYNC109
) -> ServerProcess:
    """Start ``trioserve *args`` as a subprocess whose output a task of ``nursery`` reads.

    When ``nursery`` is cancelled the process is stopped as :meth:`ServerProcess.stop`
    does, and always reaped.

    Args:
        nursery: Where the task that reads its output and reaps it runs.
        *args: Command-line arguments: the app target and any flags. Without ``-b`` or
            ``--bind``, ``--bind 127.0.0.1:0`` is added.
        env: Environment variables to set. The process gets this one's environment
            without ``TRIOSERVE_*``, ``WEB_CONCURRENCY`` and systemd's ``LISTEN_*``,
            ``NOTIFY_SOCKET`` and ``WATCHDOG_*`` (set them here), plus
            ``PYTHONUNBUFFERED=1``.
        cwd: Its working directory (where ``--app-dir`` points by default); default: this
            one's.
        ready: Wait for its first "listening on URL" line before returning.
        timeout: How long to wait for it, in seconds.

    Returns:
        The running :class:`ServerProcess`.

    Raises:
        EOFError: ``ready`` and it exited before listening (the process is reaped).
        TimeoutError: ``ready`` and it did not listen in time (the process is stopped).
    """
    argv = command(args)
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_environment(env),
        cwd=cwd,
        # Its own process group: signals from the terminal go to the tests, not to it,
        # and a last-resort SIGKILL reaches its workers too.
        start_new_session=True,
    )
    proc = ServerProcess(process, argv)
    try:
        await nursery.start(proc._supervise)
    except BaseException:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
        raise
    if ready:
        try:
            await proc.wait_ready(timeout=timeout)
        except BaseException:
            with trio.CancelScope(shield=True):
                await proc.stop()
            raise
    return proc


@asynccontextmanager
async def running_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    ready: bool = True,
    timeout: float = READY_TIMEOUT,  # noqa: ASYNC109
) -> AsyncIterator[ServerProcess]:
    """Run ``trioserve *args`` in a subprocess for the duration of an ``async with`` block.

    ::

        async with running_process("myapp:app", "--workers", "2") as proc:
            assert len(proc.worker_pids()) == 2
            assert await proc.stop() == 0

    The arguments are those of :func:`start_process`. On leaving the block the process
    is stopped (SIGTERM, then SIGKILL after ``STOP_TIMEOUT`` seconds) unless it exited
    already, and always reaped.
    """
    try:
        async with trio.open_nursery() as nursery:
            proc = await start_process(
                nursery, *args, env=env, cwd=cwd, ready=ready, timeout=timeout
            )
            try:
                yield proc
            finally:
                with trio.CancelScope(shield=True):
                    await proc.stop()
    except BaseExceptionGroup as group:
        error = single_error(group)
        if error is None:
            raise
        raise error from error.__cause__

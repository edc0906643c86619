"""Running as a service: daemonizing, the locked pid file, dropping privileges.

All of it happens outside any trio loop: :func:`daemonize` forks before the master's
``trio.run`` starts, and :class:`PidFile` is taken right after. The control commands
(``trioserve ctl ...``) are in :mod:`trioserve._ctl`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._errors import EXIT_FAILURE, TrioserveError

if TYPE_CHECKING:
    from ._config import Config

LOGGER = logging.getLogger("trioserve.daemon")

_READY_TIMEOUT = 60.0


class AlreadyRunning(TrioserveError):
    """The pid file is locked by a live master."""


def read_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid written in ``path``, or None when it is missing, empty or not a number."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def holder(path: str | os.PathLike[str]) -> int | None:
    """The pid of the live master holding the lock on ``path``, or None if nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        # Unreadable is not "not running": say so rather than guess.
        reason = (exc.strerror or str(exc)).lower()
        raise TrioserveError(f"--pid: cannot read {str(path)!r}: {reason}") from None
    try:
        # Taking a shared lock fails only while a master holds its exclusive one.
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                return read_pid(path) or -1
            raise
        return None
    finally:
        os.close(fd)


@attrs.define(eq=False)
class PidFile:
    """A pid file written by the master and locked (``fcntl.flock``) for its whole life.

    The lock, not the file's existence, says whether a master runs: a file left by a
    process that died is simply taken over.
    """

    path: Path
    fd: int = -1

    @classmethod
    def acquire(cls, path: str | os.PathLike[str], pid: int | None = None) -> PidFile:
        """Lock ``path`` and write ``pid`` (this process) into it.

        Raises:
            AlreadyRunning: another live process holds the lock.
            TrioserveError: the file cannot be created or written.
        """
        file = Path(path).absolute()  # absolute: a daemon changes directory afterwards
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise TrioserveError(f"--pid: cannot open {str(path)!r}: {reason}") from None
        try:
            # flock, not lockf: a POSIX lock would be lost as soon as anything in this
            # process (a hook) opened and closed the file.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                running = read_pid(file)
                who = f"pid {running}" if running else "another process"
                raise AlreadyRunning(
                    f"--pid: already running as {who} (pid file {str(path)!r} is locked)"
                ) from None
            raise
        pidfile = cls(file, fd)
        pidfile.write(os.getpid() if pid is None else pid)
        return pidfile

    def write(self, pid: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)
        os.fsync(self.fd)

    def rename(self, new_path: Path) -> None:
        """Move the file (the lock goes with it: it is on the open file)."""
        os.replace(self.path, new_path)
        self.path = new_path

    def release(self) -> None:
        """Remove the file and drop the lock (at a clean exit)."""
        if self.fd < 0:
            return
        try:
            # Only our own file: a new master may have written its own at the same path.
            if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


# -- daemonizing --------------------------------------------------------------------------


@attrs.define(eq=False)
class Readiness:
    """How a daemon tells the command that started it how startup went, over a pipe."""

    fd: int

    def report(self, status: int, message: str = "") -> None:
        """Send the exit status the starting command should end with (once)."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):  # the starting command was killed: no one to tell
            os.write(self.fd, f"{status} {message}".encode())
        os.close(self.fd)
        self.fd = -1


def daemonize(*, chdir: str | None, umask: str, error_log: str) -> Readiness:
    """Detach: double fork, new session, chdir, umask, standard streams to /dev/null.

    Must be called before any trio loop or thread exists. The original process waits on
    a pipe until the daemon calls :meth:`Readiness.report` (its sockets are bound and the
    pid file is locked, or startup failed), prints the daemon's error if any, and exits
    with the status reported, so ``trioserve -D`` fails visibly when it cannot start.
    Returns, in the daemon, the :class:`Readiness` to report on.
    """
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        _wait_for_daemon(read_end)  # exits
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # the session leader goes: the daemon can never regain a terminal
    os.chdir(chdir or "/")
    if umask != "inherit":
        os.umask(int(umask, 8))
    _redirect_streams(error_log)
    return Readiness(write_end)


def _wait_for_daemon(read_end: int) -> None:
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace")
    status_text, _, message = text.partition(" ")
    if not status_text.isdigit():
        message = "the daemon exited before it was ready (see the error log)"
        status = EXIT_FAILURE
    else:
        status = int(status_text)
    if status and message:
        print(f"trioserve: error: {message}", file=sys.stderr)
    sys.stdout.flush()
    os._exit(status)


def _redirect_streams(error_log: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    if error_log != "-":
        # What escapes logging (a crash in C, faulthandler, print) lands in the log too.
        log = os.open(error_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
        os.close(log)


# -- privileges ---------------------------------------------------------------------------


@attrs.frozen
class Account:
    """The uid and gid workers drop to, resolved once in the master."""

    uid: int
    gid: int
    name: str | None

    def drop(self) -> None:
        """Become this account for good (supplementary groups included)."""
        if self.name is not None:
            os.initgroups(self.name, self.gid)
        else:
            os.setgroups([self.gid])
        os.setgid(self.gid)
        os.setuid(self.uid)


def resolve_account(user: str | None, group: str | None) -> Account | None:
    """The account named by ``--user`` / ``--group``, or None when there is nothing to do.

    Not root: a warning, and None. Unknown names: a one-line TrioserveError.
    """
    if user is None and group is None:
        return None
    if os.geteuid() != 0:
        LOGGER.warning(
            "--user/--group ignored: dropping privileges needs root, and this runs as uid %d",
            os.geteuid(),
        )
        return None
    name = None
    uid = os.getuid()
    gid = os.getgid()
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            if not user.isdigit():
                raise TrioserveError(f"--user: no such user {user!r}") from None
            uid, name = int(user), None
        else:
            uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise TrioserveError(f"--group: no such group {group!r}") from None
    return Account(uid, gid, name)


def absolute_paths(config: Config, base: str) -> Config:
    """``config`` with every relative path made absolute against ``base``.

    A daemon (and ``--chdir``) changes directory before anything is opened; paths given
    relative to where trioserve was started must keep meaning the same files.
    """

    def absolute(path: str | None) -> str | None:
        if path is None or path == "-":
            return path
        return os.path.join(base, path)

    binds = []
    for text in config.bind:
        if text.startswith("unix:") and not text[5:].startswith(("/", "\0", "@")):
            text = "unix:" + os.path.join(base, text[5:])
        binds.append(text)
    changes: dict[str, Any] = {
        "bind": binds,
        "app_dir": absolute(config.app_dir),
        "reload_dir": [absolute(path) for path in config.reload_dir],
    }
    for name in (
        "pid",
        "error_log",
        "access_log",
        "log_config",
        "certfile",
        "keyfile",
        "ca_certs",
        "chdir",
    ):
        changes[name] = absolute(getattr(config, name))
    return attrs.evolve(config, **changes)


def give_log_files(config: Config, account: Account | None) -> None:
    """Make the log files the workers' account's, so that they can reopen them (USR1)."""
    if account is None:
        return
    for path in (config.error_log, config.access_log):
        if path is not None and path != "-":
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, account.uid, account.gid)


def give_unix_sockets(listeners: Iterable[trio.SocketListener], account: Account | None) -> None:
    """Make the unix socket files the workers' account's (their mode is the bind spec's)."""
    if account is None:
        return
    for listener in listeners:
        if listener.socket.family != socket.AF_UNIX:
            continue
        name = listener.socket.getsockname()
        path = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        if path and not path.startswith("\0"):
            os.chown(path, account.uid, account.gid)

"""systemd integration: socket activation, readiness notification and the watchdog.

Three small protocols, each spoken without libsystemd:

- **Socket activation** (``sd_listen_fds(3)``): systemd binds the sockets of a
  ``.socket`` unit and starts the service with them open as file descriptors 3, 4, ...;
  ``LISTEN_PID`` names the process they are meant for, ``LISTEN_FDS`` how many there
  are and the optional ``LISTEN_FDNAMES`` a colon-separated name for each, in order
  (``FileDescriptorName=`` in the socket unit; without it systemd uses the socket unit's
  name, e.g. ``myapp.socket``). :func:`activated_sockets` reads them and
  :func:`listeners_for` hands them to the applications of a MultiApp.
- **Notification** (``sd_notify(3)``): ``NOTIFY_SOCKET`` is the address of a datagram
  socket where the service reports ``READY=1``, ``STATUS=...``, ``RELOADING=1``,
  ``STOPPING=1``, ``MAINPID=...`` and ``WATCHDOG=1``, one datagram of ``KEY=value``
  lines per report. :class:`Notifier` sends them.
- **Watchdog** (``sd_watchdog_enabled(3)``): with ``WatchdogSec=`` set, systemd passes
  ``WATCHDOG_USEC`` and expects ``WATCHDOG=1`` more often than that, or it kills and
  restarts the service. :func:`watchdog_interval` reads the timeout and
  :func:`run_watchdog` pings, but only while the master says it is healthy, so a
  wedged master does get restarted.

All of this runs in the master. The variables are removed from the environment once
read (``unset=True``) so the worker processes, whose pid systemd does not know, neither
act on them nor pass them on.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
from collections.abc import Callable, MutableMapping, Sequence

import attrs
import trio

from ._errors import ConfigError

LOGGER = logging.getLogger("trioserve.systemd")

#: The first file descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3

_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_WATCHDOG_VARIABLES = ("WATCHDOG_USEC", "WATCHDOG_PID")


@attrs.frozen
class ActivatedSocket:
    """A socket that systemd passed to this process.

    Attributes:
        fd: The file descriptor number (3, 4, ... in the order of the socket unit).
        name: Its name from ``LISTEN_FDNAMES``, or None when that variable is not set
            or the name is empty.
    """

    fd: int
    name: str | None


def _environ(environ: MutableMapping[str, str] | None) -> MutableMapping[str, str]:
    return os.environ if environ is None else environ


def _unset(environ: MutableMapping[str, str], names: Sequence[str]) -> None:
    for name in names:
        environ.pop(name, None)


def _parse_int(variable: str, text: str, expected: str, *, minimum: int) -> int:
    # int() alone would accept " 3", "+3" and "3_000"; systemd writes plain digits.
    if not text.isdigit() or not text.isascii() or int(text) < minimum:
        raise ConfigError(f"{variable}: expected {expected}, got {text!r}")
    return int(text)


def activated_sockets(
    environ: MutableMapping[str, str] | None = None,
    *,
    pid: int | None = None,
    unset: bool = True,
) -> list[ActivatedSocket]:
    """The sockets systemd passed to this process through socket activation.

    Returns an empty list when ``LISTEN_PID`` or ``LISTEN_FDS`` is not set, or when
    ``LISTEN_PID`` names another process (the variables were inherited from a parent
    that was the one activated).

    Unlike ``sd_listen_fds(3)`` this does not set close-on-exec on the descriptors and
    does not touch their flags at all: the master adopts them as listeners and passes
    them on to the workers it spawns by itself, as it does with the sockets it binds.

    Args:
        environ: The environment to read; ``os.environ`` by default.
        pid: The pid ``LISTEN_PID`` must equal; ``os.getpid()`` by default.
        unset: Remove ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` from
            ``environ`` (whatever the outcome, as libsystemd does), so that child
            processes do not see them.

    Raises:
        ConfigError: A variable is malformed, or ``LISTEN_FDNAMES`` does not have one
            name per descriptor.
    """
    env = _environ(environ)
    try:
        return _read_listen_variables(env, os.getpid() if pid is None else pid)
    finally:
        if unset:
            _unset(env, _LISTEN_VARIABLES)


def _read_listen_variables(env: MutableMapping[str, str], pid: int) -> list[ActivatedSocket]:
    pid_text, count_text = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if pid_text is None or count_text is None:
        return []
    listen_pid = _parse_int("LISTEN_PID", pid_text, "a process id", minimum=1)
    if listen_pid != pid:
        LOGGER.debug("socket activation: LISTEN_PID=%d is not this process (%d)", listen_pid, pid)
        return []
    count = _parse_int("LISTEN_FDS", count_text, "a number of file descriptors", minimum=0)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and LISTEN_FDS_START + count > limit:
        raise ConfigError(
            f"LISTEN_FDS: expected a number of file descriptors below the open files "
            f"limit ({limit}), got {count_text!r}"
        )
    names_text = env.get("LISTEN_FDNAMES")
    if names_text is None:
        names: list[str | None] = [None] * count
    else:
        names = [name or None for name in names_text.split(":")] if count else []
        if len(names) != count:
            raise ConfigError(
                f"LISTEN_FDNAMES: expected {count} names separated by ':' "
                f"(one per LISTEN_FDS), got {names_text!r}"
            )
    sockets = [
        ActivatedSocket(fd=LISTEN_FDS_START + index, name=name) for index, name in enumerate(names)
    ]
    LOGGER.debug("socket activation: %s", sockets)
    return sockets


def listeners_for(
    sockets: Sequence[ActivatedSocket], app_names: Sequence[str | None]
) -> dict[str | None, list[int]]:
    """Share activated sockets between the applications, by name.

    With one application (``[None]`` for a plain server, or a MultiApp with a single
    prefix) every socket goes to it, whatever its name. With several, a socket goes to
    the application whose prefix equals its ``LISTEN_FDNAMES`` name (set
    ``FileDescriptorName=web`` in the socket unit of the ``web`` application).

    Args:
        sockets: What :func:`activated_sockets` returned.
        app_names: The application prefixes, in order; None for an unnamed application.

    Returns:
        Every application name mapped to its descriptors, in socket order; an
        application that gets no socket maps to an empty list.

    Raises:
        ConfigError: With several applications, a socket is unnamed or its name is
            not one of the prefixes.
        ValueError: ``app_names`` is empty.
    """
    if not app_names:
        raise ValueError("listeners_for: expected at least one application name")
    result: dict[str | None, list[int]] = {name: [] for name in app_names}
    if len(app_names) == 1:
        result[app_names[0]].extend(sock.fd for sock in sockets)
        return result
    for sock in sockets:
        if sock.name is None or sock.name not in result:
            expected = ", ".join(repr(name) for name in app_names if name is not None)
            raise ConfigError(
                f"LISTEN_FDNAMES: socket fd {sock.fd} is named {sock.name!r}, which is no "
                f"application's prefix; expected one of {expected} "
                f"(set FileDescriptorName= in the socket unit)"
            )
        result[sock.name].append(sock.fd)
    return result


def _notify_address(text: str) -> str:
    if text.startswith("@"):
        # "@name" is Linux's abstract namespace: the address starts with a NUL byte.
        return "\0" + text[1:]
    if text.startswith("/"):
        return text
    raise ConfigError(
        f"NOTIFY_SOCKET: expected an absolute path or @NAME (abstract socket), got {text!r}"
    )


class Notifier:
    """Sends ``sd_notify(3)`` state reports to the service manager.

    Holds one non-blocking ``AF_UNIX`` datagram socket, not connected: each report is
    sent to the address, so a service manager that re-executed itself and bound its
    socket anew still receives them. Close it with :meth:`close` or ``with``.

    Args:
        address: The socket's path, or its abstract name with a leading NUL byte.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self._logged_failure = False

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier | None:
        """A Notifier for ``NOTIFY_SOCKET``, or None when it is not set or empty.

        Args:
            environ: The environment to read; ``os.environ`` by default.
            unset: Remove ``NOTIFY_SOCKET`` from ``environ``, so that the workers do not
                report to systemd as if they were the service.

        Raises:
            ConfigError: ``NOTIFY_SOCKET`` is neither an absolute path nor ``@NAME``.
        """
        env = _environ(environ)
        text = env.pop("NOTIFY_SOCKET", None) if unset else env.get("NOTIFY_SOCKET")
        if not text:
            return None
        return cls(_notify_address(text))

    def notify(self, **fields: str | int) -> None:
        """Send one report: each field as a ``KEY=value`` line, in the order given.

        ``notifier.notify(READY=1, STATUS="Serving on 0.0.0.0:8000")``. A failed send
        (nobody listening, queue full, socket closed) is not an error: systemd may be
        gone or not care. The first failure is logged at debug level.

        Raises:
            ValueError: No fields, or a value contains a newline (it would be read as
                another field).
        """
        if not fields:
            raise ValueError("notify: expected at least one KEY=value field")
        lines = []
        for key, value in fields.items():
            text = str(int(value)) if isinstance(value, bool) else str(value)
            if "\n" in text:
                raise ValueError(f"notify: the value of {key} contains a newline: {text!r}")
            lines.append(f"{key}={text}")
        try:
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._logged_failure:
                self._logged_failure = True
                LOGGER.debug("cannot notify systemd at %r: %s", self.address, exc)

    def close(self) -> None:
        """Close the socket; later reports are dropped."""
        self._socket.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watchdog_interval(
    environ: MutableMapping[str, str] | None = None,
    *,
    pid: int | None = None,
    unset: bool = True,
) -> float | None:
    """How often to ping the systemd watchdog, in seconds: half its timeout.

    Returns None when ``WATCHDOG_USEC`` is not set, or when ``WATCHDOG_PID`` is set
    and names another process.

    Args:
        environ: The environment to read; ``os.environ`` by default.
        pid: The pid ``WATCHDOG_PID`` must equal; ``os.getpid()`` by default.
        unset: Remove ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``.

    Raises:
        ConfigError: ``WATCHDOG_USEC`` is not a positive integer or ``WATCHDOG_PID``
            is not a process id.
    """
    env = _environ(environ)
    try:
        usec_text, pid_text = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec_text is None:
            return None
        usec = _parse_int("WATCHDOG_USEC", usec_text, "a number of microseconds > 0", minimum=1)
        if pid_text is not None:
            watchdog_pid = _parse_int("WATCHDOG_PID", pid_text, "a process id", minimum=1)
            if watchdog_pid != (os.getpid() if pid is None else pid):
                return None
        return usec / 2 / 1_000_000
    finally:
        if unset:
            _unset(env, _WATCHDOG_VARIABLES)


async def run_watchdog(notifier: Notifier, interval: float, healthy: Callable[[], bool]) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` seconds while ``healthy()`` is true; forever.

    ``healthy`` is the master's own check, e.g. "the supervision loop ran within the
    last interval". While it returns false no ping is sent, so a master that is stuck
    (but whose event loop still runs this task) is killed and restarted by systemd.
    The first check is one interval after the start; pings keep a fixed schedule.
    """
    deadline = trio.current_time()
    unhealthy = False
    while True:
        deadline += interval
        await trio.sleep_until(deadline)
        if healthy():
            if unhealthy:
                LOGGER.info("watchdog: the master is healthy again, pinging systemd")
            unhealthy = False
            notifier.notify(WATCHDOG=1)
        elif not unhealthy:
            unhealthy = True
            LOGGER.warning("watchdog: the master is not healthy, no longer pinging systemd")

"""Bind specs: parse ``--bind`` values (pure) and create listening sockets (master side).

The accepted forms are ``HOST:PORT``, ``HOST``, ``:PORT``, ``[IPV6]:PORT``, ``[IPV6]``,
``unix:PATH``, ``unix:PATH(MODE)`` and ``fd://N``. :func:`parse_bind` turns one into a
:class:`BindSpec` without touching the network; :func:`create_listeners` turns specs into
listening :class:`trio.SocketListener` objects.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import socket
import stat
import sys
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import trio

from ._errors import BindError
from ._types import Address

LOGGER = logging.getLogger("trioserve.bind")

DEFAULT_PORT = 8000
# ":PORT" means every interface, as in gunicorn.
ALL_INTERFACES = "0.0.0.0"

_EXPECTED = "expected HOST:PORT, [IPV6]:PORT, unix:PATH[(MODE)] or fd://N"
_MAX_FD = 2**31 - 1
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_DIGITS = re.compile(r"[0-9]+")
_MODE_SUFFIX = re.compile(r"(?P<path>.*)\((?P<mode>[^()]*)\)", re.DOTALL)
_OCTAL_MODE = re.compile(r"[0-7]{3,4}")
# How long a leftover unix socket file gets to prove that a server still accepts on it.
_PROBE_TIMEOUT = 1.0

# Absolute path of each unix socket file create_listeners() made, so that
# cleanup_listener() still finds it after the listener is closed or the cwd changed.
_CREATED_UNIX_PATHS: weakref.WeakKeyDictionary[trio.SocketListener, str] = (
    weakref.WeakKeyDictionary()
)


class _InvalidSpec(ValueError):
    """A BindSpec whose fields do not describe a bindable address; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid bind spec: {reason}")
        self.reason = reason


def _tcp_host_problem(host: str) -> str | None:
    if not host:
        return "host is empty"
    if host == "unix":
        # "unix:PORT" would read as a unix socket path.
        return "write unix sockets as unix:PATH"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return None
    if not _HOSTNAME.fullmatch(host):
        return f"host {host!r} is not a hostname or IP address"
    return None


def _spec_problem(spec: BindSpec) -> str | None:
    """Why ``spec`` is not a valid spec, or None; valid specs are the ones parse_bind makes."""
    if spec.kind == "tcp":
        if problem := _tcp_host_problem(spec.host):
            return problem
        if not 0 <= spec.port <= 65535:
            return "port must be 0-65535"
        if spec.path or spec.mode is not None or spec.fd != -1:
            return "path, mode and fd do not apply to tcp"
    elif spec.kind == "unix":
        if not spec.path:
            return "unix socket path is empty"
        if "\0" in spec.path:
            return "unix socket path contains a NUL byte"
        if spec.mode is None and spec.path.endswith(")"):
            # The text form would read as a mode, or be rejected as a bad one.
            return "a unix socket path ending in ')' needs a mode, e.g. (0600)"
        if spec.mode is not None and not 0 <= spec.mode <= 0o7777:
            return "mode must be 3 or 4 octal digits"
        if spec.host or spec.port != DEFAULT_PORT or spec.fd != -1:
            return "host, port and fd do not apply to unix"
    elif spec.kind == "fd":
        if not 0 <= spec.fd <= _MAX_FD:
            return "N must be a non-negative integer"
        if spec.host or spec.port != DEFAULT_PORT or spec.path or spec.mode is not None:
            return "host, port, path and mode do not apply to fd"
    else:
        return f"kind must be 'tcp', 'unix' or 'fd', not {spec.kind!r}"
    return None


@attrs.frozen
class BindSpec:
    """Where to listen: a TCP host and port, a unix socket path, or an inherited fd.

    Only the fields of ``kind`` may differ from their defaults; the constructor raises
    :exc:`ValueError` otherwise. ``str(spec)`` is the canonical text form, and
    ``parse_bind(str(spec)) == spec`` for every spec.

    Attributes:
        kind: ``"tcp"``, ``"unix"`` or ``"fd"``.
        host: TCP host: an IPv4 address, an IPv6 address without brackets, or a hostname.
        port: TCP port, 0-65535; 0 lets the OS pick a free port.
        path: Filesystem path of the unix socket.
        mode: Permission bits to give the unix socket file, or None to leave them to umask.
        fd: An inherited, listening ``SOCK_STREAM`` socket descriptor.
    """

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""
    mode: int | None = None
    fd: int = -1

    def __attrs_post_init__(self) -> None:
        if problem := _spec_problem(self):
            raise _InvalidSpec(problem)

    def __str__(self) -> str:
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{host}:{self.port}"
        if self.kind == "unix":
            mode = "" if self.mode is None else f"({self.mode:04o})"
            return f"unix:{self.path}{mode}"
        return f"fd://{self.fd}"


def _bad(text: str, reason: str | None = None) -> ValueError:
    message = f"{_EXPECTED}, got {text!r}"
    return ValueError(message if reason is None else f"{message}; {reason}")


def _parse_port(text: str, port: str) -> int:
    if not port:
        raise _bad(text, "port is missing after ':'")
    if not _DIGITS.fullmatch(port):
        raise _bad(text, "port must be a number")
    # The length check keeps int() away from absurdly long digit strings.
    if len(port) > 5 or int(port) > 65535:
        raise _bad(text, "port must be 0-65535")
    return int(port)


def _parse_unix(text: str) -> BindSpec:
    rest = text.removeprefix("unix:")
    path, mode = rest, None
    if rest.endswith(")"):
        match = _MODE_SUFFIX.fullmatch(rest)
        if match is None or not _OCTAL_MODE.fullmatch(match["mode"]):
            raise _bad(text, "mode must be 3 or 4 octal digits in parentheses, e.g. (0660)")
        path, mode = match["path"], int(match["mode"], 8)
    return BindSpec("unix", path=path, mode=mode)


def _parse_fd(text: str) -> BindSpec:
    number = text.removeprefix("fd://")
    if not _DIGITS.fullmatch(number) or len(number) > 10 or int(number) > _MAX_FD:
        raise _bad(text, "N must be a non-negative integer")
    return BindSpec("fd", fd=int(number))


def _parse_tcp(text: str) -> BindSpec:
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket:
            raise _bad(text, "missing ']' after the IPv6 address")
        if after and not after.startswith(":"):
            raise _bad(text, "expected ':' after ']'")
        if ":" not in host:
            raise _bad(text, f"{host!r} is not an IPv6 address")
        port = _parse_port(text, after[1:]) if after else DEFAULT_PORT
    elif "://" in text:
        scheme = text.partition("://")[0]
        raise _bad(text, f"drop the {scheme + '://'!r} (only fd:// takes a scheme)")
    elif text.count(":") > 1:
        raise _bad(text, "put IPv6 addresses in brackets, e.g. [::1]:8000")
    elif ":" in text:
        host, _, port_text = text.partition(":")
        host = host or ALL_INTERFACES
        port = _parse_port(text, port_text)
    else:
        host, port = text, DEFAULT_PORT
    return BindSpec("tcp", host=host, port=port)


def parse_bind(text: str) -> BindSpec:
    """Parse one bind address; pure, no name resolution and no I/O.

    Args:
        text: ``HOST:PORT``, ``HOST`` (port 8000), ``:PORT`` (all interfaces),
            ``[IPV6]:PORT``, ``[IPV6]``, ``unix:PATH``, ``unix:PATH(0660)`` or ``fd://N``.

    Returns:
        The :class:`BindSpec`; ``str()`` of it gives the canonical text form.

    Raises:
        ValueError: ``text`` is none of the accepted forms; the message shows the forms,
            the bad value and, when there is one, the specific reason.
    """
    if not text:
        raise _bad(text, "it is empty")
    try:
        if text.startswith("unix:"):
            return _parse_unix(text)
        if text.startswith("fd://"):
            return _parse_fd(text)
        return _parse_tcp(text)
    except _InvalidSpec as exc:
        raise _bad(text, exc.reason) from None


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


def _os_error(spec: BindSpec, exc: OSError) -> BindError:
    reason = _reason(exc)
    if exc.errno == errno.EADDRINUSE:
        reason += " (is another server running?)"
    elif exc.errno == errno.EACCES and spec.kind == "tcp" and 0 < spec.port < 1024:
        reason += " (ports below 1024 need root)"
    return BindError(f"cannot listen on {spec}: {reason}")


async def _listen_tcp(
    spec: BindSpec, backlog: int, created: list[trio.socket.SocketType], *, reserve: bool = False
) -> list[trio.SocketListener]:
    try:
        infos = await trio.socket.getaddrinfo(
            spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except trio.socket.gaierror as exc:
        raise BindError(f"cannot listen on {spec}: cannot resolve host {spec.host!r}") from exc
    seen: set[tuple[int, object]] = set()
    listeners = []
    for family, type_, proto, _, sockaddr in infos:
        if (family, sockaddr) in seen:
            continue
        seen.add((family, sockaddr))
        try:
            sock = trio.socket.socket(family, type_, proto)
            created.append(sock)
            if sys.platform != "win32":
                # On Windows SO_REUSEADDR would let two servers share a port.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Lets "[::]:8000" and "0.0.0.0:8000" be bound side by side.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reserve:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            await sock.bind(sockaddr)
            if not reserve:
                sock.listen(backlog)
        except OSError as exc:
            raise _os_error(spec, exc) from exc
        if not reserve:
            listeners.append(trio.SocketListener(sock))
    return listeners


async def reserve_reuse_port(
    specs: Sequence[BindSpec],
) -> tuple[list[trio.socket.SocketType], list[BindSpec]]:
    """For ``--reuse-port``: bind (without listening) each TCP spec with SO_REUSEPORT.

    The master holds these sockets so the ports stay its own (and port 0 is resolved
    once); each worker then listens on the same addresses with :func:`listen_reuse_port`.
    Returns the reserved sockets and the specs that are not TCP (served as usual).
    """
    created: list[trio.socket.SocketType] = []
    others = []
    try:
        for spec in specs:
            if spec.kind == "tcp":
                await _listen_tcp(spec, 0, created, reserve=True)
            else:
                others.append(spec)
    except BaseException:
        for sock in created:
            sock.close()
        raise
    return created, others


def listen_reuse_port(family: int, sockaddr: tuple[Any, ...], backlog: int) -> trio.SocketListener:
    """A worker's own SO_REUSEPORT listener on an address the master reserved."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)  # numeric: nothing to resolve, so a plain blocking bind
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {sockaddr!r} with SO_REUSEPORT: {_reason(exc)}") from exc
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


async def _remove_stale_unix_socket(spec: BindSpec) -> None:
    """Remove a socket file nobody accepts on; refuse to touch anything else."""
    path = trio.Path(spec.path)
    try:
        st = await path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _os_error(spec, exc) from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"cannot listen on {spec}: {spec.path!r} exists and is not a socket")
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            # A server with a full backlog never completes the connect; that still
            # means it is alive, so running out of time counts as "accepting".
            with trio.move_on_after(_PROBE_TIMEOUT):
                await probe.connect(spec.path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass
        except OSError as exc:
            raise _os_error(spec, exc) from exc
        else:
            raise BindError(
                f"cannot listen on unix:{spec.path}: another server is accepting connections on it"
            )
    try:
        await path.unlink(missing_ok=True)
    except OSError as exc:
        raise _os_error(spec, exc) from exc


async def _listen_unix(
    spec: BindSpec, backlog: int, created: list[trio.socket.SocketType]
) -> trio.SocketListener:
    await _remove_stale_unix_socket(spec)
    try:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        created.append(sock)
        await sock.bind(spec.path)
        # Before listen(), so no client can connect while the umask's bits apply.
        if spec.mode is not None:
            await trio.Path(spec.path).chmod(spec.mode)
        sock.listen(backlog)
        # Resolved now: the server may chdir (daemonize) before it cleans up.
        absolute = str(await trio.Path(spec.path).absolute())
    except OSError as exc:
        raise _os_error(spec, exc) from exc
    listener = trio.SocketListener(sock)
    _CREATED_UNIX_PATHS[listener] = absolute
    return listener


def _adopt_fd(spec: BindSpec, created: list[trio.socket.SocketType]) -> trio.SocketListener:
    try:
        stdlib_sock = socket.socket(fileno=spec.fd)
    except OSError as exc:
        raise BindError(f"cannot listen on {spec}: {_reason(exc)}") from exc
    except (ValueError, OverflowError) as exc:
        raise BindError(f"cannot listen on {spec}: bad file descriptor") from exc
    problem = None
    if stdlib_sock.type != socket.SOCK_STREAM:
        problem = "it is not a SOCK_STREAM socket"
    else:
        try:
            if not stdlib_sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                problem = "the socket is not listening"
        except OSError:
            pass  # SO_ACCEPTCONN fails on macOS; trust the caller there, as trio does.
    if problem is not None:
        # The descriptor is not ours to close when we refuse it.
        stdlib_sock.detach()
        raise BindError(f"cannot listen on {spec}: {problem}")
    sock = trio.socket.from_stdlib_socket(stdlib_sock)
    created.append(sock)
    return trio.SocketListener(sock)


def listener_from_fd(fd: int) -> trio.SocketListener:
    """A listener on an inherited, already listening socket descriptor (from the master,
    a previous master, or systemd), trusted as such: no checks, unlike ``fd://N``."""
    return trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))


async def create_listeners(specs: Sequence[BindSpec], *, backlog: int) -> list[trio.SocketListener]:
    """Create one listening socket per spec (per resolved address for TCP hosts).

    TCP sockets get ``SO_REUSEADDR``, and ``IPV6_V6ONLY`` for IPv6. A leftover unix
    socket file that refuses connections is removed first; unix socket files made here
    stay after the listeners close, see :func:`cleanup_listener`. ``fd://N`` adopts the
    descriptor, which must be a listening ``SOCK_STREAM`` socket.

    Args:
        specs: Where to listen, as returned by :func:`parse_bind`.
        backlog: The ``listen()`` backlog of each socket.

    Returns:
        The listeners, in the order of ``specs``.

    Raises:
        BindError: A socket could not be created, resolved, bound or adopted. The
            listeners already created by this call are closed first.
    """
    created: list[trio.socket.SocketType] = []
    listeners: list[trio.SocketListener] = []
    try:
        for spec in specs:
            if spec.kind == "tcp":
                listeners.extend(await _listen_tcp(spec, backlog, created))
            elif spec.kind == "unix":
                listeners.append(await _listen_unix(spec, backlog, created))
            else:
                listeners.append(_adopt_fd(spec, created))
    except BaseException:
        # Synchronous close: aclose() could be cancelled before it closes anything.
        for sock in created:
            sock.close()
        raise
    return listeners


def _unix_path(listener: trio.SocketListener) -> str:
    name = listener.socket.getsockname()
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)


def listener_address(listener: trio.SocketListener) -> Address:
    """The address a listener is bound to: ``(host, port)`` for TCP, the path for unix."""
    if listener.socket.family == socket.AF_UNIX:
        return _unix_path(listener)
    sockname = listener.socket.getsockname()
    return (str(sockname[0]), int(sockname[1]))


def listener_url(listener: trio.SocketListener, scheme: str) -> str:
    """A URL for logs and clients, e.g. ``http://[::1]:8000``; ``unix:PATH`` for unix sockets."""
    return address_url(listener_address(listener), scheme)


def address_url(address: Address, scheme: str) -> str:
    """The URL of a listening address, as :func:`listener_url` writes it."""
    if isinstance(address, str):
        return f"unix:{address}"
    host, port = address
    if ":" in host:
        # RFC 6874: the "%" before an IPv6 zone id is itself escaped inside a URL.
        host = "[" + host.replace("%", "%25") + "]"
    return f"{scheme}://{host}:{port}"


def cleanup_listener(listener: trio.SocketListener) -> None:
    """Remove the socket file of a unix listener, if the path still is a socket.

    Does not close the listener. For listeners from :func:`create_listeners` this works
    after they are closed and after a ``chdir``; for other unix listeners it must be
    called while the listener is open. Other listeners are left alone.
    """
    path = _CREATED_UNIX_PATHS.pop(listener, None)
    if path is None:
        if listener.socket.family != socket.AF_UNIX or listener.socket.fileno() == -1:
            return
        path = _unix_path(listener)
        # An unnamed socket has no file; an abstract (Linux) one starts with NUL.
        if not path or path.startswith("\0"):
            return
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except PermissionError:
        # Privileges were dropped (--user) and the directory is not the account's.
        LOGGER.warning("cannot remove the unix socket file %s: permission denied", path)

"""Accepting connections on the listening sockets.

trioserve runs its own accept loop instead of ``trio.serve_listeners``: a connection
arrives with its peer address (no ``getpeername`` per connection); and it is closed
once, after its handler, instead of through ``aclose_forcefully``, whose cancelled
checkpoint costs more than a small request.

A connection is handed on as its plain socket, non-blocking, with no trio socket or
stream built over it (see :class:`~trioserve._peer.Peer`): the HTTP edge uses the socket
directly. The TCP options trio's streams set (``TCP_NODELAY``, ``TCP_NOTSENT_LOWAT``)
are set on the listening socket instead, once: Linux copies a listener's options to
each socket it accepts, so a connection then costs no ``setsockopt``. The connections
accepted show whether the kernel did; where it did not, they are set on each
connection (see :class:`_TCPOptions`).

While connections keep arriving the loop accepts up to ``ACCEPT_BATCH`` of them per
turn and then lets the other tasks run; it waits on the socket only once the backlog
is empty. (Asking the backlog with a ``poll`` of no timeout instead of ending each
wakeup with an accept that fails did not pay: see docs/performance.md.)

Whatever a connection's handler raises (a bug of ours in the PROXY header or the TLS
handshake, a connection hook, an edge or a raw stream handler that let an error through)
costs that connection only: :func:`_serve`, which every accepted connection passes
through, logs it once at ERROR with its traceback and closes the connection. Left to
propagate, it would cancel the nursery of every connection and end the worker. Only
``trio.Cancelled`` and ``KeyboardInterrupt`` (and the rest of what is not an
``Exception``) go on. The log line is on ``trioserve.connection``, which is rate-limited
(:mod:`trioserve._lograte`) like every line a client can cause once per connection.

Running out of file descriptors (or memory) makes accept() fail until some are free
again; the loop retries every ``_CAPACITY_PAUSE`` seconds. That is logged when it starts,
every ``_CAPACITY_REMINDER`` seconds while it lasts, and once when accepting works again:
not once per retry, which would flood the log just when the machine is short of
everything.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from ._errors import single_error
from ._peer import Peer

LOGGER = logging.getLogger("trioserve.server")
# One connection's lines, which a client can cause once per connection: rate-limited.
CONNECTION_LOGGER = logging.getLogger("trioserve.connection")

ACCEPT_BATCH = 16
# accept() failing for want of resources: wait a little, then try again.
_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
_CAPACITY_PAUSE = 0.1
_CAPACITY_REMINDER = 10.0
# accept() failing for this one connection (it was reset or aborted meanwhile).
_CONNECTION_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",
    )
    if hasattr(errno, name)
)


Handler = Callable[[Peer], Awaitable[object]]


class ConnectionCounter(Protocol):
    """Told of each connection the accept loop serves (``--metrics-bind``'s open and
    accepted connections): counted in the connection's own task, around its handler,
    rather than by a wrapper coroutine, which the task would pass through each time it
    wakes (on every request of a keep-alive connection)."""

    def opened(self) -> None: ...

    def closed(self) -> None: ...


# What trio.SocketStream sets on a TCP socket: no Nagle delay (a response goes out
# at once) and a small unsent-bytes mark (a writer waits before the kernel buffers much).
_TCP_OPTIONS: tuple[tuple[int, int], ...] = ((socket.TCP_NODELAY, 1),)
if hasattr(socket, "TCP_NOTSENT_LOWAT"):
    _TCP_OPTIONS += ((socket.TCP_NOTSENT_LOWAT, 2**14),)


# Connections that come without the listener's options before the loop decides they
# are never copied: those queued before the options were set on the listener lack them
# even where the kernel copies them (Linux).
_COPY_CHECKS = 16


@attrs.define(slots=True)
class _TCPOptions:
    """The TCP options of accepted connections: set on the listener, and on each
    connection only where the kernel does not copy them from the listener."""

    # None until connections show whether the listener's options are copied.
    per_connection: bool | None = None
    # Connections seen without them so far, while per_connection is None.
    missing: int = 0

    @classmethod
    def on_listener(cls, raw: socket.socket) -> _TCPOptions:
        """Set the options on the listening socket ``raw`` (for the connections it
        accepts). A listener that refuses them gets them on each connection."""
        try:
            for name, value in _TCP_OPTIONS:
                raw.setsockopt(socket.IPPROTO_TCP, name, value)
        except OSError:
            return cls(per_connection=True)
        return cls()

    def apply(self, sock: socket.socket) -> None:
        """Give an accepted TCP connection its options (usually: see that it has them)."""
        per_connection = self.per_connection
        if per_connection is None:
            # Are the listener's options copied? This connection's TCP_NODELAY says
            # (they are copied together or not at all). One that lacks it may have been
            # queued before the options were set: only a run of them decides.
            try:
                copied = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            except OSError:
                return  # reset meanwhile; the next connection tells
            if copied:
                self.per_connection = False
                return
            self.missing += 1
            if self.missing >= _COPY_CHECKS:
                self.per_connection = True
            per_connection = True
        if per_connection:
            for name, value in _TCP_OPTIONS:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, name, value)


@attrs.define(slots=True)
class _Starved:
    """accept() failing for want of resources since ``since``: what to log, and when."""

    reason: str
    since: float
    reported: float
    failures: int = 1

    @classmethod
    def start(cls, reason: str) -> _Starved:
        now = trio.current_time()
        LOGGER.error(
            "cannot accept connections: %s; trying again every %gs", reason, _CAPACITY_PAUSE
        )
        return cls(reason, now, now)

    def failed_again(self) -> None:
        self.failures += 1
        now = trio.current_time()
        if now - self.reported >= _CAPACITY_REMINDER:
            self.reported = now
            LOGGER.error(
                "still cannot accept connections after %.0fs: %s", now - self.since, self.reason
            )

    def end(self) -> None:
        LOGGER.warning(
            "accepting connections again after %.1fs (%d attempts failed: %s)",
            trio.current_time() - self.since,
            self.failures,
            self.reason,
        )


async def accept_connections(
    listener: trio.SocketListener,
    handler: Handler,
    nursery: trio.Nursery,
    *,
    counter: ConnectionCounter | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listener`` until cancelled, running ``handler`` for each
    one in ``nursery``; the connection is closed once the handler returns (and then
    ``counter`` told, when given, as it was when the handler began).

    Returns when the listener is closed. Raises the OSError of an accept() that failed
    for a reason other than resources or the one connection.
    """
    # A second socket object on the listener's descriptor, detached (never closed) at
    # the end: the listener stays the descriptor's owner.
    raw = socket.socket(fileno=listener.socket.fileno())
    try:
        raw.setblocking(False)
        server = _fixed_server_address(raw)
        tcp = None if raw.family == socket.AF_UNIX else _TCPOptions.on_listener(raw)
        task_status.started()
        starved: _Starved | None = None
        while True:
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, address = raw.accept()
                except BlockingIOError:
                    if starved is not None:
                        starved.end()
                        starved = None
                    break
                except OSError as exc:
                    if exc.errno in _CONNECTION_ERRNOS:
                        continue
                    if exc.errno in (errno.EBADF, errno.ENOTSOCK, errno.EINVAL):
                        return  # the listener was closed
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    if starved is None:
                        starved = _Starved.start(os.strerror(exc.errno))
                    else:
                        starved.failed_again()
                    await trio.sleep(_CAPACITY_PAUSE)
                    break
                if starved is not None:
                    starved.end()
                    starved = None
                nursery.start_soon(_serve, sock, address, tcp, server, handler, counter)
            else:
                # A full batch: let the new connections (and everyone else) run first.
                await trio.lowlevel.checkpoint()
                continue
            try:
                await trio.lowlevel.wait_readable(raw)
            except trio.ClosedResourceError:
                return
    finally:
        raw.detach()


def _fixed_server_address(raw: socket.socket) -> tuple[str, int | None] | None:
    """The server address every connection of this listener has, if it is fixed: the
    path of a unix socket, or a TCP address bound to one host (not a wildcard)."""
    local = raw.getsockname()
    if raw.family == socket.AF_UNIX:
        return (str(local), None)
    host = str(local[0])
    if host in ("0.0.0.0", "::"):
        return None
    return (host, int(local[1]))


async def _serve(
    sock: socket.socket,
    address: object,
    tcp: _TCPOptions | None,
    server: tuple[str, int | None] | None,
    handler: Handler,
    counter: ConnectionCounter | None,
) -> None:
    try:
        sock.setblocking(False)
    except OSError:
        sock.close()
        return
    client = None
    peer = None
    try:
        if tcp is not None:
            tcp.apply(sock)
            assert isinstance(address, tuple)
            client = (str(address[0]), int(address[1]))
            if server is None:
                try:
                    local = sock.getsockname()
                except OSError:
                    return  # reset before we got to it
                server = (str(local[0]), int(local[1]))
        peer = Peer(None, sock, client, server)
        if counter is not None:
            counter.opened()
        await handler(peer)
    except* Exception as group:
        # Costs this connection, never the nursery of all of them (see the module's
        # docstring); a cancellation in the same group goes on.
        CONNECTION_LOGGER.error(
            "unexpected error while serving a connection from %s; closing it",
            "unix socket" if client is None else f"{client[0]}:{client[1]}",
            exc_info=single_error(group) or group,
        )
    finally:
        if peer is None:
            sock.close()
        else:
            peer.close_socket(sock)
            if counter is not None:
                counter.closed()

"""Accepting connections on the listening sockets.

trioserve runs its own accept loop instead of ``trio.serve_listeners``: a connection
arrives with its peer address (no ``getpeername`` per connection) and with the plain
socket under its stream, which the HTTP edge reads and writes directly; and it is
closed once, after its handler, instead of through ``aclose_forcefully``, whose
cancelled checkpoint costs more than a small request.

While connections keep arriving the loop accepts up to ``ACCEPT_BATCH`` of them per
turn and then lets the other tasks run; it waits on the socket only once the backlog
is empty.

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

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable

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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listener`` until cancelled, running ``handler`` for each
    one in ``nursery``; the connection is closed once the handler returns.

    Returns when the listener is closed. Raises the OSError of an accept() that failed
    for a reason other than resources or the one connection.
    """
    # A second socket object on the listener's descriptor, detached (never closed) at
    # the end: the listener stays the descriptor's owner.
    raw = socket.socket(fileno=listener.socket.fileno())
    try:
        raw.setblocking(False)
        family = raw.family
        server = _fixed_server_address(raw)
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
                nursery.start_soon(_serve, sock, address, family, server, handler)
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
    family: int,
    server: tuple[str, int | None] | None,
    handler: Handler,
) -> None:
    try:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    except OSError:
        sock.close()
        return
    client = None
    try:
        if family != socket.AF_UNIX:
            assert isinstance(address, tuple)
            client = (str(address[0]), int(address[1]))
            if server is None:
                try:
                    local = sock.getsockname()
                except OSError:
                    return  # reset before we got to it
                server = (str(local[0]), int(local[1]))
        await handler(Peer(stream, sock, client, server))
    except* Exception as group:
        # Costs this connection, never the nursery of all of them (see the module's
        # docstring); a cancellation in the same group goes on.
        CONNECTION_LOGGER.error(
            "unexpected error while serving a connection from %s; closing it",
            "unix socket" if client is None else f"{client[0]}:{client[1]}",
            exc_info=single_error(group) or group,
        )
    finally:
        stream.socket.close()

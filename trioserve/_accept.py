"""Accepting connections on the listening sockets.

trioserve runs its own accept loop instead of ``trio.serve_listeners``: a connection
arrives with its peer address (no ``getpeername`` per connection) and with the plain
socket under its stream, which the HTTP edge reads and writes directly; and it is
closed once, after its handler, instead of through ``aclose_forcefully``, whose
cancelled checkpoint costs more than a small request.

While connections keep arriving the loop accepts up to ``ACCEPT_BATCH`` of them per
turn and then lets the other tasks run; it waits on the socket only once the backlog
is empty.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import attrs
import trio

LOGGER = logging.getLogger("trioserve.server")

ACCEPT_BATCH = 16
# accept() failing for want of resources: wait a little, then try again.
_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
_CAPACITY_PAUSE = 0.1
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


@attrs.define(slots=True, eq=False)
class Connection:
    """One accepted connection.

    Attributes:
        stream: The connection as a trio stream.
        sock: The socket under ``stream``, for code that reads and writes it directly.
        client: The peer's (host, port); None on a unix socket.
        server: Our (host, port), or (path, None) on a unix socket.
    """

    stream: trio.SocketStream
    sock: socket.socket
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None


Handler = Callable[[Connection], Awaitable[object]]


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
        while True:
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, address = raw.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _CONNECTION_ERRNOS:
                        continue
                    if exc.errno in (errno.EBADF, errno.ENOTSOCK, errno.EINVAL):
                        return  # the listener was closed
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    LOGGER.error(
                        "cannot accept connections: %s; trying again in %gs",
                        os.strerror(exc.errno),
                        _CAPACITY_PAUSE,
                    )
                    await trio.sleep(_CAPACITY_PAUSE)
                    break
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
    try:
        client = None
        if family != socket.AF_UNIX:
            assert isinstance(address, tuple)
            client = (str(address[0]), int(address[1]))
            if server is None:
                try:
                    local = sock.getsockname()
                except OSError:
                    return  # reset before we got to it
                server = (str(local[0]), int(local[1]))
        await handler(Connection(stream, sock, client, server))
    finally:
        stream.socket.close()

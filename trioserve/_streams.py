"""Helpers about accepted streams: peer addresses and telling disconnects apart."""

from __future__ import annotations

import socket

import trio

DISCONNECT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


def is_disconnect(exc: BaseException) -> bool:
    """True for a peer that went away: a broken or closed stream, or a group of only those."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_disconnect(inner) for inner in exc.exceptions)
    return isinstance(exc, DISCONNECT_ERRORS)


def stream_addresses(
    stream: trio.abc.Stream,
) -> tuple[tuple[str, int] | None, tuple[str, int | None] | None]:
    """(client, server) as the ASGI scope wants them, for a socket stream.

    TCP gives (host, port) pairs; a unix socket gives no client and (path, None) as the
    server. Other streams (memory streams in tests) give (None, None).
    """
    if not isinstance(stream, trio.SocketStream):
        return None, None
    sock = stream.socket
    try:
        if sock.family == socket.AF_UNIX:
            return None, (str(sock.getsockname()), None)
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        return None, None
    return (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1]))

"""Helpers about accepted streams: peer addresses, telling disconnects apart, and
replaying bytes already read (:class:`PrefixedStream`)."""

from __future__ import annotations

import operator
import socket
from collections.abc import Iterator
from contextlib import contextmanager

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


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A stream that first returns ``prefix`` from :meth:`receive_some`, then whatever
    ``transport_stream`` receives.

    For bytes read off a connection before its real consumer takes over, such as what
    arrived after a PROXY protocol header. Everything else is delegated.

    Args:
        transport_stream: The stream to wrap; :meth:`send_eof` needs it to be a
            :class:`trio.abc.HalfCloseableStream`.
        prefix: Bytes to return before reading from ``transport_stream``.

    Attributes:
        transport_stream: The wrapped stream, for callers that need the socket.
    """

    def __init__(self, transport_stream: trio.abc.Stream, prefix: bytes = b"") -> None:
        self.transport_stream = transport_stream
        self._prefix = bytes(prefix)
        self._receiving = False
        self._sending = False

    # Conflicts are detected here rather than left to the wrapped stream: the prefix is
    # served without touching it, and not every stream treats send_eof as a send.
    @contextmanager
    def _receive_turn(self) -> Iterator[None]:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            yield
        finally:
            self._receiving = False

    @contextmanager
    def _send_turn(self) -> Iterator[None]:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True
        try:
            yield
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}")
        with self._receive_turn():
            if not self._prefix:
                return await self.transport_stream.receive_some(max_bytes)
            # Checkpoint before taking the bytes, so a cancelled call loses none of them.
            await trio.lowlevel.checkpoint()
            if max_bytes is None:
                max_bytes = len(self._prefix)
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_turn():
            await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_turn():
            await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Close the sending direction of the wrapped stream.

        Raises:
            TypeError: the wrapped stream cannot half-close (a TLS stream, for one).
        """
        if not isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            raise TypeError(f"{type(self.transport_stream).__name__} does not support send_eof")
        with self._send_turn():
            await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        # Unread prefix bytes go with the stream: a closed stream must not return data.
        self._prefix = b""
        await self.transport_stream.aclose()

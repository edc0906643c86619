"""The one record of an accepted connection that the pipeline and the edges share."""

from __future__ import annotations

import socket
from typing import Any

import attrs
import trio


@attrs.define(slots=True, eq=False)
class Peer:
    """One accepted connection and who is at its two ends.

    The accept loop makes it; the PROXY header (from a trusted proxy) replaces the
    addresses, and the TLS handshake replaces the stream; the edges then serve it.
    Hooks receive a :class:`~trioserve.ConnectionInfo` built from it.

    The accept loop gives a plain socket and no stream: the stream over it is built
    the first time it is asked for. The HTTP edge reads and writes the socket directly,
    so a connection served that way never builds one (a trio socket and a
    ``trio.SocketStream`` fewer per connection).

    Attributes:
        stream: The connection as a trio stream (the TLS stream after a handshake).
        sock: The plain socket under ``stream`` while nothing wraps it (no TLS, no
            replayed PROXY leftovers): the HTTP edge then reads and writes it directly.
        client: The peer's (host, port); None on a unix socket.
        server: Our (host, port), or (path, None) on a unix socket.
        secure: Whether the connection is TLS (https, wss).
        extensions: The ASGI scope's ``extensions`` (``{"tls": ...}``), or None.
    """

    # None until asked for when the accept loop gave only ``sock`` (see ``stream``).
    _stream: trio.abc.Stream | None = attrs.field(alias="stream")
    sock: socket.socket | None
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    secure: bool = False
    extensions: dict[str, Any] | None = None
    # The trio.SocketStream built over the accepted socket, once one was (see close).
    _plain: trio.SocketStream | None = attrs.field(default=None, init=False)

    @property
    def stream(self) -> trio.abc.Stream:
        stream = self._stream
        if stream is None:
            sock = self.sock
            assert sock is not None, "a Peer needs a stream or a socket"
            stream = self._stream = self._plain = trio.SocketStream(
                trio.socket.from_stdlib_socket(sock)
            )
        return stream

    @stream.setter
    def stream(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    def close_socket(self, sock: socket.socket) -> None:
        """Close ``sock``, the socket the accept loop gave, at once (closing a socket
        never blocks): through trio's socket when a stream was built over it, which
        wakes any task waiting on it; else directly.

        Without a stream, only the HTTP edge used the socket, from the connection's own
        task, which is not waiting on it when it closes: there is nobody to wake, and
        the kernel drops the socket from trio's epoll set as it closes it (trio's
        notify_closing would ask it to once more, and for a socket that never waited,
        fail and raise).
        """
        plain = self._plain
        if plain is not None:
            plain.socket.close()
        else:
            sock.close()

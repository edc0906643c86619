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

    Attributes:
        stream: The connection as a trio stream (the TLS stream after a handshake).
        sock: The plain socket under ``stream`` while nothing wraps it (no TLS, no
            replayed PROXY leftovers): the HTTP edge then reads and writes it directly.
        client: The peer's (host, port); None on a unix socket.
        server: Our (host, port), or (path, None) on a unix socket.
        secure: Whether the connection is TLS (https, wss).
        extensions: The ASGI scope's ``extensions`` (``{"tls": ...}``), or None.
    """

    stream: trio.abc.Stream
    sock: socket.socket | None
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    secure: bool = False
    extensions: dict[str, Any] | None = None

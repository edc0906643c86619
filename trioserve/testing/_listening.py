"""What an in-process server and a server process share: where they listen."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import trio

from .._bind import address_url
from .._types import Address

# The line trioserve writes once a socket listens; a worker's lines carry its role.
READY_LINE = re.compile(r"trioserve: (?:\[[^\]]*\] )?listening on (?P<url>\S+)\s*$")

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def address_from_url(url: str) -> Address:
    """The address a listening URL names: (host, port), or the path of ``unix:PATH``."""
    if url.startswith("unix:"):
        return url[len("unix:") :]
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"expected SCHEME://HOST:PORT or unix:PATH, got {url!r}")
    return unquote(parts.hostname), parts.port


def url_for_address(address: Address, scheme: str = "http") -> str:
    """The URL trioserve prints for ``address`` (used when its log line was not seen)."""
    return address_url(address, scheme)


class Listening:
    """Where a test server listens, and what tests derive from it.

    Subclasses provide ``urls`` (one per listening socket, as trioserve prints them) and
    ``addresses`` (the same sockets as ``(host, port)`` tuples and unix socket paths).
    """

    urls: list[str]

    @property
    def addresses(self) -> list[Address]:
        """The listening sockets: ``(host, port)`` for TCP, the path for unix sockets."""
        return [address_from_url(url) for url in self.urls]

    @property
    def url(self) -> str:
        """The first listening socket's URL: ``http://127.0.0.1:PORT`` for HTTP apps,
        ``tcp://…`` for stream handlers, ``ws://…`` for native websocket handlers,
        ``https://…``/``tls://…``/``wss://…`` with TLS, ``unix:PATH`` for a unix socket.

        Raises:
            RuntimeError: nothing listens yet.
        """
        if not self.urls:
            raise RuntimeError(f"{self!r} does not listen yet")
        return self.urls[0]

    @property
    def ws_url(self) -> str:
        """:attr:`url` for WebSocket clients: ``ws://`` (``wss://`` with TLS).

        Raises:
            ValueError: the first socket does not serve HTTP or WebSocket over TCP.
        """
        url = self.url
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in _WS_SCHEMES:
            raise ValueError(f"no WebSocket URL for {url!r}: it does not serve HTTP over TCP")
        return f"{_WS_SCHEMES[scheme]}://{rest}"

    @property
    def port(self) -> int:
        """The port of the first TCP socket.

        Raises:
            ValueError: every socket is a unix socket.
        """
        for address in self.addresses:
            if not isinstance(address, str):
                return address[1]
        raise ValueError(f"{self!r} listens on unix sockets only: {self.urls}")

    async def connect(self) -> trio.SocketStream:
        """Open a plain connection to the first socket (TCP or unix; no TLS handshake).

        Returns:
            A :class:`trio.SocketStream`; close it, e.g. ``async with await server.connect()
            as stream:``.
        """
        address = self.addresses[0] if self.urls else None
        if address is None:
            raise RuntimeError(f"{self!r} does not listen yet")
        if isinstance(address, str):
            return await trio.open_unix_socket(address)
        return await trio.open_tcp_stream(*address)

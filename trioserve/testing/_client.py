"""An httpx client bound to a test server (httpx is optional: imported when asked for)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from ._process import ServerProcess
    from ._server import Server

HTTPX_MISSING = "httpx is not installed; install it to get a client (pip install httpx)"

# The Host header a client of a unix socket sends; any name would do.
_UNIX_BASE_URL = "http://localhost"


def http_client(server: Server | ServerProcess, /, **kwargs: Any) -> httpx.AsyncClient:
    """An :class:`httpx.AsyncClient` whose ``base_url`` is ``server``'s first socket.

    ``server`` is a :class:`Server` or a :class:`ServerProcess`. For a unix socket the
    client connects through it, with ``base_url="http://localhost"``. The client is not
    opened: use ``async with http_client(server) as client:``.

    Args:
        server: A server that listens on HTTP (``http://``, ``https://`` or ``unix:``).
        **kwargs: Passed to :class:`httpx.AsyncClient` (``timeout``, ``headers``,
            ``verify`` for a TLS server...); they win over the defaults here.

    Raises:
        ImportError: httpx is not installed.
        ValueError: the server's first socket does not speak HTTP (a stream handler).
    """
    try:
        import httpx
    except ImportError as exc:
        raise ImportError(HTTPX_MISSING) from exc
    url = server.url
    if url.startswith("unix:"):
        kwargs.setdefault("transport", httpx.AsyncHTTPTransport(uds=url[len("unix:") :]))
        kwargs.setdefault("base_url", _UNIX_BASE_URL)
    elif url.startswith(("http://", "https://")):
        kwargs.setdefault("base_url", url)
    else:
        raise ValueError(f"{server!r} does not serve HTTP at {url!r}: no HTTP client for it")
    return httpx.AsyncClient(**kwargs)

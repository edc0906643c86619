"""HTTP/1.1 ↔ ASGI, without I/O: what a request means to the app, what the app's
messages mean on the wire.

This module uses only the standard library and h11 (a test asserts trio is never
imported from here). The trio edge in ``_serve_http`` feeds it h11 events and app
messages and writes the bytes it decides on.
"""

from __future__ import annotations

import email.utils
import enum
import http
import time
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
SERVER_NAME = b"trioserve"
_REASONS = {status.value: status.phrase.encode("ascii") for status in http.HTTPStatus}


class ASGIProtocolError(Exception):
    """The app sent a message that is not valid at this point of the response."""


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into (raw_path, query_string).

    Absolute-form targets (``http://host/path``, sent to proxies) keep only the path.
    """
    if not target.startswith(b"/") and b"://" in target[:16]:
        _, _, rest = target.partition(b"://")
        # The authority ends at the first '/' or '?'; an empty path means '/'.
        ends = [i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0]
        target = rest[min(ends) :] if ends else b""
        if not target.startswith(b"/"):
            target = b"/" + target
    raw_path, _, query = target.partition(b"?")
    return raw_path, query


def decode_path(raw_path: bytes) -> str:
    """Percent-decode a path and read it as UTF-8 (invalid bytes become U+FFFD)."""
    if b"%" not in raw_path:
        try:
            return raw_path.decode("utf-8")
        except UnicodeDecodeError:
            return raw_path.decode("utf-8", errors="replace")
    return unquote_to_bytes(raw_path).decode("utf-8", errors="replace")


def http_scope(
    request: h11.Request,
    *,
    scheme: str,
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    root_path: str,
    state: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ASGI ``http`` scope for one request.

    ``state`` is the lifespan state; each request gets a shallow copy of it.
    """
    raw_path, query = split_target(request.target)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": scheme,
        "path": decode_path(raw_path),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        # h11 already lowercases header names.
        "headers": [(name, value) for name, value in request.headers],
        "client": client,
        "server": server,
        "extensions": {},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


_date_cache: tuple[int, bytes] = (0, b"")


def date_header() -> bytes:
    """The current time as an HTTP ``Date`` value, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _header_list(raw: Iterable[Any]) -> list[tuple[bytes, bytes]]:
    headers = []
    try:
        for name, value in raw:
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                raise TypeError
            headers.append((name, value))
    except (TypeError, ValueError):
        raise ASGIProtocolError(
            "'headers' must be an iterable of [name, value] pairs of bytes"
        ) from None
    return headers


class ResponsePhase(enum.Enum):
    START = "waiting for http.response.start"
    BODY = "sending the body"
    DONE = "response complete"


class Response:
    """Checks one response's ``send()`` messages and turns them into h11 events.

    Args:
        head: True for a HEAD request: body bytes from the app are dropped.
        close: True to add ``Connection: close`` (the server is stopping, or the
            connection will not be reused).
    """

    def __init__(self, *, head: bool = False, close: bool = False) -> None:
        self.phase = ResponsePhase.START
        self.head = head
        self.close = close
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []

    @property
    def started(self) -> bool:
        """True once http.response.start was accepted."""
        return self.phase is not ResponsePhase.START

    @property
    def done(self) -> bool:
        """True once the last body message was accepted."""
        return self.phase is ResponsePhase.DONE

    def on_send(self, message: MutableMapping[str, Any]) -> list[h11.Event]:
        """The h11 events to send for one app message.

        The status line and headers are held back until the first body message so
        that they go out in the same write.

        Raises:
            ASGIProtocolError: the message is of the wrong type or shape for this phase.
        """
        kind = message.get("type") if isinstance(message, MutableMapping) else None
        if self.phase is ResponsePhase.START:
            if kind != "http.response.start":
                raise ASGIProtocolError(f"expected 'http.response.start' first, got {kind!r}")
            status = message.get("status")
            if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
                raise ASGIProtocolError(f"'status' must be an int from 200 to 599, got {status!r}")
            self._status = status
            self._headers = _header_list(message.get("headers", ()))
            self.phase = ResponsePhase.BODY
            return []
        if self.phase is ResponsePhase.BODY:
            if kind != "http.response.body":
                raise ASGIProtocolError(f"expected 'http.response.body', got {kind!r}")
            body = message.get("body", b"")
            if not isinstance(body, bytes | bytearray | memoryview):
                raise ASGIProtocolError(f"'body' must be bytes, got {type(body).__name__}")
            more = bool(message.get("more_body", False))
            events: list[h11.Event] = []
            if self._status:
                events.append(self._response_event())
                self._status = 0
            if body and not self.head:
                events.append(h11.Data(data=bytes(body)))
            if not more:
                events.append(h11.EndOfMessage())
                self.phase = ResponsePhase.DONE
            return events
        raise ASGIProtocolError(f"the response is complete; got {kind!r} after it")

    def _response_event(self) -> h11.Response:
        headers = self._headers
        names = {name.lower() for name, _ in headers}
        extra = []
        if b"date" not in names:
            extra.append((b"date", date_header()))
        if b"server" not in names:
            extra.append((b"server", SERVER_NAME))
        if self.close:
            extra.append((b"connection", b"close"))
        return h11.Response(
            status_code=self._status,
            headers=headers + extra,
            reason=_REASONS.get(self._status, b""),
        )


def error_response(status: int, message: str) -> list[h11.Event]:
    """A complete plain-text response, always with ``Connection: close``."""
    body = (message.rstrip("\n") + "\n").encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
        (b"date", date_header()),
        (b"server", SERVER_NAME),
    ]
    return [
        h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")),
        h11.Data(data=body),
        h11.EndOfMessage(),
    ]

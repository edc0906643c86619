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
import types
from collections.abc import Iterable, MutableMapping, Sequence
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
    target = request.target
    if target[:1] == b"/" and b"?" not in target:
        raw_path, query = target, b""
    else:
        raw_path, query = split_target(target)
    method = request.method
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": "1.1" if request.http_version == b"1.1" else "1.0",
        "method": _METHODS.get(method) or method.decode("ascii"),
        "scheme": scheme,
        "path": decode_path(raw_path),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": _header_pairs(request.headers),
        "client": client,
        "server": server,
        "extensions": {},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


_METHODS = {
    m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}


def _header_pairs(headers: Any) -> list[tuple[bytes, bytes]]:
    """(lowercased name, value) pairs; h11 has already lowercased the names."""
    # h11's Headers keeps (raw name, name, value) triples: reading them directly avoids
    # its Sequence interface, which costs a method call per item on every request.
    items = getattr(headers, "_full_items", None)
    if items is not None:
        return [(name, value) for _, name, value in items]
    return [(name, value) for name, value in headers]


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
    # Names and values (no CR, LF or NUL: the app must not split the response) are
    # checked by h11 when the response event is built, in _response_event.
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
            connection will not be reused). May be set until the response starts.
        server_header: Add ``Server: trioserve`` unless the app sets a Server header.
        default_headers: Headers added unless the app sets a header of the same name.
        keep_alive_10: The request is HTTP/1.0 with ``Connection: keep-alive``.
        h11_module: ``h11``, or the compiled build ``h11_mypyc`` (same API).
    """

    def __init__(
        self,
        *,
        head: bool = False,
        close: bool = False,
        server_header: bool = True,
        default_headers: Sequence[tuple[bytes, bytes]] = (),
        keep_alive_10: bool = False,
        h11_module: types.ModuleType = h11,
    ) -> None:
        self._h11: Any = h11_module
        self.phase = ResponsePhase.START
        self.head = head
        self.close = close
        self.server_header = server_header
        self.default_headers = default_headers
        self.keep_alive_10 = keep_alive_10
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.no_body = head
        self.length_known = False
        self._pending_head = False

    @property
    def started(self) -> bool:
        """True once http.response.start was accepted."""
        return self.phase is not ResponsePhase.START

    @property
    def done(self) -> bool:
        """True once the last body message was accepted."""
        return self.phase is ResponsePhase.DONE

    @property
    def keeps_alive_10(self) -> bool:
        """True when this response keeps an HTTP/1.0 connection open: its length is known."""
        return self.keep_alive_10 and not self.close and self.length_known

    def on_send(self, message: MutableMapping[str, Any]) -> list[Any]:
        """The h11 events to send for one app message.

        The status line and headers are held back until the first body message so
        that they go out in the same write (and so that a single-message body gets a
        Content-Length instead of chunked framing).

        Raises:
            ASGIProtocolError: the message is of the wrong type or shape for this phase.
        """
        # (The dict test first: an ABC isinstance check is slow on this path.)
        kind = (
            message.get("type")
            if type(message) is dict or isinstance(message, MutableMapping)
            else None
        )
        if self.phase is ResponsePhase.START:
            if kind != "http.response.start":
                raise ASGIProtocolError(f"expected 'http.response.start' first, got {kind!r}")
            status = message.get("status")
            if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
                raise ASGIProtocolError(f"'status' must be an int from 200 to 599, got {status!r}")
            self.headers = _header_list(message.get("headers", ()))
            self.status = status
            self.no_body = self.head or status in (204, 304)
            self._pending_head = True
            self.phase = ResponsePhase.BODY
            return []
        if self.phase is ResponsePhase.BODY:
            if kind != "http.response.body":
                raise ASGIProtocolError(f"expected 'http.response.body', got {kind!r}")
            body = message.get("body", b"")
            if not isinstance(body, bytes | bytearray | memoryview):
                raise ASGIProtocolError(f"'body' must be bytes, got {type(body).__name__}")
            more = bool(message.get("more_body", False))
            events: list[Any] = []
            if self._pending_head:
                events.append(self._response_event(None if more else len(body)))
                self._pending_head = False
            if body and not self.no_body:
                events.append(self._h11.Data(data=bytes(body)))
            if not more:
                events.append(self._h11.EndOfMessage())
                self.phase = ResponsePhase.DONE
            return events
        raise ASGIProtocolError(f"the response is complete; got {kind!r} after it")

    def _response_event(self, whole_body_length: int | None) -> Any:
        headers = self.headers
        names = {name.lower() for name, _ in headers}
        extra = []
        if b"date" not in names:
            extra.append((b"date", date_header()))
        if self.server_header and b"server" not in names:
            extra.append((b"server", SERVER_NAME))
        for name, value in self.default_headers:
            if name.lower() not in names:
                extra.append((name, value))
        self.length_known = b"content-length" in names or self.no_body
        if (
            not self.length_known
            and whole_body_length is not None
            and b"transfer-encoding" not in names
        ):
            # The whole body is in this one message: give its length rather than chunk it.
            extra.append((b"content-length", str(whole_body_length).encode("ascii")))
            self.length_known = True
        if self.close:
            extra.append((b"connection", b"close"))
        try:
            return self._h11.Response(
                status_code=self.status,
                headers=headers + extra,
                reason=_REASONS.get(self.status, b""),
            )
        except self._h11.LocalProtocolError as exc:
            # A header name that is not a token, or CR, LF or NUL in a value: never sent.
            self.phase = ResponsePhase.START
            raise ASGIProtocolError(f"invalid response header: {exc}") from None


def error_response(
    status: int,
    message: str,
    *,
    server_header: bool = True,
    h11_module: types.ModuleType = h11,
) -> list[Any]:
    """A complete plain-text response, always with ``Connection: close``."""
    mod: Any = h11_module
    body = (message.rstrip("\n") + "\n").encode("utf-8")
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
        (b"date", date_header()),
    ]
    if server_header:
        headers.append((b"server", SERVER_NAME))
    return [
        mod.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")),
        mod.Data(data=body),
        mod.EndOfMessage(),
    ]

"""HTTP/1.1 ↔ ASGI, without I/O: what a request means to the app, what the app's
messages mean on the wire.

This module uses only the standard library and h11 (a test asserts trio is never
imported from here; h11 only parses requests). The trio edge in ``_serve_http``
feeds it the requests h11 parsed and the app's messages, and writes the bytes that
:class:`Response` serializes.
"""

from __future__ import annotations

import abc
import email.utils
import enum
import http
import os
import time
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import unquote_to_bytes

import h11

from .compiled import mypyc_attr
from .validate import FORBIDDEN_IN_VALUE, TOKEN

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
SERVER_NAME = b"trioserve"


class ASGIProtocolError(Exception):
    """The app sent a message that is not valid at this point of the response."""


class PathSend(Exception):
    """Raised by :meth:`Response.on_send` for an ``http.response.pathsend`` message: the
    body is the content of the file at ``path`` (absolute), which the edge reads and
    sends (see :meth:`Response.file_body`); the response is complete after it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


# Single bytes as ints: ``int in bytes`` is a plain byte search, where ``b"?" in bytes``
# first tries the operand as an int and builds (and drops) a TypeError, about four
# times the cost on every request.
_QUESTION_MARK = ord("?")
_PERCENT = ord("%")
_NUL = 0


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
    if _PERCENT not in raw_path:
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
    headers: list[tuple[bytes, bytes]] | None = None,
) -> dict[str, Any]:
    """The ASGI ``http`` scope for one request.

    ``state`` is the lifespan state; each request gets a shallow copy of it.
    ``headers`` are the request's (name, value) pairs if already made by
    :func:`header_pairs`. ``path`` and ``raw_path`` begin with ``root_path`` (see
    :func:`rooted`).
    """
    target = request.target
    if target[:1] == b"/" and _QUESTION_MARK not in target:
        raw_path, query = target, b""
    else:
        raw_path, query = split_target(target)
    if _PERCENT not in raw_path and raw_path.isascii():
        path = raw_path.decode("ascii")  # (most paths: decode_path's answer, a call less)
    else:
        path = decode_path(raw_path)
    if root_path:
        path, raw_path = rooted(root_path, path, raw_path)
    method = request.method
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": "1.1" if request.http_version == b"1.1" else "1.0",
        "method": _METHODS.get(method) or method.decode("ascii"),
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": header_pairs(request.headers) if headers is None else headers,
        "client": client,
        "server": server,
        "extensions": {},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


def rooted(root_path: str, path: str, raw_path: bytes) -> tuple[str, bytes]:
    """``path`` and ``raw_path`` with ``root_path`` (the prefix a proxy stripped) in front.

    The ASGI spec has ``path`` include ``root_path``, as ``SCRIPT_NAME`` + ``PATH_INFO`` in
    WSGI; Starlette (>= 0.35) and asgiref route on the part after ``root_path``, and build
    URLs and redirects from the whole, as served by uvicorn (>= 0.26).
    """
    return root_path + path, root_path.encode("utf-8") + raw_path


_METHODS = {
    m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}


def header_pairs(headers: Any) -> list[tuple[bytes, bytes]]:
    """(lowercased name, value) pairs; h11 has already lowercased the names."""
    # h11's Headers keeps (raw name, name, value) triples: reading them directly avoids
    # its Sequence interface, which costs a method call per item on every request.
    if type(headers) is list:
        return headers  # (already pairs: the httptools parser's, see _proto.llhttp)
    items = getattr(headers, "_full_items", None)
    if items is not None:
        return [(name, value) for _, name, value in items]
    return [(name, value) for name, value in headers]


def client_keep_alive(request: Any, headers: list[tuple[bytes, bytes]] | None = None) -> bool:
    """Whether the client lets the connection carry another request after this one.

    HTTP/1.1 keeps the connection unless a ``Connection`` header says ``close``;
    HTTP/1.0 closes it unless one says ``keep-alive`` (and none says ``close``).
    ``headers``: as for :func:`http_scope`.
    """
    keep_alive: bool = request.http_version >= b"1.1"
    for name, value in header_pairs(request.headers) if headers is None else headers:
        if name == b"connection":
            if value.lower() == b"close":
                return False  # (the usual value: no tokens to split)
            tokens = _tokens(value)
            if b"close" in tokens:
                return False
            if b"keep-alive" in tokens:
                keep_alive = True
    return keep_alive


def _tokens(value: bytes) -> list[bytes]:
    """The lowercased items of a comma-separated header value."""
    return [token for token in (item.strip() for item in value.lower().split(b",")) if token]


# (second, Date value, date line, date and server lines)
_date_cache: tuple[int, bytes, bytes, bytes] = (0, b"", b"", b"")


def _date_line() -> bytes:
    """The ``date`` header line of a response, formatted at most once a second."""
    return _date_lines()[2]


def date_value() -> bytes:
    """The value of a response's ``date`` header now (formatted at most once a second)."""
    return _date_lines()[1]


# (The clock as a global: on_send reads it inline on every request, and tests replace
# it: compiled with mypyc, a call of time.time or of _date_lines would not see a
# replacement.)
_time = time.time


def _date_lines() -> tuple[int, bytes, bytes, bytes]:
    global _date_cache
    now = int(_time())
    if _date_cache[0] != now:
        value = email.utils.formatdate(now, usegmt=True).encode("ascii")
        line = b"date: " + value + b"\r\n"
        _date_cache = (now, value, line, line + _SERVER_LINE)
    return _date_cache


# -- serializing responses ---------------------------------------------------------------

_STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in http.HTTPStatus
}
_SERVER_LINE = b"server: " + SERVER_NAME + b"\r\n"
_CHUNKED_LINE = b"Transfer-Encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
# RFC 9110 section 5.1: a field name is a token. CR or LF in a value would let the app
# split the response; NUL no client accepts.
_TOKEN = TOKEN
_FORBIDDEN = FORBIDDEN_IN_VALUE
# h11's limit; 20 digits is already far beyond any real body.
_MAX_LENGTH_DIGITS = 20
# Header names already found to be tokens, mapped to their lowercase form: apps send
# the same few names over and over, and a dict look-up is cheaper than a regex match.
_checked_names: dict[bytes, bytes] = {}
_MAX_CHECKED_NAMES = 1024
# What Response._take_headers made of the header lists apps sent, by their items: the
# header lines to copy, the Content-Length, whether nothing in them stands in the way of
# the common answer, and the rarer flags ((attribute, value) pairs, or None). Bounded:
# at most this many lists, each of at most this many bytes of lines.
_known_heads: dict[tuple[Any, ...], tuple[bytes, int | None, bool, Any]] = {}
_MAX_KNOWN_HEADS = 256
_MAX_KNOWN_HEAD = 2048
# Headers that decide the framing or the connection: never copied as the app gave them.
_FRAMING_NAMES = frozenset((b"content-length", b"transfer-encoding", b"connection"))
# Headers that need more than copying: the framing ones, and those we would add.
_SPECIAL_NAMES = _FRAMING_NAMES | {b"date", b"server"}


# The end of the common answer's head (see Response.on_send) by body size: most apps
# answer with few different sizes. Bounded (cleared when full).
_LENGTH_LINES: dict[int, bytes] = {}
_MAX_LENGTH_LINES = 1024


def _length_line(size: int) -> bytes:
    line = b"content-length: %d\r\n\r\n" % size
    if len(_LENGTH_LINES) >= _MAX_LENGTH_LINES:
        _LENGTH_LINES.clear()
    _LENGTH_LINES[size] = line
    return line


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


def _checked_name(name: bytes) -> bytes:
    """The lowercase form of a header name the app gave, which must be a token."""
    lower = _checked_names.get(name)
    if lower is None:
        if _TOKEN.fullmatch(name) is None:
            raise ASGIProtocolError(f"invalid response header: illegal header name {name!r}")
        lower = bytes(name).lower()
        if len(_checked_names) < _MAX_CHECKED_NAMES:
            _checked_names[bytes(name)] = lower
    return lower


def _check_value(name: bytes, value: bytes) -> None:
    if _FORBIDDEN.search(value) is not None:
        raise ASGIProtocolError(
            f"invalid response header: illegal value {value!r} of {name!r}"
            " (CR, LF and NUL are not allowed)"
        )


def _content_length(value: bytes) -> int:
    """The length a Content-Length value gives: "5", or "5, 5" as some proxies join it."""
    if value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
        return int(value)  # (nearly always)
    digits = value.strip()
    if not digits.isdigit():
        lengths = {item.strip() for item in value.split(b",")}
        digits = lengths.pop() if len(lengths) == 1 else b""
    if not digits.isdigit() or len(digits) > _MAX_LENGTH_DIGITS:
        raise ASGIProtocolError(f"invalid response header: bad Content-Length {value!r}")
    return int(digits)


def check_status(status: Any) -> int:
    """The status of an ``http.response.start`` message, which must be an int (or an
    IntEnum such as ``http.HTTPStatus.OK``) from 200 to 599; the rule of every protocol.

    Raises:
        ASGIProtocolError: it is not.
    """
    if type(status) is not int and isinstance(status, int) and not isinstance(status, bool):
        status = int(status)
    if type(status) is not int or not 200 <= status <= 599:
        raise ASGIProtocolError(f"'status' must be an int from 200 to 599, got {status!r}")
    return status


# The checks of a response head's fields that every protocol makes (the HTTP/2
# serializer in http2 shares them): a name must be a token (its lowercase form is
# returned), a value must hold no CR, LF or NUL, a Content-Length must be a length.
checked_header_name = _checked_name
check_header_value = _check_value
content_length_value = _content_length


class ResponsePhase(enum.Enum):
    START = "waiting for http.response.start"
    BODY = "sending the body"
    # After the body of a response whose start said "trailers": True.
    TRAILERS = "sending the trailers"
    DONE = "response complete"


# The members as module constants, for the code run on every request: a member read
# through its class (ResponsePhase.DONE) is a descriptor call on CPython 3.11, about ten
# times the cost of reading a global.
_START = ResponsePhase.START
_BODY = ResponsePhase.BODY
_TRAILERS = ResponsePhase.TRAILERS
_DONE = ResponsePhase.DONE


class _Framing(enum.Enum):
    LENGTH = "content-length"
    CHUNKED = "chunked"
    CLOSE = "close-delimited"  # HTTP/1.0 without a length: the close ends the body
    NONE = "no body"  # HEAD, 204, 304


# (As for ResponsePhase above.)
_LENGTH = _Framing.LENGTH
_CHUNKED = _Framing.CHUNKED
_CLOSE = _Framing.CLOSE
_NONE = _Framing.NONE


# What Response keeps of http.response.start (instance attributes over class defaults).
_START_STATE = (
    "status",
    "headers",
    "_pending_head",
    "_lines",
    "_length",
    "_app_chunked",
    "_connection",
    "_has_date",
    "_has_server",
    "_plain_headers",
    "trailers",
)


# What a response produces for the transport: bytes (HTTP/1.1), actions (HTTP/2).
_Output = TypeVar("_Output")


# Compiled in the optional mypyc build; HTTP/2's H2Response, pure Python, extends it.
@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseProgress(abc.ABC, Generic[_Output]):
    """Where one response is, as the exchange reads it: the part of the state and the
    message rules that the HTTP/1.1 :class:`Response` and the HTTP/2 response share."""

    phase: ResponsePhase
    status = 0
    # True once the connection (HTTP/1.1) or the stream (HTTP/2) cannot carry on normally
    # after this response.
    must_close = False
    # The head was accepted but is held back until the first body message.
    _pending_head = False
    # The wall-clock time read as the whole response was serialized in one piece (for
    # its Date line): the exchange takes it as the time the response completed, when
    # that piece is written out at once, instead of reading the clock again. 0.0 when
    # the response was not serialized so.
    done_at = 0.0

    @property
    def started(self) -> bool:
        """True once http.response.start was accepted."""
        return self.phase is not _START

    @property
    def done(self) -> bool:
        """True once the last message was accepted."""
        return self.phase is _DONE

    @property
    def head_sent(self) -> bool:
        """True once the status and headers were produced."""
        return self.phase is not _START and not self._pending_head

    @property
    def sent_status(self) -> int:
        """The status of the head that went out (for the access log): 0 while none did,
        the error's once ``fail()`` replaced the response."""
        return self.status if self.head_sent else 0

    @property
    def keep_alive(self) -> bool:
        """True when the response is complete and the connection may carry another."""
        return self.phase is _DONE and not self.must_close

    def _checked_trailers(
        self, kind: Any, message: MutableMapping[str, Any]
    ) -> list[tuple[bytes, bytes]]:
        """The checked fields of an ``http.response.trailers`` message. A bad one ends
        the response: its body is out, so it can only be cut (HTTP/1.1: the connection
        closes; HTTP/2: the stream is reset)."""
        try:
            if kind != TRAILERS:
                raise ASGIProtocolError(f"expected 'http.response.trailers', got {kind!r}")
            return trailer_fields(message)
        except ASGIProtocolError:
            self.must_close = True
            self.phase = _DONE
            raise

    @abc.abstractmethod
    def _early_hint(self, message: MutableMapping[str, Any]) -> _Output:
        """The protocol's output for an ``http.response.early_hint`` message."""

    def _not_a_body(self, kind: Any, message: MutableMapping[str, Any]) -> _Output:
        """A message other than ``http.response.body`` while the body is due: an early
        hint, a pathsend (raised for the exchange to serve), or the app's error."""
        if kind == EARLY_HINT:
            return self._early_hint(message)
        if kind == PATHSEND:
            # The exchange sends the file (sendfile, or as body messages).
            raise PathSend(pathsend_path(message))
        raise ASGIProtocolError(f"expected 'http.response.body', got {kind!r}")


class Response(ResponseProgress[bytes]):
    """Checks one response's ``send()`` messages and serializes them to HTTP/1.1 bytes.

    It also decides whether the connection outlives the response: see
    :attr:`keep_alive`.

    Args:
        head: True for a HEAD request: body bytes from the app are dropped.
        close: True to add ``Connection: close`` and end the connection after this
            response (the server is stopping). May be set until the response starts.
        server_header: Add ``Server: trioserve`` unless the app sets a Server header.
        default_headers: Headers added unless the app sets a header of the same name.
        keep_alive: The client lets the connection be reused (see
            :func:`client_keep_alive`).
        http_10: The request is HTTP/1.0: no chunked framing (a body of unknown
            length ends with the connection), and ``Connection: keep-alive`` on a
            response that keeps the connection.
    """

    # Defaults at class level: most responses never change most of these, and one
    # response is made per request.
    status = 0
    # The app's headers as it gave them (for the access log).
    headers: Sequence[Any] = ()
    # True once the connection must not be reused after this response: decided with
    # the head, or later when the body ends short or overruns its length.
    must_close = False
    # Body bytes serialized so far, framing not counted.
    body_bytes = 0
    # How many bytes the body fell short of its Content-Length, once it ended.
    missing = 0
    _pending_head = False
    _framing = _NONE
    _remaining = 0
    # What http.response.start said, checked: the header lines to copy as they are,
    # and what the framing and connection headers and the names said.
    _lines = b""
    _length: int | None = None
    _app_chunked = False
    _connection: list[bytes] | None = None
    _has_date = False
    _has_server = False
    _plain_headers = False
    # The common answer, on a connection that the client closes after it (see __init__).
    _plain_close = False
    # The ASGI trailers extension: the app's start said "trailers": True (its body is
    # then followed by http.response.trailers messages); the exchange says whether the
    # client takes them (set before the start, see accepts_trailers); and whether they
    # go out, after the last chunk, with the lines gathered so far.
    trailers = False
    trailers_accepted = False
    _deliver_trailers = False
    _trailer_lines: list[bytes] | None = None

    def __init__(
        self,
        *,
        head: bool = False,
        close: bool = False,
        server_header: bool = True,
        default_headers: Sequence[tuple[bytes, bytes]] = (),
        keep_alive: bool = True,
        http_10: bool = False,
    ) -> None:
        self.phase = _START
        self.head = head
        self.no_body = head
        self.close = close
        self.server_header = server_header
        self.default_headers = default_headers
        self.client_keep_alive = keep_alive
        self.http_10 = http_10
        # Nothing about the request or the settings stands in the way of the common
        # answer (see on_send).
        self._plain = keep_alive and not http_10 and not head and server_header
        if default_headers:
            self._plain = False
        elif not keep_alive and not http_10 and not head and server_header:
            # The same, on a connection the client closes after it (Connection: close).
            self._plain_close = True

    def on_send(self, message: MutableMapping[str, Any]) -> bytes:
        """The bytes to write for one app message; b"" when there are none yet.

        The status line and headers are held back until the first body message so
        that they go out in the same write (and so that a single-message body gets a
        Content-Length instead of chunked framing).

        Raises:
            ASGIProtocolError: the message is of the wrong type or shape for this
                phase, a header is invalid, or the body is longer than its
                Content-Length. While the head is not serialized yet, the response
                is back at its start; after that it is done and must close.
        """
        # (The dict test first: an ABC isinstance check is slow on this path.)
        kind = (
            message.get("type")
            if type(message) is dict or isinstance(message, MutableMapping)
            else None
        )
        phase = self.phase
        if phase is _START:
            if kind != "http.response.start":
                if kind == EARLY_HINT:
                    return self._early_hint(message)
                raise ASGIProtocolError(f"expected 'http.response.start' first, got {kind!r}")
            status = message.get("status")
            if type(status) is not int or not 200 <= status <= 599:
                status = check_status(status)
            raw = message.get("headers", ())
            # A header list seen before (see _take_headers), without a flag of the rarer
            # kind: what its checks made of it, without the call.
            known = None
            if type(raw) is list:
                try:
                    known = _known_heads.get(tuple(raw))
                except TypeError:
                    known = None  # (an unhashable item: _take_headers says what)
            if known is not None and known[3] is None:
                self._lines, self._length, self._plain_headers, _ = known
                self.headers = raw
            else:
                try:
                    self._take_headers(raw)
                except ASGIProtocolError:
                    self._forget_start()
                    raise
            self.status = status
            if message.get("trailers"):
                self.trailers = True
                self._plain_headers = False
            if status == 204 or status == 304:
                self.no_body = True
                self._plain_headers = False
            self._pending_head = True
            self.phase = _BODY
            return b""
        if phase is _BODY:
            if kind != "http.response.body":
                return self._not_a_body(kind, message)
            body = message.get("body", b"")
            if type(body) is not bytes and not isinstance(body, bytearray | memoryview):
                raise ASGIProtocolError(f"'body' must be bytes, got {type(body).__name__}")
            more = message.get("more_body", False)
            if self._pending_head:
                size = len(body)
                length = self._length
                if (
                    not more
                    and self._plain
                    and self._plain_headers
                    and not self.close
                    and (length is None or length == size)
                ):
                    # The common answer, in one piece: the whole body, framed by its
                    # length, on a connection that stays open, with our Date and Server
                    # lines. (Inline: the calls cost more than the joining.)
                    self._pending_head = False
                    self.phase = _DONE
                    self.body_bytes = size
                    date = _date_cache
                    self.done_at = now = _time()
                    if date[0] != int(now):
                        date = _date_lines()
                    status = self.status
                    return b"".join(
                        (
                            _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status,
                            self._lines,
                            date[3],
                            _LENGTH_LINES.get(size) or _length_line(size),
                            body if type(body) is bytes else bytes(body),
                        )
                    )
                return self._head_and_body(body, bool(more))
            more = bool(more)
            if self._framing is _LENGTH and len(body) > self._remaining:
                # Part of the response is out already: only closing can end it.
                self.must_close = True
                self.phase = _DONE
                raise ASGIProtocolError(
                    f"the body is longer than its Content-Length: {len(body)} more bytes"
                    f" with {self._remaining} left"
                )
            parts: list[bytes] = []
            self._add_body(parts, body, more)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if phase is _TRAILERS:
            return self._trailers(kind, message)
        raise ASGIProtocolError(f"the response is complete; got {kind!r} after it")

    def file_body(self, size: int) -> tuple[bytes, int] | None:
        """For a body that is the whole rest of the response, ``size`` bytes that the
        edge writes itself (a file, with ``os.sendfile``): the bytes to write before it
        (the head, if it has not gone out) and how many of the file's bytes to write (0
        when the response has no body: HEAD, 204, 304). The response is complete then.

        The head says ``Content-Length`` as the app set it, or ``size`` if it set none.
        None when the file's bytes must pass through :meth:`on_send` instead: the
        framing needs them (chunked, trailers, HTTP/1.0 without a length) or ``size``
        differs from the length the app promised (on_send reports that).
        """
        if self.phase is not _BODY or self.trailers:
            return None
        if self._pending_head:
            if self._app_chunked or (self._length is not None and self._length != size):
                return None
            self._length = size
            head = self._head_and_body(b"", True)
        else:
            head = b""
        framing = self._framing
        if framing is _NONE:
            count = 0
        elif framing is _LENGTH and self._remaining == size:
            count = size
        else:
            return None
        self._remaining = 0
        self.body_bytes += count
        self.phase = _DONE
        return head, count

    def _early_hint(self, message: MutableMapping[str, Any]) -> bytes:
        """A ``103 Early Hints`` response for an ``http.response.early_hint`` message,
        while the final head has not gone out; b"" when it has, to an HTTP/1.0 client
        (RFC 9110 section 15.2: no 1xx to those), or when there are no links."""
        links = early_hint_links(message)
        if not links or self.http_10 or self.head_sent:
            return b""
        return b"".join([_EARLY_HINTS_LINE, *(b"link: %s\r\n" % link for link in links), b"\r\n"])

    def _trailers(self, kind: Any, message: MutableMapping[str, Any]) -> bytes:
        """One ``http.response.trailers`` message: the trailer section after the last
        chunk once ``more_trailers`` is false, when the trailers go out (see
        :attr:`trailers_accepted`); b"" otherwise."""
        fields = self._checked_trailers(kind, message)
        more = bool(message.get("more_trailers", False))
        if self._deliver_trailers:
            lines = self._trailer_lines
            if lines is None:
                self._trailer_lines = lines = []
            for name, value in fields:
                lines += (name, b": ", value, b"\r\n")
        if more:
            return b""
        self.phase = _DONE
        if not self._deliver_trailers:
            return b""
        return b"".join([b"0\r\n", *(self._trailer_lines or ()), b"\r\n"])

    def fail(self, status: int, message: str) -> bytes:
        """The error response that replaces this one, which must not have started: a
        plain-text body (see :func:`error_response`), and the connection closes."""
        assert self.phase is _START, "the response has started"
        self.phase = _DONE
        self.status = status
        self.must_close = True
        return error_response(status, message, server_header=self.server_header)

    def _take_headers(self, raw: Iterable[Any]) -> None:
        """Check the app's headers and keep what the head needs of them.

        An app usually sends the same header list again and again (the same names and
        values): what the checks made of a list is kept in ``_known_heads``, keyed by
        its items, and the next equal list costs a dict look-up.
        """
        key: tuple[Any, ...] | None = None
        if type(raw) is list:
            try:
                key = tuple(raw)
                known = _known_heads.get(key)
            except TypeError:
                # (An unhashable item: a pair as a list, a bytearray. Not kept.)
                key = known = None
            if known is not None:
                self._lines, self._length, self._plain_headers, rare = known
                if rare is not None:
                    for name, value in rare:
                        setattr(self, name, value)
                self.headers = raw
                return
        lines: list[bytes] = []
        checked = _checked_names
        # Until a header says otherwise, nothing in them changes the common answer (see
        # on_send).
        self._plain_headers = True
        try:
            headers = raw if type(raw) is list else list(raw)
            for name, value in headers:
                lower = checked.get(name)
                if lower is None:
                    if not isinstance(name, bytes):
                        raise TypeError
                    lower = _checked_name(name)
                if type(value) is not bytes and not isinstance(value, bytes):
                    raise TypeError
                if lower in _SPECIAL_NAMES and self._take_special(lower, name, value):
                    continue
                lines += (name, b": ", value, b"\r\n")
        except (TypeError, ValueError):
            raise ASGIProtocolError(
                "'headers' must be an iterable of [name, value] pairs of bytes"
            ) from None
        block = b"".join(lines)
        # The names are tokens and the separators ours: the block holds one CR and one
        # LF per header, and no NUL, unless a value brings its own.
        count = len(lines) >> 2
        if block.count(b"\n") != count or block.count(b"\r") != count or _NUL in block:
            for name, value in headers:
                _check_value(name, value)
        self.headers = headers
        self._lines = block
        if key is not None and len(block) <= _MAX_KNOWN_HEAD:
            self._know_head(key, block)

    def _know_head(self, key: tuple[Any, ...], block: bytes) -> None:
        """Keep what the checks made of a header list (see :meth:`_take_headers`):
        only for exact pairs of exact bytes, whose equality is that of their bytes."""
        for item in key:
            if type(item) is not tuple or len(item) != 2:
                return
            name, value = item
            if type(name) is not bytes or type(value) is not bytes:
                return
        # The rare attributes the checks moved off their class defaults (False, None).
        # (Compared with the default, not looked up in the instance's __dict__: a Response
        # compiled with mypyc has none.)
        rare = tuple(
            (name, value)
            for name in ("_app_chunked", "_connection", "_has_date", "_has_server")
            if (value := getattr(self, name)) is not False and value is not None
        )
        if len(_known_heads) >= _MAX_KNOWN_HEADS:
            # Many different lists (a value that changes with each response): start over
            # rather than track which are used.
            _known_heads.clear()
        _known_heads[key] = (block, self._length, self._plain_headers, rare or None)

    def _forget_start(self) -> None:
        """Back to waiting for http.response.start, as if none came: what the start set
        (``_START_STATE``) back to the class defaults. (Assigned one by one, not popped
        from the instance's __dict__: a Response compiled with mypyc has none.)"""
        self.status = 0
        self.headers = ()
        self._pending_head = False
        self._lines = b""
        self._length = None
        self._app_chunked = False
        self._connection = None
        self._has_date = False
        self._has_server = False
        self._plain_headers = False
        self.trailers = False
        self.phase = _START
        self.no_body = self.head

    def _take_special(self, lower: bytes, name: bytes, value: bytes) -> bool:
        """Note a framing header of the app (Content-Length, Transfer-Encoding or
        Connection: True, we write our own) or a Date or Server header (False: it is
        copied, and we add none)."""
        if lower == b"content-length":
            self._take_length(value)
            return True
        self._plain_headers = False
        if lower == b"date":
            self._has_date = True
            return False
        if lower == b"server":
            self._has_server = True
            return False
        self._take_framing_header(lower, name, value)
        return True

    def _take_length(self, value: bytes) -> None:
        length = _content_length(value)
        if self._length is not None and length != self._length:
            raise ASGIProtocolError("invalid response header: conflicting Content-Length headers")
        self._length = length

    def _take_framing_header(self, lower: bytes, name: bytes, value: bytes) -> None:
        """Note a Transfer-Encoding or Connection header of the app."""
        if lower == b"transfer-encoding":
            if self._app_chunked:
                raise ASGIProtocolError(
                    "invalid response header: more than one Transfer-Encoding header"
                )
            if value.strip().lower() != b"chunked":
                raise ASGIProtocolError(
                    f"invalid response header: Transfer-Encoding {value!r} is not"
                    " supported, only 'chunked'"
                )
            self._app_chunked = True
        else:
            _check_value(name, value)
            self._connection = (self._connection or []) + _tokens(value)

    def _head_and_body(self, body: bytes | bytearray | memoryview, more: bool) -> bytes:
        """The status line and headers, then the first body message (other than the
        common answer, which on_send gives itself)."""
        size = len(body)
        if (
            (self._plain_close or (self._plain and self.close))
            and not more
            and self._plain_headers
            and (self._length is None or self._length == size)
        ):
            return self._closing_piece(body, size)
        length = self._length
        status = self.status
        if self._app_chunked:
            # Transfer-Encoding beats Content-Length, which is then not sent at all.
            length = None
            framing = _CLOSE if self.http_10 else _CHUNKED
        elif (
            self.trailers
            and self.trailers_accepted
            and not self.http_10
            and status != 204
            and status != 304
        ):
            # Trailers go after the last chunk (RFC 9112 section 7.1.2): chunked framing,
            # whatever length the app gave.
            length = None
            framing = _CHUNKED
        elif length is not None:
            framing = _LENGTH
        elif status == 204 or status == 304:
            framing = _NONE
        elif not more and (size or not self.head):
            # The whole body is in this one message: give its length rather than chunk
            # it. (For HEAD an empty body tells nothing of what a GET would get.)
            framing = _LENGTH
            length = size
        else:
            framing = _CLOSE if self.http_10 else _CHUNKED
        close_delimited = False
        short = False
        if self.no_body:
            # The framing headers are those a GET would get; no body bytes follow.
            self._framing = _NONE
        else:
            self._framing = framing
            if framing is _CHUNKED and self.trailers and self.trailers_accepted:
                self._deliver_trailers = True
            if framing is _CLOSE:
                close_delimited = True
            elif length is not None:
                if size > length:
                    # Nothing is out yet: the app may still answer otherwise (or the
                    # edge with a 500).
                    self._forget_start()
                    raise ASGIProtocolError(
                        f"the body is longer than its Content-Length: {size} bytes for {length}"
                    )
                self._remaining = length
                short = not more and size < length
        connection = self._connection
        must_close = (
            self.close
            or not self.client_keep_alive
            or close_delimited
            or short
            or (connection is not None and b"close" in connection)
        )
        parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, self._lines]
        if not self._has_date:
            parts.append(_date_line())
        if self.server_header and not self._has_server:
            parts.append(_SERVER_LINE)
        if self.default_headers:
            self._add_default_headers(parts)
        if length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        elif framing is _CHUNKED:
            parts.append(_CHUNKED_LINE)
        if must_close or self.http_10 or connection:
            self.must_close = must_close
            parts.append(self._connection_line(must_close))
        parts.append(b"\r\n")
        self._pending_head = False
        self._add_body(parts, body, more)
        return b"".join(parts)

    def _closing_piece(self, body: bytes | bytearray | memoryview, size: int) -> bytes:
        """The common answer on a connection that ends after it (the client asked to
        close, or the server stops): as the common answer of :meth:`on_send`, with
        ``Connection: close`` (the bytes :meth:`_head_and_body` would give, with far
        fewer steps)."""
        self._pending_head = False
        self.phase = _DONE
        self.body_bytes = size
        self.must_close = True
        status = self.status
        return b"".join(
            (
                _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status,
                self._lines,
                _date_lines()[3],
                b"content-length: %d\r\nConnection: close\r\n\r\n" % size,
                body if type(body) is bytes else bytes(body),
            )
        )

    def _add_default_headers(self, parts: list[bytes]) -> None:
        names = {bytes(name).lower() for name, _ in self.headers}
        for name, value in self.default_headers:
            if name.lower() not in names:
                _checked_name(name)
                _check_value(name, value)
                parts += (name, b": ", value, b"\r\n")

    def _connection_line(self, must_close: bool) -> bytes:
        tokens = self._connection or []
        if must_close or self.http_10:
            # An HTTP/1.0 client needs to hear that the connection stays open.
            ours = b"close" if must_close else b"keep-alive"
            tokens = [ours, *(t for t in tokens if t != b"close" and t != b"keep-alive")]
        return b"Connection: " + b", ".join(tokens) + b"\r\n"

    def _add_body(
        self, parts: list[bytes], body: bytes | bytearray | memoryview, more: bool
    ) -> None:
        """Add one body message, framed; mark the response done after the last."""
        framing = self._framing
        size = len(body)
        if framing is _LENGTH:
            if size:
                parts.append(body if type(body) is bytes else bytes(body))
                self.body_bytes += size
                self._remaining -= size
            if not more and self._remaining:
                # The app promised more than it sent: a client would wait for the rest,
                # or take the next response for it. The connection must end.
                self.missing = self._remaining
                self.must_close = True
        elif framing is _CHUNKED:
            if size:
                parts += (b"%x\r\n" % size, bytes(body), b"\r\n")
                self.body_bytes += size
            if not more and not self._deliver_trailers:
                parts.append(_LAST_CHUNK)
        elif framing is _CLOSE and size:
            parts.append(bytes(body))
            self.body_bytes += size
        if not more:
            self.phase = _TRAILERS if self.trailers else _DONE


_new = object.__new__
# Whether Response is plain Python code, whose instances object.__new__ makes: a class
# compiled (by mypyc) makes its own, and calling it costs no nested interpreter run.
_MADE_BY_NEW = Response.__new__ is object.__new__


def new_response(
    head: bool,
    server_header: bool,
    default_headers: Sequence[tuple[bytes, bytes]],
    keep_alive: bool,
    http_10: bool,
) -> Response:
    """``Response(head=..., server_header=..., default_headers=..., keep_alive=...,
    http_10=...)`` for the request loop, one made per request: the same object, without
    calling the class: on CPython 3.11 a class whose ``__init__`` is Python code is
    called through C, a nested run of the interpreter, and with keyword arguments a
    dict of them is built too; a function is neither (about 2% of a request)."""
    if not _MADE_BY_NEW:
        return Response(
            head=head,
            server_header=server_header,
            default_headers=default_headers,
            keep_alive=keep_alive,
            http_10=http_10,
        )
    response: Response = _new(Response)
    response.phase = _START
    response.head = head
    response.no_body = head
    response.close = False
    response.server_header = server_header
    response.default_headers = default_headers
    response.client_keep_alive = keep_alive
    response.http_10 = http_10
    # (As in __init__.)
    response._plain = keep_alive and not http_10 and not head and server_header
    if default_headers:
        response._plain = False
    elif not keep_alive and not http_10 and not head and server_header:
        response._plain_close = True
    return response


class AppEnd(enum.Enum):
    """What an app's return leaves of its response (see :func:`app_returned`)."""

    COMPLETE = "with its response complete"
    CLIENT_LEFT = "after the client left"
    NO_RESPONSE = "without sending a response"
    UNFINISHED = "before finishing its response"


class Phased(Protocol):
    """A response of any protocol, as far as :func:`app_returned` looks at it."""

    phase: ResponsePhase


def app_returned(response: Phased, *, disconnected: bool) -> AppEnd:
    """What an app's return means for its response, whatever the protocol:
    NO_RESPONSE asks for a 500 (see :meth:`Response.fail`); UNFINISHED (an error of
    the app's) and CLIENT_LEFT (nothing wrong with the app: it may stop at a
    ClientDisconnected it caught) for the end of the connection, since the response
    cannot be completed."""
    if response.phase is _DONE:
        return AppEnd.COMPLETE
    if disconnected:
        return AppEnd.CLIENT_LEFT
    if response.phase is _START:
        return AppEnd.NO_RESPONSE
    return AppEnd.UNFINISHED


# -- ASGI extensions of the response, whatever the protocol --------------------------

EARLY_HINT = "http.response.early_hint"
TRAILERS = "http.response.trailers"
PATHSEND = "http.response.pathsend"
_EARLY_HINTS_LINE = b"HTTP/1.1 103 Early Hints\r\n"
# Fields a trailer section must not carry: they frame, route or steer the message, which
# is settled by the time trailers arrive (RFC 9110 section 6.5.1).
_NOT_IN_TRAILERS = frozenset(
    (
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"upgrade",
        b"te",
        b"trailer",
        b"host",
        b"content-type",
        b"content-encoding",
        b"content-range",
    )
)


def early_hint_links(message: MutableMapping[str, Any]) -> list[bytes]:
    """The ``Link`` field values of an ``http.response.early_hint`` message, checked
    (byte strings without CR, LF or NUL), surrounding whitespace stripped.

    Raises:
        ASGIProtocolError: ``links`` is not an iterable of byte strings, or a value
            holds CR, LF or NUL.
    """
    raw = message.get("links", ())
    links: list[bytes] = []
    try:
        if isinstance(raw, bytes | str):
            raise TypeError
        for item in raw:
            if not isinstance(item, bytes | bytearray | memoryview):
                raise TypeError
            link = bytes(item).strip()
            _check_value(b"link", link)
            if link:
                links.append(link)
    except TypeError:
        raise ASGIProtocolError("'links' must be an iterable of byte strings") from None
    return links


def pathsend_path(message: MutableMapping[str, Any]) -> str:
    """The file an ``http.response.pathsend`` message names: an absolute path.

    Raises:
        ASGIProtocolError: ``path`` is not a string holding an absolute path.
    """
    path = message.get("path")
    if not isinstance(path, str) or not os.path.isabs(path) or "\x00" in path:
        raise ASGIProtocolError(f"'path' must be an absolute path as a string, got {path!r}")
    return path


def trailer_fields(message: MutableMapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """The (lowercase name, value) fields of an ``http.response.trailers`` message,
    checked as response headers are, and none that only a header section may carry
    (framing, routing, content description).

    Raises:
        ASGIProtocolError: the fields are malformed or one is not allowed in trailers.
    """
    fields: list[tuple[bytes, bytes]] = []
    try:
        for name, value in message.get("headers", ()):
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                raise TypeError
            lower = _checked_name(name)
            _check_value(name, value)
            if lower in _NOT_IN_TRAILERS:
                raise ASGIProtocolError(f"invalid trailer: {name!r} is not allowed in trailers")
            fields.append((lower, value))
    except (TypeError, ValueError):
        raise ASGIProtocolError(
            "trailer 'headers' must be an iterable of [name, value] pairs of bytes"
        ) from None
    return fields


def accepts_trailers(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's ``TE`` fields list ``trailers``: the client will not discard
    trailer fields (RFC 9110 section 10.1.4), which the ASGI trailers extension makes
    the condition for sending them."""
    for name, value in headers:
        if name == b"te":
            for item in value.lower().split(b","):
                if item.partition(b";")[0].strip() == b"trailers":
                    return True
    return False


def error_status_text(status: int) -> str:
    """The reason phrase of an error the server answers for itself (the RFC 9110 ones,
    which http.HTTPStatus may spell in an older form)."""
    return _ERROR_TEXTS.get(status, "Error")


_ERROR_TEXTS = {
    400: "Bad Request",
    408: "Request Timeout",
    501: "Not Implemented",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def error_response(status: int, message: str, *, server_header: bool = True) -> bytes:
    """A complete plain-text response, always with ``Connection: close``."""
    body = (message.rstrip("\n") + "\n").encode("utf-8")
    return b"".join(
        [
            _status_line(status),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            _date_line(),
            _SERVER_LINE if server_header else b"",
            b"\r\n",
            body,
        ]
    )

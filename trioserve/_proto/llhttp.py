"""HTTP/1.1 request parsing on httptools (MagicStack's binding of llhttp, Node's C
parser), behind the part of h11's interface that :class:`~trioserve._proto.http1.
ServerConnection` uses: pass this module where h11 would go (``--http httptools``).

:class:`ServerConnection` runs :mod:`~trioserve._proto.validate`'s checks on the raw
bytes before any parser sees them, so the rules stay the same on every parser path;
llhttp is one more check on top. What differs from h11, and how it is kept apart:

- One :class:`Connection` parses one request, as an h11 connection does here (the
  server makes a fresh one per request). llhttp would parse on into pipelined
  requests; this class feeds it exactly one message, found by trioserve's own framing
  (the end of the head; the Content-Length, or the chunked framing followed by a
  :class:`~trioserve._proto.validate.ChunkedChecker`), and keeps what follows as
  :attr:`Connection.trailing_data`, as h11 does.
- llhttp knows a fixed list of methods and refuses others; RFC 9110 allows any token
  (the corpus has an extension method). A method it does not know was already checked
  as a token, and a request's framing does not depend on its method (CONNECT is
  refused before parsing), so llhttp parses such a head with ``GET`` in its place and
  the request keeps its own method.
- llhttp's upgrade mode (``Connection: upgrade``) is not used: after the head, the body
  is framed like any other, as h11 does; the edge decides about WebSocket upgrades.

Standard library, httptools and the rest of ``_proto`` only.
"""

from __future__ import annotations

import re
from typing import Any

import httptools

from .validate import TOKEN, ChunkedChecker, RequestRejected

__all__ = [
    "DONE",
    "IDLE",
    "MIGHT_SWITCH_PROTOCOL",
    "MUST_CLOSE",
    "NEED_DATA",
    "PAUSED",
    "SEND_BODY",
    "SERVER",
    "Connection",
    "Data",
    "EndOfMessage",
    "RemoteProtocolError",
    "Request",
]


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The names h11 gives its roles, states and non-events; only identity matters.
SERVER = _Sentinel("SERVER")
IDLE = _Sentinel("IDLE")
SEND_BODY = _Sentinel("SEND_BODY")
DONE = _Sentinel("DONE")
MUST_CLOSE = _Sentinel("MUST_CLOSE")
MIGHT_SWITCH_PROTOCOL = _Sentinel("MIGHT_SWITCH_PROTOCOL")
ERROR = _Sentinel("ERROR")
NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")


class RemoteProtocolError(Exception):
    """The request is malformed (h11's name; the text before any colon is the reason)."""


class Request:
    """A request head: ``method``, ``target`` and ``http_version`` as bytes,
    ``headers`` as (lowercase name, value) pairs."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], version: bytes
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = version


class Data:
    """Bytes of a request body, framing removed."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfMessage:
    """The request body (or the bodiless request) is complete."""

    __slots__ = ()


_END = EndOfMessage()
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_OWS = b" \t"
_REPEATED_LENGTH = re.compile(rb"\ncontent-length:.*\ncontent-length:", re.IGNORECASE | re.DOTALL)


class Connection:
    """One request's parse, with the methods and attributes of ``h11.Connection`` the
    server uses (see the module docstring).

    Args:
        role: :data:`SERVER` (the only role).
        max_incomplete_event_size: The most bytes a head may take before it is refused.
    """

    __slots__ = (
        "_body",
        "_buffer",
        "_chunks",
        "_closed",
        "_complete",
        "_headers",
        "_max",
        "_parser",
        "_remaining",
        "_target",
        "their_state",
        "they_are_waiting_for_100_continue",
    )

    def __init__(self, role: object = SERVER, max_incomplete_event_size: int = 16384) -> None:
        self._buffer: bytes | bytearray = b""
        self._closed = False
        self._max = max_incomplete_event_size
        self._parser: Any = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._target = b""
        self._body: list[bytes] = []
        self._complete = False
        self._remaining = 0
        self._chunks: ChunkedChecker | None = None
        self.their_state = IDLE
        self.they_are_waiting_for_100_continue = False

    # -- h11's interface -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Keep ``data`` for parsing; b"" means the client closed its side."""
        if not data:
            self._closed = True
        elif not self._buffer:
            self._buffer = data
        else:
            buffer = self._buffer
            if type(buffer) is bytes:
                buffer = bytearray(buffer)
            buffer += data
            self._buffer = buffer

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """The bytes received and not parsed yet, and whether the client closed."""
        buffer = self._buffer
        return (buffer if type(buffer) is bytes else bytes(buffer)), self._closed

    def next_event(self) -> Any:
        """The next :class:`Request`, :class:`Data` or :class:`EndOfMessage`, or
        :data:`NEED_DATA` / :data:`PAUSED` (after the end of the message).

        Raises:
            RemoteProtocolError: the request is malformed, or the client left mid-request.
        """
        state = self.their_state
        if state is IDLE:
            return self._head()
        if state is SEND_BODY:
            return self._body_event()
        if state is ERROR:
            raise RemoteProtocolError("can't receive data after a protocol error")
        return PAUSED

    # -- llhttp's callbacks ------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the whitespace before a value but keeps what trails it.
        if value[-1:] in (b" ", b"\t"):
            value = value.rstrip(_OWS)
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- parsing ---------------------------------------------------------------------

    def _head(self) -> Any:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self._max:
                self.their_state = ERROR
                raise RemoteProtocolError("Receive buffer too long")
            if self._closed and buffer:
                self.their_state = ERROR
                raise RemoteProtocolError("peer unexpectedly closed connection")
            return NEED_DATA
        end += 4
        head = buffer[:end]
        self._buffer = buffer[end:]
        self._parser = parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(head)
            method = parser.get_method()
        except httptools.HttpParserInvalidMethodError:
            method = self._foreign_method(head)
        except httptools.HttpParserUpgrade:
            # llhttp stops at the end of a message that asks for an upgrade; the edge
            # decides what to do with it.
            method = parser.get_method()
        except httptools.HttpParserError as exc:
            if not _REPEATED_LENGTH.search(head):
                self.their_state = ERROR
                raise RemoteProtocolError(_reason(exc)) from None
            return self._repeated_length(head)
        version = _VERSIONS.get(parser.get_http_version(), b"1.0")
        headers = self._headers
        if version == b"1.1":
            # h11 refuses an HTTP/1.1 request without Host (RFC 9112 section 3.2);
            # llhttp does not look.
            for name, _ in headers:
                if name == b"host":
                    break
            else:
                self.their_state = ERROR
                raise RemoteProtocolError("Missing mandatory Host: header")
        if not self._complete:
            self._frame_body(headers)
        # Until the EndOfMessage is taken, as in h11 (which gives one for a bodiless
        # request too).
        self.their_state = SEND_BODY
        if version == b"1.1" and not self._complete:
            for name, value in headers:
                if name == b"expect" and b"100-continue" in value.lower():
                    self.they_are_waiting_for_100_continue = True
        return Request(method, self._target, headers, version)

    def _foreign_method(self, head: bytes | bytearray) -> bytes:
        """Parse a head whose method llhttp does not know with GET in its place; the
        method as sent (the checks before parsing found it a token)."""
        method, _, rest = bytes(head).partition(b" ")
        if TOKEN.fullmatch(method) is None:
            self.their_state = ERROR
            raise RemoteProtocolError("malformed request line")
        self._target = b""
        self._headers = []
        self._parser = parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(b"GET " + rest)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            self.their_state = ERROR
            raise RemoteProtocolError(_reason(exc)) from None
        return method

    def _repeated_length(self, head: bytes | bytearray) -> Request:
        """A head with Content-Length more than once, which llhttp refuses and RFC 9110
        section 8.6 allows when every value is the same (the checks before parsing made
        sure of it): parsed here, from lines those checks found well formed; its body is
        passed on as it comes, framed by its length."""
        line, *lines = bytes(head)[:-4].split(b"\r\n")
        method, target, version = line.split(b" ")
        headers = []
        for field in lines:
            name, _, value = field.partition(b":")
            headers.append((name.lower(), value.strip(_OWS)))
        self._parser = None
        self._frame_body(headers)
        self._complete = self._remaining == 0
        self.their_state = SEND_BODY
        return Request(method, target, headers, version[5:])

    def _frame_body(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Set up trioserve's own framing of the body that follows the head."""
        length = None
        for name, value in headers:
            if name == b"transfer-encoding":
                self._chunks = ChunkedChecker()
                return
            if name == b"content-length":
                length = value
        # (the checks before parsing made sure all values agree and are digits)
        self._remaining = int(length.split(b",")[0]) if length is not None else 0

    def _body_event(self) -> Any:
        if self._body:
            data = b"".join(self._body)
            self._body = []
            self.they_are_waiting_for_100_continue = False
            return Data(data)
        if self._complete:
            self.their_state = DONE
            self.they_are_waiting_for_100_continue = False
            return _END
        buffer = self._buffer
        if buffer:
            chunks = self._chunks
            if chunks is not None:
                try:
                    take = chunks.feed(buffer)
                except RequestRejected as exc:
                    self.their_state = ERROR
                    raise RemoteProtocolError(exc.reason) from None
            else:
                take = min(self._remaining, len(buffer))
                self._remaining -= take
            piece = buffer[:take]
            self._buffer = buffer[take:]
            parser = self._parser
            try:
                if parser is None:  # (see _repeated_length)
                    self._body.append(bytes(piece))
                    self._complete = self._remaining == 0
                else:
                    parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                pass  # (the end of a message that asks for an upgrade, as in _head)
            except httptools.HttpParserError as error:
                # (Not ``exc``, the RequestRejected above: compiled with mypyc, a name
                # keeps its first type.)
                self.their_state = ERROR
                raise RemoteProtocolError(_reason(error)) from None
            ended = chunks.done if chunks is not None else self._remaining == 0
            if ended and not self._complete:
                # Our framing says the body ended and llhttp does not: refuse rather
                # than guess which one a proxy in front believed.
                self.their_state = ERROR
                raise RemoteProtocolError("malformed request body")
            if self._body or self._complete:
                return self._body_event()
        if self._closed:
            self.their_state = ERROR
            raise RemoteProtocolError("peer unexpectedly closed connection mid-body")
        return NEED_DATA


def _reason(exc: BaseException) -> str:
    """llhttp's words for a parse error, without its error code."""
    text = str(exc).strip()
    return text.split(": ", 1)[-1] or "malformed request"

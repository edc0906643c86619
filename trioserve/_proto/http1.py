"""The server side of one HTTP/1.1 connection, without I/O: request heads and bodies
in, checked and parsed; after each response, whether the connection carries another.

:class:`ServerConnection` owns the rules an HTTP/1.1 edge would otherwise spread over
its loop: raw bytes pass :mod:`trioserve._proto.validate`'s checks before h11 parses
them (the head once complete, or as soon as it is too large; a chunked body's framing
as it arrives), a parse error is a 400, and keep-alive is decided from the response,
the request framing and the client's wishes. The edge in ``_serve_http`` reads and
writes the socket, sets deadlines and checkpoints, and hands every byte it reads to
this object.

The plainest requests (one complete head that one regex finds plain, no body) take a
fast path in :meth:`ServerConnection.request_head`: the regex checked every byte of
such a head, so it is split in Python without any parser (h11, or llhttp with
``--http httptools``), except for the two things h11 refuses that the regex lets
through (a target byte above 0x7e, HTTP/1.1 without Host), which go to the parser.
The edge subclasses this class rather than holding one, so that its hot path pays no
extra attribute look-up.

Standard library, h11 and the rest of ``_proto`` only (a test asserts trio is never
imported from here).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from .http import Response, client_keep_alive, header_pairs, new_response
from .validate import (
    ChunkedChecker,
    HTTP2Preface,
    Limits,
    RequestRejected,
    check_head,
    check_partial_head,
    empty_lines_end,
    head_end,
    plain_head_end,
)

# Pipelined bytes buffered while the app runs; past this the edge stops reading until
# the response is done.
MAX_PIPELINE_BUFFER = 64 * 1024
# Unread request body we are willing to read and drop to keep a connection alive.
MAX_DISCARD = 256 * 1024
# What a client that sent Expect: 100-continue waits for before it sends the body.
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Next(enum.Enum):
    """What comes after a response (see :meth:`ServerConnection.next_exchange`)."""

    REQUEST = "the connection carries the next request"
    CLOSE = "the connection ends"
    DISCARD_BODY = "read and drop the rest of the request body first, then ask again"


# (Read on every request: a member read through its class is a descriptor call on
# CPython 3.11.)
_REQUEST = Next.REQUEST
_CLOSE = Next.CLOSE


class BodyEnd(enum.Enum):
    """A request body that ended without its end of message (see
    :meth:`ServerConnection.body_message`)."""

    LEFT = "the client went away mid-body"
    STOPPED = "the parser stopped the body"


class Request:
    """A request head split from a plain head (see ``ServerConnection._split_head``),
    with the attributes of ``h11.Request`` the server reads: ``method``, ``target`` and
    ``http_version`` as bytes, ``headers`` as (lowercase name, value) pairs."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], version: bytes
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = version


_new = object.__new__
# (As for Response: see trioserve._proto.http.new_response.)
_REQUEST_BY_NEW = Request.__new__ is object.__new__


class ServerConnection:
    """The rules of the server side of one HTTP/1.1 connection, without I/O.

    Args:
        h11_module: The h11 to parse with (h11, or the compiled h11_mypyc).
        limits: The limits on request heads and bodies.
        allow_keep_alive: False when keep-alive is off: every response closes.
        server_header: Responses carry ``Server: trioserve`` unless the app sets one.
        default_headers: Headers added to responses unless the app sets them.
    """

    # The current request body: raw bytes received after its head, and seconds spent
    # waiting for them (the edge adds those, for its minimum body rate). Class
    # defaults: set only for requests with a body.
    body_received = 0
    body_waited = 0.0
    # The current request's (lowercase name, value) header pairs, and its response,
    # which knows whether the client and the settings let the connection live on after
    # it (see next_exchange). Set when a request is parsed.
    request_headers: list[tuple[bytes, bytes]]
    response: Response
    # Body bytes read and dropped after the app's response (see next_exchange).
    _discarded = 0
    # A head that arrives in pieces (see request_head): the bytes so far, how many of
    # them the parser holds already, how many passed check_partial_head, and whether
    # empty lines were stripped from its front.
    _head: bytes | bytearray = b""
    _h11_has = 0
    _checked = 0
    _stripped = False

    def __init__(
        self,
        h11_module: ModuleType,
        limits: Limits,
        *,
        allow_keep_alive: bool = True,
        server_header: bool = True,
        default_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.h11: Any = h11_module
        self.limits = limits
        self.allow_keep_alive = allow_keep_alive
        self.server_header = server_header
        self.default_headers = default_headers
        # h11's own bound on a head, beyond ours (which refuse earlier, with a status).
        self.max_event_size = limits.head_size + 1024
        # h11 only parses: responses never go through it, so each request gets a fresh
        # parser (see next_exchange).
        self.parser = h11_module.Connection(
            h11_module.SERVER, max_incomplete_event_size=self.max_event_size
        )
        # h11's states of a client whose request was read whole: DONE, or MUST_CLOSE
        # (it asked to close, or HTTP/1.0), or MIGHT_SWITCH_PROTOCOL (an Upgrade or
        # CONNECT that h11 would settle only when it sends the response).
        self._request_read = (
            h11_module.DONE,
            h11_module.MUST_CLOSE,
            h11_module.MIGHT_SWITCH_PROTOCOL,
        )
        # Set while a chunked request body is arriving: checks its framing.
        self.chunks: ChunkedChecker | None = None
        # True when the current request had no body and h11 already said so.
        self.body_done = False
        # True when the parser is known to be idle and to hold nothing: the last request
        # was split from a plain head with nothing after it (see _split_head), and no
        # bytes reached the parser since. The edge then neither asks the parser what it
        # holds (h11's trailing_data copies its buffer) nor asks next_exchange.
        self.nothing_held = False
        # The raw bytes read for a request that may ask for an upgrade (head and beyond).
        self.upgrade_bytes: bytes | None = None

    # -- request heads ---------------------------------------------------------------

    def request_head(self, pending: bytes, h11_has: int) -> Any:
        """The next request (an ``h11.Request``), if ``pending`` holds its whole head;
        None while more bytes are needed (give them to :meth:`more_head`).

        ``pending`` starts where the request does: the bytes the parser holds already
        (then ``h11_has`` is their length) or bytes just received (then 0).

        Raises:
            RequestRejected: the head breaks a limit or is malformed.
        """
        end = plain_head_end(pending, self.limits)
        if end < 0:
            self._head = pending
            self._h11_has = h11_has
            self._checked = 0
            self._stripped = False
            return self._head_step()
        # Most requests: a complete head that one regex found plain, and no body.
        # (A cheap substring test: "Upgrade:" in any case.)
        self.upgrade_bytes = pending if pending.find(b"pgrade:", 0, end) >= 0 else None
        event = self._split_head(pending, end, h11_has)
        if event is not None:
            return event
        parser = self.parser
        if not h11_has:
            parser.receive_data(pending)
        event = self._request_event(parser)
        # Take h11's end of message now, so that neither the app's first receive() nor
        # the end of the exchange needs another round through h11.
        self.body_done = type(parser.next_event()) is self.h11.EndOfMessage
        return event

    def _split_head(self, pending: bytes, end: int, h11_has: int) -> Request | None:
        """The request of a plain head (see ``plain_head_end``), split here without a
        parser: the regex checked every byte of it already, and it has no body. None
        for what a parser must see, to refuse it as h11 does: a target with bytes
        above 0x7e, or an HTTP/1.1 request without Host."""
        line, *fields = pending[: end - 4].split(b"\r\n")
        method, target, version = line.split(b" ")
        if not target.isascii():
            return None
        headers = []
        host = connection = False
        for field in fields:
            name, _, value = field.partition(b":")
            name = name.lower()
            if name == b"host":
                host = True
            elif name == b"connection":
                connection = True
            headers.append((name, value.strip(b" \t")))
        version = version[5:]
        if not host and version == b"1.1":
            return None
        if _REQUEST_BY_NEW:
            # (Request(method, target, headers, version), without calling the class:
            # see new_response.)
            event = _new(Request)
            event.method = method
            event.target = target
            event.headers = headers
            event.http_version = version
        else:
            event = Request(method, target, headers, version)
        # The bytes after the head wait in a parser for the next request, which has
        # seen nothing of this one (see next_exchange).
        parser = self.parser
        if h11_has:
            closed = parser.trailing_data[1]
            self.parser = parser = self._new_parser()
            if end < len(pending):
                parser.receive_data(pending[end:])
            if closed:
                parser.receive_data(b"")
            self.nothing_held = False
        elif end < len(pending):
            parser.receive_data(pending[end:])
            self.nothing_held = False
        else:
            # (Most requests: the parser was empty, and nothing followed the head.)
            self.nothing_held = True
        # _take_request, inline. Without a Connection field, the version alone says
        # whether the client keeps the connection (what client_keep_alive would find, a
        # call less).
        self.request_headers = headers
        self.response = new_response(
            method == b"HEAD",
            self.server_header,
            self.default_headers,
            self.allow_keep_alive
            and (client_keep_alive(event, headers) if connection else version == b"1.1"),
            version != b"1.1",
        )
        self.body_done = True
        return event

    @property
    def parsed_a_request(self) -> bool:
        """Whether a request was parsed on this connection yet: a request's response is
        made as it is parsed (see :attr:`response`), so none exists before the first.
        (Asked only on rare paths, such as the HTTP/2 preface: no counter on the hot one.)"""
        # (hasattr, not the instance's __dict__: a class compiled with mypyc has none.)
        return hasattr(self, "response")

    @property
    def head_started(self) -> bool:
        """True while part of a request head is here (beyond empty lines): the wait for
        the rest is bounded by the header timeout, not the idle one."""
        return bool(self._head)

    def more_head(self, data: bytes) -> Any:
        """:meth:`request_head` for the next bytes of a head that was not complete.

        Raises:
            RequestRejected: the head breaks a limit or is malformed.
        """
        pending = self._head
        if not pending:
            pending = data
        else:
            if isinstance(pending, bytes):
                pending = bytearray(pending)
            pending += data
        self._head = pending
        return self._head_step()

    def _head_step(self) -> Any:
        """Every check on a head that is incomplete or not plain, and the request once
        it is complete; None while more bytes are needed."""
        pending = self._head
        checked = self._checked
        if pending[:2] == b"\r\n":
            # Empty lines (CRLF) before a request are allowed (RFC 9112 section 2.2),
            # but h11 refuses them: they are dropped here, and h11 starts afresh
            # without them. A lone CR or LF is not an empty line: check_partial_head
            # refuses it.
            pending = pending[empty_lines_end(pending) :]
            self._stripped = True
            checked = 0
        end = head_end(pending, checked) if pending else -1
        if end < 0:
            if pending:
                check_partial_head(pending, self.limits, checked)
                checked = len(pending)
            self._head = pending
            self._checked = checked
            return None
        self._head = b""
        limits = self.limits
        try:
            framing = check_head(pending[:end], limits)
        except HTTP2Preface as exc:
            # What arrived, from the preface on, for the HTTP/2 edge to read again (not
            # a preface at all after stripped empty lines or a request of this parser).
            if not (self._stripped or self._h11_has or self.parsed_a_request):
                exc.received = bytes(pending)
            raise
        upgrade = pending.find(b"pgrade:", 0, end) >= 0
        self.upgrade_bytes = bytes(pending) if upgrade else None
        parser = self.parser
        h11_has = self._h11_has
        if self._stripped:
            self.parser = parser = self._new_parser()
            parser.receive_data(bytes(pending))
        elif len(pending) > h11_has:
            parser.receive_data(bytes(pending[h11_has:]) if h11_has else bytes(pending))
        event = self._request_event(parser)
        self.body_done = False
        self.body_received = len(pending) - end
        self.body_waited = 0.0
        if framing.chunked:
            self.chunks = ChunkedChecker(limits.body)
            self.chunks.feed(pending[end:])
            if self.chunks.done:
                self.chunks = None
        elif not framing.content_length:
            # No body: take h11's end of message now (see request_head).
            self.body_done = type(parser.next_event()) is self.h11.EndOfMessage
        return event

    def _request_event(self, parser: Any) -> Any:
        """The request h11 parses from a head our checks passed (a 400 if it finds more
        wrong with it), with its header pairs and its response made (see
        :attr:`response`)."""
        h11mod = self.h11
        self.nothing_held = False
        try:
            event = parser.next_event()
        except h11mod.RemoteProtocolError as exc:
            raise RequestRejected(400, h11_reason(exc)) from None
        if type(event) is not h11mod.Request:
            raise RequestRejected(400, "malformed request")
        self._take_request(event, header_pairs(event.headers))
        return event

    def _take_request(
        self, event: Any, headers: list[tuple[bytes, bytes]], keep_alive: bool | None = None
    ) -> None:
        """Keep the request's header pairs and make its response (see :attr:`response`).
        ``keep_alive``: what :func:`client_keep_alive` says of the request, if known."""
        self.request_headers = headers
        if keep_alive is None:
            keep_alive = client_keep_alive(event, headers)
        self.response = new_response(
            event.method == b"HEAD",
            self.server_header,
            self.default_headers,
            self.allow_keep_alive and keep_alive,
            event.http_version != b"1.1",
        )

    # -- bytes between requests --------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Keep bytes of a next request that arrived outside :meth:`request_head`."""
        self.nothing_held = False
        self.parser.receive_data(data)

    @property
    def request_bytes_held(self) -> bool:
        """True when bytes of a next request are here already."""
        return bool(self.parser.trailing_data[0])

    @property
    def pipeline_full(self) -> bool:
        """True when the bytes of next requests kept while a response is under way
        reach MAX_PIPELINE_BUFFER: stop reading until the response is done."""
        return len(self.parser.trailing_data[0]) >= MAX_PIPELINE_BUFFER

    # -- request bodies --------------------------------------------------------------

    def feed_body(self, data: bytes) -> None:
        """Pass raw bytes that arrived while a request body is read to the checks and h11.

        Raises:
            RequestRejected: the chunked framing is bad or the body is over the limit.
        """
        if self.chunks is not None:
            self.chunks.feed(data)
            if self.chunks.done:
                self.chunks = None
        self.body_received += len(data)
        self.parser.receive_data(data)

    @property
    def expects_continue(self) -> bool:
        """True when the client waits for ``100 Continue`` before sending the body (h11
        keeps saying so until it sees a response go out, which it never does here)."""
        return bool(self.parser.they_are_waiting_for_100_continue)

    def body_message(self) -> dict[str, Any] | BodyEnd | None:
        """The app's next ``http.request`` message from the body bytes received; None
        while more are needed (give them to :meth:`feed_body`); a :class:`BodyEnd`
        when the body ended without its end of message.

        Raises:
            RequestRejected: h11 found the body malformed where our checks did not.
        """
        h11mod = self.h11
        parser = self.parser
        try:
            event = parser.next_event()
        except h11mod.RemoteProtocolError as exc:
            if parser.trailing_data[1]:
                return BodyEnd.LEFT
            raise RequestRejected(400, h11_reason(exc)) from None
        if isinstance(event, h11mod.Data):
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        if isinstance(event, h11mod.EndOfMessage):
            return {"type": "http.request", "body": b"", "more_body": False}
        if event is not h11mod.NEED_DATA:
            return BodyEnd.STOPPED
        return None

    def drop_body(self) -> bool:
        """Drop what is here of a request body the app left unread: True when more bytes
        are needed (give them to :meth:`feed_body`), False once done (the body ended,
        broke, or passed MAX_DISCARD bytes, when closing is cheaper)."""
        h11mod = self.h11
        while self._discarded <= MAX_DISCARD:
            try:
                event = self.parser.next_event()
            except h11mod.RemoteProtocolError:
                return False
            if isinstance(event, h11mod.Data):
                self._discarded += len(event.data)
            else:
                return event is h11mod.NEED_DATA
        return False

    # -- keep-alive ------------------------------------------------------------------

    def next_exchange(self, keep_alive: bool, may_discard: bool) -> Next:
        """What follows a response: ``keep_alive`` is False when the response or the
        exchange rules the connection out; ``may_discard`` when an unread request body
        may be read and dropped first (then :meth:`drop_body`, and ask again with
        False). On :attr:`Next.REQUEST` the parser is ready for the next request, fed
        what the client sent after this one."""
        parser = self.parser
        their_state = parser.their_state
        h11mod = self.h11
        if their_state is h11mod.IDLE:
            # A parser that read no request: this one was split from a plain head (see
            # _split_head), had no body and was read whole. The parser holds just what
            # the client sent after it, as a fresh one would (an h11 connection costs
            # about 20,000 instructions to make).
            return _REQUEST if keep_alive else _CLOSE
        if may_discard and their_state is h11mod.SEND_BODY:
            self._discarded = 0
            return Next.DISCARD_BODY
        if not keep_alive or their_state not in self._request_read:
            return Next.CLOSE
        leftover, closed = parser.trailing_data
        self.parser = parser = h11mod.Connection(
            h11mod.SERVER, max_incomplete_event_size=self.max_event_size
        )
        if leftover:  # (b"" would mean end of input to h11)
            parser.receive_data(leftover)
        if closed:
            parser.receive_data(b"")
        return Next.REQUEST

    def _new_parser(self) -> Any:
        return self.h11.Connection(self.h11.SERVER, max_incomplete_event_size=self.max_event_size)


def h11_reason(exc: BaseException) -> str:
    """The words of an h11 parse error, for a 400's body (h11's messages show the
    offending bytes as a Python repr)."""
    text = str(exc).split(":", 1)[0].strip()
    return text or "malformed request"

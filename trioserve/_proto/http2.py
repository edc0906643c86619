"""HTTP/2 ↔ ASGI, without I/O: the server side of one connection, through h2.

:class:`H2Server` wraps ``h2.connection.H2Connection`` and turns what the client sends
into trioserve's own events (:class:`RequestHead`, :class:`RequestData`, ...) for the
trio edge in ``_serve_h2``; :class:`H2Response` checks one stream's ASGI messages (with
the checks of :mod:`.http`) and turns them into actions that :meth:`H2Server.send`
applies. Like the rest of ``_proto`` it never imports trio; unlike the rest it needs
the ``http2`` extra (h2), so only the HTTP/2 edge imports it.

Where the risk is, and why the code is shaped as it is:

- **The bytes reach h2 one complete frame at a time.** A frame scanner reads each
  9-byte frame header first, so every guard decides on a frame before h2 sees it, the
  events do not depend on how the bytes were split, and nothing is buffered beyond one
  frame (h2 itself would buffer a whole announced frame of up to 16 MiB before
  refusing it as too large).
- **Hostile clients** (see :class:`Guards`): rapid reset (CVE-2023-44487: resets by the
  client and streams we refused, per second), CONTINUATION floods (CVE-2024-27316: a
  header block is cut once its bytes pass what the header list limit allows, and h2
  allows 64 frames), HPACK bombs (the decoder stops at the header list limit), floods
  of SETTINGS, PING, PRIORITY, empty DATA and unknown frames (per second). Past a limit
  the connection ends with GOAWAY(ENHANCE_YOUR_CALM), as nginx and h2o do.
- **Concurrent streams** past the advertised limit are refused with
  RST_STREAM(REFUSED_STREAM) (RFC 9113 section 5.1.2), not by ending the connection as
  h2 would: h2 still decodes the refused stream's headers, which keeps the HPACK state
  in step. A stream counts until the edge :meth:`~H2Server.release`\\ s it, i.e. until
  its app returned, not until the client reset it.
- **GOAWAY in either direction does not stop the streams in flight.** h2 closes its
  whole state machine on any GOAWAY; a graceful stop (ours) and a client's GOAWAY are
  therefore handled here, outside h2, so that the streams already running can finish.
- **Flow control**: received data is acknowledged (the window reopened) only when the
  edge says the app consumed it (:meth:`H2Server.consumed`); outgoing data waits in a
  queue per stream until the client's windows take it.

What h2 itself refuses while validating a request head (uppercase or connection-
specific header names, ``te`` other than ``trailers``, missing, duplicate or unknown
pseudo-headers, CR, LF or NUL in a value, a Host that disagrees with ``:authority``)
and a body that disagrees with its Content-Length end the connection with
GOAWAY(PROTOCOL_ERROR), which RFC 9113 section 5.4.1 allows for a stream error. What
trioserve checks beyond that (the rules of HTTP/1.1 in ``validate``, the request
limits, CONNECT) is answered on the stream alone: an error response, then
RST_STREAM if the client is still sending.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import h2.events
import h2.exceptions
import h2.settings
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from .http import (
    ASGI_VERSION,
    EARLY_HINT,
    SERVER_NAME,
    ASGIProtocolError,
    ResponsePhase,
    ResponseProgress,
    check_header_value,
    check_status,
    checked_header_name,
    content_length_value,
    date_value,
    decode_path,
    early_hint_links,
    rooted,
)
from .validate import TOKEN, Limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The response phases as module constants, for the code run on every request: a member
# read through its class is a descriptor call on CPython 3.11.
_START = ResponsePhase.START
_BODY = ResponsePhase.BODY
_TRAILERS = ResponsePhase.TRAILERS
_DONE = ResponsePhase.DONE
# The largest stream window HTTP/2 allows (RFC 9113 section 6.9.1).
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
# Request body a stream takes in and drops after its app returned without reading it
# all, so that the client can finish its request (see H2Server.release); past this the
# stream is reset (NO_ERROR), which tells the client to stop sending.
MAX_DRAIN = 16 * 1024 * 1024
# Seconds a draining stream may go without DATA before it is reset (NO_ERROR): clients
# that stop sending once they have the response (curl 7.88) wait for that reset.
DRAIN_IDLE = 1.0

# Frame types (RFC 9113 section 6) and the flags the scanner reads.
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS = 0, 1, 2, 3, 4
_PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 5, 6, 7, 8, 9
_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4
_KNOWN_TYPES = frozenset(range(10))


class Error(enum.IntEnum):
    """The HTTP/2 error codes trioserve sends (RFC 9113 section 7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    ENHANCE_YOUR_CALM = 0xB


# -- events for the edge ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A new request on ``stream_id``, checked: the parts of its ASGI scope.

    ``headers`` are the regular fields (no pseudo-headers), with a ``host`` field made
    from ``:authority`` first when the client sent no Host. ``ended``: the request has
    no body (END_STREAM came with the head).
    """

    stream_id: int
    method: str
    scheme: str
    raw_path: bytes
    query_string: bytes
    authority: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    ended: bool


@dataclass(frozen=True, slots=True)
class RequestData:
    """Body bytes of the request on ``stream_id``; acknowledge them with
    :meth:`H2Server.consumed` once the app took them."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """The request body on ``stream_id`` is complete (trailers, which ASGI has no
    message for, are dropped)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The client reset ``stream_id``: nothing more can be sent on it."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The request on ``stream_id`` is refused with ``status``.

    ``answered``: the head was refused and the error response is queued already (no
    app runs for it); otherwise (a body over the limit) the app is running and the
    edge refuses the body it asks for, as the HTTP/1.1 edge does.
    """

    stream_id: int
    status: int
    reason: str
    answered: bool


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The client will open no stream after ``last_stream_id``; with NO_ERROR the
    streams in flight may finish, otherwise the client considers the connection dead."""

    error_code: int
    last_stream_id: int


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """The connection is over: a GOAWAY with ``error_code`` is queued (send
    :meth:`H2Server.data_to_send`, then close). ``hostile``: a guard ended it."""

    error_code: int
    reason: str
    hostile: bool = False


Event = (
    RequestHead
    | RequestData
    | RequestEnded
    | StreamReset
    | Rejected
    | GoAwayReceived
    | ConnectionEnded
)


def http2_scope(
    head: RequestHead,
    *,
    scheme: str,
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    root_path: str,
    state: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ASGI ``http`` scope of a request over HTTP/2 (see
    :func:`~trioserve._proto.http.http_scope`): ``http_version`` "2", and the
    extensions the exchange offers (early hints, trailers).
    ``scheme`` is the connection's: the client's ``:scheme`` is trusted no more than
    an HTTP/1.1 absolute-form target."""
    path = decode_path(head.raw_path)
    raw_path = head.raw_path
    if root_path:
        path, raw_path = rooted(root_path, path, raw_path)
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": "2",
        "method": head.method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": head.query_string,
        "root_path": root_path,
        "headers": head.headers,
        "client": client,
        "server": server,
        "extensions": {},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


# -- the guards --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Guards:
    """Per-connection limits on what a client may make the server do for nothing.

    Each ``*_per_second`` counts within one-second windows; past it the connection ends
    with GOAWAY(ENHANCE_YOUR_CALM). 0 turns a count off.

    Attributes:
        resets_per_second: Streams the client reset (RST_STREAM), streams refused for
            the concurrency limit, and DATA frames on streams that are over (each
            answered with RST_STREAM): rapid reset, CVE-2023-44487.
        settings_per_second: SETTINGS frames (each one asks for an acknowledgement).
        pings_per_second: PING frames (each one asks for an answer).
        empty_data_per_second: DATA frames with no payload and no END_STREAM.
        priority_per_second: PRIORITY frames.
        unknown_per_second: Frames of types HTTP/2 does not define (which it ignores).
        header_block_slack: Bytes a header block (HEADERS and its CONTINUATIONs) may
            have beyond the header list limit before it is cut (CVE-2024-27316); an
            encoded header list is not larger than the list it decodes to, but padding
            and HPACK table updates take some bytes too.
    """

    resets_per_second: int = 200
    settings_per_second: int = 100
    pings_per_second: int = 100
    empty_data_per_second: int = 100
    priority_per_second: int = 1000
    unknown_per_second: int = 1000
    header_block_slack: int = 1024


class _Rate:
    """How many times something happened in the current one-second window."""

    __slots__ = ("count", "limit", "start")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.start = float("-inf")
        self.count = 0

    def exceeded(self, now: float) -> bool:
        """Count one more; True once past the limit within the window."""
        if not self.limit:
            return False
        if now - self.start >= 1.0:
            self.start = now
            self.count = 0
        self.count += 1
        return self.count > self.limit


class _GuardedSettings(h2.settings.Settings):
    """h2's local settings, except for the concurrency limit that h2 would enforce.

    h2 ends the connection when a client opens more streams than we advertised; RFC
    9113 section 5.1.2 asks for a stream error, and the stream's header block must be
    decoded anyway to keep the HPACK state in step. So h2 enforces nothing here, and
    :class:`H2Server` refuses the stream itself (the advertised value is unchanged: the
    SETTINGS frame is made from the mapping, not from this property).
    """

    @property
    def max_concurrent_streams(self) -> int:
        return MAX_WINDOW

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


# -- the connection ---------------------------------------------------------------------


class _StreamState(enum.Enum):
    RUNNING = "the app has it"
    ANSWERED = "refused with a response of ours"
    DRAINING = "answered; the rest of the request body is taken in and dropped"


class _Stream:
    """What the connection keeps of one stream of a request."""

    __slots__ = (
        "drained",
        "ended",
        "local_done",
        "outbound",
        "received",
        "remote_done",
        "reset",
        "reset_after",
        "state",
        "unacked",
    )

    def __init__(self, state: _StreamState) -> None:
        self.state = state
        # Body bytes received, and those of them the app has not consumed yet.
        self.received = 0
        self.unacked = 0
        # Data (bytes) and trailers (a list) waiting for the flow-control windows.
        self.outbound: deque[bytes | memoryview | list[tuple[bytes, bytes]]] = deque()
        # The last of ``outbound`` ends the stream.
        self.ended = False
        # END_STREAM sent by us / received from the client; the stream was reset.
        self.local_done = False
        self.remote_done = False
        self.reset = False
        # An error code to reset the stream with once our side is sent, if the client
        # is still sending then (our answer made the rest of its request moot).
        self.reset_after: Error | None = None
        # Body bytes dropped while draining (see H2Server.release).
        self.drained = 0

    @property
    def pending(self) -> int:
        return sum(len(item) for item in self.outbound if not isinstance(item, list))


_PATH_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f]")
# Field value bytes other than VCHAR, obs-text, SP and HTAB (RFC 9110 section 5.5), as
# the HTTP/1.1 edge refuses them (h2 only refuses CR, LF and NUL).
_VALUE_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# Response fields that belong to HTTP/1.1's connection: never sent over HTTP/2 (RFC
# 9113 section 8.2.2); an app's are dropped.
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
# And TE, which only a request may carry (RFC 9113 section 8.2.2).
_DROPPED_IN_RESPONSES = CONNECTION_SPECIFIC | {b"te"}
# HTTP/2 has a field value that starts or ends in whitespace malformed (RFC 9113 section
# 8.2.1); over HTTP/1.1 a recipient strips it, so stripping it changes nothing.
_OWS = b" \t"


class H2Server:
    """The server side of one HTTP/2 connection, without I/O.

    Feed it the client's bytes with :meth:`receive_data`, act on the events it returns,
    send what :meth:`data_to_send` returns. Times are the caller's clock, in seconds.

    Args:
        max_concurrent_streams: Requests in progress at once (advertised; more are
            refused with REFUSED_STREAM).
        initial_window_size: Each stream's receive window (advertised): what a client
            may send before the app consumes it. The connection's window is as large as
            ``min(max_concurrent_streams, 16)`` such windows.
        max_frame_size: The largest frame the client may send (advertised).
        max_header_list_size: The largest header list (decoded, counted as RFC 9113
            section 6.5.2 says) a request may have (advertised); larger is answered
            with 431, and one that decodes past twice this ends the connection.
        limits: The request limits of ``validate`` (fields, field size, request line
            as the path's length, body).
        guards: The flood limits.
    """

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = DEFAULT_WINDOW,
        max_frame_size: int = 16384,
        max_header_list_size: int = 65536,
        limits: Limits | None = None,
        guards: Guards | None = None,
        server_header: bool = True,
    ) -> None:
        self.limits = limits or Limits()
        self.guards = guards or Guards()
        self.server_header = server_header
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.initial_window_size = initial_window_size
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            # H2Response makes every field it sends one HTTP/2 allows (lowercase token
            # names, no connection-specific ones, values without CR, LF, NUL or
            # surrounding whitespace, no pseudo-field of the app's): h2's own check of
            # the same was about 4% of a request.
            validate_outbound_headers=False,
            normalize_inbound_headers=True,
            normalize_outbound_headers=False,
        )
        conn = H2Connection(config=config)
        conn.local_settings = _GuardedSettings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                # A window below HTTP/2's default applies once the client acknowledged
                # it (see _open_connection_window): it may send that much before.
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: max(
                    initial_window_size, DEFAULT_WINDOW
                ),
                h2.settings.SettingCodes.MAX_FRAME_SIZE: max_frame_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # The initial values are h2's view from the start, so they apply before the
        # client acknowledges them (a client that sends at once is held to them, as a
        # client never acknowledging them would be).
        conn.max_inbound_frame_size = max_frame_size
        # HPACK bombs: the decoder stops at this size, whatever the encoded size.
        conn.decoder.max_header_list_size = 2 * max_header_list_size
        self._conn = conn
        self._connection_window = max(
            DEFAULT_WINDOW, min(initial_window_size * min(max_concurrent_streams, 16), MAX_WINDOW)
        )
        self._streams: dict[int, _Stream] = {}
        # Streams whose app has not been released, and the highest stream id taken.
        self.active: set[int] = set()
        # Released streams whose client is still sending its request body: they count
        # against the concurrency limit as the open streams they are (RFC 9113 section
        # 5.1.2), which bounds them.
        self._draining: set[int] = set()
        self._last_taken = 0
        # Set by a graceful stop: streams above it are refused.
        self._goaway_last: int | None = None
        self.closed = False
        self._out = bytearray()
        # The scanner's state: the preface still expected, unscanned bytes, the open
        # header block's size (-1: none).
        self._preface_left = PREFACE
        self._buffer = bytearray()
        self._block = -1
        # Whether the frame at the start of the buffer (incomplete) was checked.
        self._checked = False
        guards = self.guards
        self._resets = _Rate(guards.resets_per_second)
        self._floods = {
            _SETTINGS: (_Rate(guards.settings_per_second), "SETTINGS flood"),
            _PING: (_Rate(guards.pings_per_second), "PING flood"),
            _DATA: (_Rate(guards.empty_data_per_second), "empty DATA flood"),
            _PRIORITY: (_Rate(guards.priority_per_second), "PRIORITY flood"),
            -1: (_Rate(guards.unknown_per_second), "unknown frame flood"),
        }
        self._handlers = {
            h2.events.RequestReceived: self._on_request,
            h2.events.DataReceived: self._on_data,
            h2.events.StreamEnded: self._on_stream_ended,
            h2.events.StreamReset: self._on_reset,
        }

    # -- starting -------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue our preface (SETTINGS) and the connection window update."""
        self._conn.initiate_connection()
        self._open_connection_window()

    def initiate_upgrade(
        self,
        settings_header: bytes,
        *,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> RequestHead:
        """Start after an HTTP/1.1 ``Upgrade: h2c`` (RFC 7540 section 3.2): the
        client's HTTP2-Settings, and the upgrade request, which becomes stream 1 (its
        body, if any, was read by the HTTP/1.1 edge; stream 1 is half-closed)."""
        self._conn.initiate_upgrade_connection(settings_header)
        self._open_connection_window()
        self._last_taken = 1
        host = b""
        fields: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"host":
                host = value
            if lower in CONNECTION_SPECIFIC or lower in (b"http2-settings", b"te"):
                continue
            fields.append((lower, value))
        raw_path, _, query = target.partition(b"?")
        head = RequestHead(
            stream_id=1,
            method=method.decode("ascii"),
            scheme="http",
            raw_path=raw_path,
            query_string=query,
            authority=host,
            headers=fields,
            content_length=None,
            ended=True,
        )
        stream = _Stream(_StreamState.RUNNING)
        stream.remote_done = True
        self._streams[1] = stream
        self.active.add(1)
        return head

    def _open_connection_window(self) -> None:
        if self.initial_window_size < DEFAULT_WINDOW:
            self._conn.update_settings(
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.initial_window_size}
            )
        extra = self._connection_window - DEFAULT_WINDOW
        if extra > 0:
            self._conn.increment_flow_control_window(extra)

    # -- receiving ------------------------------------------------------------------

    @property
    def header_block_open(self) -> bool:
        """True while a header block is incomplete (the edge bounds how long)."""
        return self._block >= 0

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """What the client's bytes mean. b"" is the end of the connection."""
        if self.closed:
            return []
        events: list[Event] = []
        if not data:
            self.closed = True
            return events
        buffer = self._buffer
        buffer += data
        if self._preface_left:
            take = min(len(buffer), len(self._preface_left))
            if bytes(buffer[:take]) != self._preface_left[:take]:
                return self._end(events, Error.PROTOCOL_ERROR, "invalid HTTP/2 preface")
            self._preface_left = self._preface_left[take:]
            del buffer[:take]
            if self._preface_left:
                return events
            self._feed(PREFACE, events)
        at = 0
        size = len(buffer)
        while size - at >= 9 and not self.closed:
            length = int.from_bytes(buffer[at : at + 3], "big")
            kind = buffer[at + 3]
            flags = buffer[at + 4]
            if not self._checked:
                # (An incomplete frame stays at the start of the buffer: checked once.)
                self._checked = True
                stream_id = int.from_bytes(buffer[at + 5 : at + 9], "big") & MAX_WINDOW
                reason = self._check_frame(kind, flags, length, stream_id, now)
                if reason is not None:
                    error, text = reason
                    self._end(events, error, text, hostile=error is Error.ENHANCE_YOUR_CALM)
                    break
            end = at + 9 + length
            if end > size:
                break
            frame = bytes(buffer[at:end])
            at = end
            self._checked = False
            if kind == _GOAWAY:
                self._on_goaway(frame, events)
            else:
                self._feed(frame, events, now)
        del buffer[:at]
        self._pump()
        return events

    def _check_frame(
        self, kind: int, flags: int, length: int, stream_id: int, now: float
    ) -> tuple[Error, str] | None:
        """Why a frame, known by its header, ends the connection; None if it does not.
        Called once per frame."""
        if length > self._conn.max_inbound_frame_size:
            return Error.FRAME_SIZE_ERROR, f"frame of {length} bytes, over the frame size limit"
        if kind == _HEADERS and not flags & _END_HEADERS:
            self._block = length
        elif kind == _CONTINUATION and self._block >= 0:
            self._block += length
        if self._block > self.max_header_list_size + self.guards.header_block_slack:
            return Error.ENHANCE_YOUR_CALM, "header block larger than the header list limit"
        if (kind == _CONTINUATION and flags & _END_HEADERS) or (
            kind == _HEADERS and flags & _END_HEADERS
        ):
            self._block = -1
        flood = None
        if kind == _DATA:
            if stream_id not in self._streams and self._resets.exceeded(now):
                # DATA on a stream that is over (h2 answers each with RST_STREAM).
                return Error.ENHANCE_YOUR_CALM, "too many frames on closed streams"
            if length == 0 and not flags & _END_STREAM:
                flood = self._floods[_DATA]
        elif kind in (_SETTINGS, _PING):
            if not flags & _ACK:
                flood = self._floods[kind]
        elif kind == _PRIORITY:
            flood = self._floods[_PRIORITY]
        elif kind == _RST_STREAM:
            if self._resets.exceeded(now):
                return Error.ENHANCE_YOUR_CALM, "too many stream resets (rapid reset)"
        elif kind not in _KNOWN_TYPES:
            flood = self._floods[-1]
        if flood is not None and flood[0].exceeded(now):
            return Error.ENHANCE_YOUR_CALM, flood[1]
        return None

    def _feed(self, frame: bytes, events: list[Event], now: float = 0.0) -> None:
        """Hand one complete frame (or the preface) to h2 and translate its events."""
        try:
            h2_events = self._conn.receive_data(frame)
        except h2.exceptions.ProtocolError as exc:
            # h2 queued its GOAWAY already.
            self.closed = True
            code = int(getattr(exc, "error_code", Error.PROTOCOL_ERROR))
            events.append(ConnectionEnded(code, str(exc) or type(exc).__name__))
            return
        handlers = self._handlers
        for event in h2_events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event, events, now)  # type: ignore[operator]
                if self.closed:
                    return

    def _end(
        self, events: list[Event], error: Error, reason: str, *, hostile: bool = False
    ) -> list[Event]:
        """End the connection with GOAWAY(``error``)."""
        self.closed = True
        self._conn.close_connection(error_code=error, additional_data=reason.encode())
        events.append(ConnectionEnded(int(error), reason, hostile))
        return events

    def _on_goaway(self, frame: bytes, events: list[Event]) -> None:
        """A client's GOAWAY, kept from h2 (which would close for sending too)."""
        goaway = GoAwayFrame(0)
        if int.from_bytes(frame[5:9], "big") & MAX_WINDOW or len(frame) < 17:
            self._end(events, Error.PROTOCOL_ERROR, "malformed GOAWAY frame")
            return
        goaway.parse_body(memoryview(frame[9:]))
        events.append(GoAwayReceived(goaway.error_code, goaway.last_stream_id))

    def _on_request(
        self, event: h2.events.RequestReceived, events: list[Event], now: float
    ) -> None:
        stream_id = event.stream_id
        assert stream_id is not None and event.headers is not None
        self._last_taken = max(self._last_taken, stream_id)
        if (self._goaway_last is not None and stream_id > self._goaway_last) or len(
            self.active
        ) + len(self._draining) >= self.max_concurrent_streams:
            # Refused: the client may retry it elsewhere or later. (h2 deals with what
            # the client sends on it until it hears of the reset.)
            self._conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            if self._goaway_last is None and self._resets.exceeded(now):
                self._end(
                    events,
                    Error.ENHANCE_YOUR_CALM,
                    "too many refused streams (rapid reset)",
                    hostile=True,
                )
            return
        ended = event.stream_ended is not None
        try:
            head = self._check_head(stream_id, event.headers, ended)
        except _Refused as refused:
            stream = _Stream(_StreamState.ANSWERED)
            stream.remote_done = ended
            stream.reset_after = refused.error
            self._streams[stream_id] = stream
            self._answer(stream_id, refused.status, refused.reason)
            events.append(Rejected(stream_id, refused.status, refused.reason, True))
            return
        stream = _Stream(_StreamState.RUNNING)
        stream.remote_done = ended
        self._streams[stream_id] = stream
        self.active.add(stream_id)
        events.append(head)

    def _check_head(
        self, stream_id: int, raw: Iterable[tuple[bytes, bytes]], ended: bool
    ) -> RequestHead:
        """The scope parts of a request head that h2 found well-formed, checked as the
        HTTP/1.1 edge checks its requests."""
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[bytes, bytes]] = []
        lengths: list[bytes] = []
        host = False
        size = 0
        limits = self.limits
        for name, value in raw:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                pseudo[name] = value
                continue
            if TOKEN.fullmatch(name) is None:
                raise _Refused(400, f"malformed header name {name!r}")
            if _VALUE_CONTROL.search(value) is not None:
                raise _Refused(400, f"control character in the value of {name.decode()!r}")
            if limits.field_size and len(name) + len(value) + 2 > limits.field_size:
                raise _Refused(
                    431, f"a header field is longer than {limits.field_size} bytes", Error.NO_ERROR
                )
            if name == b"content-length":
                lengths.extend(item.strip() for item in value.split(b","))
            elif name == b"host":
                host = True
            headers.append((name, value))
        if size > self.max_header_list_size:
            raise _Refused(
                431, f"header list larger than {self.max_header_list_size} bytes", Error.NO_ERROR
            )
        if limits.fields and len(headers) > limits.fields:
            raise _Refused(431, f"more than {limits.fields} header fields", Error.NO_ERROR)
        method = pseudo.get(b":method", b"")
        if method == b"CONNECT":
            raise _Refused(501, "CONNECT is not supported", Error.NO_ERROR)
        if TOKEN.fullmatch(method) is None:
            raise _Refused(400, "malformed method")
        path = pseudo.get(b":path", b"")
        if not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")):
            raise _Refused(400, f"malformed :path {path[:64]!r}")
        if _PATH_FORBIDDEN.search(path) is not None:
            raise _Refused(400, "malformed :path: control character or space")
        if limits.request_line and len(path) > limits.request_line:
            raise _Refused(414, f"path longer than {limits.request_line} bytes", Error.NO_ERROR)
        authority = pseudo.get(b":authority", b"")
        if _VALUE_CONTROL.search(authority) is not None or b" " in authority:
            raise _Refused(400, "malformed :authority")
        length: int | None = None
        if lengths:
            if any(_DIGITS.fullmatch(item) is None for item in lengths) or len(set(lengths)) > 1:
                raise _Refused(400, "invalid Content-Length")
            length = int(lengths[0])
            if limits.body and length > limits.body:
                raise _Refused(413, f"request body larger than {limits.body} bytes", Error.NO_ERROR)
        if authority and not host:
            headers.insert(0, (b"host", authority))
        raw_path, _, query = path.partition(b"?")
        return RequestHead(
            stream_id=stream_id,
            method=method.decode("ascii"),
            scheme=pseudo.get(b":scheme", b"").decode("ascii", "replace"),
            raw_path=raw_path,
            query_string=query,
            authority=authority,
            headers=headers,
            content_length=length,
            ended=ended,
        )

    def _answer(self, stream_id: int, status: int, reason: str) -> None:
        """Queue a plain-text error response of ours on ``stream_id``."""
        body = (reason.rstrip("\n") + "\n").encode("utf-8")
        headers = [
            (b":status", b"%d" % status),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"date", date_value()),
        ]
        if self.server_header:
            headers.append((b"server", SERVER_NAME))
        self._conn.send_headers(stream_id, headers)
        self._queue(stream_id, body, end_stream=True)

    def _on_data(self, event: h2.events.DataReceived, events: list[Event], now: float) -> None:
        stream_id = event.stream_id
        assert stream_id is not None and event.data is not None
        flow = event.flow_controlled_length or 0
        data = event.data
        stream = self._streams.get(stream_id)
        if stream is None or stream.state is not _StreamState.RUNNING or stream.reset:
            # Nobody reads it: give the window back at once.
            self._conn.acknowledge_received_data(flow, stream_id)
            if stream is not None and stream.state is _StreamState.DRAINING:
                self._drain(stream_id, stream, len(data))
            return
        if flow > len(data):
            # Padding is nobody's to consume.
            self._conn.acknowledge_received_data(flow - len(data), stream_id)
        body_limit = self.limits.body
        stream.received += len(data)
        if body_limit and stream.received > body_limit:
            self._conn.acknowledge_received_data(len(data), stream_id)
            if stream.received - len(data) <= body_limit:
                events.append(
                    Rejected(stream_id, 413, f"request body larger than {body_limit} bytes", False)
                )
            return
        stream.unacked += len(data)
        if data:
            events.append(RequestData(stream_id, data))

    def _on_stream_ended(
        self, event: h2.events.StreamEnded, events: list[Event], now: float
    ) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_done:
            # (A head with END_STREAM said so already.)
            return
        stream.remote_done = True
        if stream.state is _StreamState.RUNNING:
            events.append(RequestEnded(stream_id))
        elif stream.state is _StreamState.DRAINING:
            # The request is complete: the stream closed at both ends, without a reset.
            self._draining.discard(stream_id)
            del self._streams[stream_id]
        else:
            self._forget_if_done(stream_id, stream)

    def _on_reset(self, event: h2.events.StreamReset, events: list[Event], now: float) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.reset = True
        stream.outbound.clear()
        if stream.unacked:
            self._conn.acknowledge_received_data(stream.unacked, stream_id)
            stream.unacked = 0
        if stream.state is _StreamState.RUNNING:
            events.append(StreamReset(stream_id, int(event.error_code or 0)))
        else:
            self._draining.discard(stream_id)
            del self._streams[stream_id]

    # -- what the app consumed ------------------------------------------------------

    def consumed(self, stream_id: int, size: int) -> None:
        """The app took ``size`` body bytes of ``stream_id``: reopen the windows."""
        stream = self._streams.get(stream_id)
        if stream is None or not size:
            return
        size = min(size, stream.unacked)
        stream.unacked -= size
        if not self.closed:
            self._conn.acknowledge_received_data(size, stream_id)

    # -- sending --------------------------------------------------------------------

    def send(self, stream_id: int, actions: Iterable[Action]) -> None:
        """Apply a response's actions (see :class:`H2Response`) on ``stream_id``."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset or self.closed:
            return
        try:
            for action in actions:
                kind = action[0]
                if kind == "headers":
                    end = action[2]
                    self._conn.send_headers(stream_id, action[1], end_stream=end)
                    if end:
                        stream.local_done = stream.ended = True
                elif kind == "data":
                    self._queue(stream_id, action[1], end_stream=action[2])
                elif kind == "trailers":
                    stream.outbound.append(action[1])
                    stream.ended = True
                else:
                    self.reset_stream(stream_id, Error(action[1]))
                    return
        except h2.exceptions.StreamClosedError:
            # h2 closed the stream on its own (a stream error of the client's it
            # answered): nothing more goes out on it.
            self._lost_stream(stream)
            return
        self._pump()

    def _lost_stream(self, stream: _Stream) -> None:
        stream.reset = True
        stream.outbound.clear()

    def stream_gone(self, stream_id: int) -> bool:
        """True once nothing more can be sent on ``stream_id`` (reset, or forgotten)."""
        stream = self._streams.get(stream_id)
        return stream is None or stream.reset or self.closed

    def _queue(self, stream_id: int, data: bytes, *, end_stream: bool) -> None:
        stream = self._streams[stream_id]
        if data or end_stream:
            # (A view: the pump takes frames off the front without copying the rest.)
            stream.outbound.append(memoryview(data) if data else b"")
        if end_stream:
            stream.ended = True
        self._pump()

    def pending(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` waiting for the flow-control windows (0 once gone)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset:
            return 0
        return stream.pending

    def stalled(self, stream_id: int) -> bool:
        """True while ``stream_id`` has data or its end queued that the windows hold."""
        stream = self._streams.get(stream_id)
        return stream is not None and not stream.reset and bool(stream.outbound)

    def _pump(self) -> None:
        """Move queued data into frames as far as the windows allow."""
        if self.closed:
            return
        for stream_id, stream in list(self._streams.items()):
            if stream.outbound and not stream.reset:
                try:
                    self._pump_stream(stream_id, stream)
                except h2.exceptions.StreamClosedError:
                    # (See send.)
                    self._lost_stream(stream)
            if stream.local_done:
                self._forget_if_done(stream_id, stream)

    def _pump_stream(self, stream_id: int, stream: _Stream) -> None:
        conn = self._conn
        outbound = stream.outbound
        while outbound and not stream.reset:
            item = outbound[0]
            last = len(outbound) == 1 and stream.ended
            if isinstance(item, list):
                conn.send_headers(stream_id, item, end_stream=True)
                outbound.popleft()
                stream.local_done = True
                continue
            if not item:
                conn.send_data(stream_id, b"", end_stream=last)
                outbound.popleft()
                stream.local_done = last
                continue
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0:
                break
            chunk, rest = item[:window], item[window:]
            conn.send_data(stream_id, bytes(chunk), end_stream=last and not rest)
            if rest:
                outbound[0] = rest
            else:
                outbound.popleft()
                stream.local_done = last

    def _forget_if_done(self, stream_id: int, stream: _Stream) -> None:
        """Drop a refused stream once our answer is out (resetting it if the client
        still sends), and a released one once both sides are done."""
        if (
            stream.state is _StreamState.RUNNING and stream_id in self.active
        ) or stream.state is _StreamState.DRAINING:
            return
        if stream.outbound and not stream.reset:
            return
        if stream.local_done:
            if not stream.remote_done and not stream.reset:
                if stream.state is _StreamState.RUNNING:
                    self._start_draining(stream_id, stream)
                    return
                if stream.reset_after is not None:
                    self._conn.reset_stream(stream_id, stream.reset_after)
            self._streams.pop(stream_id, None)

    def _start_draining(self, stream_id: int, stream: _Stream) -> None:
        """Take in and drop the rest of a request body that the app left unread.

        RFC 9113 section 8.1 lets a server that answered ask the client to stop sending
        with RST_STREAM(NO_ERROR), and the client must keep the response; but clients
        that must send their whole body before they read the response (httpx through
        httpcore) wait for a window that never opens, and fail. So the rest of the body
        is let in (each DATA's window given back at once) up to ``MAX_DRAIN`` bytes,
        and the stream closes normally when the request ends, as over HTTP/1.1 where
        an unread body is read and dropped. This costs the server no more than an app
        that reads a body and ignores it; the draining streams count against the
        concurrency limit, and an idle connection still closes after ``--keep-alive``.
        """
        stream.state = _StreamState.DRAINING
        self._draining.add(stream_id)
        self._drain(stream_id, stream, 0)

    def _drain(self, stream_id: int, stream: _Stream, size: int) -> None:
        stream.drained += size
        body_limit = self.limits.body
        if stream.drained > MAX_DRAIN or (
            body_limit and stream.received + stream.drained > body_limit
        ):
            # Enough: tell the client to stop (its response is complete).
            self.stop_draining(stream_id)

    def drained(self, stream_id: int) -> int:
        """Bytes of ``stream_id``'s body dropped while it drains; -1 once it does not
        (the request ended, or the stream was reset or never drained). The edge resets
        a draining stream that stops moving (:meth:`stop_draining`, after
        ``DRAIN_IDLE`` seconds)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.state is not _StreamState.DRAINING:
            return -1
        return stream.drained

    def stop_draining(self, stream_id: int) -> None:
        """Reset a draining stream with NO_ERROR: its client is told to stop sending
        (RFC 9113 section 8.1), and it stops counting against the concurrency limit."""
        if stream_id not in self._draining:
            return
        self._draining.discard(stream_id)
        del self._streams[stream_id]
        if not self.closed:
            self._conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def reset_stream(self, stream_id: int, error: Error = Error.INTERNAL_ERROR) -> None:
        """Reset ``stream_id`` (an app that cannot finish its response, a stall)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.reset or self.closed:
            return
        stream.reset = True
        stream.outbound.clear()
        if not (stream.local_done and stream.remote_done):
            self._conn.reset_stream(stream_id, error)

    def release(self, stream_id: int) -> None:
        """The edge is done with ``stream_id`` (its app returned, its response is sent
        or abandoned): it stops counting against the concurrency limit, unless its
        client is still sending; unread body bytes are given back to the connection's
        window; the rest of the body of a client still sending is taken in and dropped
        (up to ``MAX_DRAIN`` bytes, then the stream is reset with NO_ERROR: RFC 9113
        section 8.1; see ``_start_draining``) and a response left unfinished is reset
        (INTERNAL_ERROR)."""
        self.active.discard(stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.unacked and not self.closed:
            self._conn.acknowledge_received_data(stream.unacked, stream_id)
            stream.unacked = 0
        if stream.outbound and not stream.reset:
            if stream.ended:
                # Still going out: forgotten (or drained) once sent.
                return
            self.reset_stream(stream_id)
        if not stream.reset and not self.closed:
            if not stream.local_done:
                self._conn.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
            elif not stream.remote_done:
                self._start_draining(stream_id, stream)
                return
        del self._streams[stream_id]

    def goaway(self, error: Error = Error.NO_ERROR) -> None:
        """Tell the client no stream after the last one taken will be served (a
        graceful stop, an idle connection closing); the streams in flight go on."""
        if self.closed:
            return
        if error is not Error.NO_ERROR:
            self._end([], error, "")
            return
        if self._goaway_last is None:
            self._goaway_last = self._last_taken
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._goaway_last
        frame.error_code = error
        self._out += self._conn.data_to_send()
        self._out += frame.serialize()

    def data_to_send(self) -> bytes:
        """The bytes to write to the client now."""
        if self._out:
            data = bytes(self._out + self._conn.data_to_send())
            self._out.clear()
            return data
        return self._conn.data_to_send()

    @property
    def streams_in_flight(self) -> int:
        """Streams whose app runs or whose response is still going out."""
        return len(self.active) + sum(
            1 for stream in self._streams.values() if stream.outbound and not stream.reset
        )


class _Refused(Exception):
    def __init__(self, status: int, reason: str, error: Error = Error.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.error = error


# -- responses --------------------------------------------------------------------------

# ("headers", fields, end_stream) | ("data", bytes, end_stream) | ("trailers", fields)
# | ("reset", error code)
Action = tuple[Any, ...]


class H2Response(ResponseProgress[list[Action]]):
    """Checks one stream's ASGI ``send()`` messages and turns them into actions for
    :meth:`H2Server.send`; the HTTP/2 sibling of :class:`~trioserve._proto.http.Response`,
    with the same attributes the exchange reads.

    The app's connection-specific headers (Connection, Keep-Alive, Proxy-Connection,
    Transfer-Encoding, Upgrade) and TE are dropped: HTTP/2 forbids them in responses.
    Whitespace around a field value is stripped (HTTP/2 forbids it; an HTTP/1.1
    recipient would strip it). The head is held back
    until the first body message so that a single-message body gets a Content-Length.

    Args:
        head: True for a HEAD request: body bytes from the app are dropped.
        server_header: Add ``server: trioserve`` unless the app sets one.
        default_headers: Headers added unless the app sets a header of the same name.

    The ASGI extensions are served as the exchange offers them: an
    ``http.response.early_hint`` becomes a ``103`` HEADERS frame while the final head
    has not gone out; after a start with ``"trailers": True`` the body's end waits for
    the ``http.response.trailers`` messages, whose fields go out as a trailing HEADERS
    frame when the exchange set :attr:`trailers_accepted` (the client sent ``te:
    trailers``), and are dropped otherwise.
    """

    # (``status`` and ``must_close`` are ResponseProgress's, not repeated here: with that
    # class compiled by mypyc, a class attribute here would hide the value its code sets.
    # HTTP/2 never closes the connection for one response: an unfinishable response
    # resets its stream instead, and must_close says so.)
    headers: Sequence[Any] = ()
    body_bytes = 0
    missing = 0
    close = False
    # The start asked for trailers; the exchange says whether the client takes them.
    trailers = False
    trailers_accepted = False

    def __init__(
        self,
        *,
        head: bool = False,
        server_header: bool = True,
        default_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.phase = _START
        self.head = head
        self.no_body = head
        self.server_header = server_header
        self.default_headers = default_headers
        self._fields: list[tuple[bytes, bytes]] = []
        self._length: int | None = None
        self._remaining = 0
        self._pending_head = False
        self._has_date = False
        self._has_server = False
        self._trailer_fields: list[tuple[bytes, bytes]] = []

    def on_send(self, message: MutableMapping[str, Any]) -> list[Action]:
        """The actions for one app message (none while the head is held back).

        Raises:
            ASGIProtocolError: as :meth:`Response.on_send
                <trioserve._proto.http.Response.on_send>` does.
            PathSend: for ``http.response.pathsend``, as it does too.
        """
        kind = message.get("type") if isinstance(message, MutableMapping) else None
        phase = self.phase
        if phase is _START:
            if kind != "http.response.start":
                if kind == EARLY_HINT:
                    return self._early_hint(message)
                raise ASGIProtocolError(f"expected 'http.response.start' first, got {kind!r}")
            status = check_status(message.get("status"))
            self._take_headers(message.get("headers", ()))
            self.status = status
            if status in (204, 304):
                self.no_body = True
            self.trailers = bool(message.get("trailers", False))
            self._pending_head = True
            self.phase = _BODY
            return []
        if phase is _BODY:
            if kind != "http.response.body":
                return self._not_a_body(kind, message)
            body = message.get("body", b"")
            if not isinstance(body, bytes | bytearray | memoryview):
                raise ASGIProtocolError(f"'body' must be bytes, got {type(body).__name__}")
            return self._body(bytes(body), bool(message.get("more_body", False)))
        if phase is _TRAILERS:
            return self._trailers(kind, message)
        raise ASGIProtocolError(f"the response is complete; got {kind!r} after it")

    @property
    def _deliver_trailers(self) -> bool:
        return self.trailers and self.trailers_accepted

    def _early_hint(self, message: MutableMapping[str, Any]) -> list[Action]:
        """A ``103 Early Hints`` head while the final one has not gone out (none when it
        has, or without links)."""
        links = early_hint_links(message)
        if not links or self.head_sent:
            return []
        return [("headers", [(b":status", b"103"), *((b"link", link) for link in links)], False)]

    def _trailers(self, kind: Any, message: MutableMapping[str, Any]) -> list[Action]:
        """One ``http.response.trailers`` message; the trailing HEADERS frame once
        ``more_trailers`` is false, when the trailers go out."""
        fields = self._checked_trailers(kind, message)
        for name, _ in fields:
            if name in CONNECTION_SPECIFIC:
                # (The fields every protocol refuses in trailers are refused already;
                # HTTP/2 forbids these in any field section, RFC 9113 section 8.2.2.)
                self.must_close = True
                self.phase = _DONE
                raise ASGIProtocolError(
                    f"invalid trailer: {name!r} is connection-specific, not allowed in HTTP/2"
                )
        self._trailer_fields += ((name, value.strip(_OWS)) for name, value in fields)
        if message.get("more_trailers", False):
            return []
        self.phase = _DONE
        if not self._deliver_trailers:
            return []
        return [("trailers", self._trailer_fields)]

    def fail(self, status: int, message: str) -> list[Action]:
        """The error response that replaces this one, which must not have started."""
        assert self.phase is _START, "the response has started"
        self.phase = _DONE
        self.status = status
        body = (message.rstrip("\n") + "\n").encode("utf-8")
        fields = [
            (b":status", b"%d" % status),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"date", date_value()),
        ]
        if self.server_header:
            fields.append((b"server", SERVER_NAME))
        self._pending_head = False
        if self.head:
            return [("headers", fields, True)]
        self.body_bytes = len(body)
        return [("headers", fields, False), ("data", body, True)]

    def _check_fields(self, raw: Iterable[Any]) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        try:
            for name, value in raw:
                if not isinstance(name, bytes) or not isinstance(value, bytes):
                    raise TypeError
                lower = checked_header_name(name)
                check_header_value(name, value)
                if lower in _DROPPED_IN_RESPONSES:
                    continue
                fields.append((lower, value.strip(_OWS)))
        except (TypeError, ValueError):
            raise ASGIProtocolError(
                "'headers' must be an iterable of [name, value] pairs of bytes"
            ) from None
        return fields

    def _take_headers(self, raw: Iterable[Any]) -> None:
        fields = self._check_fields(raw)
        kept: list[tuple[bytes, bytes]] = []
        length: int | None = None
        for name, value in fields:
            if name == b"content-length":
                given = content_length_value(value)
                if length is not None and given != length:
                    raise ASGIProtocolError(
                        "invalid response header: conflicting Content-Length headers"
                    )
                length = given
                continue
            if name == b"date":
                self._has_date = True
            elif name == b"server":
                self._has_server = True
            kept.append((name, value))
        self.headers = list(raw) if not isinstance(raw, list) else raw
        self._fields = kept
        self._length = length

    def _head(self, size: int, more: bool) -> list[tuple[bytes, bytes]]:
        fields = [(b":status", b"%d" % self.status), *self._fields]
        if not self._has_date:
            fields.append((b"date", date_value()))
        if self.server_header and not self._has_server:
            fields.append((b"server", SERVER_NAME))
        if self.default_headers:
            names = {name for name, _ in self._fields}
            for name, value in self.default_headers:
                lower = name.lower()
                if lower not in names and lower not in _DROPPED_IN_RESPONSES:
                    # (Checked as the app's are, and as HTTP/1.1 checks them.)
                    check_header_value(name, value)
                    fields.append((checked_header_name(name), value.strip(_OWS)))
        length = self._length
        if length is None and not more and not self.no_body and self.status not in (204, 304):
            length = size
        if length is not None and self.status not in (204, 304):
            fields.append((b"content-length", b"%d" % length))
        self._length = length
        self._remaining = length if length is not None else 0
        return fields

    def _body(self, body: bytes, more: bool) -> list[Action]:
        actions: list[Action] = []
        size = len(body)
        end = not more and not self._deliver_trailers
        if self._pending_head:
            if not self.no_body and self._length is not None and size > self._length:
                # Nothing is out yet: the app may still answer otherwise.
                self._forget_start()
                raise ASGIProtocolError(
                    f"the body is longer than its Content-Length: {size} bytes for {self._length}"
                )
            fields = self._head(size, more)
            self._pending_head = False
            if self.no_body:
                if not more:
                    self._finish_body()
                return [("headers", fields, end)]
            actions.append(("headers", fields, False))
        elif self.no_body:
            if not more:
                self._finish_body()
                return [("data", b"", True)] if end else []
            return []
        if self._length is not None:
            if size > self._remaining:
                self.must_close = True
                self.phase = _DONE
                raise ASGIProtocolError(
                    f"the body is longer than its Content-Length: {size} more bytes"
                    f" with {self._remaining} left"
                )
            self._remaining -= size
        self.body_bytes += size
        if not more and self._length is not None and self._remaining:
            # Promised more than it sent: the client must not take this as complete.
            self.missing = self._remaining
            self.must_close = True
            self.phase = _DONE
            if body:
                actions.append(("data", body, False))
            actions.append(("reset", Error.INTERNAL_ERROR))
            return actions
        if body or end:
            actions.append(("data", body, end))
        if not more:
            self._finish_body()
        return actions

    def _finish_body(self) -> None:
        self.phase = _TRAILERS if self.trailers else _DONE

    def _forget_start(self) -> None:
        self.phase = _START
        self.no_body = self.head
        self._pending_head = False
        self._fields = []
        self._length = None
        self._has_date = self._has_server = False
        self.headers = ()


__all__ = [
    "CONNECTION_SPECIFIC",
    "PREFACE",
    "Action",
    "ConnectionEnded",
    "Error",
    "Event",
    "GoAwayReceived",
    "Guards",
    "H2Response",
    "H2Server",
    "Rejected",
    "RequestData",
    "RequestEnded",
    "RequestHead",
    "StreamReset",
    "http2_scope",
]

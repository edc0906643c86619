"""The trio edge of WebSocket: trio-websocket (on wsproto) speaks the protocol, this
module turns it into ASGI ``websocket`` messages or hands it to native handlers.

Each websocket costs one nursery holding trio-websocket's reader task, plus the task
that called us, which runs the app. Pings and the graceful stop are done for all the
websockets of a server by one task, :func:`watch_websockets`; a ping lives in a short
task of its own only for one round trip. Served without that task (tests, embedding),
a websocket runs a watcher for itself.

An idle accepted websocket should cost little memory (see docs/performance.md): what
only the handshake needed is let go, and no coroutine frame is kept that could be
avoided (hence the sessions' start/failed/returned split, and the public functions
returning their coroutine rather than awaiting it).

trio-websocket 0.12 is extended in :class:`_ServerConnection` through a few of its
private methods, kept in that one class and pinned by tests/serve/test_ws.py and
tests/integration/test_ws_clients.py:

- ``_abort_web_socket``, ``_close_stream``: when the handshake fails (trio-websocket
  answered 400 and closed, or the client left), the wait for it must end;
  trio-websocket would wait forever.
- ``_handle_close_connection_event``: when wsproto cannot parse a frame (invalid UTF-8,
  a protocol violation), trio-websocket drops the TCP connection without a close
  frame; the peer is told 1007 or 1002 first, and the websocket is marked closed
  before that close frame goes out, so that a send meanwhile raises ConnectionClosed
  (ClientDisconnected for an ASGI app) rather than wsproto's LocalProtocolError.
- ``_handle_message_event``: after closing with 1009, trio-websocket stops reading, so
  a peer still sending the message gets a reset and never sees the 1009; the rest is
  read and dropped until the peer answers the close. A compressed message the
  extension stopped inflating at the limit is refused the same way, as soon as it is
  seen (trio-websocket would only count what was inflated).
- ``_accept`` (rewritten whole: trio-websocket never passes extensions to wsproto):
  permessage-deflate is negotiated when the client offers it (wsproto's extension,
  bounded and negotiated by :mod:`trioserve._proto.deflate`); a websocket accepted
  while the server stops is closed with 1001; the handshake's state is let go
  (wsproto's HTTP/1.1 parser, the request).
- ``_reader_task`` (rewritten whole, with one dispatch table for all connections)
  closes with 1009 as soon as a frame header announces a message over the size
  limit, reading the header that wsproto's frame decoder (``_proto._frame_decoder``)
  keeps while the payload is still to come; once the replayed request head is read,
  it reads the wrapped stream rather than the :class:`PrefixedStream`, and on a plain
  socket the socket itself.
- ``__init__`` (rewritten whole): what a server never changes is held by the class.

It also reads ``_recv_channel`` directly (as ``get_message`` does), replaces
trio's memory channel (``_send_channel``, ``_recv_channel``) with a smaller queue of
the same behaviour (:class:`~trioserve._ws_parts.Messages`), and swaps in a smaller event queue in
wsproto's frame-level connection, to save memory.

wsproto's server handshake is extended in :class:`_Handshake` through two private
methods (``_process_connection_request``, ``_reject``): the rules of
:mod:`trioserve._proto.websocket` refuse what wsproto lets through (an empty
Sec-WebSocket-Key), and refusals get their reason phrase and ``connection: close``.

The ASGI side's rules (the scope, which app message is valid when, what the app's end
means) are :class:`~trioserve._proto.websocket.ASGIWebSocket`'s, which the session here
extends: it only does what the returned actions say.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, cast

import h11
import trio
import trio_websocket
import wsproto
import wsproto.events
import wsproto.handshake
import wsproto.utilities
from trio_websocket import ConnectionClosed, WebSocketRequest
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import FrameDecoder

from ._config import Config
from ._errors import ClientDisconnected, departure
from ._peer import Peer
from ._proto.deflate import BoundedDeflate, DeflateSettings, offers
from ._proto.http import ASGIProtocolError
from ._proto.websocket import (
    APP_ERROR_REFUSAL,
    Action,
    ASGIWebSocket,
    WebSocketPhase,
    closing_refusal,
    handshake_refusal,
    websocket_scope,
)
from ._state import ServerState
from ._streams import PrefixedStream
from ._types import ASGIApp, Message
from ._ws_parts import EventList, LazyEvent, Messages, Pings, ReceiveEnd, SendEnd, SendLock

LOGGER = logging.getLogger("trioserve.ws")

# Largest read from the peer at once; nothing of this size is kept between reads.
RECEIVE_SIZE = 64 * 1024
# Seconds a peer gets to answer our close frame before its TCP connection is dropped.
CLOSE_TIMEOUT = 5.0

NativeHandler = Callable[[WebSocketRequest], Awaitable[object]]

_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 24\r\nconnection: close\r\n\r\nBad WebSocket handshake\n"
)
# What h11 and wsproto raise for a response they will not send (bad headers, say).
_LOCAL_ERRORS = (h11.LocalProtocolError, wsproto.utilities.LocalProtocolError)


_wait_readable = trio.lowlevel.wait_readable

# The reader task's name: trio would otherwise build a long one for every connection.
_READER_NAME = "trioserve websocket reader"


# Stands in for trio-websocket's events that are set once and never waited on again on
# a server (the open handshake, a testing hook): one for all connections.
_ALWAYS_SET = trio.Event()
_ALWAYS_SET.set()


# A peer that closed or broke the websocket.
_GONE = (ClientDisconnected, ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class _Handshake(wsproto.handshake.H11Handshake):
    """wsproto's server handshake, refusing what RFC 6455 section 4.2.1 says to refuse
    and wsproto lets through (see :func:`handshake_refusal`), and finishing the head of
    a refusal (see :func:`closing_refusal`): wsproto gives h11 no reason phrase, and the
    connection is closed after any refusal."""

    def _process_connection_request(self, event: h11.Request) -> wsproto.events.Request:
        refusal = handshake_refusal(event.headers)
        if refusal is not None:
            raise wsproto.utilities.RemoteProtocolError(
                refusal.reason,
                event_hint=wsproto.events.RejectConnection(
                    status_code=refusal.status, headers=list(refusal.headers)
                ),
            )
        return super()._process_connection_request(event)

    def _reject(self, event: wsproto.events.RejectConnection) -> bytes:
        return closing_refusal(super()._reject(event))


class _ServerConnection(trio_websocket.WebSocketConnection):
    """A server-side trio-websocket connection that a :class:`_Watcher` pings and stops."""

    # permessage-deflate once a client's offer was accepted (set on the instance then
    # only: an attribute more on every connection would cost 1.3 KB, see below).
    inflater: BoundedDeflate | None = None

    # What trio-websocket's __init__ sets per connection and a server never changes:
    # held by the class, so that each connection's dict is smaller (see __init__).
    _initial_request = None
    _handshake_headers: tuple[tuple[bytes, bytes], ...] = ()
    _reject_status = 0
    _reject_headers: tuple[tuple[bytes, bytes], ...] = ()
    _reject_body = b""
    _receive_buffer_size = RECEIVE_SIZE
    # Set once and never waited on again on a server (the open handshake, a testing
    # hook): one event for all connections.
    _open_handshake = _ALWAYS_SET
    _for_testing_peer_closed_connection = _ALWAYS_SET

    def __init__(
        self,
        stream: trio.abc.Stream,
        config: Config,
        watcher: _Watcher,
        sock: socket.socket | None = None,
    ) -> None:
        # trio-websocket's __init__ (0.12), minus what the class holds above: an idle
        # websocket costs what its instance holds.
        connection = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        connection.handshake = _Handshake(wsproto.ConnectionType.SERVER)
        self._close_reason: trio_websocket.CloseReason | None = None
        self._id = next(trio_websocket.WebSocketConnection.CONNECTION_ID)
        self._stream = stream
        self._stream_lock = SendLock()  # type: ignore[assignment]
        self._wsproto = connection
        self._message_size = 0
        self._message_parts: list[bytes | str] = []
        self._max_message_size = config.ws_max_message_size
        self._reader_running = True
        self._path = None
        self._subprotocol: str | None = None
        messages = Messages(config.ws_max_queue)
        self._send_channel = SendEnd(messages)  # type: ignore[assignment]
        self._recv_channel = ReceiveEnd(messages)  # type: ignore[assignment]
        self._pings = Pings()  # type: ignore[assignment]
        self._connection_proposal: trio_websocket._impl.Future[WebSocketRequest] | None = (
            trio_websocket._impl.Future()
        )
        self._close_handshake = LazyEvent()  # type: ignore[assignment]
        # Ours. With 30 attributes or more, CPython 3.11 stops sharing the keys of
        # instance dicts, and each connection's takes 1.3 KB more.
        self.watcher = watcher
        # The plain socket under ``stream`` (None under TLS): the reader reads it
        # directly once nothing is left to replay, which keeps an idle websocket's
        # wait a few coroutine frames smaller (see _reader_task).
        self.sock = sock
        # When the watcher pings next; its connections are kept in this order.
        self.next_ping = math.inf
        # Set while a ping of the watcher's waits for its pong.
        self.ping_scope: trio.CancelScope | None = None
        # The (code, reason) we closed with, which the app is told rather than the echo.
        self.local_close: tuple[int, str] | None = None

    async def _reader_task(self) -> None:
        # trio-websocket's reader builds a table of nine bound methods per connection
        # (about 0.9 KB of every idle websocket); this loop does the same work with one
        # table shared by all connections. Server side: no opening request to send.
        dispatch = _READER_DISPATCH
        event: wsproto.events.Event | None = None
        data: bytes | bytearray | None = None
        async with self._send_channel:
            while self._reader_running:
                # (self._wsproto is looked up each time: _accept swaps it.)
                for event in self._wsproto.events():
                    handle = dispatch.get(type(event))
                    if handle is None:
                        LOGGER.warning("websocket: unexpected event %s", type(event).__name__)
                        continue
                    try:
                        await handle(self, event)
                    except ConnectionClosed:
                        self._reader_running = False
                        break
                if self._reader_running and self._announces_too_big():
                    try:
                        await self._refuse_message()
                    except ConnectionClosed:
                        break
                # Nothing of the last read or event is kept while the next read waits:
                # a message's data, the handshake request.
                event = data = None
                stream = self._stream
                if type(stream) is PrefixedStream and not stream._prefix:
                    # The replayed head (and what came with it) is consumed: the
                    # wrapped stream from now on, one layer less.
                    self._stream = stream = stream.transport_stream
                sock = self.sock
                try:
                    if sock is None or type(stream) is PrefixedStream:
                        data = await stream.receive_some(RECEIVE_SIZE)
                    else:
                        # The plain socket under the stream, read as trio's socket
                        # reads it (a cancellation is seen before the read, never
                        # after it, so nothing read is lost), in this frame: an idle
                        # websocket then waits here, in no frame of SocketStream's
                        # (about 1.2 KB of frames and a context manager fewer).
                        # (The wait is outside the except clause: the BlockingIOError
                        # would otherwise be kept, as the exception being handled, for
                        # as long as the websocket idles.)
                        await trio.lowlevel.checkpoint_if_cancelled()
                        while True:
                            try:
                                data = sock.recv(RECEIVE_SIZE)
                            except BlockingIOError:
                                pass
                            else:
                                await trio.lowlevel.cancel_shielded_checkpoint()
                                break
                            await _wait_readable(sock)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self._abort_web_socket()
                    break
                scope = self.ping_scope
                if scope is not None:
                    # A ping waits for its pong: the peer is alive while it sends, even
                    # if its pong must wait for the end of a long frame (see _Watcher).
                    scope.deadline = max(scope.deadline, trio.current_time() + self.watcher.timeout)
                if not data:
                    # TCP ended before the websocket did: an abnormal closure.
                    if self._wsproto.state is not ConnectionState.CLOSED:
                        await self._abort_web_socket()
                    break
                if self._wsproto.state is not ConnectionState.CLOSED:
                    try:
                        self._wsproto.receive_data(bytes(data))
                    except wsproto.utilities.RemoteProtocolError as exc:
                        if self.handshaking:
                            LOGGER.info("bad websocket handshake: %s", exc)
                        # wsproto says what to answer (a 400, or a close frame).
                        if exc.event_hint is not None:
                            await self._send(exc.event_hint)
                        await self._close_stream()

    def _announces_too_big(self) -> bool:
        """True when the frame being read makes its message longer than
        max_message_size: its header says so before the payload comes."""
        if self.closed is not None or self._wsproto.state is not ConnectionState.OPEN:
            return False
        # wsproto's frame decoder keeps the header of a frame whose payload is still to
        # come; trio-websocket would only count the payload as it arrives, so a header
        # announcing 2**62 bytes would hold the connection until a ping timed out.
        frames: object = self._wsproto
        if isinstance(frames, wsproto.WSConnection):
            # Accepted, but _accept has not swapped in the frame-level connection yet:
            # the client's first frames can come before the 101 is written out.
            frames = frames.connection
        decoder: FrameDecoder | None = getattr(
            getattr(frames, "_proto", None), "_frame_decoder", None
        )
        if decoder is None or decoder.header is None or decoder.header.opcode.iscontrol():
            return False
        if self.inflater is not None and self.inflater.inflating:
            # A compressed frame's length says nothing of its message's size: the
            # extension counts the inflated bytes instead (see BoundedDeflate).
            return False
        remaining = decoder.header.payload_len - decoder.payload_consumed
        return self._message_size + remaining > self._max_message_size

    def _too_big_reason(self) -> str:
        return f"Exceeded maximum message size: {self._max_message_size} bytes"

    async def _refuse_message(self) -> None:
        """Close with 1009 for a message over max_message_size, as trio-websocket does
        once it has read that much (what still arrives is dropped, see
        _handle_message_event)."""
        reason = self._too_big_reason()
        self._message_size = 0
        self._message_parts = []
        self._close_reason = trio_websocket.CloseReason(1009, reason)
        await self._send(wsproto.events.CloseConnection(code=1009, reason=reason))
        await self._recv_channel.aclose()

    @property
    def handshaking(self) -> bool:
        """True until the handshake is accepted or rejected."""
        return self._wsproto.state is ConnectionState.CONNECTING

    @property
    def awaiting_close_reply(self) -> bool:
        """True when we sent a close frame and the peer has not answered yet."""
        return self._wsproto.state is ConnectionState.LOCAL_CLOSING

    @property
    def is_open(self) -> bool:
        """True while accepted and neither side has begun closing."""
        return self._wsproto.state is ConnectionState.OPEN and self.closed is None

    def close_code(self) -> tuple[int, str]:
        """(code, reason) for the app's ``websocket.disconnect``."""
        if self.local_close is not None:
            return self.local_close
        reason = self.closed
        if reason is None:
            return 1006, ""
        return int(reason.code), reason.reason or ""

    async def close_with(self, code: int, reason: str) -> None:
        """Close with ``code`` unless closing already; the peer has CLOSE_TIMEOUT
        seconds to answer before the TCP connection is dropped."""
        if self.local_close is None and self.closed is None:
            self.local_close = (code, reason)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.aclose(code, reason)

    def _no_request(self) -> None:
        # The reader is ending before a handshake request came (a request wsproto
        # refused, a client that left): wake the wait for it with None (see _handshake).
        proposal = self._connection_proposal
        if proposal is not None and not proposal._value_event.is_set():
            proposal.set_value(cast(WebSocketRequest, None))

    async def _abort_web_socket(self) -> None:
        await super()._abort_web_socket()
        self._no_request()

    async def _close_stream(self) -> None:
        try:
            await super()._close_stream()
        finally:
            self._no_request()

    async def _handle_close_connection_event(self, event: wsproto.events.CloseConnection) -> None:
        if self._wsproto.state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot parse as a close from the peer without
            # a change of state; the peer must hear the code (1007, 1002) from us.
            # Closed as of now: while our close frame is being written, wsproto refuses
            # messages (LocalProtocolError), so the app's send() must get
            # ClientDisconnected instead (as after any close; see send_message).
            if event.code == 1009:
                # The extension found a compressed message over the limit (wsproto
                # calls that "error in extension"): say so as for any message.
                event = wsproto.events.CloseConnection(code=1009, reason=self._too_big_reason())
            self._close_reason = trio_websocket.CloseReason(event.code, event.reason or None)
            with contextlib.suppress(ConnectionClosed):
                await self._send(event)
        await super()._handle_close_connection_event(event)

    async def _handle_message_event(
        self, event: wsproto.events.BytesMessage | wsproto.events.TextMessage
    ) -> None:
        if self.closed is not None:
            # Closing: what still arrives is dropped unread by anyone.
            return
        inflater = self.inflater
        if inflater is not None and inflater.too_big:
            # A compressed message went over the limit: the extension stopped
            # inflating it (this event has none of it); the rest is read and dropped.
            await self._refuse_message()
            return
        await super()._handle_message_event(event)
        if self.closed is not None:
            # Over the size limit, trio-websocket sent 1009 and stopped reading; a peer
            # still sending would then have its connection reset, our close frame lost.
            # Read on (and drop) until the peer answers the close.
            self._reader_running = True

    async def _accept(
        self,
        request: wsproto.events.Request,
        subprotocol: str | None,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        # trio-websocket's _accept, with the extension: it never offers any.
        self._subprotocol = subprotocol
        self._path = request.target
        deflate = self._deflate(request, extra_headers)
        await self._send(
            wsproto.events.AcceptConnection(
                subprotocol=subprotocol,
                extensions=[] if deflate is None else [deflate],
                extra_headers=extra_headers,
            )
        )
        if deflate is not None and deflate.enabled():
            self.inflater = deflate
        # From here on only wsproto's frame-level connection is used: its HTTP/1.1
        # handshake (an h11 parser, the request) is let go. The frame-level object has
        # everything trio-websocket asks of a WSConnection: state, send,
        # receive_data, events and client.
        connection = self._wsproto.connection
        if connection is not None:
            connection._events = EventList()  # type: ignore[assignment]
            self._wsproto = cast(wsproto.WSConnection, connection)
        self.watcher.opened(self)

    def _deflate(
        self, request: wsproto.events.Request, extra_headers: list[tuple[bytes, bytes]]
    ) -> BoundedDeflate | None:
        """permessage-deflate, to be negotiated if the client offered it, unless it is
        off or the app answers Sec-WebSocket-Extensions itself (one such field only)."""
        settings = self.watcher.deflate
        if settings is None or not offers([str(offer) for offer in request.extensions]):
            return None
        if any(name.lower() == b"sec-websocket-extensions" for name, _ in extra_headers):
            return None
        return BoundedDeflate(settings, self._max_message_size)


# Handlers of the events _ServerConnection._reader_task receives, shared by all
# connections (looked up on the class, so its overrides are the ones used).
_READER_DISPATCH: dict[type[wsproto.events.Event], Callable[[Any, Any], Awaitable[None]]] = {
    wsproto.events.AcceptConnection: _ServerConnection._handle_accept_connection_event,
    wsproto.events.BytesMessage: _ServerConnection._handle_message_event,
    wsproto.events.CloseConnection: _ServerConnection._handle_close_connection_event,
    wsproto.events.Ping: _ServerConnection._handle_ping_event,
    wsproto.events.Pong: _ServerConnection._handle_pong_event,
    wsproto.events.RejectConnection: _ServerConnection._handle_reject_connection_event,
    wsproto.events.RejectData: _ServerConnection._handle_reject_data_event,
    wsproto.events.Request: _ServerConnection._handle_request_event,
    wsproto.events.TextMessage: _ServerConnection._handle_message_event,
}


class _Watcher:
    """Pings websockets and closes them with 1001 on a graceful stop; holds what its
    websockets share of the settings (the ping interval and timeout, the
    permessage-deflate policy), so that no connection needs an attribute for them.

    Connections are kept in a dict ordered by their next ping: every ping is due one
    interval after the previous one, so a pinged connection moves to the end and the
    order holds. Waking up costs only the connections that are due.
    """

    def __init__(self, config: Config) -> None:
        self.connections: dict[_ServerConnection, None] = {}
        self.interval = config.ws_ping_interval
        self.timeout = config.ws_ping_timeout
        # None: permessage-deflate offers are declined.
        self.deflate = (
            DeflateSettings(
                context_takeover=config.ws_deflate_context_takeover,
                window_bits=config.ws_deflate_window_bits,
            )
            if config.ws_per_message_deflate
            else None
        )
        self.running = False
        self.stopping = False
        self._nursery: trio.Nursery | None = None
        self._scope = trio.CancelScope()

    def add(self, conn: _ServerConnection) -> None:
        conn.next_ping = trio.current_time() + self.interval
        self.connections[conn] = None

    def discard(self, conn: _ServerConnection) -> None:
        self.connections.pop(conn, None)
        if conn.ping_scope is not None:
            conn.ping_scope.cancel()

    def opened(self, conn: _ServerConnection) -> None:
        """``conn`` was just accepted: close it at once if the server is stopping."""
        if self.stopping and self._nursery is not None:
            self._nursery.start_soon(self._close, conn, 1001, "server shutting down")

    def cancel(self) -> None:
        """End :meth:`run` once the closes it started are done (pings end with their
        websocket)."""
        self._scope.cancel()

    async def run(self, stop_requested: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.running = True
            try:
                with self._scope:
                    task_status.started()
                    await self._ping_until(stop_requested, nursery)
                    self.stopping = True
                    for conn in self.connections:
                        if conn.is_open:
                            nursery.start_soon(self._close, conn, 1001, "server shutting down")
                    await trio.sleep_forever()
            finally:
                self.running = False
                self._nursery = None

    async def _ping_until(self, stop_requested: trio.Event, nursery: trio.Nursery) -> None:
        interval = self.interval
        if not interval:
            await stop_requested.wait()
            return
        connections = self.connections
        while not stop_requested.is_set():
            now = trio.current_time()
            wake = now + interval
            due = []
            for conn in connections:
                if conn.next_ping > now:
                    wake = conn.next_ping
                    break
                due.append(conn)
            for conn in due:
                del connections[conn]
                conn.next_ping = now + interval
                connections[conn] = None
                if conn.ping_scope is None and conn.is_open:
                    nursery.start_soon(self._ping, conn)
            with trio.move_on_at(wake):
                await stop_requested.wait()

    async def _ping(self, conn: _ServerConnection) -> None:
        # The peer has ws_ping_timeout seconds to answer, counted from the ping or from
        # the last bytes it sent, whichever is later (the reader moves the deadline): a
        # pong cannot be sent in the middle of a frame, so a peer sending a long one on a
        # slow link answers late, and is alive all the while. Cancelled by discard()
        # when the websocket ends: its pong will never come.
        scope = conn.ping_scope = trio.CancelScope(
            deadline=trio.current_time() + (self.timeout or math.inf)
        )
        try:
            with scope:
                try:
                    await conn.ping()
                except ConnectionClosed:
                    return
                finally:
                    conn.ping_scope = None
            if scope.cancelled_caught and conn in self.connections:
                LOGGER.info(
                    "closing a websocket whose peer neither answered a ping nor sent "
                    "anything for %gs",
                    self.timeout,
                )
                await conn.close_with(1011, "keepalive ping timeout")
        except Exception:
            # This task serves every websocket of the server: a bug costs one of them.
            LOGGER.exception("unexpected error while pinging a websocket")

    async def _close(self, conn: _ServerConnection, code: int, reason: str) -> None:
        try:
            await conn.close_with(code, reason)
        except Exception:
            LOGGER.exception("unexpected error while closing a websocket")


class WSOptions:
    """What the WebSocket edge needs from the settings, and the one watcher of a
    server's websockets (which :func:`watch_websockets` runs); made once per server
    and passed to every websocket it serves."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.watcher = _Watcher(config)


async def watch_websockets(
    state: ServerState,
    options: WSOptions,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping every websocket of the server every ``ws_ping_interval`` seconds, close
    those whose peer does not answer within ``ws_ping_timeout`` (1011), and close them
    all with 1001 once ``state.stop_requested`` is set; runs until cancelled.

    One task for all of a server's websockets (``options.watcher``), started with
    ``await nursery.start(watch_websockets, state, options)`` before connections are
    accepted. Without it, each websocket runs a watcher of its own.
    """
    await options.watcher.run(state.stop_requested, task_status=task_status)


class _Session(Protocol):
    """What serves one websocket once its handshake request is in.

    ``start`` returns the app's (or handler's) coroutine, awaited by
    :func:`_serve_websocket` itself; then ``failed`` or ``returned`` finish up.
    """

    request: WebSocketRequest | None

    def start(self, conn: _ServerConnection) -> Awaitable[object]: ...

    async def failed(self, conn: _ServerConnection, exc: Exception) -> None: ...

    async def returned(self, conn: _ServerConnection) -> None: ...


async def _serve_websocket(
    stream: trio.abc.Stream,
    state: ServerState,
    options: WSOptions,
    session: _Session,
    sock: socket.socket | None,
) -> None:
    """Wrap ``stream`` with trio-websocket, wait for the handshake request and run
    ``session`` with it; closes ``stream`` before returning. ``sock`` is the plain
    socket under ``stream``, if nothing but a replay of bytes read wraps it."""
    config = options.config
    watcher = options.watcher
    own = None
    if not watcher.running:
        # Served on its own (tests, embedding): a watcher for this websocket only.
        watcher = own = _Watcher(config)
    conn = _ServerConnection(stream, config, watcher, sock)
    try:
        async with trio.open_nursery() as nursery:
            if own is not None:
                await nursery.start(own.run, state.stop_requested)
            nursery.start_soon(conn._reader_task, name=_READER_NAME)
            # Kept by the session only (not by this frame): an ASGI session lets the
            # request go once accepted.
            session.request = await _handshake(conn, config.header_timeout)
            if session.request is not None:
                watcher.add(conn)
                try:
                    await session.start(conn)
                except Exception as exc:
                    await session.failed(conn, exc)
                else:
                    await session.returned(conn)
                finally:
                    watcher.discard(conn)
            if own is not None:
                own.cancel()
            if conn.awaiting_close_reply:
                # The reader ends when the peer answers our close frame (or leaves).
                nursery.cancel_scope.deadline = trio.current_time() + CLOSE_TIMEOUT
            else:
                nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
        LOGGER.debug("websocket client went away")
    except* UnicodeError as group:
        if conn.handshaking:
            # wsproto's own checks answer 400; decoding a target or Host that is not
            # ASCII is what they let through, and it ends trio-websocket's reader.
            LOGGER.info("bad websocket handshake: %s", group.exceptions[0])
            with trio.move_on_after(CLOSE_TIMEOUT):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(_BAD_REQUEST)
        else:
            LOGGER.error("unexpected error while serving a websocket", exc_info=group)
    except* Exception:
        # A bug of ours must cost one connection, never the server.
        LOGGER.exception("unexpected error while serving a websocket")
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _handshake(conn: _ServerConnection, seconds: float) -> WebSocketRequest | None:
    """The client's handshake request, or None if it was bad, late or never came."""
    with trio.move_on_after(seconds if seconds > 0 else math.inf):
        # None when the reader ended first (see _ServerConnection._no_request).
        return await conn._get_request()
    LOGGER.info("websocket handshake not received within %gs", seconds)
    return None


def _plain_socket(stream: trio.abc.Stream, sock: socket.socket | None) -> socket.socket | None:
    """``sock`` if it is the socket of the trio.SocketStream that ``stream`` is (or
    replays bytes in front of), else None."""
    if sock is None:
        return None
    if type(stream) is PrefixedStream:
        stream = stream.transport_stream
    if type(stream) is not trio.SocketStream or stream.socket.fileno() != sock.fileno():
        return None
    return sock


# Native trio-websocket handlers


def serve_native_websocket(
    stream: trio.abc.Stream,
    handler: NativeHandler,
    state: ServerState,
    options: WSOptions,
    *,
    sock: socket.socket | None = None,
) -> Coroutine[Any, Any, None]:
    """Serve one websocket with a native trio-websocket handler, as
    ``trio_websocket.serve_websocket`` would: ``handler(request)`` accepts or rejects
    the request itself. Await the returned coroutine.

    A handler that raises is logged and its websocket closed with 1011 (or answered
    500 before the handshake); ``ConnectionClosed`` from a peer that left is not an
    error. Never raises for a client's or a handler's fault; closes ``stream``.
    ``sock`` is the plain socket ``stream`` wraps, if it is one (see :class:`Peer`):
    the websocket then reads it directly.
    """
    session = _NativeSession(handler)
    return _serve_websocket(stream, state, options, session, _plain_socket(stream, sock))


class _NativeSession:
    __slots__ = ("handler", "request")

    def __init__(self, handler: NativeHandler) -> None:
        self.handler = handler
        self.request: WebSocketRequest | None = None

    def _request(self) -> WebSocketRequest:
        assert self.request is not None
        return self.request

    def start(self, conn: _ServerConnection) -> Awaitable[object]:
        return self.handler(self._request())

    async def failed(self, conn: _ServerConnection, exc: Exception) -> None:
        if departure(exc, gone=_GONE):
            LOGGER.debug("websocket closed: %r", exc)
            await self._finish(conn, 1000)
        else:
            LOGGER.exception("exception in websocket handler for %s", self._request().path)
            await self._finish(conn, 1011)

    async def returned(self, conn: _ServerConnection) -> None:
        if conn.handshaking:
            LOGGER.error(
                "websocket handler returned without accepting or rejecting %s",
                self._request().path,
            )
        await self._finish(conn, 1000)

    async def _finish(self, conn: _ServerConnection, code: int) -> None:
        if conn.handshaking:
            with trio.move_on_after(CLOSE_TIMEOUT):
                status, headers, body = APP_ERROR_REFUSAL
                await self._request().reject(status, extra_headers=list(headers), body=body)
        else:
            await conn.close_with(code, "")


# ASGI


def serve_asgi_websocket(
    stream: trio.abc.Stream,
    app: ASGIApp,
    state: ServerState,
    options: WSOptions,
    *,
    peer: Peer,
) -> Coroutine[Any, Any, None]:
    """Serve one websocket to an ASGI app; ``stream`` starts with the handshake request
    (the HTTP edge replays what it read), ``peer`` is the connection it came on.
    Await the returned coroutine.

    Never raises for a client's or an app's fault; closes ``stream`` before returning.
    """
    scheme = "wss" if peer.secure else "ws"
    session = _ASGISession(app, stream, state, peer.client, peer.server, scheme, peer.extensions)
    return _serve_websocket(stream, state, options, session, _plain_socket(stream, peer.sock))


def _request_headers(request: WebSocketRequest) -> list[tuple[bytes, bytes]]:
    """The request's headers, lowercased, with the three that wsproto takes out of
    them (Host, Sec-WebSocket-Protocol, Sec-WebSocket-Extensions) put back."""
    event: wsproto.events.Request = request._event
    headers = []
    if event.host:
        try:
            host = event.host.encode("idna")
        except UnicodeError:
            host = event.host.encode("utf-8")
        headers.append((b"host", host))
    headers.extend(request.headers)
    if event.subprotocols:
        headers.append((b"sec-websocket-protocol", ", ".join(event.subprotocols).encode()))
    if event.extensions:
        names = [str(extension) for extension in event.extensions]
        headers.append((b"sec-websocket-extensions", ", ".join(names).encode()))
    return headers


class _ASGISession(ASGIWebSocket):
    """One ASGI websocket: the ``receive`` and ``send`` given to the app, doing what
    the exchange's rules (:class:`ASGIWebSocket`) say its messages ask for."""

    __slots__ = (
        "app",
        "client",
        "conn",
        "extensions",
        "path",
        "refused",
        "reported",
        "request",
        "scheme",
        "server",
        "state",
        "stream",
        "write_timeout",
    )

    conn: _ServerConnection

    def __init__(
        self,
        app: ASGIApp,
        stream: trio.abc.Stream,
        state: ServerState,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
        scheme: str,
        extensions: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.app = app
        self.stream = stream
        self.state = state
        self.client = client
        self.server = server
        self.scheme = scheme
        self.extensions = extensions
        self.path = ""
        timeout = state.config.write_timeout
        self.write_timeout = timeout if timeout > 0 else math.inf
        # The handshake request, until the app accepts (or refuses) it.
        self.request: WebSocketRequest | None = None
        # The error raised into the app for a bad message, logged already.
        self.reported: BaseException | None = None
        # Set once the app's refusal (403 or its denial response) is written, or failed.
        self.refused: trio.Event | None = None

    def start(self, conn: _ServerConnection) -> Awaitable[object]:
        self.conn = conn
        state = self.state
        request = self._request()
        self.subprotocols = request.proposed_subprotocols
        scope = websocket_scope(
            request.path.encode("ascii"),
            _request_headers(request),
            request.proposed_subprotocols,
            scheme=self.scheme,
            client=self.client,
            server=self.server,
            root_path=state.config.root_path,
            state=state.lifespan_state,
            extensions=self.extensions,
        )
        self.path = scope["path"]
        return self.app(scope, self.receive, self.send)

    async def failed(self, conn: _ServerConnection, exc: Exception) -> None:
        if exc is self.reported:
            pass
        elif departure(exc, gone=_GONE):
            LOGGER.debug("websocket closed under the ASGI app: %r", exc)
        else:
            LOGGER.exception("exception in ASGI app while serving websocket %s", self.path)
        await self._fail()

    async def returned(self, conn: _ServerConnection) -> None:
        action, arguments, error = self.on_app_returned()
        if error is not None:
            LOGGER.error("ASGI app returned %s %s", error, self.path)
        await self._act(action, arguments)

    async def _fail(self) -> None:
        """500 before the handshake is answered, 1011 after."""
        await self._act(*self.on_app_failed())

    async def _act(self, action: Action, arguments: Any) -> None:
        """Close or refuse as the end of the app asks (see :meth:`on_app_failed`)."""
        if action is Action.CLOSE:
            await self.conn.close_with(*arguments)
        elif action is Action.REJECT:
            with contextlib.suppress(*_LOCAL_ERRORS):
                await self._reject(*arguments)

    def _request(self) -> WebSocketRequest:
        assert self.request is not None, "the handshake was answered already"
        return self.request

    def _disconnect(self) -> Message:
        self.peer_gone = True
        code, reason = self.conn.close_code()
        return {"type": "websocket.disconnect", "code": code, "reason": reason}

    async def receive(self) -> Message:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        if self.receiving_ended:
            if self.refused is not None:
                # Not before the refusal is out: an app that stops its sender on
                # websocket.disconnect (Quart-Trio does) would cut it.
                await self.refused.wait()
            return self._disconnect()
        receiving = cast(ReceiveEnd, self.conn._recv_channel)
        try:
            # What get_message() and ReceiveEnd.receive() do, in this frame: a coroutine
            # fewer kept while the app waits (see ReceiveEnd.receive).
            await trio.lowlevel.checkpoint_if_cancelled()
            if receiving.queue.receivable():
                data = receiving.receive_nowait()
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                abort = receiving.queue.wait_to_receive()
                data = await trio.lowlevel.wait_task_rescheduled(abort)
        except (trio.ClosedResourceError, trio.EndOfChannel):
            return self._disconnect()
        if isinstance(data, str):
            return {"type": "websocket.receive", "text": data}
        return {"type": "websocket.receive", "bytes": data}

    async def send(self, message: Message) -> None:
        try:
            await self._send(message)
        except ASGIProtocolError as exc:
            LOGGER.error("ASGI app sent a bad websocket message: %s", exc)
            error = RuntimeError(f"ASGI protocol error: {exc}")
            self.reported = error
            await self._fail()
            raise error from None

    async def _send(self, message: Message) -> None:
        action, arguments = self.on_send(message)
        if action is Action.SEND:
            try:
                await self._write(self.conn.send_message(arguments))
            except ConnectionClosed:
                raise ClientDisconnected("the websocket is closed") from None
        elif action is Action.CLOSE:
            await self.conn.close_with(*arguments)
        elif action is Action.ACCEPT:
            subprotocol, headers = arguments
            try:
                await self._write(
                    self._request().accept(subprotocol=subprotocol, extra_headers=headers)
                )
            except ConnectionClosed:
                self.phase = WebSocketPhase.CLOSED
                raise ClientDisconnected("the client left before the handshake") from None
            # Only the handshake needed them: an idle websocket stays smaller without.
            self.request = None
            self.subprotocols = ()
        elif action is Action.REJECT:
            self.refused = refused = trio.Event()
            try:
                await self._reject(*arguments)
            except _LOCAL_ERRORS as exc:
                if message.get("type") == "websocket.close":
                    raise
                raise self.denial_refused(exc) from None
            finally:
                refused.set()
        elif action is Action.GONE:
            raise ClientDisconnected("the websocket is closed")

    async def _reject(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._write(
                self._request().reject(status, extra_headers=list(headers), body=body)
            )

    async def _write(self, sending: Awaitable[object]) -> None:
        """Await a send of trio-websocket's, for at most write_timeout seconds: a peer
        that stopped reading is cut off."""
        with trio.move_on_after(self.write_timeout):
            await sending
            return
        LOGGER.info("websocket write timed out after %gs; closing", self.write_timeout)
        self.conn.local_close = (1006, "write timeout")
        # The send was cut mid-frame: the stream cannot be used any more.
        await trio.aclose_forcefully(self.stream)
        raise ClientDisconnected("the websocket write timed out")

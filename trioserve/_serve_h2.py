"""The trio edge of HTTP/2: one connection in, one ASGI exchange per stream out.

:func:`serve_h2_connection` serves a connection that the HTTP/1.1 edge handed over
(TLS ALPN ``h2``, the cleartext preface, or ``Upgrade: h2c``); its shape is the
``HTTP2Connection`` protocol of ``_serve_http``, with the app, the server state and the
options bound by the pipeline (``functools.partial``, as for the HTTP/1.1 edge). The
protocol's rules live in :mod:`trioserve._proto.http2` (h2 through :class:`H2Server`)
and the ASGI rules in :class:`~trioserve._exchange.Exchange`; this module reads and
writes, runs the apps and keeps the time.

Where the risk is, and why the code is shaped as it is:

- **One writer.** A trio stream takes one ``send_all`` at a time (``BusyResourceError``
  otherwise, which is how hypercorn's trio worker crashes under h2load): every stream
  puts its frames into the sans-IO connection and wakes the connection's one writer
  task; a stream's ``send()`` returns once its bytes are written out.
- **Flow control both ways.** A stream's response waits for the client's windows; one
  that cannot move for ``--write-timeout`` is reset (CANCEL) and its app hears
  ``ClientDisconnected``; a socket that takes nothing for ``--write-timeout`` ends the
  connection. Request bodies are acknowledged only as the app reads them.
- **Streams outlive their client's interest.** A stream the client reset, or a
  connection that went away, makes ``receive()`` say ``http.disconnect`` and ``send()``
  raise ``ClientDisconnected`` (logged at debug level), as over HTTP/1.1: an app is
  never cancelled for a client's departure, and a client that vanishes (h2load ending
  its run) costs no error log. A connection ended for a protocol error or by a guard
  cancels its apps.
- **Stopping.** A graceful stop sends GOAWAY with the last stream taken; the streams in
  flight finish (within ``--graceful-timeout``, which the pipeline enforces), then the
  connection closes. An idle connection (no stream in flight) closes with GOAWAY after
  ``--keep-alive``; an incomplete header block gets ``--header-timeout``.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import h11
import trio

from ._exchange import Exchange, ExchangeOptions
from ._peer import Peer
from ._proto.http import PATHSEND
from ._proto.http2 import (
    DRAIN_IDLE,
    Action,
    ConnectionEnded,
    Error,
    Event,
    GoAwayReceived,
    Guards,
    H2Response,
    H2Server,
    Rejected,
    RequestData,
    RequestEnded,
    RequestHead,
    StreamReset,
    http2_scope,
)
from ._proto.validate import RequestRejected
from ._serve_http import HTTPOptions
from ._state import ServerState
from ._streams import DISCONNECT_ERRORS
from ._types import ASGIApp, Message

# The HTTP edges' logger: its lines, which a client can cause, are rate-limited (_lograte).
LOGGER = logging.getLogger("trioserve.http")

RECEIVE_SIZE = 64 * 1024
_INF = float("inf")
_BROKEN = DISCONNECT_ERRORS


class H2Options(ExchangeOptions):
    """What the HTTP/2 edge needs from the settings, worked out once per server.

    The limits, timeouts, headers, access log and proxy rewriting are the HTTP/1.1
    edge's (``http``); the HTTP/2 settings are advertised to each client. As the
    exchanges' options it offers them to no handover watcher (``handovers`` None): a
    stream's app that works on after its response holds only its own task.

    Args:
        http: The HTTP/1.1 edge's options.
        max_concurrent_streams: ``--http2-max-concurrent-streams``.
        initial_window_size: ``--http2-initial-window-size``.
        max_frame_size: ``--http2-max-frame-size``.
        max_header_list_size: ``--http2-max-header-list-size``; 0: the HTTP/1.1 head
            limit (``--limit-request-head``, or what the line and field limits allow).
        guards: The flood limits (see :class:`~trioserve._proto.http2.Guards`).
    """

    def __init__(
        self,
        http: HTTPOptions,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = 65535,
        max_frame_size: int = 16384,
        max_header_list_size: int = 0,
        guards: Guards | None = None,
    ) -> None:
        super().__init__(
            root_path=http.root_path,
            access_log=http.access_log,
            counts=http.counts,
            proxy=http.proxy,
            app_hint=http.app_hint,
            pathsend=PATHSEND in http.offered,
        )
        self.http = http
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.max_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size or http.limits.head_size
        self.guards = guards or Guards()

    def server(self) -> H2Server:
        """A sans-IO connection with these settings."""
        http = self.http
        return H2Server(
            max_concurrent_streams=self.max_concurrent_streams,
            initial_window_size=self.initial_window_size,
            max_frame_size=self.max_frame_size,
            max_header_list_size=self.max_header_list_size,
            limits=http.limits,
            guards=self.guards,
            server_header=http.server_header,
        )


async def serve_h2_connection(
    stream: trio.abc.Stream,
    *,
    peer: Peer,
    settings: bytes | None = None,
    upgrade_request: h11.Request | None = None,
    app: ASGIApp,
    state: ServerState,
    options: H2Options,
) -> None:
    """Serve ``stream`` as an HTTP/2 connection until the client leaves, it idles out,
    or the server stops; close it then. Never raises for a client's or an app's fault.

    ``stream`` starts with the client's preface (replayed by the HTTP/1.1 edge if it
    read it). After an ``Upgrade: h2c``, ``settings`` is the request's HTTP2-Settings
    value and ``upgrade_request`` the request, which becomes stream 1. The server runs
    ``_serve_http.watch_deadlines`` beside its connections (keep-alive and header
    timeouts).
    """
    connection = _H2Connection(stream, peer, app, state, options)
    try:
        await connection.serve(settings, upgrade_request)
    except _BROKEN:
        LOGGER.debug("client went away")
    except Exception:
        # A bug of ours must cost one connection, never the server.
        LOGGER.exception("unexpected error while serving an HTTP/2 connection")
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


class _H2Connection:
    """One HTTP/2 connection: its reader (this task), its writer, its streams.

    As a :class:`~trioserve._state.Stoppable`: ``idle`` while no stream is in flight,
    ``timer`` the scope of the current read, ``deadline`` when the idle (or the open
    header block's) wait ends.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: Peer,
        app: ASGIApp,
        state: ServerState,
        options: H2Options,
    ) -> None:
        self.stream = stream
        self.peer = peer
        self.app = app
        self.state = state
        self.options = options
        self.http = options.http
        self.h2 = options.server()
        self.scheme = "https" if peer.secure else "http"
        self.exchanges: dict[int, _H2Stream] = {}
        # Stoppable.
        self.idle = True
        self.timer = trio.CancelScope()
        self.deadline = _INF
        # GOAWAY sent (a stop, an idle close) or received: no new streams, and the
        # connection ends once the streams in flight are done.
        self.closing = False
        # The connection cannot carry anything more: the client left, a write failed
        # or stalled, or a protocol error or a guard ended it.
        self.dead = False
        # Ended by a protocol error or a guard: the apps are cancelled.
        self.aborted = False
        # Writer bookkeeping: rounds asked for, rounds written; the writer's wake-up;
        # the event set (and replaced) whenever anything moved.
        self._asked = 0
        self._written = 0
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._finishing = False
        self._streams_nursery: trio.Nursery | None = None
        # The scopes of the tasks watching draining streams (see _watch_drain).
        self._drain_watchers: set[trio.CancelScope] = set()

    # -- the connection's life --------------------------------------------------

    async def serve(self, settings: bytes | None, upgrade_request: h11.Request | None) -> None:
        """Serve the connection to its end (see :func:`serve_h2_connection`)."""
        state = self.state
        state.connections.add(self)
        try:
            async with trio.open_nursery() as service:
                service.start_soon(self._writer)
                stop_watch = trio.CancelScope()
                service.start_soon(self._watch_stop, stop_watch)
                async with trio.open_nursery() as streams:
                    self._streams_nursery = streams
                    if upgrade_request is not None and settings is not None:
                        self._start(
                            self.h2.initiate_upgrade(
                                settings,
                                method=bytes(upgrade_request.method),
                                target=bytes(upgrade_request.target),
                                headers=[(bytes(n), bytes(v)) for n, v in upgrade_request.headers],
                            )
                        )
                    else:
                        self.h2.initiate()
                    self._kick()
                    await self._read()
                    for watcher in self._drain_watchers:
                        watcher.cancel()
                    # The streams in flight finish (or, after a protocol error or a
                    # guard, are cancelled) before the writer's last round.
                    if self.aborted:
                        streams.cancel_scope.cancel()
                stop_watch.cancel()
                # The writer sends what is left (the last GOAWAY) and returns.
                self._finishing = True
                self._kick()
        finally:
            state.connections.discard(self)

    async def _watch_stop(self, scope: trio.CancelScope) -> None:
        """On a graceful stop: GOAWAY, and end once the streams in flight are done."""
        with scope:
            await self.state.stop_requested.wait()
            self._go_away()

    def _go_away(self) -> None:
        if self.closing or self.dead:
            return
        self.closing = True
        self.h2.goaway()
        self._kick()
        self._check_done()

    def _check_done(self) -> None:
        """Wake the reader if the connection is closing and nothing is in flight."""
        if self._done():
            self.timer.cancel()

    def _done(self) -> bool:
        return self.dead or (self.closing and not self.exchanges and not self.h2.streams_in_flight)

    async def _read(self) -> None:
        """Read and act on the client's frames until the connection ends."""
        receive = self.stream.receive_some
        h2 = self.h2
        while not self._done():
            self._set_deadline()
            with trio.CancelScope() as timer:
                self.timer = timer
                try:
                    data = await receive(RECEIVE_SIZE)
                except _BROKEN:
                    data = b""
            self.deadline = _INF
            if timer.cancelled_caught:
                if self._done():
                    return
                if h2.header_block_open:
                    LOGGER.info("HTTP/2 header block incomplete after %gs; closing",
                                self.http.header_timeout)  # fmt: skip
                    self._abort(Error.PROTOCOL_ERROR)
                    return
                if not self.exchanges:
                    # Idle for --keep-alive.
                    self._go_away()
                continue
            if not data:
                self._lost()
                return
            for event in h2.receive_data(data, trio.current_time()):
                self._dispatch(event)
            self._kick()

    def _set_deadline(self) -> None:
        """The current read's deadline (see :func:`watch_deadlines`)."""
        now = trio.current_time()
        if self.h2.header_block_open:
            self.idle = False
            self.deadline = now + self.http.header_timeout
        elif not self.exchanges and not self.closing:
            self.idle = True
            self.deadline = now + self.http.keep_alive
        else:
            self.idle = False
            self.deadline = _INF

    def _abort(self, error: Error) -> None:
        """End the connection now with GOAWAY(``error``); the apps are cancelled."""
        self.h2.goaway(error)
        self.aborted = True
        self._kick()
        self._gone()

    def _lost(self) -> None:
        """The client is gone (it closed, a write failed or stalled)."""
        self._gone()

    def _gone(self) -> None:
        if self.dead:
            return
        self.dead = True
        for exchange in self.exchanges.values():
            exchange.client_gone()
        self._notify()
        self.timer.cancel()

    # -- events -----------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        handler = self._handlers[type(event)]
        handler(self, event)

    def _on_head(self, event: RequestHead) -> None:
        self._start(event)

    def _start(self, head: RequestHead) -> None:
        state = self.state
        limit = self.http.limit_concurrency
        if limit and state.active_requests >= limit:
            state.reject(503)
            response = H2Response(server_header=self.http.server_header)
            self.h2.send(
                head.stream_id,
                response.fail(503, "Service Unavailable: too many requests in progress"),
            )
            self.h2.release(head.stream_id)
            return
        exchange = _H2Stream(self, head)
        self.exchanges[head.stream_id] = exchange
        assert self._streams_nursery is not None
        self._streams_nursery.start_soon(self._run, exchange)

    async def _run(self, exchange: _H2Stream) -> None:
        state = self.state
        # Counted as in HTTP/1.1: active until the app returns, served then.
        state.active_requests += 1
        try:
            await exchange.run(self.app)
        finally:
            state.active_requests -= 1
            state.requests_served += 1
            if state.requests_served == state.request_limit:
                state.request_limit_reached()
            stream_id = exchange.stream_id
            del self.exchanges[stream_id]
            if not self.dead:
                h2 = self.h2
                h2.release(stream_id)
                self._kick()
                if h2.drained(stream_id) >= 0 or h2.stalled(stream_id):
                    assert self._streams_nursery is not None
                    self._streams_nursery.start_soon(self._watch_drain, stream_id)
            self._check_done()
            if not self.exchanges and not self.closing:
                # Idle from now: the reader's wait gets the keep-alive deadline.
                self._set_deadline()

    async def _watch_drain(self, stream_id: int) -> None:
        """Reset a stream whose unread body drains (see ``H2Server.release``) once no
        DATA came for it for ``DRAIN_IDLE`` seconds: a client that stopped sending when
        it had the response (curl 7.88) waits for the stream to end."""
        h2 = self.h2
        with trio.CancelScope() as scope:
            self._drain_watchers.add(scope)
            try:
                last = h2.drained(stream_id)
                while not self.dead:
                    await trio.sleep(DRAIN_IDLE)
                    drained = h2.drained(stream_id)
                    if drained < 0 and not h2.stalled(stream_id):
                        return  # (the request ended, or the stream was reset)
                    if drained >= 0 and drained == last:
                        h2.stop_draining(stream_id)
                        self._kick()
                        return
                    last = drained
            finally:
                self._drain_watchers.discard(scope)

    def _on_data(self, event: RequestData) -> None:
        exchange = self.exchanges.get(event.stream_id)
        if exchange is not None:
            exchange.arrived(event.data)

    def _on_ended(self, event: RequestEnded) -> None:
        exchange = self.exchanges.get(event.stream_id)
        if exchange is not None:
            exchange.body_ended()

    def _on_reset(self, event: StreamReset) -> None:
        exchange = self.exchanges.get(event.stream_id)
        if exchange is not None:
            LOGGER.debug("client reset stream %d (error %d)", event.stream_id, event.error_code)
            exchange.client_gone()
            self._notify()

    def _on_rejected(self, event: Rejected) -> None:
        if event.answered:
            LOGGER.info("bad request: %s", event.reason)
            self.state.reject(event.status)
            return
        exchange = self.exchanges.get(event.stream_id)
        if exchange is not None:
            exchange.refuse(RequestRejected(event.status, event.reason))

    def _on_goaway(self, event: GoAwayReceived) -> None:
        if event.error_code:
            # The client considers the connection failed.
            LOGGER.debug("client sent GOAWAY with error %d", event.error_code)
            self.aborted = True
            self._gone()
            return
        self.closing = True
        self._check_done()

    def _on_ended_connection(self, event: ConnectionEnded) -> None:
        if event.hostile:
            LOGGER.info(
                "HTTP/2 client %s cut off (GOAWAY ENHANCE_YOUR_CALM): %s",
                self.peer.client,
                event.reason,
            )
        else:
            LOGGER.debug("HTTP/2 connection error %d: %s", event.error_code, event.reason)
        self.aborted = True
        self._kick()
        self._gone()

    _handlers: dict[type, Any] = {
        RequestHead: _on_head,
        RequestData: _on_data,
        RequestEnded: _on_ended,
        StreamReset: _on_reset,
        Rejected: _on_rejected,
        GoAwayReceived: _on_goaway,
        ConnectionEnded: _on_ended_connection,
    }

    # -- writing ----------------------------------------------------------------

    def _kick(self) -> None:
        """Ask the writer for a round: whatever the sans-IO connection has goes out."""
        self._asked += 1
        self._wake.set()

    def _notify(self) -> None:
        """Wake whoever waits for something to move."""
        self._progress.set()
        self._progress = trio.Event()

    async def _writer(self) -> None:
        """The connection's one writer (see the module doc)."""
        stream = self.stream
        h2 = self.h2
        write_timeout = self.http.write_timeout
        while True:
            asked = self._asked
            data = h2.data_to_send()
            if data and not (self.dead and not self.aborted):
                with trio.move_on_after(write_timeout) as waiting:
                    try:
                        await stream.send_all(data)
                    except _BROKEN:
                        self._written = asked
                        self._lost()
                        return
                if waiting.cancelled_caught:
                    LOGGER.info(
                        "HTTP/2 client took nothing for %gs (--write-timeout); closing",
                        write_timeout,
                    )
                    self._lost()
                    return
            self._written = asked
            self._notify()
            if self._asked == asked:
                if self._finishing or (self.dead and not data):
                    return
                await self._wake.wait()
                self._wake = trio.Event()

    async def transmit(self, exchange: _H2Stream, actions: list[Action]) -> bool:
        """Send a stream's actions; True once they are written out, False when the
        stream or the connection is gone or stalled for the write timeout."""
        if exchange.gone or self.dead:
            return False
        h2 = self.h2
        stream_id = exchange.stream_id
        h2.send(stream_id, actions)
        self._kick()
        write_timeout = self.http.write_timeout
        pending = h2.pending(stream_id)
        moved = trio.current_time()
        target = -1
        while True:
            if exchange.gone or self.dead:
                return False
            if h2.stream_gone(stream_id):
                exchange.client_gone()
                return False
            if not h2.stalled(stream_id):
                if target < 0:
                    target = self._asked
                if self._written >= target:
                    return True
            now = trio.current_time()
            left = moved + write_timeout - now
            if left <= 0:
                LOGGER.info(
                    "HTTP/2 stream %d could not send for %gs (--write-timeout); reset",
                    stream_id,
                    write_timeout,
                )
                h2.reset_stream(stream_id, Error.CANCEL)
                self._kick()
                exchange.client_gone()
                return False
            progress = self._progress
            with trio.move_on_after(left):
                await progress.wait()
            now_pending = h2.pending(stream_id)
            if now_pending != pending or self._written >= target >= 0:
                pending = now_pending
                moved = trio.current_time()


class _H2Stream(Exchange[list[Action]]):
    """One request on an HTTP/2 stream: the rules are those of
    :class:`~trioserve._exchange.Exchange`; this supplies the transport (the stream's
    received data, the connection's writer)."""

    options: H2Options

    def __init__(self, connection: _H2Connection, head: RequestHead) -> None:
        self.connection = connection
        self.head = head
        self.stream_id = head.stream_id
        self.state = connection.state
        self.options = connection.options
        self.peer = connection.peer
        http = connection.http
        self.read_timeout = http.read_timeout
        self.response = H2Response(
            head=head.method == "HEAD",
            server_header=http.server_header,
            default_headers=http.default_headers,
        )
        self.body_done = self.empty_body_due = head.ended
        self._chunks: deque[bytes] = deque()
        self._ended = head.ended
        self._refusal: RequestRejected | None = None
        # The client reset the stream or left.
        self.gone = False
        self._arrival = trio.Event()
        # The exchange's transmit hook, set as an attribute: with Exchange compiled by
        # mypyc, its code reads the attribute and would not see a method of that name.
        self.transmit = self._transmit

    # -- what the connection tells ----------------------------------------------

    def arrived(self, data: bytes) -> None:
        self._chunks.append(data)
        self._arrival.set()

    def body_ended(self) -> None:
        self._ended = True
        self._arrival.set()

    def refuse(self, rejection: RequestRejected) -> None:
        self._refusal = rejection
        self._arrival.set()

    def client_gone(self) -> None:
        self.gone = True
        self._arrival.set()

    # -- transport hooks --------------------------------------------------------

    def request_scope(self) -> dict[str, Any]:
        connection = self.connection
        peer = connection.peer
        return http2_scope(
            self.head,
            scheme=connection.scheme,
            client=peer.client,
            server=peer.server,
            root_path=connection.http.root_path,
            state=self.state.lifespan_state,
        )

    async def _transmit(self, payload: list[Action]) -> bool:
        return await self.connection.transmit(self, payload)

    async def read_body(self) -> Message | None:
        connection = self.connection
        while not self._chunks and not self._ended:
            if self._refusal is not None:
                raise self._refusal
            if self.gone:
                return None
            arrival = self._arrival
            with trio.move_on_after(self.read_timeout) as waiting:
                await arrival.wait()
            if arrival.is_set():
                self._arrival = trio.Event()
            if waiting.cancelled_caught:
                LOGGER.info(
                    "HTTP/2 request body stalled for %gs; stream %d reset",
                    self.read_timeout,
                    self.stream_id,
                )
                connection.h2.reset_stream(self.stream_id, Error.CANCEL)
                connection._kick()
                self.gone = True
                return None
        if self._refusal is not None:
            raise self._refusal
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if data:
            connection.h2.consumed(self.stream_id, len(data))
            connection._kick()
        return {"type": "http.request", "body": data, "more_body": not self._ended}

    async def watch_client(self) -> None:
        while not self.gone:
            arrival = self._arrival
            await arrival.wait()
            self._arrival = trio.Event()
            # (Data after the end of the body cannot come: h2 refuses it.)

"""The trio edge of HTTP/1.1: one accepted stream in, ASGI calls out.

``serve_http_connection`` serves a :class:`~trioserve._peer.Peer` over any
``trio.abc.Stream``, so tests drive it with ``trio.testing.memory_stream_pair()``.
One task per connection: the request body is read inside ``receive()`` as the app
asks for it, nothing is buffered whole. An app that works on after its complete
response (a background task) keeps that task, and the connection goes on in a new one
(see :class:`Handovers`).

The protocol's rules live in ``_proto``: :class:`~trioserve._proto.http1.ServerConnection`
(which the connection here extends) checks and parses request heads and bodies and
decides keep-alive, :class:`~trioserve._proto.http.Response` checks the app's messages
and serializes them. This module reads and writes, sets the deadlines and checkpoints,
and runs the app.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import types
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, BinaryIO, Protocol, cast

import h11
import trio

from ._config import Config, timeout_seconds
from ._exchange import FILE_CHUNK, AccessLogger, Exchange, ExchangeOptions
from ._metrics import ProcessCounts
from ._peer import Peer
from ._proto.h2c import SWITCHING_TO_H2C, h2c_settings, starts_as_preface
from ._proto.http import (
    Response,
    ResponsePhase,
    error_response,
    error_status_text,
    http_scope,
)
from ._proto.http1 import CONTINUE, BodyEnd, Next, ServerConnection
from ._proto.validate import (
    HTTP2Preface,
    Limits,
    RequestRejected,
    TLSOnPlainPort,
)
from ._proto.websocket import asks_websocket
from ._state import ServerState, Stoppable
from ._streams import DISCONNECT_ERRORS, PrefixedStream
from ._tls import negotiated_h2
from ._types import ASGIApp, Message

LOGGER = logging.getLogger("trioserve.http")

RECEIVE_SIZE = 64 * 1024
# Lingering close after an error response: how long and how much we read and drop so
# that the client gets to read our answer instead of a reset (RFC 9112 section 9.6).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
# Seconds of waiting a request body gets before --body-min-rate applies (as the initial
# timeout of Apache's mod_reqtimeout, which then extends by a second per MinRate bytes).
BODY_RATE_GRACE = 10.0

_NEXT_REQUEST = Next.REQUEST
_CLOSE = Next.CLOSE
_RESPONSE_DONE = ResponsePhase.DONE
_DISCARD_BODY = Next.DISCARD_BODY
_BROKEN = DISCONNECT_ERRORS


class WebSocketUpgrade(Protocol):
    """Serves a connection whose request asked for a WebSocket upgrade.

    ``stream`` replays the request bytes already read, so the WebSocket library parses
    the handshake itself.
    """

    async def __call__(self, stream: trio.abc.Stream, *, peer: Peer) -> None: ...


class HTTP2Connection(Protocol):
    """Serves a connection as HTTP/2 from its start (the HTTP/2 edge, given to the
    HTTP/1.1 edge as :attr:`HTTPOptions.http2`).

    The HTTP/1.1 edge hands over a connection that chose ``h2`` by TLS ALPN, one that
    opened with the HTTP/2 preface (prior knowledge), and, when that is on, one where a
    request asked for ``Upgrade: h2c`` (after answering it with 101).

    Args:
        stream: The connection; it replays what the HTTP/1.1 edge read and did not use
            (the preface and what followed it; after an upgrade, what followed the
            request), like the stream given to a :class:`WebSocketUpgrade`. The HTTP/1.1
            edge closes it once the call returns.
        peer: The accepted connection (addresses, TLS; ``peer.stream`` is not to be read:
            ``stream`` is).
        settings: After an upgrade, the request's ``HTTP2-Settings`` value as sent
            (base64url, checked to decode to whole settings), for
            ``H2Connection.initiate_upgrade_connection``; else None.
        upgrade_request: After an upgrade, the HTTP/1.1 request (h11's ``Request``, or
            the compiled h11's) that becomes stream 1, whose response the HTTP/2 edge
            sends; it had no body. Else None.

    It never raises for a client's fault; an error it raises is logged and costs only
    this connection.
    """

    async def __call__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: Peer,
        settings: bytes | None = None,
        upgrade_request: h11.Request | None = None,
    ) -> None: ...


class HTTPOptions(ExchangeOptions):
    """What the HTTP edge needs from the settings, worked out once per server."""

    def __init__(
        self,
        config: Config,
        *,
        h11_module: types.ModuleType = h11,
        access_log: AccessLogger | None = None,
        counts: ProcessCounts | None = None,
        proxy: Callable[[MutableMapping[str, Any]], None] | None = None,
        app_hint: Callable[[BaseException], str | None] | None = None,
        websocket: WebSocketUpgrade | None = None,
        http2: HTTP2Connection | None = None,
        h2_prior_knowledge: bool = True,
        h2c_upgrade: bool = False,
    ) -> None:
        super().__init__(
            root_path=config.root_path,
            # Rewrites a request scope from trusted proxy headers.
            proxy=proxy,
            access_log=access_log,
            # Counts each complete exchange (--metrics-bind).
            counts=counts,
            # Adds advice to the log of an app's exception (the asyncio hint).
            app_hint=app_hint,
            pathsend=config.pathsend,
        )
        self.h11: Any = h11_module
        self.limits = Limits(
            request_line=config.limit_request_line,
            fields=config.limit_request_fields,
            field_size=config.limit_request_field_size,
            body=config.limit_request_body,
            head=config.limit_request_head,
        )
        # Timeouts as durations: a setting of 0 (no limit) is infinity here.
        # keep_alive 0 turns keep-alive off; a fresh connection's wait for its first
        # request is then bounded by the header timeout instead.
        self.allow_keep_alive = config.keep_alive > 0
        self.keep_alive = (
            config.keep_alive if self.allow_keep_alive else timeout_seconds(config.header_timeout)
        )
        self.header_timeout = timeout_seconds(config.header_timeout)
        self.read_timeout = timeout_seconds(config.read_timeout)
        self.write_timeout = timeout_seconds(config.write_timeout)
        self.body_min_rate = config.body_min_rate
        self.server_header = config.server_header
        self.default_headers = tuple(
            (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
            for name, _, value in (item.partition(":") for item in config.header)
        )
        self.limit_concurrency = config.limit_concurrency
        # Takes over connections that ask for a WebSocket upgrade; None serves them as
        # plain HTTP (--ws off).
        self.websocket = websocket
        # Takes over HTTP/2 connections (see HTTP2Connection); None serves HTTP/1.1 only.
        # On plain connections, ``h2_prior_knowledge`` hands over one that opens with the
        # HTTP/2 preface, ``h2c_upgrade`` one where a request asks for h2c; on TLS, ALPN
        # decides (see trioserve._versions for why and the defaults). May be set after
        # construction: the HTTP/2 edge's own options are built on these.
        self.http2 = http2
        self.h2_prior_knowledge = h2_prior_knowledge
        self.h2c_upgrade = h2c_upgrade
        # Whether a TLS handshake on this plain port was logged yet (it is logged once).
        self.tls_logged = False
        # The exchanges whose app may work on after their response (run by the server
        # beside its connections: see watch_handovers). Two names for one object: the
        # base class's attribute keeps its wider type (mypyc rejects a narrowed one).
        self.handover_watch = Handovers()
        self.handovers = self.handover_watch


async def serve_http_connection(
    peer: Peer, app: ASGIApp, state: ServerState, options: HTTPOptions, *, tasks: trio.Nursery
) -> None:
    """Serve HTTP/1.1 requests on ``peer`` until it leaves, the connection idles out,
    or the server stops, then a WebSocket if one was asked for. Never raises for a
    client's or an app's fault; closes the stream before returning.

    ``tasks`` is the nursery this runs in (the server's connection nursery), or one that
    lives as long: when an app works on after its response (a background task), the
    connection carries on in a new task there, and this one only waits for the app
    (see :class:`Handovers`). When ``peer.sock`` is set (a plain ``trio.SocketStream``),
    the edge reads and writes that socket directly (see :class:`_Connection`).

    The server runs :func:`watch_deadlines` and :func:`watch_handovers` beside its
    connections: the first ends the waits whose deadline passed, the second hands
    connections over.

    HTTP/2 connections go to ``options.http2`` when it is set: a TLS connection that
    chose ``h2`` by ALPN at once, a plain one once its first bytes show the preface or
    a request asks for ``Upgrade: h2c`` (see :class:`HTTP2Connection`)."""
    if options.http2 is not None and peer.secure and negotiated_h2(peer.stream):
        await _ToHTTP2(peer.stream).serve(peer, options)
        return
    connection = _Connection(peer, app, state, options, tasks)
    if not await connection.serve():
        # Another task serves the connection now; this one ran the app to its end. It
        # returns once the connection has ended there: whoever runs it (the accept loop,
        # the connection hooks) sees it end once, after everything.
        ended = connection.owner.ended
        assert ended is not None
        del connection
        await ended.wait()
        return
    upgrade = connection.upgrade
    # An idle websocket keeps no frame or state of the HTTP connection alive.
    del connection
    if upgrade is not None:
        await upgrade.serve(peer, options)


async def _carry_on(handover: list[Any]) -> None:
    """The new task of a connection handed over (see :class:`Handovers`): ``handover``
    holds the connection and ``cycle``; end the exchange of ``cycle``, whose app works on
    elsewhere, and serve the connection on, as :func:`serve_http_connection` would have."""
    # Taken out of the list, not passed as arguments: they are dropped below, and code
    # compiled with mypyc cannot delete an argument.
    connection: _Connection
    cycle: _Cycle
    connection, cycle = handover
    handover.clear()
    owner = connection.owner
    ended = owner.ended
    assert ended is not None
    handed_over = False
    try:
        if not await connection.serve(cycle):
            handed_over = True  # (again: the next task sets ``ended``)
            return
        upgrade, peer, options = connection.upgrade, owner.peer, connection.options
        del connection, cycle, owner
        if upgrade is not None:
            await upgrade.serve(peer, options)
    finally:
        if not handed_over:
            ended.set()


async def _close(stream: trio.abc.Stream) -> None:
    """Close ``stream`` at once, whatever the cancellation around."""
    if type(stream) is trio.SocketStream:
        # What its aclose() does, minus the checkpoint: closing a socket never blocks,
        # and aclose_forcefully's cancelled checkpoint costs more than serving a small
        # request (it raises and catches Cancelled), once per connection.
        stream.socket.close()
        return
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)


async def upgrade_to_websocket(upgrade: PrefixedStream, peer: Peer, options: HTTPOptions) -> None:
    """Serve the WebSocket a request asked for (see :func:`serve_http_connection`)."""
    websocket = options.websocket
    assert websocket is not None
    try:
        await websocket(upgrade, peer=peer)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(upgrade)


class _ToWebSocket:
    """A connection whose request asked for a WebSocket: ``stream`` replays it."""

    __slots__ = ("stream",)

    def __init__(self, stream: PrefixedStream) -> None:
        self.stream = stream

    async def serve(self, peer: Peer, options: HTTPOptions) -> None:
        await upgrade_to_websocket(self.stream, peer, options)


class _ToHTTP2:
    """A connection that goes on as HTTP/2 (see :class:`HTTP2Connection` for the
    fields): ``stream`` replays what the HTTP/1.1 edge read and did not use."""

    __slots__ = ("request", "settings", "stream")

    def __init__(
        self, stream: trio.abc.Stream, settings: bytes | None = None, request: Any = None
    ) -> None:
        self.stream = stream
        self.settings = settings
        self.request = request

    async def serve(self, peer: Peer, options: HTTPOptions) -> None:
        """Run the HTTP/2 edge on the connection, then close it."""
        http2 = options.http2
        assert http2 is not None
        stream = self.stream
        try:
            await http2(stream, peer=peer, settings=self.settings, upgrade_request=self.request)
        except _BROKEN:
            LOGGER.debug("client went away")
        except Exception:
            # A bug of ours must cost one connection, never the server.
            LOGGER.exception("unexpected error while serving an HTTP/2 connection")
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


_INF = float("inf")


async def watch_deadlines(state: ServerState, options: HTTPOptions) -> None:
    """End the connections whose current wait passed its deadline; runs until cancelled.

    Sleeps until the earliest deadline, but never longer than the shortest timeout: a
    deadline set meanwhile is at least that far away, so none is missed or late. (A
    graceful stop's drain deadline, which bounds idle waits, is ``graceful_timeout``
    away when it is set.)
    """
    timeouts = (
        options.keep_alive,
        options.header_timeout,
        options.write_timeout,
        timeout_seconds(state.config.graceful_timeout),
    )
    longest_sleep = max(min(timeouts), 0.01)
    while True:
        now = trio.current_time()
        wake = now + longest_sleep
        for connection in state.connections:
            deadline = connection.deadline
            if deadline <= now:
                expire(connection)
            elif deadline < wake:
                wake = deadline
        await trio.sleep_until(wake)


def expire(connection: Stoppable) -> None:
    """End the current wait of ``connection``, whose deadline passed."""
    connection.deadline = _INF
    connection.timer.cancel()


# How long an app may go on after its response is complete before its connection
# carries on in a new task: long enough for apps that return right after their last
# message (a WSGI app's thread, a streaming response's task group) to keep their
# task, short enough that the client's next request hardly waits.
HANDOVER_AFTER = 0.005


class Handovers:
    """Connections whose app works on after its response, handed over to a new task.

    A framework's background task (Starlette's and FastAPI's ``BackgroundTask``, a WSGI
    iterable's ``close()``) runs after the response is sent but inside the app call, in
    the connection's task. Without a handover, the client's next request on the kept-
    alive connection would wait for it; uvicorn, whose requests each run in a task of
    their own, answers at once.

    Spawning a task per request would cost every request for the few that need it, so
    the watch is lazy: every complete response is offered here (a list append), and the
    watcher, woken by the first offer, drops those whose app returned before its task
    let others run (most of them: then no timer is set). It looks at the others again
    between ``HANDOVER_AFTER`` and twice that after their offer; for those whose app
    still works then, the connection goes on in a new task in the
    server's connection nursery (see :meth:`_Connection.hand_over`), while the old task
    only runs the app to its end and then waits for the connection to end. A graceful
    stop treats both tasks as any connection's: the drain waits for them up to
    ``graceful_timeout``, then cancels them.
    """

    def __init__(self) -> None:
        # The complete responses whose app had not returned yet (appended by
        # _Cycle._complete, which wakes a parked watcher).
        self.offered: list[_Cycle] = []
        # The watchers waiting for an offer (one per server; tests may run more).
        self.parked: list[trio.lowlevel.Task] = []
        # How many watchers run: without one, offers would pile up for nobody.
        self.watchers = 0

    def wake(self) -> None:
        """Wake the parked watchers: there is an offer."""
        parked = self.parked
        for task in parked:
            trio.lowlevel.reschedule(task)
        parked.clear()

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand over the connections whose app works on after its response; runs until
        cancelled."""
        self.watchers += 1
        try:
            task_status.started()
            # The offers whose app still worked when this task last looked.
            pending: list[_Cycle] = []
            while True:
                if not (pending or self.offered):
                    await self._park()
                # Most apps returned before their task let this one run: done with. Only
                # when some did not does this task sleep (a timer per request, or even
                # per HANDOVER_AFTER under load, costs every request: ~2% with its
                # garbage collections).
                for cycle in self.offered:
                    if not cycle.returned:
                        pending.append(cycle)
                self.offered = []
                if not pending:
                    continue
                await trio.sleep(HANDOVER_AFTER)
                previous, pending = pending, []
                for cycle in previous:
                    if cycle.returned:
                        continue
                    if cycle.busy:
                        # A receive() still reads the connection (it ends now that the
                        # response is complete): next time.
                        pending.append(cycle)
                    else:
                        cycle.connection.hand_over(cycle)
        finally:
            self.watchers -= 1
            if not self.watchers:
                self.offered = []

    async def _park(self) -> None:
        task = trio.lowlevel.current_task()
        self.parked.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.parked.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


async def watch_handovers(
    options: HTTPOptions, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Hand over the connections whose app works on after its response (see
    :class:`Handovers`); runs until cancelled, beside the server's connections. Without
    it, a connection waits for its app to return before it reads the next request."""
    await options.handover_watch.watch(task_status=task_status)


class _Owner:
    """What a :class:`_Connection` holds for serving in a task of its own: the peer, the
    app, the nursery where it carries on when handed over, and once it was, the event
    its last task sets when the connection ends.

    Kept apart because CPython (3.11 and 3.12) keeps at most 30 attribute names of a
    class's instances in their compact form; past that, every instance of the class
    gets a full ``__dict__``, and each attribute access on the hot path gets slower
    (about 5% more instructions per request: see tests/serve/test_http_background.py).
    """

    __slots__ = ("app", "clock", "ended", "peer", "tasks")

    def __init__(self, peer: Peer, app: ASGIApp, tasks: trio.Nursery) -> None:
        self.peer = peer
        self.app = app
        self.tasks = tasks
        self.ended: trio.Event | None = None
        # The run's clock, read for the idle deadline of every request that waits: what
        # trio.current_time() reads, without finding the run (a thread-local look-up
        # and two calls) each time. Asked for at the first wait (see _receive_idle).
        self.clock: trio.abc.Clock | None = None


class _Connection(ServerConnection):
    """One client connection: the request loop, its reads and writes, and its timer;
    the protocol's rules are those of :class:`ServerConnection`, which it extends.

    Waits outside the app (idle between requests, a request head arriving, writes) are
    bounded by ``deadline``, a plain number set before each wait; the server's
    deadline watchdog cancels ``timer``, the connection's one cancel scope, when a
    deadline passes. Setting a number is much cheaper on the hot path than entering a
    cancel scope, or moving a trio deadline, for every wait. The timer itself is entered
    only at the first wait that has to wait (see ``_enter_timer``): a connection whose
    request is whole in its first read and whose answer closes it enters none (entering
    and leaving a cancel scope costs about 5 µs, a tenth of such a connection).
    """

    def __init__(
        self,
        peer: Peer,
        app: ASGIApp,
        state: ServerState,
        options: HTTPOptions,
        tasks: trio.Nursery,
    ) -> None:
        self.state = state
        self.options = options
        # One attribute for what the hot path hardly reads (see _Owner).
        self.owner = _Owner(peer, app, tasks)
        super().__init__(
            options.h11,
            options.limits,
            allow_keep_alive=options.allow_keep_alive,
            server_header=options.server_header,
            default_headers=options.default_headers,
        )
        self.client = peer.client
        self.server = peer.server
        self.scheme = "https" if peer.secure else "http"
        # Set when the connection goes on as a WebSocket or HTTP/2: how, with the stream
        # replaying the bytes read and not used.
        self.upgrade: _ToWebSocket | _ToHTTP2 | None = None
        # Cancelled by the deadline watchdog to end the current wait: replaced by a fresh
        # one when a request turns out to have arrived as its idle wait ended, and,
        # during a write that has to wait, by the scope of that write only (see write).
        # Entered at the first idle or head wait, left by ``serve``.
        self.timer = trio.CancelScope()
        # When the current wait must end (idle, head or write); infinity while the app
        # works. Plain numbers: the watchdog compares them, no cancel scope per wait.
        self.deadline = _INF
        # True while waiting for a request with nothing of it received: a graceful stop
        # then bounds the wait by its drain deadline.
        self.idle = False
        # What the timer bounds right now: "idle", "head" or "write".
        self.waiting = ""
        # The socket under a plain trio.SocketStream, read and written directly: a read
        # or write the kernel completes at once then costs no trip through trio's
        # scheduler. Such calls are not checkpoints: the request loop checkpoints
        # between two requests (see _serve).
        self.sock = peer.sock
        # Whether the current exchange wrote to ``sock`` yet (see write).
        self.wrote = False

    @property
    def stream(self) -> trio.abc.Stream:
        """The connection as a stream; over a plain socket (``sock``), built only when
        asked for (see :class:`~trioserve._peer.Peer`): the request loop uses the socket."""
        return self.owner.peer.stream

    async def serve(self, after: _Cycle | None = None) -> bool:
        """Serve requests (after ending the exchange of ``after``, when the connection
        was handed over with it) until the connection leaves, idles out or the server
        stops: True then, with the stream closed unless the connection goes on as a
        WebSocket or HTTP/2 (``upgrade`` then says how, with the stream replaying what
        was read). False when the connection was handed over to another task, which
        owns it from then on. Never raises for a client's or an app's fault.

        (One coroutine with the request loop's own, :meth:`_serve`: a frame more would
        be made per connection and passed through on every wakeup of its task.)
        """
        state = self.state
        state.connections.add(self)
        handed_over = upgrading = False
        try:
            if after is not None:
                after.log_access()
            while True:
                # Entered only when this task first waits for the client (see
                # _enter_timer), and left here: a connection whose request was whole in
                # its first read never waits outside the app, and costs no cancel scope.
                timer = self.timer
                try:
                    handed_over = await self._serve(after)
                except BaseException as exc:
                    # What ``with timer:`` would do, had it been entered: its own
                    # cancellation is caught, anything else goes on.
                    if timer.is_relative is not None or not timer.__exit__(
                        type(exc), exc, exc.__traceback__
                    ):
                        raise
                else:
                    if timer.is_relative is None:  # (None once entered)
                        timer.__exit__(None, None, None)
                if handed_over:
                    return False
                after = None
                if not (timer.cancelled_caught and self.idle):
                    break
                # The idle wait reached its deadline (keep-alive, or a graceful stop's).
                self.idle = False
                if not self._request_arrived():
                    await self._close_silent()
                    return True
                # The next request came as the wait ended: it is served, not cut.
                self.timer = trio.CancelScope()
            if timer.cancelled_caught and self.waiting == "head":
                LOGGER.info("bad request: request head not received in time")
                await self._send_error(408, "request head not received in time")
            upgrading = self.upgrade is not None
        except _BROKEN:
            LOGGER.debug("client went away")
        except Exception:
            # A bug of ours must cost one connection, never the server.
            LOGGER.exception("unexpected error while serving a connection")
        finally:
            if not handed_over:
                state.connections.discard(self)
                if not upgrading:
                    self.upgrade = None
                    await self.close()
        return True

    async def _serve(self, cycle: _Cycle | None) -> bool:
        """The request loop; True when the connection was handed over (see serve)."""
        state = self.state
        options = self.options
        app = self.owner.app
        while True:
            if cycle is not None:
                # The previous exchange is over: does the connection carry another?
                if cycle.rejected is not None:
                    await self._linger()
                    return False
                broken = cycle.broken
                response = cycle.response
                # (Response.keep_alive, without the property's call.)
                keep_alive = (
                    not broken and response.phase is _RESPONSE_DONE and not response.must_close
                )
                if self.nothing_held:
                    # A request split from a plain head left the parser idle and empty:
                    # what next_exchange would answer, without the call.
                    after = _NEXT_REQUEST if keep_alive else _CLOSE
                else:
                    after = self.next_exchange(keep_alive, not broken)
                    if after is _DISCARD_BODY:
                        await self._discard_body()
                        after = self.next_exchange(keep_alive, False)
                if after is not _NEXT_REQUEST:
                    if state.stopping and not broken:
                        # The answer said Connection: close: a client that sent more
                        # meanwhile must read it rather than a reset.
                        await self._close_silent()
                    return False
                # Also during a stop: a response that went out kept alive (it started
                # before the stop) leaves the client free to send its next request,
                # which is then answered with Connection: close.
                # Always a checkpoint between two requests, even when this one waited
                # already: it lets the other connections run and a cancellation in, and
                # it gives the client the time to send its next request. Reading at once
                # after the response finds nothing (a client that waits for the response
                # has had no time to answer it), and costs a failed read and a wait in
                # epoll, every request after (measured: with that rule, some runs had a
                # fifth of all requests wait so, and served 13% fewer requests; one
                # connection alone served 14% fewer, p50 52 µs against 45 µs).
                # The checkpoint in its two public halves (trio's own checkpoint() is
                # the same two steps): a schedule point, then a cancellation delivered
                # if there is one. Awaited from here, the task resumes through one
                # coroutine frame less (about 0.4% of a request).
                await _schedule_point()
                await _cancel_point()
            self.wrote = False
            try:
                # What the client sent after the previous request is in the parser
                # already; usually one read brings a whole head, and ``pending`` stays
                # the bytes that read returned: no copies. (When the parser is known to
                # hold nothing, it is not asked: h11's trailing_data copies its buffer.)
                if self.nothing_held:
                    pending = b""
                    h11_has = 0
                else:
                    pending = self.parser.trailing_data[0]
                    h11_has = len(pending)
                if not h11_has:
                    sock = self.sock
                    if sock is None:
                        pending = await self._receive_idle()
                    else:
                        # _receive_idle's first read, here: under load the next request
                        # is usually there already, and a read that finds it does not
                        # wait (no deadline, no coroutine, no clock read).
                        try:
                            pending = sock.recv(RECEIVE_SIZE)
                        except BlockingIOError:
                            pending = await self._receive_idle(found_nothing=True)
                        except OSError:
                            pending = b""
                    if not pending:
                        return False
                request = self.request_head(pending, h11_has)
                if request is None:
                    request = await self._read_head()
                    if request is None:
                        return False
                self.deadline = _INF
            except RequestRejected as exc:
                self.deadline = _INF
                if type(exc) is TLSOnPlainPort:
                    self._log_tls()
                elif type(exc) is HTTP2Preface and self._prior_knowledge(exc):
                    return False
                else:
                    LOGGER.info("bad request: %s", exc.reason)
                await self._send_error(exc.status, exc.reason)
                return False
            if self.upgrade_bytes is not None:
                if options.websocket is not None and asks_websocket(
                    request.method, request.http_version, request.headers
                ):
                    # Served by serve_http_connection once this object is gone: an idle
                    # websocket should not keep the HTTP connection's state alive.
                    self.upgrade = _ToWebSocket(PrefixedStream(self.stream, self.upgrade_bytes))
                    return False
                if options.h2c_upgrade and await self._upgrade_to_h2c(request):
                    return False
            cycle = _Cycle(self, request)
            limit = options.limit_concurrency
            if limit and state.active_requests >= limit:
                await self._send_error(503, "Service Unavailable: too many requests in progress")
                return False
            # The request counts as active, and as served, once its app returns: work an
            # app does after its response (a background task) counts, as in uvicorn.
            state.active_requests += 1
            try:
                await cycle.run(app)
            finally:
                state.active_requests -= 1
                state.requests_served += 1
                if state.requests_served == state.request_limit:
                    state.request_limit_reached()
            if cycle.handed_over:
                return True

    def _prior_knowledge(self, preface: HTTP2Preface) -> bool:
        """Whether the connection opened with the HTTP/2 preface, to be served as HTTP/2
        (then ``upgrade`` says so). Only at the start of a plain connection: on TLS, ALPN
        decides; after a request, the preface is a client's error."""
        received = preface.received
        options = self.options
        if (
            received is None
            or options.http2 is None
            or not options.h2_prior_knowledge
            or self.owner.peer.secure
            or not starts_as_preface(received)
        ):
            return False
        self.upgrade = _ToHTTP2(PrefixedStream(self.stream, received))
        return True

    async def _upgrade_to_h2c(self, request: Any) -> bool:
        """Grant the ``Upgrade: h2c`` that ``request`` asks for, if it may be granted
        (see :func:`~trioserve._proto.h2c.h2c_settings`: a request without a body, on a
        plain connection, while the server is not stopping): answer 101 and hand the
        connection to HTTP/2, with the request as its stream 1. False to serve the
        request as HTTP/1.1 (during a stop, with Connection: close)."""
        if self.options.http2 is None or self.owner.peer.secure or self.state.stopping:
            return False
        settings = h2c_settings(
            request.method, request.http_version, self.request_headers, body=not self.body_done
        )
        if settings is None:
            return False
        # What the client sent after the request (its HTTP/2 preface, maybe) is read again.
        leftover = bytes(self.parser.trailing_data[0])
        if not await self.write(SWITCHING_TO_H2C):
            return True  # the client has gone: the connection just ends
        self.upgrade = _ToHTTP2(PrefixedStream(self.stream, leftover), settings, request)
        return True

    def hand_over(self, cycle: _Cycle) -> None:
        """Go on serving the connection in a new task, whose timer is its own: the
        response of ``cycle`` is complete and its app works on in this task (see
        :class:`Handovers`)."""
        cycle.handed_over = True
        # The old scope stays around the app; the watchdog now cancels the new task's.
        self.timer = trio.CancelScope()
        owner = self.owner
        if owner.ended is None:
            owner.ended = trio.Event()
        owner.tasks.start_soon(_carry_on, [self, cycle])

    async def close(self) -> None:
        """Close the connection at once, whatever the cancellation around."""
        sock = self.sock
        if sock is not None:
            self.owner.peer.close_socket(sock)
        else:
            await _close(self.stream)

    def _log_tls(self) -> None:
        """Log a TLS handshake on this plain port: once, since a client configured for
        https:// would otherwise fill the log with a line per connection."""
        if self.options.tls_logged:
            LOGGER.debug("TLS on a plain HTTP port (from %s)", self.client)
            return
        self.options.tls_logged = True
        LOGGER.warning(
            "TLS on a plain HTTP port: %s sent a TLS handshake to an http:// listener"
            " (answered 400; further ones are logged at debug level)",
            self.client,
        )

    async def _receive(self, *, found_nothing: bool = False) -> bytes:
        """The next bytes from the client; b"" once it is gone.

        On a plain socket the read is tried first and the wait comes only when nothing
        is there (under load the next request is usually there already); a read that
        finds data is not a checkpoint. ``found_nothing``: the caller just tried that
        read itself, so this waits first.
        """
        sock = self.sock
        if sock is None:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except _BROKEN:
                return b""
            return bytes(data)
        while True:
            if found_nothing:
                found_nothing = False
            else:
                try:
                    return sock.recv(RECEIVE_SIZE)
                except BlockingIOError:
                    pass
                except OSError:
                    return b""
            try:
                await _wait_readable(sock)
            except _BROKEN:
                return b""

    async def _receive_idle(self, *, found_nothing: bool = False) -> bytes:
        """Wait for the next request with nothing of it received yet: b"" to close.
        ``found_nothing``: the caller just tried the read on the plain socket itself and
        found nothing (as in :meth:`_receive`).

        The wait ends at the keep-alive deadline, or at a graceful stop's drain deadline
        if that comes first (see ``ServerState.request_stop``); a stop does not cut it
        short, since the client may be sending its next request at this very moment.
        When the deadline passes, the timer is cancelled and ``serve`` closes the
        connection, unless a request arrived meanwhile.
        """
        sock = self.sock
        if sock is not None and not found_nothing:
            # _receive's first try, here: under load the next request is usually there
            # (and a new connection's first one, nearly always), and then no coroutine
            # is made for the read and no deadline is set: nothing waits.
            try:
                return sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                pass
            except OSError:
                return b""
        self.waiting = "idle"
        self.idle = True
        owner = self.owner
        clock = owner.clock
        if clock is None:
            clock = owner.clock = trio.lowlevel.current_clock()
        deadline = clock.current_time() + self.options.keep_alive
        drain_deadline = self.state.drain_deadline
        if drain_deadline < deadline:
            deadline = drain_deadline
        self.deadline = deadline
        self._enter_timer()
        data = await self._receive(found_nothing=sock is not None)
        # Only the watchdog cancels the timer, and it sets the deadline to infinity
        # first: while the deadline is the one set here (and finite), it did not, and
        # the timer need not be asked (its cancel_called reads the clock).
        if data and (self.deadline != deadline or deadline == _INF) and self.timer.cancel_called:
            # The deadline passed as the request arrived (on a plain socket, the read
            # is not a checkpoint): keep it for ``serve``, which serves it under a new
            # timer, rather than let the cancellation cut its exchange.
            self.receive_data(data)
            await trio.lowlevel.checkpoint()  # (raises Cancelled, still idle)
        self.idle = False
        return data

    def _enter_timer(self) -> None:
        """Enter the connection's timer before a wait it bounds (idle or head), if this
        task has not yet: from here on the deadline watchdog can end the wait.

        Only from the request loop's own waits (``_receive_idle``, ``_read_head``), where
        no other cancel scope of this task is open: ``serve`` leaves the timer after the
        request loop, and scopes must be left in the order they were entered. A
        connection handed over to a new task gets a fresh timer (see ``hand_over``); the
        old task leaves its own, if it entered it, once its app returns.
        """
        timer = self.timer
        if timer.is_relative is not None:  # (None once entered)
            timer.__enter__()

    def _request_arrived(self) -> bool:
        """Whether bytes of a next request are here, as the idle wait ended: read what
        the socket holds (without waiting) and give it to h11."""
        if self.request_bytes_held:
            return True
        if self.sock is None:
            # (A stream cannot be read without waiting; _close_silent's lingering read
            # keeps a request that races the close from turning into a reset.)
            return False
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except OSError:  # (BlockingIOError: nothing there)
            return False
        if not data:
            return False
        self.receive_data(data)
        return True

    async def _close_silent(self) -> None:
        """End a connection whose client has nothing more to say (it stayed silent until
        the idle deadline, or it was told Connection: close).

        Where the stream can half-close, this is a lingering close: a request the
        client sent as we closed is read and dropped, and the client sees the end of
        the connection instead of a reset (which would also destroy an answer still
        on its way). Over TLS the stream is closed at once, as before.
        """
        sock = self.sock
        if sock is not None:
            # In the same step as the check that no request came (no checkpoint between):
            # a request that arrives later is one the client sent before our end of
            # the connection reached it.
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                return
            await self._read_and_drop()
            return
        stream = self.stream
        if isinstance(stream, PrefixedStream):
            stream = stream.transport_stream
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await self._linger()

    async def _read_head(self) -> Any:
        """Read the rest of a head that :meth:`request_head` found incomplete, with
        ``header_timeout`` as the bound once part of it is here; None to close quietly.

        Raises:
            RequestRejected: the head breaks a limit or is malformed.
        """
        head_deadline = _INF
        while True:
            if self.head_started:
                if head_deadline == _INF:
                    head_deadline = trio.current_time() + self.options.header_timeout
                self.waiting = "head"
                self.deadline = head_deadline
                self._enter_timer()
                data = await self._receive()
            else:
                # Only stray CRLFs so far: still idle, as far as a stop is concerned.
                data = await self._receive_idle()
            if not data:
                return None
            request = self.more_head(data)
            if request is not None:
                return request

    async def receive_body_bytes(self) -> bytes:
        """The next raw bytes of a request body, or b"" when the client is gone or stalled.

        A stalled body ends the exchange, not the app: it learns of it as a disconnect.
        Only the time spent waiting here counts against ``body_min_rate``: while the app
        does not read, a client that cannot send is not slow.

        Raises:
            RequestRejected: 408, the body arrives slower than ``body_min_rate``.
        """
        options = self.options
        wait = options.read_timeout
        rate = options.body_min_rate
        too_slow = False
        if rate:
            # The waiting the body has earned: the grace, and a second per `rate` bytes.
            earned = BODY_RATE_GRACE + self.body_received / rate - self.body_waited
            too_slow = earned < wait
            if too_slow:
                wait = max(earned, 0.0)
            started = trio.current_time()
        data = b""
        with trio.move_on_after(wait) as waiting:
            if self.sock is not None:
                # A body read is a checkpoint, as a stream's receive_some is: a client
                # sending a large body faster than the app reads it would otherwise
                # keep this task running, and every other connection waiting.
                await trio.lowlevel.checkpoint()
            data = await self._receive()
        if rate:
            self.body_waited += trio.current_time() - started
        if waiting.cancelled_caught:
            if too_slow:
                raise RequestRejected(408, f"request body slower than {rate} bytes per second")
            LOGGER.info("request body stalled for %gs; closing", options.read_timeout)
            return b""
        return data

    async def _discard_body(self) -> None:
        """Read and drop what the app left unread of the request body, so the connection
        can be reused (see :meth:`drop_body`)."""
        self.deadline = _INF
        while self.drop_body():
            try:
                data = await self.receive_body_bytes()
                self.feed_body(data)
            except RequestRejected:
                return
            if not data:
                return

    async def write(self, data: bytes | memoryview) -> bool:
        """Send ``data``; False if the client is gone.

        Gone means: the write failed (the client reset the connection), or the client
        did not take the bytes within the write timeout (it stopped reading), or, on a
        plain socket while a response streams, the client closed its end. The last
        matters because a write after the client closed usually succeeds: the kernel
        takes the bytes and only the client's reset to them makes the next write fail,
        one write too late for an app streaming slowly.

        The deadline bounds this write only (see ``timer``): the app learns of the
        timeout from its ``send()`` and may still clean up, or go on working
        (background tasks run after the response in some frameworks).
        """
        sock = self.sock
        if sock is not None:
            if self.wrote:
                # Every write of an exchange after its first is a checkpoint, as a
                # stream's send_all is: an app streaming a response faster than the
                # kernel sends it must still let the other connections run.
                await trio.lowlevel.checkpoint()
                if _peer_closed(sock):
                    return False
            self.wrote = True
            # Usually the kernel takes the whole response at once: no wait, no deadline.
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return False
            if sent == len(data):
                return True
            data = memoryview(data)[sent:]
        return await self._write_rest(data)

    def write_now(self, data: bytes) -> bool | Awaitable[bool]:
        """:meth:`write`, for an exchange's ``transmit``: when the kernel takes ``data``
        whole at once (an exchange's first write on a plain socket, usually its only
        one), the answer itself, True (or False: the client is gone), without a
        coroutine; otherwise the awaitable of the answer."""
        sock = self.sock
        if sock is None or self.wrote:
            return self.write(data)
        self.wrote = True
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent == len(data):
            return True
        return self._write_rest(memoryview(data)[sent:])

    async def _write_rest(self, data: bytes | memoryview) -> bool:
        """Send what the kernel did not take at once (all of ``data`` through a stream),
        bounded by the write timeout: False if the client is gone (see :meth:`write`)."""
        sock = self.sock
        self.waiting = "write"
        self.deadline = trio.current_time() + self.options.write_timeout
        # The watchdog cancels ``timer``: for this wait, a scope around the write alone.
        # (Entered only here, where the write has to wait or goes through a stream.)
        connection_timer = self.timer
        self.timer = write_timer = trio.CancelScope()
        try:
            with write_timer:
                if sock is None:
                    await self.stream.send_all(data)
                else:
                    await self._send_rest(sock, data)
        except _BROKEN:
            return False
        except OSError:
            return False
        finally:
            self.deadline = _INF
            self.timer = connection_timer
        if write_timer.cancelled_caught:
            LOGGER.info(
                "a write to the client blocked for %gs (write_timeout): it stopped reading;"
                " closing",
                self.options.write_timeout,
            )
            return False
        return True

    async def sendfile(self, file: BinaryIO, count: int) -> bool:
        """Send the first ``count`` bytes of ``file`` with ``os.sendfile`` (plain sockets
        only); False if the client is gone (as for :meth:`write`) or the file ended
        before ``count`` bytes (the response then cannot be completed).

        The write timeout bounds each wait for the client to take more, not the whole
        file: a large file to a slow client that keeps reading is not cut.
        """
        sock = self.sock
        assert sock is not None
        out, fd = sock.fileno(), file.fileno()
        offset = 0
        self.wrote = True
        while offset < count:
            # A checkpoint per call, as every write after an exchange's first is: each
            # call may move megabytes, and the other connections must still run.
            await trio.lowlevel.checkpoint()
            try:
                sent = os.sendfile(out, fd, offset, count - offset)
            except BlockingIOError:
                if not await self._wait_writable(sock):
                    return False
                continue
            except OSError:
                return False
            if not sent:
                _file_ended(count - offset)
                return False
            offset += sent
        return True

    async def _wait_writable(self, sock: socket.socket) -> bool:
        """Wait until ``sock`` takes more, at most the write timeout: False if it did
        not (the client stopped reading) or the client is gone."""
        self.waiting = "write"
        self.deadline = trio.current_time() + self.options.write_timeout
        # (As in write: the watchdog cancels a scope around this wait alone.)
        connection_timer = self.timer
        self.timer = write_timer = trio.CancelScope()
        try:
            with write_timer:
                await _wait_writable(sock)
        except _BROKEN:
            return False
        finally:
            self.deadline = _INF
            self.timer = connection_timer
        if write_timer.cancelled_caught:
            LOGGER.info(
                "a write to the client blocked for %gs (write_timeout): it stopped reading;"
                " closing",
                self.options.write_timeout,
            )
            return False
        return True

    async def _send_rest(self, sock: socket.socket, data: bytes | memoryview) -> None:
        """Send what the kernel did not take at once, waiting until it can take more."""
        view = memoryview(data)
        while view:
            await _wait_writable(sock)
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            view = view[sent:]

    async def _send_error(self, status: int, reason: str) -> None:
        """Answer with an error response (when nothing was sent yet) and close lingering.

        Runs outside the connection's timer, bounded by its own deadlines. Only called
        between exchanges, when no response is under way.
        """
        self.state.reject(status)
        data = error_response(
            status,
            f"{error_status_text(status)}: {reason}",
            server_header=self.options.server_header,
        )
        with trio.move_on_after(self.options.write_timeout):
            try:
                await self.stream.send_all(data)
            except _BROKEN:
                return
        await self._linger()

    async def _linger(self) -> None:
        """Half-close, then read and drop what the client still sends for a short while,
        so that it reads our response rather than a connection reset."""
        stream = self.stream
        # TLS streams cannot half-close; a PrefixedStream over one says so with TypeError.
        if isinstance(stream, trio.abc.HalfCloseableStream):
            with contextlib.suppress(*_BROKEN, TypeError), trio.move_on_after(LINGER_SECONDS):
                await stream.send_eof()
        await self._read_and_drop()

    async def _read_and_drop(self) -> None:
        """The lingering read of a closing connection, bounded in time and bytes."""
        received = 0
        with trio.move_on_after(LINGER_SECONDS):
            while received < LINGER_BYTES:
                if self.sock is not None:
                    await trio.lowlevel.checkpoint()  # (as in receive_body_bytes)
                data = await self._receive()
                if not data:
                    break
                received += len(data)


class _Cycle(Exchange[bytes]):
    """One request/response exchange on an HTTP/1.1 connection: the rules are those of
    :class:`~trioserve._exchange.Exchange`; this supplies the transport (the
    connection's reads and writes, 100-continue, pipelined bytes that arrive while the
    app works)."""

    def __init__(self, connection: _Connection, request: Any) -> None:
        self.connection = connection
        self.request = request
        self.state = connection.state
        self.options = connection.options
        self.peer = connection.owner.peer
        self.response = connection.response
        # The hook as the connection's own method: no call layer on every write.
        self.transmit = connection.write_now
        # The request had no body and h11's end of message was taken with the head: the
        # first receive() gets the empty http.request without asking h11.
        self.body_done = self.empty_body_due = connection.body_done
        # The exchange's flags that every request reads, as instance attributes: a class
        # default read through an instance is a slow attribute look-up on CPython 3.11,
        # several times the cost of setting it here once.
        self.rejected = None
        self.disconnected = self.broken = self.handed_over = False
        self._disconnect_waiter = None

    # (``options`` and ``response`` keep the base class's types: mypyc rejects an
    # attribute narrowed in a subclass. They are this edge's HTTPOptions and Response.)
    # True while receive() waits for body bytes from the connection.
    reading = False
    # Whether "100 Continue" went out for a request with Expect: 100-continue.
    _continue_sent = False

    @property
    def busy(self) -> bool:
        """Whether a receive() of the app is reading the connection right now: the
        connection cannot be handed over until it is done."""
        return self.reading or self._disconnect_waiter is not None

    def request_scope(self) -> dict[str, Any]:
        connection = self.connection
        return http_scope(
            self.request,
            scheme=connection.scheme,
            client=connection.client,
            server=connection.server,
            root_path=self.options.root_path,
            state=self.state.lifespan_state,
            headers=connection.request_headers,
        )

    async def read_body(self) -> Message | None:
        connection = self.connection
        while True:
            message = connection.body_message()
            if message is None:
                if (
                    connection.expects_continue
                    and not self._continue_sent
                    and not self.response.head_sent
                ):
                    self._continue_sent = True
                    await self._write(CONTINUE)
                self.reading = True
                try:
                    data = await connection.receive_body_bytes()
                    connection.feed_body(data)
                finally:
                    self.reading = False
                if not data:
                    self.broken = True
                    return None
            elif type(message) is dict:
                return message
            else:
                if message is BodyEnd.LEFT:
                    self.broken = True
                return None

    async def transmit_file(self, file: BinaryIO) -> bool:
        # A file framed by its length (the app's, or the file's size) goes out as raw
        # bytes after the head: with os.sendfile on a plain socket (no copy through
        # Python, no worker thread), read in a worker thread otherwise. When the framing
        # needs the bytes (chunked, trailers), as any body (see Exchange).
        plan = cast(Response, self.response).file_body(os.fstat(file.fileno()).st_size)
        if plan is None:
            return await super().transmit_file(file)
        head, count = plan
        connection = self.connection
        if head and not await connection.write(head):
            return False
        if connection.sock is not None:
            return await connection.sendfile(file, count)
        while count > 0:
            chunk = await trio.to_thread.run_sync(file.read, min(count, FILE_CHUNK))
            if not chunk:
                _file_ended(count)
                return False
            if not await connection.write(chunk):
                return False
            count -= len(chunk)
        return True

    async def watch_client(self) -> None:
        # Bytes that arrive meanwhile are the next pipelined request: they are kept for
        # the next exchange, and reading pauses once enough are buffered (until the
        # exchange cancels this wait).
        connection = self.connection
        while True:
            if connection.pipeline_full:
                await trio.sleep_forever()
            data = await connection._receive()
            if not data:
                self.broken = True
                return
            connection.receive_data(data)


def _file_ended(missing: int) -> None:
    LOGGER.error(
        "the file of an http.response.pathsend ended %d bytes before the size it had"
        " when it was opened; closing the connection",
        missing,
    )


_wait_readable = trio.lowlevel.wait_readable
_schedule_point = trio.lowlevel.cancel_shielded_checkpoint
_cancel_point = trio.lowlevel.checkpoint_if_cancelled
_wait_writable = trio.lowlevel.wait_writable
_PEEK = socket.MSG_PEEK


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client closed its end of ``sock`` (an end of input or a reset waits
    to be read). Looks without taking anything; unread bytes hide an end of input
    behind them, and then the next write tells instead."""
    try:
        return not sock.recv(1, _PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True

"""One process's serving pipeline: listeners in, the app's interface out.

:func:`serve_listeners` runs lifespan and the worker hooks around the accept loops; each
accepted connection goes through the PROXY header and the TLS handshake, the
``connection_made``/``connection_lost`` hooks, then to the edge for the app's
interface (HTTP and WebSocket, raw streams, native websockets). Used by a worker
process and by an in-process server alike; the entry points (``_server``) and the
master sit above it, the edges (``_serve_*``) below.
"""

from __future__ import annotations

import functools
import importlib
import logging
import random
import types
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import h11
import trio

from ._accept import CONNECTION_LOGGER, ConnectionCounter, accept_connections
from ._accesslog import AccessLog
from ._asyncio_loop import app_loop, asyncio_hint
from ._bind import cleanup_listener, listener_address, listener_url
from ._certs import CertInfo, CertStore
from ._config import Config, timeout_seconds
from ._daemon import PidFile
from ._errors import ConfigError
from ._exchange import AccessLogger
from ._hooks import (
    ConnectionInfo,
    ExitReason,
    HookError,
    RequestInfo,
    ResponseInfo,
    ServerInfo,
    WorkerInfo,
    hook_after,
    reportable,
    run_hook,
    run_hook_logged,
)
from ._importer import LoadedApp
from ._lifespan import Lifespan
from ._metrics import HTTP, TCP, WEBSOCKET, ProcessCounts
from ._peer import Peer
from ._proto.proxy_protocol import ProxyProtocolError
from ._proxy import TrustedPeers, apply_proxy_headers, read_proxy_protocol
from ._serve_http import (
    HTTP2Connection,
    HTTPOptions,
    WebSocketUpgrade,
    serve_http_connection,
    watch_deadlines,
    watch_handovers,
)
from ._serve_tcp import serve_stream_connection
from ._serve_ws import WSOptions, serve_asgi_websocket, serve_native_websocket, watch_websockets
from ._state import ServerState
from ._statsd import RequestMetrics, Statsd
from ._streams import PrefixedStream
from ._tls import tls_extension, tls_handshake
from ._types import Address, ASGIApp, Message, Receive, Scope, Send
from ._versions import http_versions, max_header_list_size

LOGGER = logging.getLogger("trioserve.server")

# Beyond every phase's own deadline: a backstop so a stop can never hang.
STOP_MARGIN = 5.0


def stop_budget(config: Config) -> float:
    """How long a graceful stop of a server running ``config`` may take: the drain,
    lifespan shutdown, and a margin."""
    return config.graceful_timeout + config.lifespan_shutdown_timeout + STOP_MARGIN


@attrs.define(eq=False)
class Control:
    """How a running server is told to stop and tells that it is ready.

    Made by whoever starts the server (``serve()``, ``run()``, a worker process) and
    passed down: :func:`serve_listeners` fills in ``state`` and ``shield``, signals and
    cancellation call :meth:`graceful_stop` or :meth:`fast_stop`, and the master reads
    ``on_ready`` and ``pidfile``.

    Attributes:
        state: The running server's state, once it runs.
        shield: The shielded scope the server runs in; a graceful stop gives it a deadline.
        on_ready: The command line's: told once the server is ready (a daemon's parent
            then exits).
        on_stop: Told when a stop signal arrives (systemd's STOPPING=1).
        pidfile: The command line's locked pid file (renamed by the master on SIGUSR2).
        certs: The TLS context of new connections, once the server runs with TLS.
        stopped_by: The name of the signal that first asked it to stop (SIGTERM...),
            for the command line's last line; None while none did.
    """

    state: ServerState | None = None
    shield: trio.CancelScope | None = None
    on_ready: Callable[[], None] | None = None
    on_stop: Callable[[], None] | None = None
    pidfile: PidFile | None = None
    certs: CertStore | None = None
    stopped_by: str | None = None

    def ready(self) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def graceful_stop(self) -> None:
        if self.state is not None:
            self.state.request_stop()
        if self.shield is not None and self.state is not None:
            budget = stop_budget(self.state.config)
            self.shield.deadline = min(self.shield.deadline, trio.current_time() + budget)

    def fast_stop(self) -> None:
        if self.shield is not None:
            self.shield.cancel()

    def reload_certs(self, why: str, *, level: int = logging.INFO) -> CertInfo | None:
        """New TLS connections get a context built from the files as they are now
        (:meth:`CertStore.reload`); None when it failed, or without TLS (logged)."""
        if self.certs is None:
            LOGGER.warning("%s: no certificate to reload (TLS is off)", why)
            return None
        return self.certs.reload(why, level=level)


@attrs.frozen
class Extras:
    """What startup built from the settings, checked before binding: the TLS context
    (in a store, since a certificate reload replaces it), the access log, the statsd
    client, and the counts kept for ``--metrics-bind``."""

    tls: CertStore | None
    access_log: AccessLog | None
    statsd: Statsd | None = None
    metrics: ProcessCounts | None = None


async def serve_listeners(
    loaded: LoadedApp,
    listeners: list[trio.SocketListener],
    config: Config,
    extras: Extras,
    control: Control,
    worker: WorkerInfo,
    ready: Callable[[list[Address], list[str]], Awaitable[None]],
    *,
    owner: bool = True,
) -> None:
    """Serve ``loaded`` on ``listeners`` until ``control`` stops it (workers and in-process).

    Runs lifespan startup and the ``post_worker_init`` hook, then listens and awaits
    ``ready(addresses, urls)``; on stop, drains, runs lifespan shutdown and ``worker_exit``.
    Closes the listeners when the stop begins (new connections are refused at once,
    not queued); ``owner`` (False in workers, whose sockets are the master's) says
    whether unix socket files are removed at the end.
    """
    state = ServerState(config)
    if config.max_requests:
        state.request_limit = config.max_requests + random.randint(0, config.max_requests_jitter)
    control.state = state
    control.certs = extras.tls
    async with hook_after(config, "worker_exit", ServerInfo(config), worker):
        try:
            async with trio.open_nursery() as outer:
                # Cancellation of serve() is turned into a graceful stop: the server runs
                # in a shielded scope, and this watcher asks it to stop when cancelled.
                outer.start_soon(_stop_when_cancelled, control)
                with trio.CancelScope(shield=True) as control.shield:
                    await _run(loaded, listeners, state, extras, worker, ready)
                # Served until stopped (gracefully or not) by a signal, a cancellation, or
                # the master, which said why; an error would not come here.
                if worker.exit_reason is None:
                    worker.exit_reason = ExitReason.SHUTDOWN
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    if owner:
                        cleanup_listener(listener)
                    await trio.aclose_forcefully(listener)


async def _stop_when_cancelled(control: Control) -> None:
    try:
        await trio.sleep_forever()
    finally:
        control.graceful_stop()


async def _run(
    loaded: LoadedApp,
    listeners: list[trio.SocketListener],
    state: ServerState,
    extras: Extras,
    worker: WorkerInfo,
    ready: Callable[[list[Address], list[str]], Awaitable[None]],
) -> None:
    config = state.config
    edges = _edges(loaded, state, extras, worker)
    scheme = {"stream": "tcp", "websocket": "ws"}.get(loaded.interface, "http")
    if config.certfile or config.keyfile:
        scheme = {"tcp": "tls", "ws": "wss"}.get(scheme, "https")
    async with app_loop(config), trio.open_nursery() as app_tasks:
        lifespan = None
        if loaded.asgi is not None and config.lifespan != "off":
            state.lifespan_state = {}
            lifespan = Lifespan(
                loaded.asgi,
                mode=config.lifespan,
                state=state.lifespan_state,
                startup_timeout=timeout_seconds(config.lifespan_startup_timeout),
                shutdown_timeout=config.lifespan_shutdown_timeout,
            )
            await lifespan.startup(app_tasks)
            if not lifespan.supported:
                state.lifespan_state = None
        try:
            await run_hook(config, "post_worker_init", worker)
        except BaseException:
            if lifespan is not None:
                # Startup completed: the app gets its shutdown even though we never served.
                with trio.CancelScope(shield=True):
                    await lifespan.shutdown()
            raise
        if edges.http is not None:
            app_tasks.start_soon(watch_deadlines, state, edges.http)
            await app_tasks.start(watch_handovers, edges.http)
        if edges.websockets is not None:
            await app_tasks.start(watch_websockets, state, edges.websockets)
        async with trio.open_nursery() as connections:
            handler, counter = _connection_handler(
                edges.serve, connections, config, extras, worker, edges.kind
            )
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    await acceptors.start(
                        functools.partial(
                            accept_connections, listener, handler, connections, counter=counter
                        )
                    )
                await ready(
                    [listener_address(listener) for listener in listeners],
                    [listener_url(listener, scheme) for listener in listeners],
                )
                await state.stop_requested.wait()
                LOGGER.info(
                    "stopping: no new connections; draining for up to %gs", config.graceful_timeout
                )
                acceptors.cancel_scope.cancel()
            # This process stops accepting: its copies of the sockets go now, so once
            # no process holds them the kernel refuses new connections instead of
            # queueing them for nobody.
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            state.request_stop()
            connections.cancel_scope.deadline = state.drain_deadline
        if connections.cancel_scope.cancelled_caught:
            LOGGER.warning("graceful timeout reached: remaining connections were cancelled")
        if lifespan is not None:
            await lifespan.shutdown()
        app_tasks.cancel_scope.cancel()


def _h11_module(choice: str) -> types.ModuleType:
    """The HTTP/1.1 parser: h11, its compiled build, or httptools behind h11's interface
    (``_proto.llhttp``); 'auto' takes the compiled h11 when it is installed."""
    if choice == "httptools":
        try:
            return importlib.import_module("trioserve._proto.llhttp")
        except ImportError:
            raise ConfigError(
                "--http httptools: needs httptools; install it with pip install 'trioserve[speed]'"
            ) from None
    if choice != "h11":
        try:
            return importlib.import_module("h11_mypyc")
        except ImportError:
            if choice == "h11-compiled":
                raise ConfigError(
                    "--http h11-compiled: needs the compiled h11; install it with "
                    "pip install 'trioserve[speed]'"
                ) from None
    return h11


def _connection_handler(
    serve: ServeConnection,
    tasks: trio.Nursery,
    config: Config,
    extras: Extras,
    worker: WorkerInfo,
    kind: str = HTTP,
) -> tuple[Callable[[Peer], Awaitable[None]], ConnectionCounter | None]:
    """What runs for each accepted connection, in ``tasks``: the acceptor, the connection
    hooks (when set), then ``serve``; and, with ``--metrics-bind``, what counts the
    connection as open (and accepted) as a ``kind`` connection while it lasts, for the
    accept loop to call (None when the handler counts it itself, or nothing does)."""
    accept = _acceptor(config, extras)
    counts = extras.metrics
    hooks = config.connection_made is not None or config.connection_lost is not None
    counter = None if counts is None or hooks else _CountConnections(counts, kind)
    if not hooks and accept is None:
        # Nothing to do before the edge: the edge's coroutine is the connection's, with
        # no frame of ours around it (two coroutines fewer to create per connection and
        # to pass through each time the connection's task wakes).
        return functools.partial(serve, tasks=tasks), counter
    if accept is None:
        accept = _accept_as_is
    if not hooks:

        async def handle(peer: Peer) -> None:
            if await accept(peer):
                await serve(peer, tasks=tasks)

        return handle, counter

    async def handle_with_hooks(peer: Peer) -> None:
        if counts is None:
            await _handle_with_hooks(peer)
            return
        counts.opened(kind)
        try:
            await _handle_with_hooks(peer)
        finally:
            counts.closed(kind)

    async def _handle_with_hooks(peer: Peer) -> None:
        if not await accept(peer):
            return
        conn = ConnectionInfo(peer.client, peer.server, peer.secure, worker)
        error: BaseException | None = None
        try:
            await run_hook(config, "connection_made", conn)
            await serve(peer, tasks=tasks)
        except HookError as exc:
            error = exc
            CONNECTION_LOGGER.error("%s; closing the connection", exc, exc_info=exc.__cause__)
            await trio.aclose_forcefully(peer.stream)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with trio.CancelScope(shield=True):
                await run_hook_logged(
                    config,
                    "connection_lost",
                    conn,
                    exc=reportable(error),
                    logger=CONNECTION_LOGGER,
                )

    return handle_with_hooks, None


@attrs.frozen
class _CountConnections:
    """Counts a ``kind`` connection as open (and accepted) while it lasts."""

    counts: ProcessCounts
    kind: str

    def opened(self) -> None:
        self.counts.opened(self.kind)

    def closed(self) -> None:
        self.counts.closed(self.kind)


async def _accept_as_is(peer: Peer) -> bool:
    """The acceptor when there is no PROXY header to read and no TLS handshake."""
    return True


def _acceptor(config: Config, extras: Extras) -> Callable[[Peer], Awaitable[bool]] | None:
    """PROXY header (from trusted peers) then TLS handshake, for each accepted
    connection: updates the peer, and says whether it is still there to be served.
    None when there is neither (nothing to do before the edge)."""
    tls = extras.tls
    proxy_protocol = config.proxy_protocol
    if tls is None and proxy_protocol == "off":
        return None
    trusted = TrustedPeers(config.forwarded_allow_ips)

    async def accept(peer: Peer) -> bool:
        stream = peer.stream
        client = peer.client
        if proxy_protocol != "off" and (client[0] if client else None) in trusted:
            try:
                info, leftover = await read_proxy_protocol(
                    stream, proxy_protocol, timeout_seconds(config.header_timeout)
                )
            except ProxyProtocolError as exc:
                # A client can send one per connection: rate-limited.
                CONNECTION_LOGGER.info("dropping connection from %s: %s", client, exc)
                await trio.aclose_forcefully(stream)
                return False
            if info.client is not None:
                peer.client = info.client
            if info.server is not None:
                peer.server = info.server
            if leftover:
                peer.stream = PrefixedStream(stream, leftover)
                peer.sock = None
        if tls is not None:
            # Read per connection: a certificate reload swaps the store's context.
            secure = await tls_handshake(
                peer.stream, tls.context, timeout_seconds(config.tls_handshake_timeout)
            )
            if secure is None:
                return False
            peer.stream = secure
            peer.sock = None
            peer.secure = True
            peer.extensions = {"tls": tls_extension(secure)}
        return True

    return accept


class ServeConnection(Protocol):
    """Serves one accepted connection; ``tasks`` is the nursery the connections run in
    (the HTTP edge may go on serving a connection in a new task there)."""

    def __call__(self, peer: Peer, *, tasks: trio.Nursery) -> Awaitable[None]: ...


def _counted_upgrade(upgrade: WebSocketUpgrade, counts: ProcessCounts) -> WebSocketUpgrade:
    """``upgrade``, moving its connection from the open HTTP connections to the open
    websockets while the websocket lasts (``--metrics-bind``)."""

    async def upgrade_counted(stream: trio.abc.Stream, *, peer: Peer) -> None:
        counts.closed(HTTP)
        counts.opened(WEBSOCKET)
        try:
            await upgrade(stream, peer=peer)
        finally:
            counts.closed(WEBSOCKET)
            counts.open[HTTP] += 1

    return upgrade_counted


@attrs.frozen
class _Edges:
    """How accepted connections are served, for the app's interface, and the options
    of the edges that serve them (whose watchers the server runs)."""

    serve: ServeConnection
    http: HTTPOptions | None = None
    websockets: WSOptions | None = None
    # What its connections count as (--metrics-bind): http, websocket or tcp.
    kind: str = HTTP


def _edges(loaded: LoadedApp, state: ServerState, extras: Extras, worker: WorkerInfo) -> _Edges:
    config = state.config
    if loaded.interface == "websocket":
        assert loaded.handler is not None
        # The importer keeps both kinds of handler in one field; this one takes requests.
        native_handler: Any = loaded.handler
        native_options = WSOptions(config)

        def handle_native_websocket(peer: Peer, *, tasks: trio.Nursery) -> Awaitable[None]:
            # Returns the coroutine rather than awaiting it: one frame fewer kept alive
            # per idle websocket.
            return serve_native_websocket(
                peer.stream, native_handler, state, native_options, sock=peer.sock
            )

        return _Edges(handle_native_websocket, websockets=native_options, kind=WEBSOCKET)

    if loaded.handler is not None:
        stream_handler = loaded.handler

        async def handle_stream(peer: Peer, *, tasks: trio.Nursery) -> None:
            await serve_stream_connection(peer.stream, stream_handler)

        return _Edges(handle_stream, kind=TCP)
    asgi = loaded.asgi
    assert asgi is not None
    if config.pre_request is not None or config.post_request is not None:
        asgi = _with_request_hooks(asgi, config, worker)
    trusted = TrustedPeers(config.forwarded_allow_ips)

    ws_options: WSOptions | None = None
    websocket: WebSocketUpgrade | None = None
    if config.ws == "on":
        ws_options = WSOptions(config)
        # A partial, not a wrapper coroutine: one frame fewer kept alive per idle websocket.
        websocket = functools.partial(
            serve_asgi_websocket, app=asgi, state=state, options=ws_options
        )
        if extras.metrics is not None:
            websocket = _counted_upgrade(websocket, extras.metrics)

    access_log: AccessLogger | None = extras.access_log
    if extras.statsd is not None:
        access_log = RequestMetrics(extras.statsd, access_log)
    versions = http_versions(config)
    options = HTTPOptions(
        config,
        h11_module=_h11_module(config.http),
        access_log=access_log,
        counts=extras.metrics,
        proxy=functools.partial(apply_proxy_headers, trusted=trusted)
        if config.proxy_headers
        else None,
        app_hint=asyncio_hint if config.app_loop == "trio" else None,
        websocket=websocket,
        h2_prior_knowledge=versions.prior_knowledge,
        h2c_upgrade=versions.upgrade,
    )
    if versions.http2:
        # The HTTP/2 edge shares the HTTP/1.1 edge's options (limits, timeouts, logs).
        options.http2 = _http2_edge(asgi, state, config, options)
    serve = functools.partial(serve_http_connection, app=asgi, state=state, options=options)
    return _Edges(serve, http=options, websockets=ws_options)


def _http2_edge(
    app: ASGIApp, state: ServerState, config: Config, http: HTTPOptions
) -> HTTP2Connection:
    """The HTTP/2 edge serving ``app``, for the HTTP/1.1 edge (whose options are
    ``http``) to hand HTTP/2 connections to; only asked for when HTTP/2 is served (the
    h2 package is installed then).

    Imported here, not at the top, because it imports h2, which may be absent.
    """
    from ._serve_h2 import H2Options, serve_h2_connection

    options = H2Options(
        http,
        max_concurrent_streams=config.http2_max_concurrent_streams,
        initial_window_size=config.http2_initial_window_size,
        max_frame_size=config.http2_max_frame_size,
        max_header_list_size=max_header_list_size(config),
    )
    return functools.partial(serve_h2_connection, app=app, state=state, options=options)


def _with_request_hooks(app: ASGIApp, config: Config, worker: WorkerInfo) -> ASGIApp:
    """The app wrapped so that ``pre_request`` and ``post_request`` see every request,
    as a RequestInfo over the scope the app gets."""

    async def hooked(scope: Scope, receive: Receive, send: Send) -> None:
        response = ResponseInfo()

        async def watching_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                response.status = message["status"]
                response.headers = list(message.get("headers", ()))
            elif kind == "websocket.accept":
                response.status = 101
            elif kind == "websocket.close" and response.status is None:
                response.status = 403
            await send(message)

        req = RequestInfo(scope)
        error: BaseException | None = None
        try:
            await run_hook(config, "pre_request", worker, req)
            await app(scope, receive, watching_send)
        except BaseException as exc:
            error = exc
            if response.status is None and scope["type"] == "http":
                response.status = 500  # what the HTTP edge answers for an app that raised
            raise
        finally:
            with trio.CancelScope(shield=True):
                await run_hook_logged(
                    config,
                    "post_request",
                    worker,
                    req,
                    response,
                    exc=reportable(error),
                    logger=CONNECTION_LOGGER,
                )

    return hooked

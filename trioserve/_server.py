"""Serving in this process: ``serve()`` for trio programs, ``run()`` for the command line."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import random
import signal
import socket
import ssl
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import h11
import trio

from ._accept import Connection, accept_connections
from ._accesslog import AccessLog, access_log_for
from ._apps import as_composite, resolve_plans
from ._asyncio_loop import app_loop, asyncio_hint
from ._bind import (
    cleanup_listener,
    create_listeners,
    listener_address,
    listener_from_fd,
    listener_url,
    parse_bind,
)
from ._config import Config, timeout_seconds
from ._daemon import give_unix_sockets, resolve_account
from ._errors import AppLoadError, ConfigError, TrioserveError, single_error
from ._hooks import (
    ConnectionInfo,
    HookError,
    ResponseInfo,
    ServerInfo,
    WorkerInfo,
    hook_after,
    reportable,
    run_hook,
    run_hook_logged,
)
from ._importer import LoadedApp, peek_target
from ._lifespan import Lifespan
from ._loader import load_config_app, require_app
from ._proto.proxy_protocol import ProxyProtocolError
from ._proxy import TrustedPeers, apply_proxy_headers, read_proxy_protocol
from ._serve_http import HTTPOptions, serve_http_requests, upgrade_to_websocket, watch_deadlines
from ._serve_tcp import serve_stream_connection
from ._serve_ws import serve_asgi_websocket, serve_native_websocket, watch_websockets
from ._state import ServerState
from ._statsd import RequestMetrics, Statsd
from ._statsd import install as install_statsd
from ._streams import PrefixedStream
from ._systemd import Notifier, activated_sockets
from ._tls import ssl_context, tls_extension, tls_handshake
from ._types import Address, ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from ._daemon import PidFile
    from ._master import AppPlan

LOGGER = logging.getLogger("trioserve.server")

# Beyond every phase's own deadline: a backstop so a stop can never hang.
_STOP_MARGIN = 5.0


@attrs.define(eq=False)
class _Control:
    """How ``run()`` (signals) and ``serve()`` (cancellation) stop a running server."""

    state: ServerState | None = None
    shield: trio.CancelScope | None = None
    # The command line's: told once the server is ready (a daemon's parent then exits),
    # and the locked pid file (renamed by the master on SIGUSR2).
    on_ready: Callable[[], None] | None = None
    on_stop: Callable[[], None] | None = None
    pidfile: PidFile | None = None

    def ready(self) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def graceful_stop(self) -> None:
        if self.state is not None:
            self.state.request_stop()
        if self.shield is not None and self.state is not None:
            cfg = self.state.config
            budget = cfg.graceful_timeout + cfg.lifespan_shutdown_timeout + _STOP_MARGIN
            self.shield.deadline = min(self.shield.deadline, trio.current_time() + budget)

    def fast_stop(self) -> None:
        if self.shield is not None:
            self.shield.cancel()


async def serve(
    config: Config, *, task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``config.app`` on ``config.bind`` inside the calling trio program.

    Follows trio's start protocol: ``addresses = await nursery.start(serve, config)``
    returns once every socket listens, with the real bound addresses ((host, port) for
    TCP, the path for unix sockets). Cancelling the surrounding scope stops the server
    gracefully: it stops accepting, gives in-flight requests ``graceful_timeout``
    seconds, then runs lifespan shutdown.

    Raises:
        ConfigError: a setting cannot be served (for instance ``workers > 0``).
        AppLoadError: the app could not be imported or recognised.
        BindError: a socket could not be created.
        LifespanError: lifespan startup failed or timed out.
    """
    await _serve(config, _Control(), task_status)


async def _serve(
    config: Config, control: _Control, task_status: trio.TaskStatus[list[Address]]
) -> None:
    try:
        await _serve_inner(config, control, task_status)
    except BaseExceptionGroup as group:
        # Our own startup errors surface as themselves, not wrapped in a group.
        error = single_error(group)
        if isinstance(error, TrioserveError):
            raise error from error.__cause__
        raise


async def _serve_inner(
    config: Config, control: _Control, task_status: trio.TaskStatus[list[Address]]
) -> None:
    require_app(config)
    if config.reload and config.workers == 0:
        raise ConfigError(
            "--reload: the master restarts worker processes when files change; "
            "use --workers 1 or more with it"
        )
    try:
        composite = as_composite(peek_target(config.app, config.app_dir))
    except AppLoadError:
        # Reported where the app is loaded (here below, or by a worker): after
        # on_starting, and followed by on_exit, like every failed start.
        composite = None
    if config.workers > 0 or composite is not None:
        # An Application may say workers=0 itself: then it is served here, below.
        from ._master import AppPlan, serve_master

        plans = None
        if composite is not None:
            # Settings given in code sit below each application's own.
            params = {
                field.name: getattr(config, field.name)
                for field in attrs.fields(Config)
                if field.name != "app" and getattr(config, field.name) != field.default
            }
            resolved = resolve_plans(composite, params=params, environ={})
            plans = [AppPlan(prefix, app_config) for prefix, app_config in resolved]
            config = plans[0].config
        if config.workers > 0:
            await serve_master(config, control, task_status, plans=plans)
            return
    server = ServerInfo(config)
    worker = WorkerInfo(0, config, pid=os.getpid())
    async with hook_after(config, "on_exit", server):
        await run_hook(config, "on_starting", server)
        loaded = await load_config_app(config)
        # Fail on bad TLS files or log formats before binding anything.
        extras = _Extras(ssl_context(config), access_log_for(config), install_statsd(config))
        specs = [parse_bind(text) for text in config.bind]
        sockets = activated_sockets()
        if sockets:
            # systemd socket activation: its sockets replace the binds.
            listeners = [listener_from_fd(activated.fd) for activated in sockets]
        else:
            listeners = await create_listeners(specs, backlog=config.backlog)
        account = resolve_account(config.user, config.group)
        if account is not None:
            # This process is its own worker: it serves as the account from here on.
            give_unix_sockets(listeners, account)
            account.drop()

        async def ready(addresses: list[Address], urls: list[str]) -> None:
            for url in urls:
                LOGGER.info("listening on %s", url)
            await run_hook(config, "when_ready", server)
            task_status.started(addresses)
            control.ready()

        await serve_listeners(loaded, listeners, config, extras, control, worker, ready)


async def serve_listeners(
    loaded: LoadedApp,
    listeners: list[trio.SocketListener],
    config: Config,
    extras: _Extras,
    control: _Control,
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
    async with hook_after(config, "worker_exit", ServerInfo(config), worker):
        try:
            async with trio.open_nursery() as outer:
                # Cancellation of serve() is turned into a graceful stop: the server runs
                # in a shielded scope, and this watcher asks it to stop when cancelled.
                outer.start_soon(_stop_when_cancelled, control)
                with trio.CancelScope(shield=True) as control.shield:
                    await _run(loaded, listeners, state, extras, worker, ready)
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    if owner:
                        cleanup_listener(listener)
                    await trio.aclose_forcefully(listener)


async def _stop_when_cancelled(control: _Control) -> None:
    try:
        await trio.sleep_forever()
    finally:
        control.graceful_stop()


async def _run(
    loaded: LoadedApp,
    listeners: list[trio.SocketListener],
    state: ServerState,
    extras: _Extras,
    worker: WorkerInfo,
    ready: Callable[[list[Address], list[str]], Awaitable[None]],
) -> None:
    config = state.config
    handler = _connection_handler(loaded, state, extras, worker)
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
        app_tasks.start_soon(watch_deadlines, state)
        state.watchdog = True
        if loaded.interface == "websocket" or config.ws == "on":
            await app_tasks.start(watch_websockets, state)
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    await acceptors.start(accept_connections, listener, handler, connections)
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
    """The HTTP/1.1 parser: h11, or its compiled build when asked for or available."""
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


@attrs.frozen
class _Extras:
    """What startup built from the settings, checked before binding: TLS and access log."""

    ssl_context: ssl.SSLContext | None
    access_log: AccessLog | None
    statsd: Statsd | None = None


@attrs.define(eq=False)
class _Accepted:
    """A connection after the PROXY header and the TLS handshake."""

    stream: trio.abc.Stream
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    scheme_secure: bool = False
    extensions: dict[str, Any] | None = None
    # The plain socket under ``stream`` while nothing wraps it (no TLS, no replayed
    # PROXY leftovers): the HTTP edge then reads and writes it directly.
    sock: socket.socket | None = None


def _connection_handler(
    loaded: LoadedApp, state: ServerState, extras: _Extras, worker: WorkerInfo
) -> Callable[[Connection], Awaitable[None]]:
    serve_accepted = _accepted_handler(loaded, state, extras, worker)
    accept = _acceptor(state.config, extras)
    config = state.config
    if config.connection_made is None and config.connection_lost is None:

        async def handle(connection: Connection) -> None:
            accepted = await accept(connection)
            if accepted is not None:
                await serve_accepted(accepted)

        return handle

    async def handle_with_hooks(connection: Connection) -> None:
        accepted = await accept(connection)
        if accepted is None:
            return
        conn = ConnectionInfo(accepted.client, accepted.server, accepted.scheme_secure, worker)
        error: BaseException | None = None
        try:
            await run_hook(config, "connection_made", conn)
            await serve_accepted(accepted)
        except HookError as exc:
            error = exc
            LOGGER.error("%s; closing the connection", exc, exc_info=exc.__cause__)
            await trio.aclose_forcefully(accepted.stream)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with trio.CancelScope(shield=True):
                await run_hook_logged(config, "connection_lost", conn, exc=reportable(error))

    return handle_with_hooks


def _acceptor(
    config: Config, extras: _Extras
) -> Callable[[Connection], Awaitable[_Accepted | None]]:
    """PROXY header (from trusted peers) then TLS handshake, for each accepted stream."""
    context = extras.ssl_context
    trusted = TrustedPeers(config.forwarded_allow_ips)
    proxy_protocol = config.proxy_protocol

    async def accept(connection: Connection) -> _Accepted | None:
        stream = connection.stream
        client = connection.client
        accepted = _Accepted(stream, client, connection.server, sock=connection.sock)
        if proxy_protocol != "off" and (client[0] if client else None) in trusted:
            try:
                info, leftover = await read_proxy_protocol(
                    stream, proxy_protocol, timeout_seconds(config.header_timeout)
                )
            except ProxyProtocolError as exc:
                LOGGER.info("dropping connection from %s: %s", client, exc)
                await trio.aclose_forcefully(stream)
                return None
            if info.client is not None:
                accepted.client = info.client
            if info.server is not None:
                accepted.server = info.server
            if leftover:
                accepted.stream = PrefixedStream(stream, leftover)
                accepted.sock = None
        if context is not None:
            secure = await tls_handshake(
                accepted.stream, context, timeout_seconds(config.tls_handshake_timeout)
            )
            if secure is None:
                return None
            accepted.stream = secure
            accepted.sock = None
            accepted.scheme_secure = True
            accepted.extensions = {"tls": tls_extension(secure)}
        return accepted

    return accept


def _accepted_handler(
    loaded: LoadedApp, state: ServerState, extras: _Extras, worker: WorkerInfo
) -> Callable[[_Accepted], Awaitable[None]]:
    """How an accepted connection is served, for the app's interface."""
    config = state.config
    if loaded.interface == "websocket":
        assert loaded.handler is not None
        # The importer keeps both kinds of handler in one field; this one takes requests.
        native_handler: Any = loaded.handler

        async def handle_native_websocket(accepted: _Accepted) -> None:
            await serve_native_websocket(accepted.stream, native_handler, state)

        return handle_native_websocket

    if loaded.handler is not None:
        stream_handler = loaded.handler

        async def handle_stream(accepted: _Accepted) -> None:
            await serve_stream_connection(accepted.stream, stream_handler)

        return handle_stream
    asgi = loaded.asgi
    assert asgi is not None
    if config.pre_request is not None or config.post_request is not None:
        asgi = _with_request_hooks(asgi, config, worker)
    trusted = TrustedPeers(config.forwarded_allow_ips)

    # A partial, not a wrapper coroutine: one frame fewer kept alive per idle websocket.
    websocket = functools.partial(serve_asgi_websocket, app=asgi, state=state)

    access_log: Any = extras.access_log
    if extras.statsd is not None:
        access_log = RequestMetrics(extras.statsd, access_log)
    state.http_options = HTTPOptions(
        config,
        h11_module=_h11_module(config.http),
        access_log=access_log,
        proxy=functools.partial(apply_proxy_headers, trusted=trusted)
        if config.proxy_headers
        else None,
        app_hint=asyncio_hint if config.app_loop == "trio" else None,
        websocket=websocket if config.ws == "on" else None,
    )

    async def handle_http(accepted: _Accepted) -> None:
        scheme = "https" if accepted.scheme_secure else "http"
        upgrade = await serve_http_requests(
            accepted.stream,
            asgi,
            state,
            client=accepted.client,
            server=accepted.server,
            scheme=scheme,
            extensions=accepted.extensions,
            sock=accepted.sock,
        )
        if upgrade is not None:
            # Called from here, not from within the HTTP edge: an idle websocket keeps
            # no frame of the HTTP connection alive.
            await upgrade_to_websocket(
                upgrade,
                state,
                client=accepted.client,
                server=accepted.server,
                scheme=scheme,
                extensions=accepted.extensions,
            )

    return handle_http


def _with_request_hooks(app: ASGIApp, config: Config, worker: WorkerInfo) -> ASGIApp:
    """The app wrapped so that ``pre_request`` and ``post_request`` see every request."""

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

        error: BaseException | None = None
        try:
            await run_hook(config, "pre_request", worker, scope)
            await app(scope, receive, watching_send)
        except BaseException as exc:
            error = exc
            if response.status is None and scope["type"] == "http":
                response.status = 500  # what the HTTP edge answers for an app that raised
            raise
        finally:
            with trio.CancelScope(shield=True):
                await run_hook_logged(
                    config, "post_request", worker, scope, response, exc=reportable(error)
                )

    return hooked


def run(config: Config) -> None:
    """Serve ``config`` until a signal stops it; blocks.

    With ``workers`` 0 the app is served in this process: SIGINT or SIGTERM stops
    gracefully (see :func:`serve`), a second one stops at once. With ``workers`` > 0
    this process is the master and handles the operator signals (docs/signals.md).

    Raises:
        TrioserveError: startup failed (bad setting, app not loadable, bind failure,
            lifespan startup failure, a worker that failed to boot).
    """
    run_cli(config)


def run_cli(
    config: Config,
    *,
    argv: Sequence[str] | None = None,
    reload_plans: Callable[[], list[AppPlan]] | None = None,
    plans: list[AppPlan] | None = None,
    on_ready: Callable[[], None] | None = None,
    pidfile: PidFile | None = None,
) -> None:
    """:func:`run`, plus what only the command line knows: how to re-read the
    configuration (SIGHUP), the arguments a new master is started with (SIGUSR2), whom to
    tell that the server is ready (a daemon's parent), and the locked pid file."""
    control = _Control(on_ready=on_ready, pidfile=pidfile)
    from ._master import serve_master

    require_app(config)

    if config.reload and config.workers == 0:
        raise ConfigError(
            "--reload: the master restarts worker processes when files change; "
            "use --workers 1 or more with it"
        )
    try:
        if config.workers > 0 or plans:
            trio.run(
                functools.partial(
                    serve_master,
                    config,
                    control,
                    plans=plans,
                    reload_plans=reload_plans,
                    argv=argv,
                    signals=True,
                    # Only the command line (which alone passes argv) configured logging
                    # from the settings; run() from a program leaves it to the program.
                    settings_logging=argv is not None,
                )
            )
        else:
            notifier = Notifier.from_environ()
            if notifier is not None:
                told = control.on_ready

                def ready_and_notify() -> None:
                    notifier.notify(READY=1, STATUS="serving")
                    if told is not None:
                        told()

                control.on_ready = ready_and_notify
                control.on_stop = lambda: notifier.notify(STOPPING=1, STATUS="stopping")
            trio.run(_run_until_signal, config, control)
    except BaseExceptionGroup as group:
        error = single_error(group)
        if isinstance(error, TrioserveError):
            raise error from None
        raise


async def _run_until_signal(config: Config, control: _Control) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop() -> None:
                await _serve(config, control, trio.TASK_STATUS_IGNORED)
                nursery.cancel_scope.cancel()

            nursery.start_soon(serve_then_stop)
            async for signum in signals:
                name = signal.Signals(signum).name
                if control.on_stop is not None:
                    control.on_stop()
                if control.state is None or not control.state.stopping:
                    LOGGER.info(
                        "%s received: stopping gracefully (send it again to stop now)", name
                    )
                    if control.state is None:
                        nursery.cancel_scope.cancel()  # still starting: nothing to drain
                    control.graceful_stop()
                else:
                    LOGGER.info("%s received again: stopping now", name)
                    control.fast_stop()

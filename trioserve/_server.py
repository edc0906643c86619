"""The entry points: ``serve()`` for trio programs, ``run()`` and ``run_cli()`` for the
command line.

Each decides where the app is served: in this process (through :mod:`._pipeline`) or
by a master and its worker processes (:mod:`._master`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Callable, Sequence

import attrs
import trio

from ._accesslog import access_log_for
from ._apps import as_composite, resolve_plans
from ._bind import create_listeners, listener_from_fd, parse_bind
from ._certs import RELOAD_SIGNAL, CertStore, cert_paths, watch_cert_files
from ._config import Config
from ._daemon import PidFile, give_unix_sockets, resolve_account
from ._errors import AppLoadError, ConfigError, TrioserveError, single_error
from ._hooks import ServerInfo, WorkerInfo, hook_after, run_hook
from ._importer import peek_target
from ._loader import load_config_app, require_app
from ._master import AppPlan, serve_master
from ._metrics import (
    MAIN_APP,
    ProcessCounts,
    Sample,
    Totals,
    WorkerSample,
    count_logs,
    listener_samples,
    resident_bytes,
)
from ._metrics_server import require_prometheus, serve_metrics
from ._mypyc import build_description
from ._pipeline import Control, Extras, serve_listeners
from ._statsd import install as install_statsd
from ._systemd import Notifier, activated_sockets
from ._types import Address
from ._versions import http_versions

LOGGER = logging.getLogger("trioserve.server")


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
    await _serve(config, Control(), task_status)


async def _serve(
    config: Config, control: Control, task_status: trio.TaskStatus[list[Address]]
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
    config: Config, control: Control, task_status: trio.TaskStatus[list[Address]]
) -> None:
    _check_servable(config)
    try:
        composite = as_composite(peek_target(config.app, config.app_dir))
    except AppLoadError:
        # Reported where the app is loaded (here below, or by a worker): after
        # on_starting, and followed by on_exit, like every failed start.
        composite = None
    if config.workers > 0 or composite is not None:
        # An Application may say workers=0 itself: then it is served here, below.
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
        counts = None
        if config.metrics_bind is not None:
            require_prometheus()
            counts = ProcessCounts()
        # Fail on bad TLS files or log formats before binding anything.
        extras = Extras(
            CertStore.from_config(config), access_log_for(config), install_statsd(config), counts
        )
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
            build = build_description()
            if build:
                LOGGER.info("HTTP/1.1 modules %s", build)
            await run_hook(config, "when_ready", server)
            task_status.started(addresses)
            control.ready()

        watch_certs = extras.tls is not None and config.reload_certs_watch
        if counts is None and not watch_certs:
            await serve_listeners(loaded, listeners, config, extras, control, worker, ready)
            return
        uncount = count_logs(counts.logs) if counts is not None else None
        try:
            async with trio.open_nursery() as nursery:
                if watch_certs:
                    await nursery.start(
                        watch_cert_files,
                        functools.partial(cert_paths, config),
                        functools.partial(control.reload_certs, "a certificate file changed"),
                    )
                if counts is not None and config.metrics_bind is not None:
                    take_sample = functools.partial(_sample, counts, control, listeners)
                    await nursery.start(serve_metrics, config.metrics_bind, take_sample)
                await serve_listeners(loaded, listeners, config, extras, control, worker, ready)
                nursery.cancel_scope.cancel()
        finally:
            if uncount is not None:
                uncount()


def _sample(
    counts: ProcessCounts, control: Control, listeners: list[trio.SocketListener]
) -> Sample:
    """A scrape of --metrics-bind when this process serves the app itself (workers=0)."""
    totals = Totals()
    totals.add(counts.counts(control.state), live=True)
    pid = os.getpid()
    return Sample(
        apps={MAIN_APP: totals},
        restarts={},
        workers={MAIN_APP: 0},
        processes=[WorkerSample(MAIN_APP, 0, pid, resident_bytes(pid), None)],
        listeners=listener_samples(MAIN_APP, [listener.socket for listener in listeners]),
        master_logs={},
    )


def _check_servable(config: Config) -> None:
    """Refuse, before anything starts, a configuration no entry point can serve."""
    require_app(config)
    http_versions(config)  # HTTP/2 asked for without the h2 package
    if config.reload and config.workers == 0:
        raise ConfigError(
            "--reload: the master restarts worker processes when files change; "
            "use --workers 1 or more with it"
        )
    for name, value in (
        ("--max-worker-memory", config.max_worker_memory),
        ("--max-worker-lifetime", config.max_worker_lifetime),
    ):
        if value and config.workers == 0:
            raise ConfigError(
                f"{name}: the master replaces worker processes; use --workers 1 or more with it"
            )


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
) -> str | None:
    """:func:`run`, plus what only the command line knows: how to re-read the
    configuration (SIGHUP), the arguments a new master is started with (SIGUSR2), whom to
    tell that the server is ready (a daemon's parent), and the locked pid file. Returns
    the name of the signal that stopped it (None if none did)."""
    control = Control(on_ready=on_ready, pidfile=pidfile)
    _check_servable(config)
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
    return control.stopped_by


async def _run_until_signal(config: Config, control: Control) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, RELOAD_SIGNAL) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop() -> None:
                await _serve(config, control, trio.TASK_STATUS_IGNORED)
                nursery.cancel_scope.cancel()

            nursery.start_soon(serve_then_stop)
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == RELOAD_SIGNAL:
                    if control.state is not None and not control.state.stopping:
                        control.reload_certs(name)
                    continue
                if control.on_stop is not None:
                    control.on_stop()
                if control.stopped_by is None:
                    control.stopped_by = name
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

"""The master: a trio program whose nurseries supervise worker processes.

The master binds the sockets once, then runs one :class:`_Pool` per application
(one, or several for a MultiApp). A pool keeps ``workers`` processes, each in a
stable slot; every process has a watcher task that reads its channel (the messages
of :mod:`trioserve._proto.channel`: ready, heartbeats, retire, boot errors) and reaps
it, and a :class:`WorkerState` that only :meth:`_Proc.become` changes. A worker that
exits is replaced with exponential backoff; a worker that fails while booting halts
the master with the worker's error; a worker silent for longer than ``timeout`` gets
SIGABRT (its stack is dumped to the error log), then SIGKILL, and is replaced. A
healthy worker is recycled (:meth:`Master.recycle`: a fresh worker in its slot first,
then the old one drains) when it served ``max_requests``, when its memory stays over
``max_worker_memory`` or when it reaches ``max_worker_lifetime``; why a worker exits is
its ``WorkerInfo.exit_reason``, an :class:`~trioserve._hooks.ExitReason`.

Signals (``run()`` only; ``serve()`` leaves signals to the calling program), from the
table of :meth:`Master.signal_handlers`: TERM graceful stop, INT and QUIT fast stop,
HUP reload and rolling restart, TTIN/TTOU one worker more/less, USR1 reopen logs,
USR2 start a new master on the same sockets, WINCH stop the workers but keep the
master (only without a controlling terminal), URG reload the TLS certificate in every
worker without replacing it (``trioserve ctl reload-certs``; ``--reload-certs-watch``
does the same when the files change).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
import math
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from . import _statsd as statsd_names
from ._bind import (
    cleanup_listener,
    create_listeners,
    listener_address,
    listener_from_fd,
    parse_bind,
    reserve_reuse_port,
)
from ._certs import RELOAD_SIGNAL, cert_paths, load_context, watch_cert_files
from ._config import CONFIG_MODULE, Config
from ._daemon import (
    Account,
    PidFile,
    give_log_files,
    give_unix_sockets,
    holder,
    resolve_account,
)
from ._errors import ConfigError, TrioserveError
from ._hooks import (
    ExitReason,
    HookError,
    ServerInfo,
    WorkerBootError,
    WorkerInfo,
    run_hook,
    run_hook_logged,
)
from ._logging import configure_logging
from ._metrics import (
    MasterCounts,
    Sample,
    WorkerSample,
    app_label,
    count_logs,
    listener_samples,
    resident_bytes,
)
from ._metrics_server import require_prometheus, serve_metrics
from ._mypyc import build_description
from ._pipeline import STOP_MARGIN, Control, stop_budget
from ._preload_client import Preloader
from ._proto.channel import (
    TO_MASTER,
    BootFailed,
    ChannelError,
    Counts,
    Decoder,
    Heartbeat,
    Message,
    Ready,
    ReloadCerts,
    Retire,
    Stop,
    WorkerBoot,
    boot_pieces,
    encode,
)
from ._recycle import MIB, Recycling, check_supported, read_rss, sample_period
from ._statsd import Statsd
from ._statsd import install as install_statsd
from ._systemd import (
    Notifier,
    activated_sockets,
    listeners_for,
    run_watchdog,
    watchdog_interval,
)
from ._types import Address
from ._worker import DUMP_SIGNAL, embedded_log, set_title, ship_config

LOGGER = logging.getLogger("trioserve.master")

_KILL_AFTER_ABORT = 3.0
# Until it is ready, a worker may stay silent this long even when --timeout is shorter.
_BOOT_SILENCE = 30.0
_FAST_STOP = 5.0
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0
# A worker that served this long resets its slot's backoff.
_STABLE_AFTER = 10.0
INHERIT_ENV = "TRIOSERVE_INHERITED_FDS"


class WorkerExited(TrioserveError):
    """A worker process ended while it was meant to be serving (``child_exit``'s exc)."""


@attrs.frozen
class AppPlan:
    """One application the master serves: its prefix (None for a lone app) and settings."""

    prefix: str | None
    config: Config


class _Child(Protocol):
    """A worker process: spawned (``trio.Process``) or forked by the preloader."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def send_signal(self, signum: int) -> None: ...
    def kill(self) -> None: ...
    async def wait(self) -> int: ...


class WorkerState(enum.Enum):
    """Where a worker process is in its life, as the master sees it.

    Whether its exit is a failure is another question: it is, unless the master is
    stopping or paused, when the process still holds its slot (``_Pool.slots``) as it
    exits. A replacement booting beside the old worker, a retired one draining, one
    dropped by SIGTTOU: none holds the slot any more (or yet).
    """

    BOOTING = "booting"  # spawned, has not said Ready
    SERVING = "serving"  # said Ready
    # Recycled (max_requests, memory, lifetime): serves on until its replacement is ready.
    RETIRING = "retiring"
    STOPPING = "stopping"  # asked to stop (the channel's Stop, or SIGQUIT)
    ABORTING = "aborting"  # silent for longer than --timeout: aborted, then killed
    EXITED = "exited"  # reaped

    def can_become(self, new: WorkerState) -> bool:
        return new in _NEXT[self]


_NEXT: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.BOOTING: frozenset(
        {WorkerState.SERVING, WorkerState.STOPPING, WorkerState.ABORTING, WorkerState.EXITED}
    ),
    WorkerState.SERVING: frozenset(
        {WorkerState.RETIRING, WorkerState.STOPPING, WorkerState.ABORTING, WorkerState.EXITED}
    ),
    # Back to SERVING when its replacement failed to boot.
    WorkerState.RETIRING: frozenset(
        {WorkerState.SERVING, WorkerState.STOPPING, WorkerState.ABORTING, WorkerState.EXITED}
    ),
    WorkerState.STOPPING: frozenset({WorkerState.ABORTING, WorkerState.EXITED}),
    WorkerState.ABORTING: frozenset({WorkerState.EXITED}),
    WorkerState.EXITED: frozenset(),
}


@attrs.define(eq=False)
class _Proc:
    """One worker process, its state, and what its channel said."""

    info: WorkerInfo
    process: _Child
    link: trio.SocketStream
    last_beat: float
    state: WorkerState = WorkerState.BOOTING
    # Set by its Ready (in whatever state it came) and once it is reaped: to wait on.
    ready: trio.Event = attrs.field(factory=trio.Event)
    exited: trio.Event = attrs.field(factory=trio.Event)
    boot_error: tuple[int, str] | None = None
    urls: list[str] = attrs.field(factory=list)
    # One writer at a time on the channel (the boot message, then a stop request).
    sending: trio.Lock = attrs.field(factory=trio.Lock)
    # Whether its memory or its age makes it due for recycling.
    recycling: Recycling = attrs.field(factory=Recycling)

    def become(self, state: WorkerState) -> None:
        """Move to ``state``; a transition the table does not allow is a bug."""
        if not self.state.can_become(state):
            raise RuntimeError(
                f"worker {self.info.id} (pid {self.info.pid}): "
                f"{self.state.name} cannot become {state.name}"
            )
        self.state = state
        if state is WorkerState.EXITED:
            self.exited.set()

    def stopping(self) -> None:
        """STOPPING, unless it is past that already (stopping, aborting or exited)."""
        if self.state.can_become(WorkerState.STOPPING):
            self.become(WorkerState.STOPPING)


@attrs.define(eq=False)
class _Pool:
    """The workers of one application."""

    plan: AppPlan
    server: ServerInfo
    fds: list[int]
    reuse_port: list[tuple[int, tuple[Any, ...]]]
    slots: dict[int, _Proc] = attrs.field(factory=dict)
    backoff: dict[int, float] = attrs.field(factory=dict)
    # The listening fds per bind text (passed on by SIGUSR2), and reuse-port sockets.
    bind_fds: dict[str, list[int]] = attrs.field(factory=dict)
    reserved: list[trio.socket.SocketType] = attrs.field(factory=list)
    preloader: Preloader | None = None
    # Every worker process alive, the slots' ones and replacements still booting.
    live: set[_Proc] = attrs.field(factory=set)
    preload_lock: trio.Lock = attrs.field(factory=trio.Lock)
    # The worker being recycled for memory or lifetime: one at a time per pool, so that
    # workers due together are replaced one after another (see Master.recycle_due).
    recycling: _Proc | None = None

    @property
    def config(self) -> Config:
        return self.plan.config

    def assign(self, slot: int, proc: _Proc) -> None:
        """``proc`` holds ``slot`` from now on."""
        self.slots[slot] = proc
        self._publish()

    def vacate(self, *slots: int) -> list[_Proc]:
        """Free ``slots`` (every slot when none is named); the processes that held them."""
        freed = [self.slots.pop(slot) for slot in (slots or list(self.slots)) if slot in self.slots]
        self._publish()
        return freed

    def _publish(self) -> None:
        # The hooks' view (ServerInfo.workers) follows the slots.
        self.server.workers = [proc.info for proc in self.slots.values()]

    def label(self, slot: int) -> str:
        prefix = f"{self.plan.prefix} " if self.plan.prefix else ""
        return f"{prefix}worker {slot}"


@attrs.define(eq=False)
class Master:
    """Runtime state of the master (never stored on a Config)."""

    plans: list[AppPlan]
    reload_plans: Callable[[], list[AppPlan]] | None
    argv: Sequence[str] | None
    nursery: trio.Nursery
    pools: list[_Pool] = attrs.field(factory=list)
    listeners: list[trio.SocketListener] = attrs.field(factory=list)
    # The locked pid file of a master started by the command line with --pid.
    pidfile: PidFile | None = None
    # What the workers drop to (--user/--group), when the master runs as root.
    account: Account | None = None
    # systemd's notification socket (NOTIFY_SOCKET), and the statsd client.
    notifier: Notifier | None = None
    # serve() from a program: how its logging shows trioserve's lines, for the workers
    # to copy; None for the command line's master (workers follow the settings).
    embedded_log: tuple[int, bool] | None = None
    statsd: Statsd | None = None
    last_supervision: float = 0.0
    reserved: list[trio.socket.SocketType] = attrs.field(factory=list)
    stopping: bool = False
    stop_wait: trio.CancelScope | None = None
    # HUP, TTIN/TTOU, USR2 and WINCH run one at a time.
    operations: trio.Lock = attrs.field(factory=trio.Lock)
    fatal: BaseException | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    paused: bool = False
    children: list[trio.Process] = attrs.field(factory=list)
    preloaders: list[Preloader] = attrs.field(factory=list)
    # The workers' reports and the restarts, for --metrics-bind (kept in any case: cheap).
    metrics: MasterCounts = attrs.field(factory=MasterCounts)

    # -- workers ---------------------------------------------------------------------

    async def spawn(self, pool: _Pool, slot: int, config: Config) -> _Proc:
        """Start worker ``slot`` of ``pool`` with ``config`` and begin watching it."""
        info = WorkerInfo(slot, config, app=pool.plan.prefix)
        try:
            await run_hook(config, "pre_fork", pool.server, info)
        except HookError as exc:
            raise WorkerBootError(f"{pool.label(slot)} was not started: {exc}") from exc
        ours, theirs = socket.socketpair()
        try:
            pickled, main_path = ship_config(config)
            boot = WorkerBoot(
                slot=slot,
                app=pool.plan.prefix,
                master_pid=os.getpid(),
                config_file=_config_file(config),
                fds=tuple(pool.fds),
                reuse_port=tuple(pool.reuse_port),
                heartbeat=_heartbeat_interval(config),
                account=attrs.astuple(self.account) if self.account else None,
                main_path=main_path,
                embedded_log=self.embedded_log,
            )
            process: _Child
            if config.preload:
                preloader = await self._preloader_for(pool, config, boot)
                process = await preloader.fork(slot, theirs)
                payload = b""  # a forked worker has its settings already
            else:
                payload = b"".join(boot_pieces(boot.to_json(), pickled))
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "trioserve._worker_main", str(theirs.fileno())],
                    pass_fds=[theirs.fileno(), *pool.fds],
                )
        finally:
            theirs.close()
        info.pid = process.pid
        link = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        now = trio.current_time()
        proc = _Proc(info, process, link, now, recycling=Recycling.start(config, now))
        pool.live.add(proc)
        LOGGER.info("booting %s (pid %d)", pool.label(slot), process.pid)
        self.nursery.start_soon(self._watch, pool, proc, payload)
        return proc

    async def _preloader_for(self, pool: _Pool, config: Config, boot: WorkerBoot) -> Preloader:
        """The preloader of ``config``: started (and the app imported) on first use."""
        async with pool.preload_lock:
            current = pool.preloader
            if current is not None and current.config is config and not current.closed:
                return current
            preloader = await Preloader.start(
                config, boot, ship_config(config)[0], pool.fds, self.nursery
            )
            self.preloaders.append(preloader)
            LOGGER.info("preloading the app in pid %d", preloader.process.pid)
            await preloader.wait_loaded()
            if current is not None:
                current.retire()
            pool.preloader = preloader
            return preloader

    async def _watch(self, pool: _Pool, proc: _Proc, payload: bytes) -> None:
        """Feed the worker its boot message, read its channel, reap it, decide what next."""
        try:
            if payload:
                with trio.move_on_after(10):
                    async with proc.sending:
                        await proc.link.send_all(payload)
            await self._read(pool, proc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            # Never leave a process behind: the channel is gone, so the worker stops.
            with trio.CancelScope(shield=True):
                await proc.link.aclose()
                with trio.move_on_after(stop_budget(pool.config)):
                    await proc.process.wait()
                if proc.process.returncode is None:
                    proc.process.kill()
                    await proc.process.wait()
        proc.info.exit_code = proc.process.returncode
        pool.live.discard(proc)
        self.metrics.exited(proc.process.pid)
        proc.become(WorkerState.EXITED)
        await self._exited(pool, proc)

    async def _read(self, pool: _Pool, proc: _Proc) -> None:
        decoder = Decoder(TO_MASTER)
        try:
            while data := await proc.link.receive_some(65536):
                for message in decoder.feed(data):
                    self._message(pool, proc, message)
        except ChannelError as exc:
            # Closing the channel stops the worker; its exit is then judged as any.
            LOGGER.error(
                "%s (pid %d) broke its channel: %s", pool.label(proc.info.id), proc.info.pid, exc
            )

    def _message(self, pool: _Pool, proc: _Proc, message: Message) -> None:
        proc.last_beat = trio.current_time()
        if isinstance(message, Heartbeat):
            proc.info.requests = message.requests
        elif isinstance(message, Counts):
            self.metrics.report(
                app_label(pool.plan.prefix), proc.info.id, proc.process.pid, message
            )
        elif isinstance(message, Ready):
            proc.urls = list(message.urls)
            if proc.state is WorkerState.BOOTING:
                proc.become(WorkerState.SERVING)
            proc.ready.set()
            LOGGER.info("%s (pid %d) ready", pool.label(proc.info.id), proc.info.pid)
            self.report()
        elif isinstance(message, BootFailed):
            proc.boot_error = (message.code, message.message)
        elif (
            isinstance(message, Retire)
            and proc.state is WorkerState.SERVING
            and pool.slots.get(proc.info.id) is proc
            and not self.stopping
        ):
            self.recycle(pool, proc, ExitReason.MAX_REQUESTS)

    def recycle(self, pool: _Pool, proc: _Proc, reason: ExitReason) -> None:
        """Replace ``proc``, a serving worker, for ``reason`` (max_requests, memory,
        lifetime): a fresh worker takes its slot first; once that one is ready, ``proc``
        is asked to stop and drains. Should the fresh one fail to boot, ``proc`` serves on.
        """
        proc.become(WorkerState.RETIRING)
        proc.info.exit_reason = reason
        if reason is not ExitReason.MAX_REQUESTS:
            pool.recycling = proc
        self.nursery.start_soon(self._recycle, pool, proc, reason)

    async def _recycle(self, pool: _Pool, proc: _Proc, reason: ExitReason) -> None:
        try:
            if not await self._replace(pool, proc.info.id, pool.config, proc, reason):
                proc.recycling.retry_later(trio.current_time())
        finally:
            if pool.recycling is proc:
                pool.recycling = None

    async def _exited(self, pool: _Pool, proc: _Proc) -> None:
        slot = proc.info.id
        code = proc.process.returncode
        current = pool.slots.get(slot) is proc
        expected = self.stopping or self.paused or not current
        exc: BaseException | None = None
        if proc.info.exit_reason is None:
            # Nobody asked it to exit (or a signal to the process group came first).
            if self.stopping or self.paused:
                proc.info.exit_reason = ExitReason.SHUTDOWN
            elif proc.ready.is_set() and proc.boot_error is None:
                proc.info.exit_reason = ExitReason.CRASH
            else:
                proc.info.exit_reason = ExitReason.BOOT_FAILED
        if not expected:
            how = _describe_exit(code)
            if proc.boot_error is not None:
                exc = WorkerBootError(
                    f"{pool.label(slot)} failed to boot: {proc.boot_error[1]}", proc.boot_error[0]
                )
            elif not proc.ready.is_set():
                exc = WorkerBootError(f"{pool.label(slot)} {how} while booting")
            else:
                exc = WorkerExited(f"{pool.label(slot)} (pid {proc.info.pid}) {how}")
        if current:
            pool.vacate(slot)
        await run_hook_logged(pool.config, "child_exit", pool.server, proc.info, exc=exc)
        if isinstance(exc, WorkerBootError):
            self.halt(exc)
        elif exc is not None:
            LOGGER.error("%s; replacing it", exc)
            cause = proc.info.exit_reason or ExitReason.CRASH
            self.metrics.restarted(app_label(pool.plan.prefix), cause)
            self.nursery.start_soon(self._restart, pool, slot, proc)

    async def _restart(self, pool: _Pool, slot: int, old: _Proc) -> None:
        lived = time.time() - old.info.started_at if old.ready.is_set() else 0.0
        delay = pool.backoff.get(slot, 0.0)
        delay = _BACKOFF_FIRST if lived > _STABLE_AFTER or not delay else delay * 2
        pool.backoff[slot] = delay = min(delay, _BACKOFF_MAX)
        if delay > _BACKOFF_FIRST:
            LOGGER.info("restarting %s in %.1fs", pool.label(slot), delay)
        await trio.sleep(delay)
        if self.stopping or self.paused or slot in pool.slots or slot >= pool.config.workers:
            return
        try:
            pool.assign(slot, await self.spawn(pool, slot, pool.config))
        except TrioserveError as exc:
            self.halt(exc)

    async def _replace(
        self, pool: _Pool, slot: int, config: Config, old: _Proc | None, reason: ExitReason
    ) -> bool:
        """Start a new worker for ``slot``; once it is ready, retire ``old`` for
        ``reason``. False if it failed to boot (``old`` keeps serving)."""
        self.metrics.restarted(app_label(pool.plan.prefix), reason)
        try:
            new = await self.spawn(pool, slot, config)
        except TrioserveError as exc:
            LOGGER.error("%s could not be replaced: %s", pool.label(slot), exc)
            _keep_serving(old)
            return False
        # Until it is ready the old one stays the slot's worker.
        ok = await self._wait_ready(pool, new)
        if not ok:
            error = new.boot_error[1] if new.boot_error else _describe_exit(new.info.exit_code)
            LOGGER.error("%s could not replace the old one: %s", pool.label(slot), error)
            _signal(new.process, signal.SIGKILL)
            _keep_serving(old)
            return False
        current = pool.slots.get(slot)
        pool.assign(slot, new)
        for retired in {old, current} - {None, new}:
            assert retired is not None
            self.ask_to_stop(retired, reason)
        return True

    async def _wait_ready(self, pool: _Pool, proc: _Proc) -> bool:
        async with trio.open_nursery() as waiters:

            async def ready() -> None:
                await proc.ready.wait()
                waiters.cancel_scope.cancel()

            async def exited() -> None:
                await proc.exited.wait()
                waiters.cancel_scope.cancel()

            waiters.start_soon(ready)
            waiters.start_soon(exited)
        return proc.ready.is_set() and not proc.exited.is_set()

    # -- operator signals (the command line's master) ---------------------------------

    def signal_handlers(self) -> dict[int, Callable[[str], None]]:
        """What each signal does; a handler gets the signal's name, for its log line."""
        return {
            signal.SIGTERM: self._on_term,
            signal.SIGINT: self._on_quit,
            signal.SIGQUIT: self._on_quit,
            signal.SIGHUP: self._on_hup,
            signal.SIGTTIN: self._on_ttin,
            signal.SIGTTOU: self._on_ttou,
            signal.SIGUSR1: self._on_usr1,
            signal.SIGUSR2: self._on_usr2,
            signal.SIGWINCH: self._on_winch,
            RELOAD_SIGNAL: self._on_reload_certs,
        }

    def _on_term(self, name: str) -> None:
        if self.stopping:
            LOGGER.info("%s received again: stopping now", name)
            self.begin_stop(fast=True)
        else:
            LOGGER.info("%s received: stopping gracefully (send it again to stop now)", name)
            self.begin_stop(fast=False)

    def _on_quit(self, name: str) -> None:
        LOGGER.info("%s received: stopping now", name)
        self.begin_stop(fast=True)

    def _on_hup(self, name: str) -> None:
        _later(self, _hup, self)

    def _on_ttin(self, name: str) -> None:
        self._change_workers(name, 1)

    def _on_ttou(self, name: str) -> None:
        self._change_workers(name, -1)

    def _change_workers(self, name: str, delta: int) -> None:
        if self.paused:
            LOGGER.info("%s ignored: workers are stopped (SIGWINCH)", name)
        else:
            _later(self, self.change_workers, delta)

    def _on_usr1(self, name: str) -> None:
        try:
            configure_logging(self.pools[0].config)
            # New files the master just created: the workers reopen them next.
            give_log_files(self.pools[0].config, self.account)
        except ConfigError as exc:
            # The old handlers stay: logging goes on where it went.
            LOGGER.error("SIGUSR1: cannot reopen the log files: %s", exc)
        else:
            LOGGER.info("SIGUSR1 received: log files reopened")
        for proc in self._procs():
            _signal(proc.process, signal.SIGUSR1)

    def _on_usr2(self, name: str) -> None:
        _later(self, self.reexec)

    def _on_winch(self, name: str) -> None:
        if _has_terminal():
            LOGGER.debug("SIGWINCH ignored: the master has a terminal (not daemonized)")
        elif not self.paused:
            LOGGER.info("SIGWINCH received: stopping the workers, keeping the master")
            _later(self, self.pause)

    def _on_reload_certs(self, name: str) -> None:
        self.reload_certs(name)

    def reload_certs(self, why: str, pools: Sequence[_Pool] | None = None) -> None:
        """Tell every worker of ``pools`` (default: all) to build a new TLS context for
        its new connections, once the master checked that the files load.

        Each worker builds its own (a context cannot cross a process boundary); the
        master's check makes one log line of a bad certificate, and the workers keep
        the context they have.
        """
        if self.stopping:
            return
        tls_pools = [pool for pool in pools or self.pools if pool.config.certfile]
        if not tls_pools:
            LOGGER.warning("%s: no certificate to reload (TLS is off)", why)
            return
        for pool in tls_pools:
            prefix = f"{pool.plan.prefix}: " if pool.plan.prefix else ""
            try:
                _, info = load_context(pool.config)
            except (ConfigError, ssl.SSLError, OSError) as exc:
                LOGGER.error(
                    "%s: %scertificate not reloaded (the workers keep the current one): %s",
                    why,
                    prefix,
                    exc,
                )
                continue
            procs = [proc for proc in pool.live if proc.state in _RELOADABLE]
            for proc in procs:
                self.nursery.start_soon(self._send_reload_certs, proc, why)
            LOGGER.info(
                "%s: %snew certificate (%s) sent to %d worker(s)",
                why,
                prefix,
                info.describe(),
                len(procs),
            )

    def cert_files_changed(self, pool: _Pool) -> None:
        """--reload-certs-watch saw new files (HUP may have turned the watch off since)."""
        if pool.config.reload_certs_watch:
            self.reload_certs("a certificate file changed", [pool])

    async def _send_reload_certs(self, proc: _Proc, why: str) -> None:
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError
        ):  # a worker without a channel is on its way out anyway
            with trio.fail_after(5):
                async with proc.sending:
                    await proc.link.send_all(encode(ReloadCerts(why)))

    # -- the whole server ------------------------------------------------------------

    def ask_to_stop(self, proc: _Proc, reason: ExitReason) -> None:
        """A graceful stop of one worker, asked over its channel rather than with SIGTERM.

        When the whole process group gets SIGTERM (systemd's default KillMode, ``kill
        -TERM -PGID``), the workers get it directly; a second SIGTERM from the master
        would then turn their graceful stop into a fast one. A message does not.
        ``reason`` becomes its ``exit_reason`` unless it has one already (a worker
        recycled for its memory keeps that reason when the server stops meanwhile).
        """
        if proc.state is WorkerState.EXITED:
            return
        if proc.info.exit_reason is None:
            proc.info.exit_reason = reason
        proc.stopping()
        self.nursery.start_soon(self._send_stop, proc, proc.info.exit_reason)

    async def _send_stop(self, proc: _Proc, reason: ExitReason) -> None:
        try:
            with trio.fail_after(5):
                async with proc.sending:
                    await proc.link.send_all(encode(Stop(reason.value)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            _signal(proc.process, signal.SIGTERM)  # no channel: the signal still works

    def halt(self, exc: BaseException) -> None:
        """Stop everything because of ``exc``; the master then exits with its code."""
        if self.fatal is None:
            self.fatal = exc
            # Raised to whoever started the master: the command line prints it on stderr
            # (serve()'s caller gets it). Logged only where stderr does not go anyway.
            if self.pools and self.pools[0].config.error_log != "-":
                LOGGER.error("%s", exc)
        self.begin_stop(fast=True)

    def begin_stop(self, *, fast: bool) -> None:
        if not self.stopping:
            self.stopping = True
            if self.notifier is not None:
                self.notifier.notify(STOPPING=1, STATUS="stopping")
            self.nursery.start_soon(self._stop_workers, fast)
        elif fast:
            for proc in self._procs():
                _fast_stop(proc)
            if self.stop_wait is not None:
                self.stop_wait.deadline = min(
                    self.stop_wait.deadline, trio.current_time() + _FAST_STOP
                )

    def _procs(self) -> list[_Proc]:
        """Every worker process alive, including replacements still booting."""
        return [proc for pool in self.pools for proc in pool.live]

    async def _stop_workers(self, fast: bool) -> None:
        # Refuse new connections at once rather than queue them for nobody: the workers
        # close their copies of the sockets as they stop accepting, the master its own.
        for listener in self.listeners:
            await trio.aclose_forcefully(listener)
        await self._stop_procs(self._procs(), fast=fast)
        self.done.set()

    async def _stop_procs(self, procs: list[_Proc], *, fast: bool) -> None:
        for proc in procs:
            if fast:
                _fast_stop(proc)
            else:
                self.ask_to_stop(proc, ExitReason.SHUTDOWN)
        budget = _FAST_STOP
        if not fast:
            budget = max((stop_budget(p.info.config) for p in procs), default=_FAST_STOP)
        with trio.move_on_after(budget) as scope:
            # A second TERM (or an INT) while this waits shortens it: see begin_stop.
            self.stop_wait = scope
            for proc in procs:
                await proc.exited.wait()
        if scope.cancelled_caught:
            LOGGER.warning("workers did not stop in %gs: killing them", budget)
            for proc in procs:
                _signal(proc.process, signal.SIGKILL)
            for proc in procs:
                await proc.exited.wait()

    def metrics_sample(self) -> Sample:
        """What a scrape of --metrics-bind shows: every application's totals, and the
        workers and listening sockets as the master sees them now."""
        now = trio.current_time()
        apps = [app_label(pool.plan.prefix) for pool in self.pools]
        processes = []
        listeners = []
        for pool, app in zip(self.pools, apps, strict=True):
            for proc in sorted(pool.live, key=lambda p: (p.info.id, p.process.pid)):
                processes.append(
                    WorkerSample(
                        app,
                        proc.info.id,
                        proc.process.pid,
                        resident_bytes(proc.process.pid),
                        now - proc.last_beat,
                    )
                )
            fds = set(pool.fds)
            sockets = [lst.socket for lst in self.listeners if lst.socket.fileno() in fds]
            listeners += listener_samples(app, sockets)
        return Sample(
            apps=self.metrics.totals(apps),
            restarts=dict(self.metrics.restarts),
            workers={app: len(pool.slots) for pool, app in zip(self.pools, apps, strict=True)},
            processes=processes,
            listeners=listeners,
            master_logs=dict(self.metrics.logs),
        )

    def supervising(self) -> bool:
        """For the systemd watchdog: whether the supervision loop ran a moment ago."""
        return trio.current_time() - self.last_supervision < 5.0

    def report(self, **fields: str | int) -> None:
        """Worker counts to statsd (gauge) and to systemd (STATUS=, with ``fields``)."""
        count = sum(len(pool.slots) for pool in self.pools)
        if self.statsd is not None:
            self.statsd.gauge(statsd_names.WORKERS, count)
        if self.notifier is not None:
            self.notifier.notify(**fields, STATUS=f"{count} worker(s) serving")

    async def watch_timeouts(self) -> None:
        """Abort, then kill, workers whose loop sent nothing for ``timeout`` seconds."""
        while True:
            await trio.sleep(0.25)
            now = self.last_supervision = trio.current_time()
            for pool in self.pools:
                timeout = pool.config.timeout
                if not timeout:
                    continue
                for proc in list(pool.live):
                    # Importing the app blocks a booting worker's loop: that may take
                    # longer than a tight --timeout without anything being wrong.
                    limit = timeout if proc.ready.is_set() else max(timeout, _BOOT_SILENCE)
                    if proc.state.can_become(WorkerState.ABORTING) and now - proc.last_beat > limit:
                        proc.become(WorkerState.ABORTING)
                        # Whatever it was asked before: the abort is what ends it.
                        proc.info.exit_reason = ExitReason.TIMEOUT
                        self.nursery.start_soon(self._abort, pool, proc)

    async def _abort(self, pool: _Pool, proc: _Proc) -> None:
        LOGGER.error(
            "%s (pid %d) sent no heartbeat for %.1fs: dumping its stack and aborting it",
            pool.label(proc.info.id),
            proc.info.pid,
            trio.current_time() - proc.last_beat,
        )
        _signal(proc.process, DUMP_SIGNAL)
        await trio.sleep(0.2)  # the dump is written by a C-level handler, at once
        _signal(proc.process, signal.SIGABRT)
        with trio.move_on_after(_KILL_AFTER_ABORT):
            await proc.exited.wait()
            return
        LOGGER.error(
            "%s (pid %d) did not abort: killing it", pool.label(proc.info.id), proc.info.pid
        )
        _signal(proc.process, signal.SIGKILL)

    async def watch_recycling(self, period: float) -> None:
        """Every ``period`` seconds, sample each worker's memory and age; recycle the due."""
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for pool in self.pools:
                self.recycle_due(pool, now)

    def recycle_due(self, pool: _Pool, now: float) -> None:
        """Sample the serving workers of ``pool``; recycle one that is due for its memory
        (first) or its lifetime, unless one of the pool is being recycled already.

        One at a time: replacements that boot together would need the memory and CPU of
        several workers at once, the more so when memory is the problem. The others stay
        due and go next, one after another. The serving capacity never drops: each old
        worker serves until its replacement is ready.
        """
        config = pool.config
        if not (config.max_worker_memory or config.max_worker_lifetime):
            return
        due: list[tuple[bool, int, _Proc, ExitReason]] = []
        for slot, proc in pool.slots.items():
            if proc.state is not WorkerState.SERVING:
                continue
            watch = proc.recycling
            reason = watch.due(now, read_rss(proc.process.pid) if watch.memory_limit else None)
            if reason is not None:
                due.append((reason is not ExitReason.MEMORY, slot, proc, reason))
        # A reload (or SIGTTIN/TTOU...) replaces workers itself: recycling waits for it.
        busy = pool.recycling is not None or self.operations.locked()
        if not due or busy or self.stopping or self.paused:
            return
        _, slot, proc, reason = min(due, key=lambda entry: entry[:2])
        watch = proc.recycling
        if reason is ExitReason.MEMORY:
            LOGGER.warning(
                "%s (pid %d) uses %d MiB > --max-worker-memory %d MiB for %d samples; replacing",
                pool.label(slot),
                proc.info.pid,
                math.ceil(watch.rss / MIB),
                watch.memory_limit // MIB,
                watch.over,
            )
        else:
            LOGGER.info(
                "%s (pid %d) reached --max-worker-lifetime at %.1fs old (%gs + %.1fs jitter); "
                "replacing",
                pool.label(slot),
                proc.info.pid,
                now - watch.started,
                watch.lifetime,
                watch.jitter,
            )
        self.recycle(pool, proc, reason)

    async def start_pool(self, pool: _Pool) -> None:
        """Start every worker of ``pool`` and wait until all are ready (or halt)."""
        config = pool.config
        async with trio.open_nursery() as starting:
            for slot in range(config.workers):
                starting.start_soon(self._start_slot, pool, slot)
        if self.fatal is None:
            await run_hook_logged(config, "nworkers_changed", pool.server, config.workers, None)

    async def _start_slot(self, pool: _Pool, slot: int) -> None:
        try:
            proc = await self.spawn(pool, slot, pool.config)
        except TrioserveError as exc:
            self.halt(exc)
            return
        pool.assign(slot, proc)
        await self._wait_ready(pool, proc)

    async def change_workers(self, delta: int) -> None:
        for pool in self.pools:
            old = pool.config.workers
            new = max(1, old + delta)
            if new == old:
                LOGGER.info("SIGTTOU: already down to one worker")
                continue
            pool.plan = attrs.evolve(pool.plan, config=attrs.evolve(pool.config, workers=new))
            pool.server.config = pool.config
            LOGGER.info("workers: %d -> %d", old, new)
            if new > old:
                await self._start_slot(pool, old)
            else:
                for proc in pool.vacate(new):
                    self.ask_to_stop(proc, ExitReason.SCALE_DOWN)
            await run_hook_logged(pool.config, "nworkers_changed", pool.server, new, old)
        self.report()

    async def rolling_restart(self, plans: list[AppPlan] | None) -> None:
        """Replace every worker, one new worker per slot, each retiring the old once ready."""
        for index, pool in enumerate(self.pools):
            if plans is not None:
                plan = plans[index]
                if tuple(plan.config.bind) != tuple(pool.config.bind) or (
                    plan.config.reuse_port != pool.config.reuse_port
                ):
                    LOGGER.warning(
                        "%s: bind and reuse_port changes need a restart (or SIGUSR2); "
                        "keeping the current sockets",
                        plan.prefix or "reload",
                    )
                    plan = attrs.evolve(
                        plan,
                        config=attrs.evolve(
                            plan.config, bind=pool.config.bind, reuse_port=pool.config.reuse_port
                        ),
                    )
                try:
                    await run_hook(plan.config, "on_reload", pool.server)
                except TrioserveError as exc:
                    log_problems("reload abandoned", exc)
                    return
                old_workers = pool.config.workers
                pool.plan = plan
                pool.server.config = plan.config
            else:
                old_workers = pool.config.workers
            config = pool.config
            results: list[bool] = []

            async def one(
                slot: int,
                pool: _Pool = pool,
                config: Config = config,
                results: list[bool] = results,
            ) -> None:
                old = pool.slots.get(slot)
                results.append(await self._replace(pool, slot, config, old, ExitReason.RELOAD))

            async with trio.open_nursery() as restarting:
                for slot in range(config.workers):
                    restarting.start_soon(one, slot)
            extra = [slot for slot in pool.slots if slot >= config.workers]
            for proc in pool.vacate(*extra) if extra else []:
                self.ask_to_stop(proc, ExitReason.RELOAD)
            if config.workers != old_workers:
                await run_hook_logged(
                    config, "nworkers_changed", pool.server, config.workers, old_workers
                )
            if all(results):
                LOGGER.info("reloaded: %d new workers ready, old ones retired", len(results))

    async def pause(self) -> None:
        """SIGWINCH: stop every worker gracefully; the master stays."""
        self.paused = True
        procs = self._procs()
        for pool in self.pools:
            pool.vacate()
        await self._stop_procs(procs, fast=False)
        LOGGER.info("all workers stopped (SIGWINCH); the master keeps the sockets")

    async def resume(self) -> None:
        """SIGHUP after SIGWINCH: start the workers again."""
        self.paused = False
        for pool in self.pools:
            await self.start_pool(pool)

    async def reexec(self) -> None:
        """SIGUSR2: start a new master on the same sockets; this one keeps serving."""
        if self.argv is None:
            LOGGER.warning("SIGUSR2 ignored: only a master started by the command line re-executes")
            return
        try:
            await run_hook(self.pools[0].config, "pre_exec", self.pools[0].server)
        except TrioserveError as exc:
            LOGGER.error("upgrade abandoned: %s", exc)
            return
        inherited: dict[str, list[int]] = {}
        for pool in self.pools:
            for text, fds in pool.bind_fds.items():
                inherited.setdefault(text, []).extend(fds)
        env = dict(os.environ)
        env[INHERIT_ENV] = json.dumps(inherited)
        fds = sorted({fd for fds in inherited.values() for fd in fds})
        pidfile = self.pidfile
        if pidfile is not None:
            # The new master takes the pid file's name; this one keeps FILE.oldbin.
            own_path = pidfile.path
            pidfile.rename(own_path.with_name(own_path.name + ".oldbin"))
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioserve", *self.argv], env=env, pass_fds=fds
        )
        self.children.append(process)
        LOGGER.info(
            "SIGUSR2: started a new master (pid %d) on the same sockets; stop this one "
            "with SIGTERM once it is ready (or SIGWINCH to keep it without workers)",
            process.pid,
        )
        self.nursery.start_soon(self._reap_new_master, process)

    async def _reap_new_master(self, process: trio.Process) -> None:
        await process.wait()
        pidfile = self.pidfile
        if pidfile is None or self.stopping or not pidfile.path.name.endswith(".oldbin"):
            return
        own_path = pidfile.path.with_name(pidfile.path.name.removesuffix(".oldbin"))
        # A daemonized new master's first process exits once it is ready: it then
        # holds the pid file. If nobody does, the upgrade failed and the name is ours again.
        if holder(own_path) is None:
            LOGGER.error(
                "the new master (pid %d) exited with status %s; this master keeps serving",
                process.pid,
                process.returncode,
            )
            pidfile.rename(own_path)


# Workers that take new connections (or will): those a certificate reload concerns.
_RELOADABLE = frozenset({WorkerState.BOOTING, WorkerState.SERVING, WorkerState.RETIRING})


def _pool_cert_paths(pool: _Pool) -> list[str]:
    # The pool's settings of the moment: HUP may name other files.
    return cert_paths(pool.config)


def _keep_serving(old: _Proc | None) -> None:
    """Its replacement failed: a retiring worker serves on (and may retire again)."""
    if old is not None and old.state is WorkerState.RETIRING:
        old.become(WorkerState.SERVING)
        old.info.exit_reason = None


def _fast_stop(proc: _Proc) -> None:
    if proc.info.exit_reason is None:
        proc.info.exit_reason = ExitReason.SHUTDOWN
    proc.stopping()
    _signal(proc.process, signal.SIGQUIT)


def _signal(process: _Child, signum: int) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # exited since: nothing to signal
            process.send_signal(signum)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _heartbeat_interval(config: Config) -> float:
    if not config.timeout:
        return 1.0
    return max(0.05, min(1.0, config.timeout / 4))


def _config_file(config: Config) -> str | None:
    module = sys.modules.get(CONFIG_MODULE)
    path = getattr(module, "__file__", None)
    if path is None or config.config is None:
        return None
    return str(path)


async def _bind(
    pool: _Pool, inherited: dict[str, list[int]], activated: list[int]
) -> list[trio.SocketListener]:
    """Create ``pool``'s sockets, or adopt those systemd (socket activation) or a
    previous master (SIGUSR2) passed on."""
    config = pool.config
    listeners: list[trio.SocketListener] = []
    bind_fds: dict[str, list[int]] = {}
    specs = []
    if activated:
        # systemd's sockets replace the binds of this application.
        listeners = [listener_from_fd(fd) for fd in activated]
        bind_fds = {f"fd://{fd}": [fd] for fd in activated}
        pool.bind_fds = bind_fds
        pool.fds = list(activated)
        return listeners
    for text in config.bind:
        fds = inherited.pop(text, None)
        if fds:
            adopted = [listener_from_fd(fd) for fd in fds]
            listeners += adopted
            bind_fds[text] = [listener.socket.fileno() for listener in adopted]
        else:
            specs.append((text, parse_bind(text)))
    if config.reuse_port:
        reserved, others = await reserve_reuse_port([spec for _, spec in specs])
        pool.reuse_port = [(sock.family, tuple(sock.getsockname())) for sock in reserved]
        pool.reserved = reserved
        specs = [(str(spec), spec) for spec in others]
    for text, spec in specs:
        created = await create_listeners([spec], backlog=config.backlog)
        listeners += created
        bind_fds[text] = [listener.socket.fileno() for listener in created]
    pool.bind_fds = bind_fds
    pool.fds = [listener.socket.fileno() for listener in listeners]
    return listeners


async def serve_master(
    config: Config,
    control: Control,
    task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
    *,
    plans: list[AppPlan] | None = None,
    reload_plans: Callable[[], list[AppPlan]] | None = None,
    argv: Sequence[str] | None = None,
    signals: bool = False,
    settings_logging: bool = False,
) -> None:
    """Run the master for ``plans`` (default: ``config`` alone) until stopped.

    ``started()`` gets the addresses of every listener once every worker is ready.
    Cancellation stops the workers gracefully. With ``signals`` the master handles the
    operator signals itself (the command line); ``reload_plans`` re-reads the
    configuration for SIGHUP, ``argv`` is the command line SIGUSR2 re-executes.
    ``settings_logging`` says this process configured logging from the settings (the
    command line), and the workers do the same; otherwise they copy how the program's
    logging shows the ``trioserve`` logger.
    """
    plans = plans or [AppPlan(None, config)]
    for plan in plans:
        # Refused before anything starts: settings no worker process could receive, or
        # that this system cannot honour.
        ship_config(plan.config)
        check_supported(plan.config)
    budget = max(_FAST_STOP, *(stop_budget(plan.config) for plan in plans)) + STOP_MARGIN
    master: Master | None = None
    async with trio.open_nursery() as outer:
        # Cancellation of serve() becomes a graceful stop: the master runs shielded,
        # and this watcher asks it to stop (with a deadline as a backstop) when cancelled.
        shield = trio.CancelScope(shield=True)

        async def stop_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                if master is not None:
                    master.begin_stop(fast=False)
                else:
                    shield.cancel()
                shield.deadline = min(shield.deadline, trio.current_time() + budget)

        outer.start_soon(stop_when_cancelled)
        with shield:
            async with trio.open_nursery() as nursery:
                master = Master(plans, reload_plans, argv, nursery)
                master.pidfile = control.pidfile
                master.notifier = Notifier.from_environ() if signals else None
                master.embedded_log = None if settings_logging else embedded_log()
                master.statsd = install_statsd(config)
                uncount: Callable[[], None] | None = None
                if config.metrics_bind is not None:
                    require_prometheus()
                    uncount = count_logs(master.metrics.logs)
                try:
                    await _run_master(master, config, control, task_status, signals)
                finally:
                    if uncount is not None:
                        uncount()
                    nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()
    if master is not None and master.fatal is not None:
        raise master.fatal


async def _run_master(
    master: Master,
    config: Config,
    control: Control,
    task_status: trio.TaskStatus[list[Address]],
    signals: bool,
) -> None:
    if signals:  # the command line's master; a trio program embedding serve() keeps its title
        set_title("master", config.name)
    inherited: dict[str, list[int]] = json.loads(os.environ.pop(INHERIT_ENV, "{}") or "{}")
    for plan in master.plans:
        master.pools.append(_Pool(plan, ServerInfo(plan.config, app=plan.prefix), [], []))
    error: BaseException | None = None
    try:
        for pool in master.pools:
            await run_hook(pool.config, "on_starting", pool.server)
        master.account = resolve_account(config.user, config.group)
        give_log_files(config, master.account)
        sockets = activated_sockets()
        activated: dict[str | None, list[int]] = {}
        if sockets:
            activated = listeners_for(sockets, [pool.plan.prefix for pool in master.pools])
            LOGGER.info("socket activation: %d socket(s) from systemd", len(sockets))
        for pool in master.pools:
            listeners = await _bind(pool, inherited, activated.get(pool.plan.prefix, []))
            master.listeners += listeners
            give_unix_sockets(listeners, master.account)
        if config.metrics_bind is not None:
            await master.nursery.start(serve_metrics, config.metrics_bind, master.metrics_sample)
        master.nursery.start_soon(master.watch_timeouts)
        master.nursery.start_soon(master.watch_recycling, sample_period(os.environ))
        if config.reload:
            await master.nursery.start(_reload_on_change, master, config)
        if signals:
            await master.nursery.start(_signal_task, master, control)
        for pool in master.pools:
            if pool.config.certfile and pool.config.reload_certs_watch:
                await master.nursery.start(
                    watch_cert_files,
                    functools.partial(_pool_cert_paths, pool),
                    functools.partial(master.cert_files_changed, pool),
                )
        for pool in master.pools:
            await master.start_pool(pool)
            if master.fatal is not None:
                break
            urls = next((p.urls for p in pool.slots.values() if p.urls), [])
            for url in urls:
                LOGGER.info("listening on %s", url)
            build = build_description()
            if build:
                LOGGER.info("HTTP/1.1 modules %s", build)
            LOGGER.info(
                "%s%d worker(s) ready",
                f"{pool.plan.prefix}: " if pool.plan.prefix else "",
                len(pool.slots),
            )
            await run_hook(pool.config, "when_ready", pool.server)
        if master.fatal is None and not master.stopping:
            task_status.started([listener_address(listener) for listener in master.listeners])
            control.ready()
            master.report(READY=1)
            interval = watchdog_interval()
            if master.notifier is not None and interval is not None:
                master.nursery.start_soon(
                    run_watchdog, master.notifier, interval, master.supervising
                )
        await master.done.wait()
    except BaseException as exc:
        error = exc
        if master.fatal is None and not isinstance(exc, trio.Cancelled):
            master.fatal = exc if isinstance(exc, TrioserveError) else None
        with trio.CancelScope(shield=True):
            master.begin_stop(fast=True)
            await master.done.wait()
        if not isinstance(exc, TrioserveError):
            raise
    finally:
        with trio.CancelScope(shield=True):
            for listener in master.listeners:
                cleanup_listener(listener)
                await trio.aclose_forcefully(listener)
            for pool in master.pools:
                for sock in pool.reserved:
                    sock.close()
            # Every worker has exited: a preloader ends once its channel closes.
            for preloader in master.preloaders:
                preloader.sock.close()
            with trio.move_on_after(_FAST_STOP):
                for preloader in master.preloaders:
                    await preloader.process.wait()
            for preloader in master.preloaders:
                if preloader.process.returncode is None:
                    preloader.process.kill()
                    await preloader.process.wait()
            for pool in master.pools:
                reported = error if error is not None else master.fatal
                if isinstance(reported, trio.Cancelled):
                    reported = None
                await run_hook_logged(pool.config, "on_exit", pool.server, exc=reported)


async def _reload_on_change(
    master: Master, config: Config, *, task_status: trio.TaskStatus[None]
) -> None:
    """--reload: a rolling restart (configuration re-read too) when watched files change."""
    from ._reload import describe, watch_files

    send, receive = trio.open_memory_channel[frozenset[str]](1)
    async with trio.open_nursery() as nursery:
        backend = await nursery.start(
            watch_files, config.reload_dir, config.reload_include, config.reload_exclude, send
        )
        LOGGER.info(
            "reload: %s with %s",
            describe(config.reload_dir, config.reload_include, config.reload_exclude),
            backend,
        )
        task_status.started()
        async for changed in receive:
            if master.stopping or master.paused:
                continue
            names = ", ".join(sorted(_short(path) for path in changed)[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            LOGGER.info("reload: %s changed; restarting the workers", names + more)
            async with master.operations:
                await _hup(master, announce=False)


def _short(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _has_terminal() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


# Acted on while the master stops too; every other signal is then ignored.
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


async def _signal_task(
    master: Master, control: Control, *, task_status: trio.TaskStatus[None]
) -> None:
    handlers = master.signal_handlers()
    with trio.open_signal_receiver(*handlers) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum in _STOP_SIGNALS and control.stopped_by is None:
                control.stopped_by = name  # for the command line's last line
            if master.stopping and signum not in _STOP_SIGNALS:
                LOGGER.info("%s ignored: stopping", name)
            else:
                handlers[signum](name)


def _later(master: Master, operation: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run ``operation`` in the background, one at a time: the signal task stays free, so
    a TERM during a long reload is acted on at once."""

    async def serialized() -> None:
        async with master.operations:
            if not master.stopping:
                await operation(*args)

    master.nursery.start_soon(serialized)


def log_problems(what: str, exc: BaseException) -> None:
    """Log ``what: problem`` at ERROR for each problem ``exc`` names: a ConfigError lists
    every problem it found, one per line, and each log line is one event."""
    for problem in str(exc).splitlines() or [""]:
        LOGGER.error("%s: %s", what, problem)


async def _hup(master: Master, *, announce: bool = True) -> None:
    if master.paused:
        LOGGER.info("SIGHUP received: starting the workers again")
        await master.resume()
        return
    plans = None
    if master.reload_plans is not None:
        try:
            plans = master.reload_plans()
        except TrioserveError as exc:
            log_problems("SIGHUP: the configuration could not be reloaded", exc)
            return
        if len(plans) != len(master.pools):
            LOGGER.error("SIGHUP: the number of applications changed; restart the server")
            return
        try:
            configure_logging(plans[0].config)
        except ConfigError as exc:
            LOGGER.error("SIGHUP: %s; keeping the old configuration", exc)
            return
    if announce:
        LOGGER.info("SIGHUP received: reloading (rolling restart of the workers)")
    master.report(RELOADING=1)
    await master.rolling_restart(plans)
    master.report(READY=1)

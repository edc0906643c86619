"""A worker process: one ``trio.run`` serving the master's sockets.

Started by the master as ``python -m trioserve._worker_main FD`` (or forked by the
preloader, with the app already imported). FD is this worker's end of a socket pair
with the master, which speaks :mod:`trioserve._proto.channel`: the master sends the
boot message (a header, then the pickled Config) and later perhaps ``Stop`` or
``ReloadCerts`` (new TLS connections get a context built afresh from the files); the worker
sends ``Ready`` once it accepts connections, ``Heartbeat`` from its trio loop,
``Counts`` (with ``--metrics-bind``: what it counted, when that changed, and once more
as it stops), ``Retire`` when it served ``max_requests``, and ``BootFailed`` when it
cannot start.
End of file on it means the master is gone: the worker then stops by itself, so no
worker outlives it.

Signals: TERM stops gracefully, INT and QUIT stop at once (``worker_int`` hook),
USR1 reopens the log files, ABRT (sent by the master to a worker whose loop is stuck)
dumps every thread's stack to the error log and runs ``worker_abort``.
"""

from __future__ import annotations

import faulthandler
import inspect
import io
import logging
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import trio

from ._accesslog import access_log_for
from ._bind import listen_reuse_port, listener_from_fd
from ._certs import CertStore
from ._config import Config, load_python_config
from ._daemon import Account
from ._errors import (
    EXIT_BOOT,
    EXIT_FAILURE,
    EXIT_OK,
    ConfigError,
    TrioserveError,
    single_error,
)
from ._hooks import ExitReason, HookError, ServerInfo, WorkerInfo, run_hook, run_hook_logged
from ._importer import LoadedApp
from ._loader import import_main_script, load_config_app
from ._logging import DATE_FORMAT, LOG_FORMAT, configure_logging
from ._lograte import flush_all
from ._metrics import ProcessCounts, count_logs, report_counts
from ._pipeline import Control, Extras, serve_listeners
from ._proto.channel import (
    TO_WORKER,
    BootFailed,
    BootReader,
    ChannelError,
    Decoder,
    Heartbeat,
    Message,
    Ready,
    ReloadCerts,
    Retire,
    Stop,
    WorkerBoot,
    encode,
)
from ._statsd import install as install_statsd
from ._types import Address

LOGGER = logging.getLogger("trioserve.worker")

# Signals the master handles for the whole server; a worker must not die of them.
_IGNORED = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH)
# The master sends this first to a stuck worker: every thread's stack to the error log.
DUMP_SIGNAL = signal.SIGUSR2
_ABORT_GRACE = 5.0


def drop_privileges(boot: WorkerBoot) -> None:
    """Become the --user/--group account of ``boot``, before any app code runs."""
    if boot.account is not None:
        Account(*boot.account).drop()


def _read_boot_message(sock: socket.socket) -> BootReader:
    reader = BootReader()
    while not reader.done:
        chunk = sock.recv(reader.wanted)
        if not chunk:
            raise EOFError("the master closed the channel before the boot message ended")
        reader.feed(chunk)
    return reader


class _MainWatcher(pickle.Pickler):
    """A pickler that notes the first class or function it meets from ``__main__``."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.from_main: str | None = None

    def reducer_override(self, obj: Any) -> Any:
        if (
            self.from_main is None
            and (inspect.isclass(obj) or inspect.isroutine(obj))
            and getattr(obj, "__module__", None) == "__main__"
        ):
            self.from_main = f"__main__.{getattr(obj, '__qualname__', '?')}"
        return NotImplemented  # pickled as usual: by reference


def ship_config(config: Config) -> tuple[bytes, str | None]:
    """``config`` pickled for the boot message, and the main script a worker must import
    before unpickling it (None when no app or hook comes from ``__main__``).

    A fresh worker interpreter finds a function by its module and name. One defined in
    the script the program was started as (``python script.py``) is ``__main__.app``
    there; the worker imports that script by path as ``__mp_main__``, as
    multiprocessing's spawn does, so its ``if __name__ == "__main__":`` block stays
    unrun.

    Raises:
        ConfigError: something cannot be sent: a lambda, a local function, or an
            object defined in ``python -c`` or an interactive session (no file to
            import it from).
    """
    buffer = io.BytesIO()
    pickler = _MainWatcher(buffer)
    try:
        pickler.dump(config)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(
            "cannot send the settings to worker processes: every app and hook must be "
            "importable by name ('module:attribute'), not a lambda or a local function "
            f"({exc}); use workers=0 to serve in this process"
        ) from None
    if pickler.from_main is None:
        return buffer.getvalue(), None
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not isinstance(path, str) or not os.path.isfile(path):
        raise ConfigError(
            f"cannot send the settings to worker processes: {pickler.from_main} is defined "
            "in 'python -c' or an interactive session, which a worker process cannot import; "
            "define it in a file, or use workers=0 to serve in this process"
        )
    return buffer.getvalue(), os.path.abspath(path)


def read_boot(sock: socket.socket) -> tuple[WorkerBoot, Config]:
    """Read the boot message (blocking: no trio loop runs yet)."""
    # All of it read before any code runs: a failure below can then be reported on the
    # channel, with no unread bytes left for the master to block on.
    reader = _read_boot_message(sock)
    boot, pickled = reader.header, reader.pickled
    if boot.config_file is not None:
        load_python_config(Path(boot.config_file))
    if boot.main_path is not None:
        import_main_script(boot.main_path)
    try:
        config = pickle.loads(pickled)
    except AttributeError as exc:
        if boot.main_path is None:
            raise
        raise AttributeError(
            f"{exc}: define it at the top level of {boot.main_path}, outside "
            "'if __name__ == \"__main__\":', so that worker processes can import it"
        ) from None
    if not isinstance(config, Config):
        raise TypeError("the boot message did not carry a Config")
    return boot, config


def report_boot_failure(channel: socket.socket, message: str) -> None:
    """Tell the master why this process could not boot (blocking: before any trio loop).

    The master's error then names the reason in one line; when the channel is gone
    already, stderr is the only place left to say it.
    """
    try:
        channel.sendall(encode(BootFailed(EXIT_BOOT, message)))
    except OSError:
        print(f"trioserve: error: worker {message}", file=sys.stderr)


def set_title(role: str, name: str | None) -> None:
    """``trioserve: worker 2 [name]`` in ps, when setproctitle is installed."""
    try:
        import setproctitle  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    title = f"trioserve: {role}" + (f" [{name}]" if name else "")
    setproctitle.setproctitle(title)


def _error_file(config: Config) -> IO[str]:
    if config.error_log == "-":
        return sys.stderr
    return open(config.error_log, "a", encoding="utf-8")


def _watch_stack_dumps(config: Config) -> None:
    """The master's DUMP_SIGNAL writes every thread's stack to the error log (C level:
    it works even while Python is stuck in C code). Called again by USR1."""
    faulthandler.register(DUMP_SIGNAL, file=_error_file(config), all_threads=True)


def _abort_handler(config: Config, worker: WorkerInfo) -> Callable[[int, object], None]:
    """SIGABRT (the master gave up on this worker): run worker_abort, then exit at once.

    The handler runs in the main thread between two bytecodes of whatever is stuck; the
    hook gets a fresh trio loop in a thread of its own (trio's run state is per
    thread), bounded in time, and the process then exits without unwinding the loop.
    """

    def on_abort(signum: int, frame: object) -> None:
        LOGGER.error("aborted by the master: the event loop was stuck")

        async def abort_hook() -> None:
            with trio.move_on_after(_ABORT_GRACE):
                await run_hook_logged(config, "worker_abort", worker)

        runner = threading.Thread(target=trio.run, args=(abort_hook,), daemon=True)
        runner.start()
        runner.join(_ABORT_GRACE + 1)
        logging.shutdown()
        os._exit(EXIT_FAILURE)

    return on_abort


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of a spawned worker: ``python -m trioserve._worker_main FD``."""
    args = sys.argv[1:] if argv is None else list(argv)
    for signum in _IGNORED:
        signal.signal(signum, signal.SIG_IGN)
    channel = socket.socket(fileno=int(args[0]))
    try:
        boot, config = read_boot(channel)
    except Exception as exc:
        report_boot_failure(channel, f"could not read its boot message: {exc}")
        return EXIT_BOOT
    return run_worker(channel, boot, config, None)


def run_worker(
    channel: socket.socket, boot: WorkerBoot, config: Config, loaded: LoadedApp | None
) -> int:
    """Serve as worker ``boot.slot`` until the master stops it; returns the exit status."""
    os.environ["TRIOSERVE_WORKER_ID"] = str(boot.slot)
    for signum in _IGNORED:
        signal.signal(signum, signal.SIG_IGN)
    set_title((f"{boot.app} " if boot.app else "") + f"worker {boot.slot}", config.name)
    worker = WorkerInfo(boot.slot, config, pid=os.getpid(), app=boot.app)
    _configure_logging(boot, config, worker)
    _watch_stack_dumps(config)
    drop_privileges(boot)  # after opening the log files; before any app code runs
    signal.signal(signal.SIGABRT, _abort_handler(config, worker))
    try:
        return trio.run(_worker_main, channel, boot, config, loaded, worker)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        # A preloaded worker ends with os._exit(): no atexit, so no summary of hidden lines.
        flush_all()


def _role(worker: WorkerInfo) -> str:
    return (f"{worker.app} " if worker.app else "") + f"worker {worker.id}"


def _configure_logging(boot: WorkerBoot, config: Config, worker: WorkerInfo) -> None:
    """The command line's workers log as the settings say; serve()'s as the program does.

    Under serve() the master logs through the embedding program's logging, and so does
    a server with workers=0: a worker shows what that logging would show (same level;
    nothing but Python's last-resort warnings when the program set up no handler), in
    trioserve's format, tagged with its role.
    """
    if boot.embedded_log is None:
        configure_logging(config, role=_role(worker))
        return
    level, shown = boot.embedded_log
    logger = logging.getLogger("trioserve")
    logger.setLevel(level)
    for old in logger.handlers[:]:
        logger.removeHandler(old)
    if shown:
        handler = logging.StreamHandler(sys.stderr)
        text_format = LOG_FORMAT.replace("trioserve: ", f"trioserve: [{_role(worker)}] ")
        handler.setFormatter(logging.Formatter(text_format, DATE_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False


def embedded_log() -> tuple[int, bool]:
    """What the "trioserve" logger of this (embedding) program shows: (level, any handler)."""
    logger = logging.getLogger("trioserve")
    return logger.getEffectiveLevel(), logger.hasHandlers()


class _Link:
    """The worker's end of the channel: messages out, a stop request or end of file in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.lock = trio.Lock()
        self.broken = False

    async def send(self, message: Message) -> None:
        if self.broken:
            return
        data = encode(message)
        async with self.lock:
            try:
                with trio.fail_after(10):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                self.broken = True


def _boot_code(exc: BaseException) -> int:
    # A boot hook that raises is a boot failure (3), like a failing lifespan startup.
    if isinstance(exc, TrioserveError) and not isinstance(exc, HookError):
        return exc.exit_code
    return EXIT_BOOT


async def _worker_main(
    channel: socket.socket,
    boot: WorkerBoot,
    config: Config,
    loaded: LoadedApp | None,
    worker: WorkerInfo,
) -> int:
    link = _Link(trio.SocketStream(trio.socket.from_stdlib_socket(channel)))
    control = Control()
    server = ServerInfo(config, pid=boot.master_pid, app=boot.app)
    status = EXIT_OK
    ready = False
    counts = None
    if config.metrics_bind is not None:
        counts = ProcessCounts()
        count_logs(counts.logs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_heartbeat, link, control, worker, boot.heartbeat)
        if counts is not None:
            nursery.start_soon(report_counts, counts, lambda: control.state, link.send)
        nursery.start_soon(_watch_master, link, control, worker, nursery.cancel_scope)
        nursery.start_soon(_signals, control, boot, config, worker, nursery.cancel_scope)

        async def on_ready(addresses: list[Address], urls: list[str]) -> None:
            nonlocal ready
            ready = True
            await link.send(Ready(urls))

        try:
            await run_hook(config, "post_fork", server, worker)
            if loaded is None:
                loaded = await load_config_app(config)
            extras = Extras(
                CertStore.from_config(config),
                access_log_for(config),
                install_statsd(config),
                counts,
            )
            listeners = [listener_from_fd(fd) for fd in boot.fds]
            listeners += [
                listen_reuse_port(family, addr, config.backlog) for family, addr in boot.reuse_port
            ]
            await serve_listeners(
                loaded, listeners, config, extras, control, worker, on_ready, owner=False
            )
            if counts is not None:
                # The last word: nothing counted since the last report is lost.
                await link.send(counts.counts(control.state))
        except Exception as exc:
            error = single_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
            error = error or exc
            if ready:
                LOGGER.error("worker %d failed: %s", boot.slot, error, exc_info=error)
                status = EXIT_FAILURE
            else:
                status = _boot_code(error)
                message = str(error) if isinstance(error, TrioserveError) else repr(error)
                await link.send(BootFailed(status, message))
                LOGGER.debug("worker %d failed to boot", boot.slot, exc_info=error)
        nursery.cancel_scope.cancel()
    return status


async def _heartbeat(link: _Link, control: Control, worker: WorkerInfo, interval: float) -> None:
    retiring = False
    while True:
        state = control.state
        requests = state.requests_served if state is not None else 0
        worker.requests = requests
        await link.send(Heartbeat(requests))
        if state is not None and not retiring and state.limit_reached.is_set():
            retiring = True
            LOGGER.info(
                "worker %d served %d requests (max_requests): retiring", worker.id, requests
            )
            await link.send(Retire())
        await trio.sleep(interval)


async def _watch_master(
    link: _Link, control: Control, worker: WorkerInfo, scope: trio.CancelScope
) -> None:
    decoder = Decoder(TO_WORKER)
    try:
        while data := await link.stream.receive_some(4096):
            for message in decoder.feed(data):
                if isinstance(message, Stop):
                    # For worker_exit: why the master stops this worker.
                    if worker.exit_reason is None and message.reason in _REASONS:
                        worker.exit_reason = ExitReason(message.reason)
                    # The master's graceful stop (idempotent: a SIGTERM to the whole
                    # process group may have started it already).
                    _stop(control, scope, fast=False)
                elif isinstance(message, ReloadCerts) and control.certs is not None:
                    # The master checked the files and logs the reload once; a failure
                    # here (a file changed again, or unreadable to --user) is logged too.
                    # (Still booting, the worker reads the files as they are anyway.)
                    control.reload_certs(message.why, level=logging.DEBUG)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except ChannelError as exc:
        LOGGER.error("the master's channel is broken: %s", exc)
    link.broken = True
    LOGGER.warning("the master is gone: stopping")
    _stop(control, scope, fast=False)


_REASONS = frozenset(reason.value for reason in ExitReason)


def _stop(control: Control, scope: trio.CancelScope, *, fast: bool) -> None:
    if control.state is None:
        scope.cancel()  # still booting: nothing to drain
    elif fast:
        control.fast_stop()
    else:
        control.graceful_stop()


async def _signals(
    control: Control,
    boot: WorkerBoot,
    config: Config,
    worker: WorkerInfo,
    scope: trio.CancelScope,
) -> None:
    with trio.open_signal_receiver(
        signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1
    ) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                try:
                    _configure_logging(boot, config, worker)
                    _watch_stack_dumps(config)
                except (ConfigError, OSError) as exc:
                    LOGGER.error("SIGUSR1: cannot reopen the log files: %s", exc)
                else:
                    LOGGER.info("SIGUSR1: log files reopened")
            elif signum == signal.SIGTERM:
                # Always graceful, however often: the same SIGTERM may come from the
                # process group and from the master. A fast stop is INT or QUIT (the
                # master sends QUIT on a second TERM to itself).
                _stop(control, scope, fast=False)
            else:
                await run_hook_logged(config, "worker_int", worker)
                _stop(control, scope, fast=True)

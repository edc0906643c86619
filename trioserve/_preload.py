"""The preloader (``--preload``): imports the app once, never runs trio, forks workers.

The master starts it as ``python -m trioserve._preload FD`` with the listening sockets
inherited. FD is a SOCK_SEQPACKET socket pair end: the master first sends the boot
header and the pickled Config (as to a worker), then one message per worker to start,
carrying that worker's channel as an SCM_RIGHTS file descriptor. The preloader forks;
the child becomes the worker (:func:`trioserve._worker.run_worker`, app already
imported, memory shared copy-on-write); the preloader answers ``Forked`` and later
``Reaped`` when it reaps the child (the messages of :mod:`trioserve._proto.channel`,
one per packet). Its channel closing means the master is gone or done with it: it
stops taking requests and exits once its children have exited.

The master's half is :class:`Preloader` (with :class:`Forked`, a worker it forked),
a trio client of that process; the rest of this module runs without trio.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import attrs

from ._errors import EXIT_BOOT, TrioserveError
from ._importer import LoadedApp
from ._loader import load_config_app
from ._proto.channel import (
    TO_PRELOADER,
    BootFailed,
    Decoder,
    Fork,
    Loaded,
    Reaped,
    WorkerBoot,
    encode,
)
from ._proto.channel import Forked as ForkedMessage
from ._worker import drop_privileges, read_boot, run_worker, set_title

_POLL = 0.2


def _run_without_trio(coro: Coroutine[Any, Any, LoadedApp]) -> LoadedApp:
    """Drive ``load_config_app`` to completion. It only awaits an async factory; one that waits
    on trio itself cannot be preloaded (there is no trio loop here, by design)."""
    try:
        coro.send(None)
    except StopIteration as done:
        loaded: LoadedApp = done.value
        return loaded
    coro.close()
    raise TrioserveError(
        "--preload: the app factory waits on trio while building the app; preloading "
        "needs a factory that builds the app without trio (or drop --preload)"
    )


def _status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
        signal.signal(signum, signal.SIG_IGN)
    # The master stops workers itself; the preloader outlives their drain on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = socket.socket(fileno=int(args[0]))
    try:
        boot, config = read_boot(channel)
    except Exception as exc:
        message = f"could not read its boot message: {exc}"
        channel.send(encode(BootFailed(EXIT_BOOT, message)))
        return EXIT_BOOT
    drop_privileges(boot)  # before the app is imported; forked workers inherit it
    set_title("preloader", config.name)
    try:
        loaded = _run_without_trio(load_config_app(config))
    except TrioserveError as exc:
        channel.send(encode(BootFailed(exc.exit_code, str(exc))))
        return exc.exit_code
    except Exception as exc:
        channel.send(encode(BootFailed(EXIT_BOOT, repr(exc))))
        return EXIT_BOOT
    channel.send(encode(Loaded(loaded.target)))
    return _serve_forks(channel, boot, config, loaded)


def _serve_forks(channel: socket.socket, boot: WorkerBoot, config: Any, loaded: LoadedApp) -> int:
    children: set[int] = set()
    decoder = Decoder(TO_PRELOADER)
    open_channel = True
    while open_channel or children:
        if open_channel:
            readable, _, _ = select.select([channel], [], [], _POLL)
        else:
            select.select([], [], [], _POLL)
            readable = []
        if readable:
            try:
                data, fds, _, _ = socket.recv_fds(channel, 65536, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                open_channel = False
                for fd in fds:
                    os.close(fd)
            else:
                (request,) = decoder.feed(data)  # one message per packet
                assert isinstance(request, Fork)
                worker_boot = attrs.evolve(boot, slot=request.slot)
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        channel.close()
                        code = run_worker(socket.socket(fileno=fds[0]), worker_boot, config, loaded)
                    finally:
                        os._exit(code)
                children.add(pid)
                for fd in fds:
                    os.close(fd)
                channel.send(encode(ForkedMessage(pid)))
        while children:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            if open_channel:
                try:
                    channel.send(encode(Reaped(pid, _status(raw))))
                except OSError:
                    open_channel = False
    return 0


if __name__ == "__main__":
    sys.exit(main())

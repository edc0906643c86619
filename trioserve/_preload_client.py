"""The master's side of the preloader (``--preload``): starts the preloader process
(:mod:`trioserve._preload`), asks it to fork workers, and follows them.

Beside the preloader, not in it: the preloader runs as ``python -m trioserve._preload``,
and a module the master imported would be loaded a second time there.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys
from collections.abc import Sequence

import attrs
import trio

from ._config import Config
from ._errors import EXIT_BOOT
from ._hooks import WorkerBootError
from ._proto.channel import (
    FROM_PRELOADER,
    BootFailed,
    ChannelError,
    Decoder,
    Fork,
    Loaded,
    Message,
    Reaped,
    WorkerBoot,
    boot_pieces,
    encode,
)
from ._proto.channel import Forked as ForkedMessage


@attrs.define(eq=False)
class Forked:
    """A worker forked by the preloader, which reaps it and reports its status."""

    pid: int
    returncode: int | None = None
    done: trio.Event = attrs.field(factory=trio.Event)

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        await self.done.wait()
        assert self.returncode is not None
        return self.returncode

    def exited(self, status: int) -> None:
        self.returncode = status
        self.done.set()


@attrs.define(eq=False)
class Preloader:
    """The master's client of one preloader process, and the workers it forked."""

    config: Config
    process: trio.Process
    sock: trio.socket.SocketType
    loaded: trio.Event = attrs.field(factory=trio.Event)
    error: tuple[int, str] | None = None
    children: dict[int, Forked] = attrs.field(factory=dict)
    replies: list[int] = attrs.field(factory=list)
    reply: trio.Event = attrs.field(factory=trio.Event)
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    retired: bool = False

    @classmethod
    async def start(
        cls,
        config: Config,
        boot: WorkerBoot,
        pickled: bytes,
        fds: Sequence[int],
        nursery: trio.Nursery,
    ) -> Preloader:
        """Start the preloader of ``config`` and send it the boot message; it then
        imports the app (:meth:`wait_loaded`). Its channel is read, and the process
        reaped, in ``nursery``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trioserve._preload", str(theirs.fileno())],
                pass_fds=[theirs.fileno(), *fds],
            )
        finally:
            theirs.close()
        preloader = cls(config, process, trio.socket.from_stdlib_socket(ours))
        for piece in boot_pieces(boot.to_json(), pickled):
            await preloader.sock.send(piece)  # one packet each: see BootReader
        nursery.start_soon(preloader.read)
        nursery.start_soon(process.wait)
        return preloader

    async def wait_loaded(self) -> None:
        """Wait until the app is imported.

        Raises:
            WorkerBootError: the preloader could not import it (or exited).
        """
        await self.loaded.wait()
        if self.error is not None:
            code, message = self.error
            raise WorkerBootError(f"preloading the app failed: {message}", code)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    async def read(self) -> None:
        """Read the preloader's messages until its channel closes."""
        decoder = Decoder(FROM_PRELOADER)
        try:
            while data := await self.sock.recv(65536):
                for message in decoder.feed(data):
                    self._received(message)
        except (OSError, trio.ClosedResourceError):
            pass  # closed by us (retired, or the master stops), or the preloader died
        except ChannelError as exc:
            self.error = self.error or (EXIT_BOOT, f"the preloader's channel is broken: {exc}")
        finally:
            self.loaded.set()
            self.reply.set()
            # Gone: its children were reparented away, their status cannot be known.
            for child in self.children.values():
                child.exited(-signal.SIGKILL)
            self.children.clear()
            self.sock.close()

    def _received(self, message: Message) -> None:
        if isinstance(message, ForkedMessage):
            self.replies.append(message.pid)
            self.reply.set()
        elif isinstance(message, Reaped):
            child = self.children.pop(message.pid, None)
            if child is not None:
                child.exited(message.status)
            self.close_if_done()
        elif isinstance(message, BootFailed):
            self.error = (message.code, message.message)
        elif isinstance(message, Loaded):
            self.loaded.set()

    def retire(self) -> None:
        """A newer preloader replaces this one: it ends once its children have exited."""
        self.retired = True
        self.close_if_done()

    def close_if_done(self) -> None:
        if self.retired and not self.children:
            self.sock.close()

    async def fork(self, slot: int, channel: socket.socket) -> Forked:
        """A new worker for ``slot`` whose end of its channel is ``channel``."""
        async with self.lock:
            self.reply = trio.Event()
            await self.sock.sendmsg(
                [encode(Fork(slot))],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [channel.fileno()]))],
            )
            await self.reply.wait()
            if not self.replies:
                raise WorkerBootError("the preloader exited")
            child = Forked(self.replies.pop(0))
            self.children[child.pid] = child
            return child

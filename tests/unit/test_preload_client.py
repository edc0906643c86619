"""Tests for the master's client of the preloader, on a socket pair (no preloader process)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from trioserve import Config
from trioserve._hooks import WorkerBootError
from trioserve._preload_client import Preloader
from trioserve._proto.channel import (
    TO_PRELOADER,
    BootFailed,
    Decoder,
    Fork,
    Forked,
    Loaded,
    Reaped,
    encode,
)


def _pair() -> tuple[Preloader, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process: Any = None  # never touched by the client's channel logic
    preloader = Preloader(Config(app="tests:app"), process, trio.socket.from_stdlib_socket(ours))
    theirs.setblocking(False)
    return preloader, theirs


async def test_loaded_then_fork_then_reaped() -> None:
    """Loaded ends wait_loaded; fork sends Fork with the channel's fd and returns the
    Forked pid; Reaped gives that child its status."""
    preloader, theirs = _pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(preloader.read)
            theirs.send(encode(Loaded("tests:app")))
            await preloader.wait_loaded()

            async def answer() -> None:
                await trio.lowlevel.wait_readable(theirs)
                data, fds, _, _ = socket.recv_fds(theirs, 65536, 1)
                assert Decoder(TO_PRELOADER).feed(data) == [Fork(3)]
                assert len(fds) == 1
                for fd in fds:
                    socket.close(fd)
                theirs.send(encode(Forked(4242)))

            nursery.start_soon(answer)
            first, second = socket.socketpair()
            with first, second:
                child = await preloader.fork(3, first)
            assert child.pid == 4242 and preloader.children == {4242: child}
            theirs.send(encode(Reaped(4242, -15)))
            assert await child.wait() == -15
            assert preloader.children == {}
            preloader.retire()  # no children left: its channel closes, read() ends
    assert preloader.closed
    theirs.close()


async def test_a_boot_failure_is_raised_by_wait_loaded() -> None:
    """BootFailed from the preloader makes wait_loaded raise WorkerBootError with its code."""
    preloader, theirs = _pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(preloader.read)
            theirs.send(encode(BootFailed(4, "could not import 'tests:app'")))
            theirs.close()
            with pytest.raises(WorkerBootError, match="preloading the app failed: could not"):
                await preloader.wait_loaded()


async def test_a_gone_preloader_fails_its_children_and_forks() -> None:
    """When the preloader's channel closes, its children count as killed, and a fork
    waiting for its answer raises."""
    preloader, theirs = _pair()

    async def answer(then_close: bool) -> None:
        await trio.lowlevel.wait_readable(theirs)
        _, fds, _, _ = socket.recv_fds(theirs, 65536, 1)
        for fd in fds:
            socket.close(fd)
        if then_close:
            theirs.close()
        else:
            theirs.send(encode(Forked(7)))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(preloader.read)
            theirs.send(encode(Loaded("tests:app")))
            await preloader.wait_loaded()
            first, second = socket.socketpair()
            with first, second:
                nursery.start_soon(answer, False)
                child = await preloader.fork(0, first)
                nursery.start_soon(answer, True)
                with pytest.raises(WorkerBootError, match="the preloader exited"):
                    await preloader.fork(1, first)
            assert await child.wait() < 0

"""trioserve's accept loop on real listening sockets (127.0.0.1 port 0, and a unix socket)."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import resource
import socket
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.helpers import require_ipv6_loopback
from trioserve._accept import (
    _COPY_CHECKS,
    _TCP_OPTIONS,
    ACCEPT_BATCH,
    _TCPOptions,
    accept_connections,
)
from trioserve._peer import Peer


async def tcp_listener(host: str = "127.0.0.1") -> trio.SocketListener:
    [listener] = await trio.open_tcp_listeners(0, host=host)
    return listener


async def start_recording(nursery: trio.Nursery, listener: trio.SocketListener) -> list[Peer]:
    """Accept on ``listener``; each connection is recorded, then answered with b"hi"."""
    seen: list[Peer] = []

    async def handler(connection: Peer) -> None:
        seen.append(connection)
        await connection.stream.send_all(b"hi")

    await nursery.start(accept_connections, listener, handler, nursery)
    return seen


async def all_answered(clients: list[socket.socket]) -> None:
    """Each client gets b"hi"; all are closed afterwards, whatever happens."""
    try:
        with trio.fail_after(10):
            for client in clients:
                await trio.lowlevel.wait_readable(client)
                assert client.recv(10) == b"hi"
    finally:
        for client in clients:
            client.close()


async def connect_and_read(port: int) -> tuple[tuple[str, int], bytes]:
    """Connect, read until the server closes; (our address, what was received)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        ours = stream.socket.getsockname()
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    return (ours[0], ours[1]), data


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_connections_carry_both_addresses_and_are_closed_after(nursery, host):
    """Each connection comes with the peer's address and ours (bound to one host or to
    the wildcard), and is closed once its handler returns."""
    listener = await tcp_listener(host)
    port = listener.socket.getsockname()[1]
    seen = await start_recording(nursery, listener)
    with trio.fail_after(10):
        ours, data = await connect_and_read(port)
    assert data == b"hi"  # then EOF: the server closed it
    [connection] = seen
    assert connection.client == ours
    assert connection.server == ("127.0.0.1", port)
    assert connection.sock is not None
    assert connection.sock.fileno() == -1
    await listener.aclose()


@pytest.mark.parametrize("host", ["::1", "::"])
async def test_ipv6_connections_carry_two_part_addresses(nursery, host):
    """Over IPv6 the client and server are (host, port) pairs too, not the 4-tuples
    the socket calls give."""
    require_ipv6_loopback()
    [listener] = await trio.open_tcp_listeners(0, host=host)
    port = listener.socket.getsockname()[1]
    seen = await start_recording(nursery, listener)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("::1", port)
        async with stream:
            ours = stream.socket.getsockname()
            assert await stream.receive_some() == b"hi"
    [connection] = seen
    assert connection.client == ("::1", ours[1])
    assert connection.server == ("::1", port)
    await listener.aclose()


async def test_unix_socket_connections_have_no_client(nursery, tmp_path: Path):
    """On a unix socket the client is None and the server is (path, None)."""
    path = str(tmp_path / "s.sock")
    raw = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await raw.bind(path)
    raw.listen()
    listener = trio.SocketListener(raw)
    seen = await start_recording(nursery, listener)
    with trio.fail_after(10):
        stream = await trio.open_unix_socket(path)
        async with stream:
            assert await stream.receive_some() == b"hi"
    assert (seen[0].client, seen[0].server) == (None, (path, None))
    await listener.aclose()


async def test_a_backlog_larger_than_a_batch_is_all_served(nursery):
    """More pending connections than one batch takes: every one is accepted and served."""
    listener = await tcp_listener()
    port = listener.socket.getsockname()[1]
    count = ACCEPT_BATCH * 3 + 1
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    seen = await start_recording(nursery, listener)
    await all_answered(clients)
    assert len(seen) == count
    await listener.aclose()


async def test_loop_ends_when_the_listener_is_closed(nursery):
    """Closing the listener while the loop waits ends the loop without an error, and the
    listener's descriptor is closed once (the loop never closes it itself)."""
    listener = await tcp_listener()
    ended = trio.Event()

    async def run() -> None:
        await accept_connections(listener, record_into_nothing, nursery)
        ended.set()

    async def record_into_nothing(connection: Peer) -> None:
        raise AssertionError("no connection expected")

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    await listener.aclose()
    with trio.fail_after(10):
        await ended.wait()
    assert listener.socket.fileno() == -1


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_running_out_of_descriptors_pauses_accepting_then_recovers(
    nursery, caplog, autojump_clock
):
    """EMFILE is logged at its start, every 10s and at its end; the backlog is then served."""
    caplog.set_level(logging.INFO, "trioserve.server")
    listener = await tcp_listener()
    port = listener.socket.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = next(fd for fd in range(soft) if not is_open(fd))
    try:
        # Every descriptor below the limit is in use: accept() has nowhere to put one.
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        seen = await start_recording(nursery, listener)
        await trio.sleep(25)  # on the virtual clock: some 250 failed accept() calls
        assert seen == []
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Real time from here: the answers travel through the kernel, not the clock.
    autojump_clock.autojump_threshold = math.inf
    autojump_clock.rate = 1.0
    await all_answered(clients)
    records = [r for r in caplog.records if r.name == "trioserve.server"]
    assert not any(r.exc_info for r in records)
    messages = [f"{r.levelname} {r.getMessage()}" for r in records]
    assert messages[:3] == [
        "ERROR cannot accept connections: Too many open files; trying again every 0.1s",
        "ERROR still cannot accept connections after 10s: Too many open files",
        "ERROR still cannot accept connections after 20s: Too many open files",
    ]
    assert re.fullmatch(
        r"WARNING accepting connections again after 25\.\ds "
        r"\(25\d attempts failed: Too many open files\)",
        messages[3],
    )
    assert len(messages) == 4
    await listener.aclose()


def listener_options(sock: socket.socket | trio.socket.SocketType) -> tuple[int, ...]:
    """The TCP options trio's streams set, as ``sock`` has them."""
    return tuple(sock.getsockopt(socket.IPPROTO_TCP, name) for name, _ in _TCP_OPTIONS)


WANTED = tuple(value for _, value in _TCP_OPTIONS)


async def test_accepted_connections_come_with_the_options_of_a_trio_stream(nursery):
    """An accepted connection is non-blocking with TCP_NODELAY (and TCP_NOTSENT_LOWAT
    where the platform has it), as trio.SocketStream would make it, with no stream built
    over it until one is asked for."""
    listener = await tcp_listener()
    port = listener.socket.getsockname()[1]
    seen: list[tuple[Peer, tuple[int, ...], bool]] = []

    async def handler(peer: Peer) -> None:
        assert peer.sock is not None
        seen.append((peer, listener_options(peer.sock), peer.sock.getblocking()))
        peer.sock.send(b"hi")

    await nursery.start(accept_connections, listener, handler, nursery)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    await all_answered(clients)
    assert [options for _, options, _ in seen] == [WANTED] * 3
    assert [blocking for _, _, blocking in seen] == [False] * 3
    # The handler used the socket only: no trio socket or stream was built for it.
    assert all(peer._plain is None for peer, _, _ in seen)
    assert listener_options(listener.socket) == WANTED
    await listener.aclose()


async def test_options_are_set_per_connection_when_the_listener_does_not_pass_them_on(nursery):
    """A listener whose options its connections do not get (here: taken off it after
    the loop set them, as a kernel that does not copy them behaves): each accepted
    connection gets them itself."""
    listener = await tcp_listener()
    port = listener.socket.getsockname()[1]
    options: list[tuple[int, ...]] = []

    async def handler(peer: Peer) -> None:
        assert peer.sock is not None
        options.append(listener_options(peer.sock))
        peer.sock.send(b"hi")

    await nursery.start(accept_connections, listener, handler, nursery)
    for name, _ in _TCP_OPTIONS:
        listener.socket.setsockopt(socket.IPPROTO_TCP, name, 0)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    await all_answered(clients)
    assert options == [WANTED] * 2
    await listener.aclose()


def test_connections_show_whether_the_listener_passes_its_options_on():
    """The per-connection setsockopt is skipped once a connection shows the kernel
    copied the listener's options (Linux does); a connection queued before the options
    were set on the listener gets them itself without deciding anything; a run of
    connections without them means the kernel does not copy them."""
    with socket.create_server(("127.0.0.1", 0)) as raw:
        raw.setblocking(False)
        port = raw.getsockname()[1]
        with contextlib.ExitStack() as clients:
            early = clients.enter_context(socket.create_connection(("127.0.0.1", port)))
            options = _TCPOptions.on_listener(raw)
            assert listener_options(raw) == WANTED
            later = clients.enter_context(socket.create_connection(("127.0.0.1", port)))
            for client in (early, later):
                sock, _ = raw.accept()
                with sock:
                    options.apply(sock)
                    assert listener_options(sock) == WANTED
                if sys.platform == "linux":
                    # The early one decides nothing; the later one shows the copy.
                    assert options.per_connection is (None if client is early else False)
        for name, _ in _TCP_OPTIONS:
            raw.setsockopt(socket.IPPROTO_TCP, name, 0)
        fresh = _TCPOptions()
        for count in range(1, _COPY_CHECKS + 1):
            with socket.create_connection(("127.0.0.1", port)):
                sock, _ = raw.accept()
                with sock:
                    fresh.apply(sock)
                    assert listener_options(sock) == WANTED
            assert fresh.per_connection is (True if count == _COPY_CHECKS else None)


async def test_a_stream_is_built_over_the_socket_when_asked_for(nursery):
    """``peer.stream`` is a trio.SocketStream over the accepted socket, built once; the
    socket is closed through it after the handler (waking a task waiting on it)."""
    listener = await tcp_listener()
    port = listener.socket.getsockname()[1]
    seen: list[tuple[Peer, trio.abc.Stream, trio.abc.Stream]] = []

    async def handler(peer: Peer) -> None:
        seen.append((peer, peer.stream, peer.stream))
        await peer.stream.send_all(b"hi")

    await nursery.start(accept_connections, listener, handler, nursery)
    with trio.fail_after(10):
        _, data = await connect_and_read(port)
    assert data == b"hi"  # then EOF: the server closed it
    [(peer, first, second)] = seen
    assert first is second
    assert isinstance(first, trio.SocketStream)
    assert peer.sock is not None
    assert first.socket.fileno() == -1
    assert peer.sock.fileno() == -1
    await listener.aclose()


async def test_the_counter_hears_of_each_connection_before_its_handler_and_after_its_close(
    nursery: trio.Nursery,
) -> None:
    """``counter`` (--metrics-bind's open connections) is told of a connection as its
    handler begins, and of its end once the socket is closed, also when the handler
    fails."""
    listener = await tcp_listener()
    events: list[str] = []
    closed = trio.Event()
    sockets: list[socket.socket] = []

    class Counter:
        def opened(self) -> None:
            events.append("opened")

        def closed(self) -> None:
            assert sockets[-1].fileno() == -1  # (closed before the counter hears of it)
            events.append("closed")
            if events.count("closed") == 2:
                closed.set()

    async def handler(peer: Peer) -> None:
        assert peer.sock is not None
        sockets.append(peer.sock)
        events.append("handler")
        if len(sockets) == 2:
            raise RuntimeError("a bug of ours")

    await nursery.start(
        functools.partial(accept_connections, listener, handler, nursery, counter=Counter())
    )
    port = listener.socket.getsockname()[1]
    with trio.fail_after(10):
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.setblocking(False)
                await trio.lowlevel.wait_readable(client)  # (the server's close)
        await closed.wait()
    assert events == ["opened", "handler", "closed"] * 2

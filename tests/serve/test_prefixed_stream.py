"""PrefixedStream: replays bytes already read, then behaves as the stream it wraps."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioserve._streams import PrefixedStream


async def prefixed_memory_pair() -> tuple[PrefixedStream, PrefixedStream]:
    left, right = trio.testing.memory_stream_pair()
    return PrefixedStream(left), PrefixedStream(right)


async def prefixed_lockstep_pair() -> tuple[PrefixedStream, PrefixedStream]:
    left, right = trio.testing.lockstep_stream_pair()
    return PrefixedStream(left), PrefixedStream(right)


async def test_passes_trio_half_closeable_stream_checks() -> None:
    """With an empty prefix it passes trio's generic half-closeable stream checks."""
    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(prefixed_memory_pair, prefixed_lockstep_pair)


async def test_prefix_is_received_first() -> None:
    """The prefix comes out first, cut to max_bytes, then the wrapped stream's bytes."""
    client, server = trio.testing.memory_stream_pair()
    stream = PrefixedStream(server, b"hello")
    await client.send_all(b" world")
    with trio.fail_after(5):
        assert await stream.receive_some(3) == b"hel"
        assert await stream.receive_some() == b"lo"
        assert await stream.receive_some(100) == b" world"
        await stream.send_all(b"pong")
        assert await client.receive_some() == b"pong"


async def test_cancelled_receive_keeps_the_prefix() -> None:
    """A receive cancelled before it returns loses none of the prefix."""
    _client, server = trio.testing.memory_stream_pair()
    stream = PrefixedStream(server, b"abc")
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.receive_some()
    assert scope.cancelled_caught
    with trio.fail_after(5):
        assert await stream.receive_some() == b"abc"


async def test_closed_stream_returns_no_prefix() -> None:
    """After aclose the unread prefix is dropped: receiving is a ClosedResourceError."""
    _client, server = trio.testing.memory_stream_pair()
    stream = PrefixedStream(server, b"abc")
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()


@pytest.mark.parametrize("max_bytes", [0, -1])
async def test_prefix_checks_max_bytes(max_bytes: int) -> None:
    """max_bytes below 1 is a ValueError even while the prefix is being served."""
    _client, server = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="max_bytes must be >= 1"):
        await PrefixedStream(server, b"abc").receive_some(max_bytes)


async def test_concurrent_receive_is_busy() -> None:
    """Two tasks receiving at once is a BusyResourceError, as on any trio stream."""
    _client, server = trio.testing.memory_stream_pair()
    stream = PrefixedStream(server, b"abc")
    with trio.fail_after(5), pytest.RaisesGroup(trio.BusyResourceError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.receive_some)
            nursery.start_soon(stream.receive_some)


class OneWayCloseStream(trio.abc.Stream):
    """A stream that cannot half-close, such as a TLS stream."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_send_eof_needs_a_half_closeable_stream() -> None:
    """send_eof is delegated when the wrapped stream can half-close, else a TypeError."""
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await PrefixedStream(server).send_eof()
        assert await client.receive_some() == b""
        with pytest.raises(TypeError, match="OneWayCloseStream does not support send_eof"):
            await PrefixedStream(OneWayCloseStream(client)).send_eof()


def test_transport_stream_is_the_wrapped_stream() -> None:
    """transport_stream gives callers the wrapped stream (and so its socket)."""
    _client, server = trio.testing.memory_stream_pair()
    assert PrefixedStream(server, b"x").transport_stream is server

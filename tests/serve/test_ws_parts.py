"""The small stand-ins for trio's objects that each websocket carries: the
received-message queue (Messages and its two ends, with the behaviour of trio's
memory channel that trio-websocket and the ASGI edge rely on), the send lock, the
ping table and the close-handshake event."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trioserve._ws_parts import LazyEvent, Messages, Pings, ReceiveEnd, SendEnd, SendLock


def pair(max_size: int = 2) -> tuple[SendEnd, ReceiveEnd]:
    messages = Messages(max_size)
    return SendEnd(messages), ReceiveEnd(messages)


async def test_messages_come_out_in_order() -> None:
    """What is sent is received in the order it was sent."""
    send, receive = pair()
    await send.send("a")
    await send.send(b"b")
    assert [await receive.receive(), await receive.receive()] == ["a", b"b"]


async def test_a_waiting_receiver_gets_the_next_message() -> None:
    """A receive waiting on an empty queue gets the next message sent."""
    send, receive = pair()
    got = []

    async def receiver() -> None:
        got.append(await receive.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        send.send_nowait("hello")
    assert got == ["hello"]


async def test_a_full_queue_blocks_the_sender_until_a_message_is_taken() -> None:
    """With max_size messages waiting, send waits until the receiver takes one."""
    send, receive = pair(max_size=1)
    await send.send("first")
    with pytest.raises(trio.WouldBlock):
        send.send_nowait("second")
    sent = trio.Event()

    async def sender() -> None:
        await send.send("second")
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        assert await receive.receive() == "first"
    assert sent.is_set()
    assert await receive.receive() == "second"


async def test_closing_the_send_end_ends_the_channel_after_what_was_sent() -> None:
    """Once the send end is closed, the messages sent before are still received, then
    receive raises EndOfChannel, and send raises ClosedResourceError."""
    send, receive = pair()
    async with send:
        await send.send("last")
    assert await receive.receive() == "last"
    with pytest.raises(trio.EndOfChannel):
        await receive.receive()
    with pytest.raises(trio.ClosedResourceError):
        await send.send("more")


async def test_closing_the_send_end_wakes_a_waiting_receiver() -> None:
    """A receive waiting when the send end closes raises EndOfChannel."""
    send, receive = pair()

    async def receiver() -> None:
        with pytest.raises(trio.EndOfChannel):
            await receive.receive()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await send.aclose()


async def test_closing_the_receive_end_drops_messages_and_breaks_the_sender() -> None:
    """Once the receive end is closed, what was queued is dropped, receive raises
    ClosedResourceError, a waiting sender and later sends BrokenResourceError."""
    send, receive = pair(max_size=1)
    await send.send("queued")
    broken = []

    async def sender() -> None:
        try:
            await send.send("waiting")
        except trio.BrokenResourceError:
            broken.append(True)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            await receive.aclose()
    assert broken == [True]
    with pytest.raises(trio.ClosedResourceError):
        await receive.receive()
    with pytest.raises(trio.BrokenResourceError):
        await send.send("after")


async def test_closing_the_receive_end_wakes_a_waiting_receiver() -> None:
    """A receive waiting when the receive end is closed raises ClosedResourceError."""
    _send, receive = pair()

    async def receiver() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await receive.receive()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            receive.close()


async def test_a_cancelled_receive_leaves_no_waiter_behind() -> None:
    """A receive cancelled while waiting takes no message: the next receive gets it."""
    send, receive = pair()
    with trio.move_on_after(0.01):
        await receive.receive()
    send.send_nowait("kept")
    assert receive.receive_nowait() == "kept"


async def test_a_cancelled_send_sends_nothing() -> None:
    """A send cancelled while waiting for room leaves its message out of the queue."""
    send, receive = pair(max_size=1)
    await send.send("one")
    with trio.move_on_after(0.01):
        await send.send("dropped")
    assert await receive.receive() == "one"
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()


async def test_lazy_event_wakes_a_waiter_and_lets_later_ones_through() -> None:
    """LazyEvent (the close handshake's event) wakes a task that waited before set(),
    and returns at once to one that waits after."""
    event = LazyEvent()
    woken = []

    async def waiter() -> None:
        await event.wait()
        woken.append(True)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not event.is_set()
            event.set()
        await event.wait()
    assert event.is_set()
    assert woken == [True]


async def test_waiting_receivers_are_served_first_come_first_served() -> None:
    """Two tasks waiting to receive get the next two messages in the order they came."""
    send, receive = pair()
    got: list[tuple[str, bytes | str]] = []

    async def receiver(name: str) -> None:
        got.append((name, await receive.receive()))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(receiver, "second")
            await trio.testing.wait_all_tasks_blocked()
            send.send_nowait("a")
            send.send_nowait("b")
    assert sorted(got) == [("first", "a"), ("second", "b")]


async def test_send_lock_lets_one_task_in_at_a_time_first_come_first_served() -> None:
    """While a task holds the send lock, others wait, and get it in the order they
    came; a waiter cancelled meanwhile never gets it."""
    lock = SendLock()
    order: list[str] = []
    release = trio.Event()

    async def holder() -> None:
        async with lock:
            order.append("holder")
            await release.wait()

    async def waiter(name: str) -> None:
        async with lock:
            order.append(name)

    cancelled = trio.CancelScope()

    async def cancelled_waiter() -> None:
        with cancelled:
            await waiter("cancelled")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(cancelled_waiter)
            await trio.testing.wait_all_tasks_blocked()
            cancelled.cancel()
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter, "second")
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["holder"]
            release.set()
        async with lock:
            order.append("after")
    assert order == ["holder", "first", "second", "after"]


async def test_a_cancelled_waiter_leaves_the_send_lock_usable() -> None:
    """A task cancelled while waiting for the send lock does not hold it afterwards."""
    lock = SendLock()
    async with lock:
        with trio.move_on_after(0.01):
            async with lock:
                raise AssertionError("entered a held lock")
    with trio.fail_after(5):
        async with lock:
            pass


def test_pings_pop_oldest_first() -> None:
    """popitem(last=False) takes the oldest ping in flight, popitem() the newest, as
    trio-websocket's OrderedDict does."""
    pings = Pings()
    first, second, third = trio.Event(), trio.Event(), trio.Event()
    pings[b"1"], pings[b"2"], pings[b"3"] = first, second, third
    assert pings.popitem(False) == (b"1", first)
    assert pings.popitem() == (b"3", third)
    assert pings.popitem(last=False) == (b"2", second)
    with pytest.raises(KeyError):
        pings.popitem(False)

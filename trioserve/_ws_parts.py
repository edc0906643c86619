"""Smaller stand-ins for the trio objects trio-websocket gives each connection.

An idle websocket holds these for as long as it lives, so each is kept to what the
server side uses (see docs/performance.md, idle WebSocket memory): a list for a deque,
a received-message queue for trio's memory channel, a lock whose parking lot is made
only under contention, a dict for the ordered dict of pings, an event made only when a
task waits on it. Each behaves as the trio object it replaces does for its users
(trio-websocket's connection, :mod:`trioserve._serve_ws`); tests/serve/test_ws_parts.py
pins that.
"""

from __future__ import annotations

from typing import Any

import outcome
import trio


def _fail_waiting(
    tasks: dict[trio.lowlevel.Task, Any] | list[trio.lowlevel.Task] | None,
    error: type[Exception],
) -> None:
    """Wake every task waiting in ``tasks`` (a queue's senders or receivers) with a new
    ``error`` each, and forget them."""
    if tasks:
        for task in tasks:
            trio.lowlevel.reschedule(task, outcome.Error(error()))
        tasks.clear()


class EventList(list[Any]):
    """A small queue for the two deques each connection would otherwise carry: wsproto's
    frame-level event queue (which only ever holds the event of a lost connection) and
    the queue of received messages (at most --ws-max-queue of them, see Messages). An empty
    deque takes 760 bytes, a list 56; with so few items, pop(0) costs nothing."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class LazyEvent:
    """What trio-websocket asks of its close-handshake event (set, is_set, wait), with
    the trio.Event (and its set of tasks, 270 bytes) made only when a task waits."""

    __slots__ = ("_event", "_flag")

    def __init__(self) -> None:
        self._event: trio.Event | None = None
        self._flag = False

    def set(self) -> None:
        self._flag = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._flag

    async def wait(self) -> None:
        if self._flag:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()


class Messages:
    """The received messages of one websocket, between its reader task and whoever
    calls ``receive`` (the app): what trio's memory channel does for trio-websocket,
    for one producer, without the sets, ordered dicts and attrs fields each of trio's
    channels carries (about 1 KB per connection). ``send_end`` and ``receive_end`` are
    the two ends, standing in for ``_send_channel`` and ``_recv_channel``; they close,
    raise and wake waiting tasks as trio's do (one send channel, one receive channel,
    no clones).

    Waiting tasks are kept in containers made on first wait, first come first served.
    An idle websocket's app waits in ``receive`` all the time, so that wait is kept
    small: no exception raised on the way (it would make the frame object of the
    waiting coroutine), a list, and a small object to abort it rather than a closure."""

    __slots__ = ("data", "max_size", "receive_closed", "receivers", "send_closed", "senders")

    def __init__(self, max_size: int) -> None:
        self.data = EventList()
        self.max_size = max_size
        self.send_closed = False
        self.receive_closed = False
        # task -> the value it waits to send; the tasks waiting to receive.
        self.senders: dict[trio.lowlevel.Task, bytes | str] | None = None
        self.receivers: list[trio.lowlevel.Task] | None = None

    def receivable(self) -> bool:
        """True when receive_nowait would not raise WouldBlock."""
        return bool(self.data or self.senders or self.send_closed or self.receive_closed)

    def wait_to_receive(self) -> AbortReceive:
        """Queue the current task to receive; what aborts its wait when cancelled."""
        task = trio.lowlevel.current_task()
        if self.receivers is None:
            self.receivers = []
        self.receivers.append(task)
        return AbortReceive(self.receivers, task)


class AbortReceive:
    """Takes a receiving task that was cancelled off the list of waiting ones."""

    __slots__ = ("receivers", "task")

    def __init__(self, receivers: list[trio.lowlevel.Task], task: trio.lowlevel.Task) -> None:
        self.receivers = receivers
        self.task = task

    def __call__(self, _: Any) -> trio.lowlevel.Abort:
        self.receivers.remove(self.task)
        return trio.lowlevel.Abort.SUCCEEDED


class SendEnd:
    """trio's MemorySendChannel for one :class:`Messages`: send, send_nowait, close."""

    __slots__ = ("queue",)

    def __init__(self, messages: Messages) -> None:
        self.queue = messages

    def send_nowait(self, value: bytes | str) -> None:
        q = self.queue
        if q.send_closed:
            raise trio.ClosedResourceError
        if q.receive_closed:
            raise trio.BrokenResourceError
        if q.receivers:
            trio.lowlevel.reschedule(q.receivers.pop(0), outcome.Value(value))
        elif len(q.data) < q.max_size:
            q.data.append(value)
        else:
            raise trio.WouldBlock

    async def send(self, value: bytes | str) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.send_nowait(value)
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        q = self.queue
        task = trio.lowlevel.current_task()
        if q.senders is None:
            q.senders = {}
        senders = q.senders
        senders[task] = value

        def abort(_: Any) -> trio.lowlevel.Abort:
            del senders[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        q = self.queue
        if q.send_closed:
            return
        q.send_closed = True
        _fail_waiting(q.senders, trio.ClosedResourceError)
        _fail_waiting(q.receivers, trio.EndOfChannel)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> SendEnd:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class ReceiveEnd:
    """trio's MemoryReceiveChannel for one :class:`Messages`: receive,
    receive_nowait, close."""

    __slots__ = ("queue",)

    def __init__(self, messages: Messages) -> None:
        self.queue = messages

    def receive_nowait(self) -> bytes | str:
        q = self.queue
        if q.receive_closed:
            raise trio.ClosedResourceError
        if q.senders:
            task = next(iter(q.senders))
            q.data.append(q.senders.pop(task))
            trio.lowlevel.reschedule(task)
        if q.data:
            return q.data.popleft()  # type: ignore[no-any-return]
        if q.send_closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> bytes | str:
        # (_ASGISession.receive does the same in its own frame.)
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.queue.receivable():
            value = self.receive_nowait()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return value
        abort = self.queue.wait_to_receive()
        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    def close(self) -> None:
        q = self.queue
        if q.receive_closed:
            return
        q.receive_closed = True
        _fail_waiting(q.receivers, trio.ClosedResourceError)
        _fail_waiting(q.senders, trio.BrokenResourceError)
        q.data.clear()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class SendLock:
    """trio-websocket's lock around sending (``async with``), first come first served
    as its StrictFIFOLock is, with the parking lot (and its ordered dict, about 300
    bytes with the lock) made only while tasks contend: an idle websocket holds two
    slots."""

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot: trio.lowlevel.ParkingLot | None = None

    async def __aenter__(self) -> None:
        # trio's Lock.acquire, with the lot made on demand.
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._held:
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        if self._lot is None:
            self._lot = trio.lowlevel.ParkingLot()
        # Woken by __aexit__ holding the lock (it stays held, handed over).
        await self._lot.park()

    async def __aexit__(self, *exc_info: object) -> None:
        lot = self._lot
        if lot:
            lot.unpark()
        else:
            self._held = False
            self._lot = None


class Pings(dict[bytes, trio.Event]):
    """trio-websocket's pings in flight by payload, oldest first: its OrderedDict's
    ``popitem(last=False)`` on a dict (64 bytes empty rather than 128)."""

    __slots__ = ()

    def popitem(self, last: bool = True) -> tuple[bytes, trio.Event]:
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(self)) if last else next(iter(self))
        return key, self.pop(key)

"""Tests for the worker's end of its channel to the master (memory streams, no processes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from trioserve import Config, ExitReason, WorkerInfo
from trioserve._proto.channel import TO_MASTER, Decoder, Heartbeat, Ready, Stop, encode
from trioserve._worker import _Link, _watch_master


def _worker() -> WorkerInfo:
    return WorkerInfo(0, Config(app="tests.apps:hello"))


class _Booting:
    """A worker's control before its server runs: stopping it cancels the boot."""

    state: Any = None


class _Serving:
    """A worker's control while serving: records how it was asked to stop."""

    def __init__(self) -> None:
        self.state = object()
        self.stops: list[str] = []

    def graceful_stop(self) -> None:
        self.stops.append("graceful")

    def fast_stop(self) -> None:  # pragma: no cover - the channel never stops fast
        self.stops.append("fast")


async def test_link_sends_messages_the_master_decodes() -> None:
    """What the worker sends is what the master's decoder reads back."""
    ours, theirs = trio.testing.memory_stream_pair()
    link = _Link(ours)  # type: ignore[arg-type]
    await link.send(Ready(("http://127.0.0.1:1",)))
    await link.send(Heartbeat(9))
    data = await theirs.receive_some()
    assert Decoder(TO_MASTER).feed(data) == [Ready(("http://127.0.0.1:1",)), Heartbeat(9)]


async def test_stop_from_the_master_is_a_graceful_stop() -> None:
    """Stop, even split across two writes, asks the server for a graceful stop; end of
    file then stops it too (the master is gone)."""
    ours, theirs = trio.testing.memory_stream_pair()
    link = _Link(ours)  # type: ignore[arg-type]
    control: Any = _Serving()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_master, link, control, _worker(), nursery.cancel_scope)
            data = encode(Stop())
            await theirs.send_all(data[:3])
            await theirs.send_all(data[3:])
            await trio.testing.wait_all_tasks_blocked()
            assert control.stops == ["graceful"]
            await theirs.aclose()
    assert control.stops == ["graceful", "graceful"]
    assert link.broken


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("memory", ExitReason.MEMORY), ("lifetime", ExitReason.LIFETIME), ("no such", None)],
)
async def test_the_reason_of_a_stop_reaches_the_worker_info(
    reason: str, expected: ExitReason | None
) -> None:
    """A Stop's reason becomes the worker's exit_reason (what worker_exit sees); a reason
    this worker does not know leaves it unset, and the stop still happens."""
    ours, theirs = trio.testing.memory_stream_pair()
    control: Any = _Serving()
    worker = _worker()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_master, _Link(ours), control, worker, nursery.cancel_scope)  # type: ignore[arg-type]
            await theirs.send_all(encode(Stop(reason)))
            await trio.testing.wait_all_tasks_blocked()
            assert control.stops == ["graceful"]
            assert worker.exit_reason is expected
            await theirs.aclose()


async def test_a_bad_message_from_the_master_stops_the_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytes that are no master's message are logged and stop the worker, as end of file."""
    ours, theirs = trio.testing.memory_stream_pair()
    link = _Link(ours)  # type: ignore[arg-type]
    booting: Any = _Booting()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_master, link, booting, _worker(), nursery.cancel_scope)
            await theirs.send_all(json.dumps({"t": "hb", "requests": 1}).encode() + b"\n")
            await trio.sleep_forever()  # cancelled by the worker's stop
    assert "the master's channel is broken: unexpected message 'hb'" in caplog.text
    assert link.broken

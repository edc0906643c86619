"""Tests for the master's worker state machine, slots and signal table (no processes)."""

from __future__ import annotations

import itertools
import logging
import signal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from tests.pki import Pki, install_server_cert, replace_file
from trioserve import Config, ExitReason
from trioserve._hooks import ServerInfo, WorkerInfo
from trioserve._master import (
    _NEXT,
    AppPlan,
    Master,
    WorkerState,
    _keep_serving,
    _Pool,
    _Proc,
)
from trioserve._proto.channel import (
    TO_WORKER,
    BootFailed,
    Decoder,
    Heartbeat,
    Ready,
    ReloadCerts,
    Retire,
    Stop,
)
from trioserve._recycle import MIB, RETRY_AFTER, Recycling

S = WorkerState
ALLOWED = {
    (S.BOOTING, S.SERVING),
    (S.BOOTING, S.STOPPING),
    (S.BOOTING, S.ABORTING),
    (S.BOOTING, S.EXITED),
    (S.SERVING, S.RETIRING),
    (S.SERVING, S.STOPPING),
    (S.SERVING, S.ABORTING),
    (S.SERVING, S.EXITED),
    (S.RETIRING, S.SERVING),
    (S.RETIRING, S.STOPPING),
    (S.RETIRING, S.ABORTING),
    (S.RETIRING, S.EXITED),
    (S.STOPPING, S.ABORTING),
    (S.STOPPING, S.EXITED),
    (S.ABORTING, S.EXITED),
}
CONFIG = Config(app="tests.apps:hello", workers=2)


class _FakeProcess:
    """Stands in for a worker process: records signals, never runs."""

    pid = 4242
    returncode: int | None = None

    def __init__(self) -> None:
        self.signals: list[int] = []

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)

    async def wait(self) -> int:  # pragma: no cover - never awaited here
        raise AssertionError


def _proc(slot: int = 0, state: WorkerState = S.BOOTING) -> _Proc:
    proc = _Proc(WorkerInfo(slot, CONFIG, pid=4242), _FakeProcess(), None, 0.0)  # type: ignore[arg-type]
    proc.state = state
    return proc


def _pool() -> _Pool:
    return _Pool(AppPlan(None, CONFIG), ServerInfo(CONFIG), [], [])


def test_the_transition_table_is_the_documented_one() -> None:
    """Exactly the transitions listed here are allowed, and every state is in the table."""
    assert set(_NEXT) == set(WorkerState)
    for old, new in itertools.product(WorkerState, WorkerState):
        assert old.can_become(new) == ((old, new) in ALLOWED), (old, new)


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED, key=str))
def test_allowed_transitions_move(old: WorkerState, new: WorkerState) -> None:
    """An allowed transition changes the state; EXITED also sets the exited event."""
    proc = _proc(state=old)
    proc.become(new)
    assert proc.state is new
    assert proc.exited.is_set() == (new is S.EXITED)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (old, new)
        for old, new in itertools.product(WorkerState, WorkerState)
        if (old, new) not in ALLOWED
    ],
    ids=str,
)
def test_other_transitions_are_refused(old: WorkerState, new: WorkerState) -> None:
    """A transition outside the table is a bug: RuntimeError, and the state stays."""
    proc = _proc(state=old)
    with pytest.raises(RuntimeError, match=f"{old.name} cannot become {new.name}"):
        proc.become(new)
    assert proc.state is old


@pytest.mark.parametrize("state", list(WorkerState))
def test_stopping_is_idempotent(state: WorkerState) -> None:
    """stopping() moves a live worker to STOPPING and leaves later states as they are."""
    proc = _proc(state=state)
    proc.stopping()
    proc.stopping()
    expected = S.STOPPING if state in (S.BOOTING, S.SERVING, S.RETIRING) else state
    assert proc.state is expected


def test_a_failed_replacement_puts_a_retiring_worker_back_to_serving() -> None:
    """_keep_serving turns RETIRING back into SERVING, and leaves any other state."""
    retiring, stopping = _proc(state=S.RETIRING), _proc(state=S.STOPPING)
    _keep_serving(retiring)
    _keep_serving(stopping)
    _keep_serving(None)
    assert (retiring.state, stopping.state) == (S.SERVING, S.STOPPING)


def test_slots_publish_the_workers_to_the_hooks() -> None:
    """assign and vacate keep ServerInfo.workers equal to the slots' workers."""
    pool = _pool()
    first, second, third = _proc(0), _proc(1), _proc(2)
    pool.assign(0, first)
    pool.assign(1, second)
    assert pool.server.workers == [first.info, second.info]
    pool.assign(0, third)
    assert pool.server.workers == [third.info, second.info]
    assert pool.vacate(1, 5) == [second]
    assert pool.server.workers == [third.info]
    pool.assign(1, second)
    assert pool.vacate() == [third, second]
    assert pool.slots == {} and pool.server.workers == []


async def _master_with(pool: _Pool, nursery: trio.Nursery) -> Master:
    master = Master([pool.plan], None, None, nursery)
    master.pools.append(pool)
    return master


async def test_messages_move_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ready makes a booting worker SERVING; Retire a serving one RETIRING (replacement
    started); heartbeats and boot errors are recorded."""
    replaced: list[Any] = []

    async def fake_replace(self: Master, *args: Any) -> bool:
        replaced.append(args)
        return True

    async with trio.open_nursery() as nursery:
        pool = _pool()
        master = await _master_with(pool, nursery)
        monkeypatch.setattr(Master, "_replace", fake_replace)
        proc = _proc()
        pool.assign(0, proc)
        master._message(pool, proc, Heartbeat(7))
        assert proc.info.requests == 7 and proc.state is S.BOOTING
        master._message(pool, proc, Ready(("http://127.0.0.1:1",)))
        assert proc.state.name == "SERVING" and proc.ready.is_set()
        assert proc.urls == ["http://127.0.0.1:1"]
        master._message(pool, proc, Retire())
        master._message(pool, proc, Retire())  # once is enough
        assert proc.state.name == "RETIRING"
        await trio.testing.wait_all_tasks_blocked()
        assert len(replaced) == 1
        master._message(pool, proc, BootFailed(3, "late"))
        assert proc.boot_error == (3, "late")


@pytest.mark.parametrize("state", [S.BOOTING, S.STOPPING, S.ABORTING])
async def test_retire_is_ignored_unless_serving(
    state: WorkerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that is not serving (booting, or already stopping) starts no replacement."""
    replaced: list[Any] = []

    async def fake_replace(self: Master, *args: Any) -> bool:  # pragma: no cover
        replaced.append(args)
        return True

    async with trio.open_nursery() as nursery:
        pool = _pool()
        master = await _master_with(pool, nursery)
        monkeypatch.setattr(Master, "_replace", fake_replace)
        proc = _proc(state=state)
        pool.assign(0, proc)
        master._message(pool, proc, Retire())
        await trio.testing.wait_all_tasks_blocked()
        assert proc.state is state and replaced == []


async def test_ready_while_stopping_keeps_stopping() -> None:
    """A worker asked to stop while booting may still say Ready: it stays STOPPING."""
    async with trio.open_nursery() as nursery:
        pool = _pool()
        master = await _master_with(pool, nursery)
        proc = _proc(state=S.STOPPING)
        master._message(pool, proc, Ready(()))
        assert proc.state is S.STOPPING and proc.ready.is_set()


def test_every_operator_signal_has_a_handler() -> None:
    """The signal table holds the ten signals the master's docstring documents."""
    master = Master([], None, None, None)  # type: ignore[arg-type]
    assert set(master.signal_handlers()) == {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
        signal.SIGURG,
    }


async def test_term_twice_turns_the_graceful_stop_into_a_fast_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TERM starts a graceful stop; a second TERM sends QUIT to every live worker."""
    stops: list[bool] = []

    async def fake_stop_workers(self: Master, fast: bool) -> None:
        stops.append(fast)

    monkeypatch.setattr(Master, "_stop_workers", fake_stop_workers)
    async with trio.open_nursery() as nursery:
        pool = _pool()
        master = await _master_with(pool, nursery)
        proc = _proc(state=S.SERVING)
        pool.live.add(proc)
        handlers = master.signal_handlers()
        handlers[signal.SIGTERM]("SIGTERM")
        await trio.testing.wait_all_tasks_blocked()
        assert master.stopping and stops == [False]
        handlers[signal.SIGTERM]("SIGTERM")
        assert proc.state is S.STOPPING
        assert proc.process.signals == [signal.SIGQUIT]  # type: ignore[attr-defined]


async def test_a_bad_message_ends_the_reading_not_the_master(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytes that are no message end that worker's channel with a logged error, instead
    of an exception that would take the master down."""
    async with trio.open_nursery() as nursery:
        pool = _pool()
        master = await _master_with(pool, nursery)
        ours, theirs = trio.testing.memory_stream_pair()
        proc = _proc()
        proc.link = ours  # type: ignore[assignment]
        await theirs.send_all(b'{"t": "launch"}\n')
        with trio.fail_after(5):
            await master._read(pool, proc)
    assert "worker 0 (pid 4242) broke its channel: unexpected message 'launch'" in caplog.text


async def test_reload_certs_tells_the_workers_that_take_connections(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture, autojump_clock: object
) -> None:
    """The master checks the files, logs one line and sends ReloadCerts to booting,
    serving and retiring workers; a stopping one is left alone. Files that do not load
    are one ERROR line and no message at all."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    serial = install_server_cert(pki.ca.issue_cert("localhost"), cert, key)
    config = Config(app="tests.apps:hello", workers=4, certfile=str(cert), keyfile=str(key))
    pool = _Pool(AppPlan(None, config), ServerInfo(config), [], [])
    theirs = {}
    for slot, state in enumerate((S.BOOTING, S.SERVING, S.RETIRING, S.STOPPING)):
        ours, theirs[state] = trio.testing.memory_stream_pair()
        proc = _proc(slot, state)
        proc.link = ours  # type: ignore[assignment]
        pool.live.add(proc)

    async def received() -> dict[WorkerState, list[Any]]:
        await trio.testing.wait_all_tasks_blocked()
        got = {}
        for state, stream in theirs.items():
            data: bytes | bytearray = b""
            with trio.move_on_after(1):  # virtual time: nothing more is coming
                data = await stream.receive_some()
            got[state] = Decoder(TO_WORKER).feed(data)
        return got

    async with trio.open_nursery() as nursery:
        master = await _master_with(pool, nursery)
        with caplog.at_level(logging.INFO, "trioserve"):
            master.reload_certs("SIGURG")
            assert await received() == {
                S.BOOTING: [ReloadCerts("SIGURG")],
                S.SERVING: [ReloadCerts("SIGURG")],
                S.RETIRING: [ReloadCerts("SIGURG")],
                S.STOPPING: [],
            }
            [line] = [r.getMessage() for r in caplog.records]
            assert line.startswith(f"SIGURG: new certificate (serial {serial:#x}, valid until ")
            assert line.endswith(") sent to 3 worker(s)")
            caplog.clear()
            replace_file(key, pki.ca.issue_cert("localhost").private_key_pem.bytes())
            master.reload_certs("a certificate file changed")
            assert all(messages == [] for messages in (await received()).values())
        [record] = caplog.records
        assert record.levelno == logging.ERROR
        assert record.getMessage().startswith(
            "a certificate file changed: certificate not reloaded (the workers keep the "
            "current one): --keyfile: the key in "
        )


# -- recycling by memory and lifetime ------------------------------------------------------

RECYCLED = Config(app="tests.apps:hello", workers=2, max_worker_memory=100, max_worker_lifetime=50)


def _recycling_pool() -> tuple[_Pool, list[_Proc]]:
    """A pool of two serving workers (pids 100 and 101) started at 0 with RECYCLED."""
    pool = _Pool(AppPlan(None, RECYCLED), ServerInfo(RECYCLED), [], [])
    procs = []
    for slot in range(2):
        proc = _proc(slot, S.SERVING)
        proc.info.pid = proc.process.pid = 100 + slot  # type: ignore[misc]
        proc.recycling = Recycling.start(RECYCLED, 0.0)
        pool.assign(slot, proc)
        procs.append(proc)
    return pool, procs


class _Replacements:
    """Stands in for Master._replace (set on the class, so not bound to the master):
    records each call and holds it until released (the replacement booting), then
    returns ``ok``."""

    def __init__(self, *, ok: bool = True) -> None:
        self.calls: list[tuple[int, ExitReason]] = []
        self.ok = ok
        self.release = trio.Event()

    async def __call__(self, pool: _Pool, slot: int, config: Config, old: Any, reason: Any) -> bool:
        self.calls.append((slot, reason))
        await self.release.wait()
        if not self.ok:
            _keep_serving(old)
        return self.ok


async def test_memory_over_the_limit_recycles_one_worker_at_a_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Both workers over --max-worker-memory: after 3 samples the first is recycled
    (RETIRING, exit_reason memory, one log line with the figure); the second waits until
    the first's replacement is ready, then goes."""
    readings = {100: 612 * MIB, 101: 700 * MIB}
    monkeypatch.setattr("trioserve._master.read_rss", readings.get)
    replace = _Replacements()
    monkeypatch.setattr(Master, "_replace", replace)
    async with trio.open_nursery() as nursery:
        pool, (first, second) = _recycling_pool()
        master = await _master_with(pool, nursery)
        master.recycle_due(pool, 1.0)
        master.recycle_due(pool, 2.0)
        await trio.testing.wait_all_tasks_blocked()
        assert replace.calls == [] and first.state is S.SERVING
        master.recycle_due(pool, 3.0)
        await trio.testing.wait_all_tasks_blocked()
        assert replace.calls == [(0, ExitReason.MEMORY)]
        assert (first.state, first.info.exit_reason) == (S.RETIRING, ExitReason.MEMORY)
        assert pool.recycling is first
        master.recycle_due(pool, 4.0)
        await trio.testing.wait_all_tasks_blocked()
        assert second.state is S.SERVING and len(replace.calls) == 1
        replace.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert pool.recycling is None
        master.recycle_due(pool, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        assert replace.calls == [(0, ExitReason.MEMORY), (1, ExitReason.MEMORY)]
    assert (
        "worker 0 (pid 100) uses 612 MiB > --max-worker-memory 100 MiB for 3 samples; replacing"
        in caplog.text
    )
    assert "worker 1 (pid 101) uses 700 MiB > --max-worker-memory 100 MiB for 5 samples" in (
        caplog.text
    )


async def test_lifetime_recycles_at_the_deadline_and_logs_the_age(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker past --max-worker-lifetime is recycled with exit_reason lifetime and a log
    line giving its age; not a moment before."""
    caplog.set_level(logging.INFO, "trioserve.master")
    monkeypatch.setattr("trioserve._master.read_rss", lambda pid: MIB)
    replace = _Replacements()
    monkeypatch.setattr(Master, "_replace", replace)
    async with trio.open_nursery() as nursery:
        pool, (first, _) = _recycling_pool()
        first.recycling.started = -5.0  # five seconds older than the other
        master = await _master_with(pool, nursery)
        master.recycle_due(pool, 44.9)
        await trio.testing.wait_all_tasks_blocked()
        assert replace.calls == []
        master.recycle_due(pool, 45.0)
        await trio.testing.wait_all_tasks_blocked()
        assert replace.calls == [(0, ExitReason.LIFETIME)]
        assert first.info.exit_reason is ExitReason.LIFETIME
        replace.release.set()
    assert "worker 0 (pid 100) reached --max-worker-lifetime at 50.0s old (50s + 0.0s jitter)" in (
        caplog.text
    )


async def test_a_failed_recycling_keeps_the_worker_and_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the replacement fails to boot, the old worker serves on with no exit reason
    and is not tried again before RETRY_AFTER seconds."""
    monkeypatch.setattr("trioserve._master.read_rss", lambda pid: MIB)
    replace = _Replacements(ok=False)
    replace.release.set()
    monkeypatch.setattr(Master, "_replace", replace)
    async with trio.open_nursery() as nursery:
        pool, (first, second) = _recycling_pool()
        second.recycling.started = 1000.0  # not due
        master = await _master_with(pool, nursery)
        master.recycle_due(pool, 60.0)
        await trio.testing.wait_all_tasks_blocked()
        assert replace.calls == [(0, ExitReason.LIFETIME)]
        assert (first.state, first.info.exit_reason, pool.recycling) == (S.SERVING, None, None)
        assert first.recycling.not_before >= 60.0 + RETRY_AFTER
        master.recycle_due(pool, 61.0)
        await trio.testing.wait_all_tasks_blocked()
        assert len(replace.calls) == 1


@pytest.mark.parametrize("blocker", ["stopping", "paused", "operation"])
async def test_no_recycling_while_the_master_is_busy(
    blocker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping, paused (SIGWINCH) or in a reload: due workers are left to that."""
    monkeypatch.setattr("trioserve._master.read_rss", lambda pid: MIB)
    replace = _Replacements()
    monkeypatch.setattr(Master, "_replace", replace)
    async with trio.open_nursery() as nursery:
        pool, _ = _recycling_pool()
        master = await _master_with(pool, nursery)
        if blocker == "operation":
            await master.operations.acquire()
        else:
            setattr(master, blocker, True)
        master.recycle_due(pool, 60.0)
        await trio.testing.wait_all_tasks_blocked()
        assert replace.calls == []
        replace.release.set()


@pytest.mark.parametrize(
    ("ready", "stopping", "current", "reason"),
    [
        (True, False, True, ExitReason.CRASH),
        (False, False, True, ExitReason.BOOT_FAILED),
        (False, False, False, ExitReason.BOOT_FAILED),  # a replacement that failed to boot
        (True, True, True, ExitReason.SHUTDOWN),
    ],
)
async def test_an_exit_nobody_asked_for_gets_its_reason(
    ready: bool,
    stopping: bool,
    current: bool,
    reason: ExitReason,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """child_exit sees why a worker exited on its own: crashed, failed to boot, or
    stopped with the server (a signal to the process group came before the master's)."""
    seen: list[Any] = []

    async def child_exit(server: Any, worker: WorkerInfo, *, exc: Any = None) -> None:
        seen.append(worker.exit_reason)

    async def nothing(*args: Any, **kwargs: Any) -> None:
        pass

    monkeypatch.setattr(Master, "_restart", nothing)
    monkeypatch.setattr(Master, "_stop_workers", nothing)
    config = attrs.evolve(CONFIG, child_exit=child_exit)
    async with trio.open_nursery() as nursery:
        pool = _Pool(AppPlan(None, config), ServerInfo(config), [], [])
        master = await _master_with(pool, nursery)
        master.stopping = stopping
        proc = _proc(0, S.SERVING if ready else S.BOOTING)
        if ready:
            proc.ready.set()
        if current:
            pool.assign(0, proc)
        proc.become(S.EXITED)
        await master._exited(pool, proc)
    assert seen == [reason]


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, ExitReason.SCALE_DOWN), (ExitReason.MEMORY, ExitReason.MEMORY)],
)
async def test_ask_to_stop_sends_the_reason(given: Any, expected: ExitReason) -> None:
    """ask_to_stop sends Stop with the worker's reason: the one given, unless it had one
    already (a worker being recycled keeps "memory" when the server stops meanwhile)."""
    async with trio.open_nursery() as nursery:
        pool = _pool()
        master = await _master_with(pool, nursery)
        ours, theirs = trio.testing.memory_stream_pair()
        proc = _proc(0, S.SERVING)
        proc.link = ours  # type: ignore[assignment]
        proc.info.exit_reason = given
        master.ask_to_stop(proc, ExitReason.SCALE_DOWN)
        with trio.fail_after(5):
            data = await theirs.receive_some()
    assert Decoder(TO_WORKER).feed(data) == [Stop(expected.value)]
    assert (proc.state, proc.info.exit_reason) == (S.STOPPING, expected)

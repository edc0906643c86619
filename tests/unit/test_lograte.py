"""Tests for trioserve._lograte: of each kind of line, a few per window, then one summary."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import pytest

from trioserve._lograte import LIMITED_LOGGERS, RateLimit, flush_all, install, installed


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """A schedule() that keeps the timers until the test fires them."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.pending.append((delay, callback))

    def fire(self) -> float:
        """Run the oldest pending timer; its delay."""
        delay, callback = self.pending.pop(0)
        callback()
        return delay


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(record.getMessage())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timers() -> Timers:
    return Timers()


@pytest.fixture
def handler() -> Iterator[Lines]:
    """Collects what two private loggers ("tests.lograte.a" and ".b") let through."""
    lines = Lines()
    parent = logging.getLogger("tests.lograte")
    parent.setLevel(logging.DEBUG)
    parent.propagate = False
    parent.addHandler(lines)
    yield lines
    parent.removeHandler(lines)
    for name in ("tests.lograte.a", "tests.lograte.b"):
        logger = logging.getLogger(name)
        for limit in installed(logger):
            logger.removeFilter(limit)


def limited(clock: Clock, timers: Timers, limit: int = 10) -> RateLimit:
    """A RateLimit on clock and timers, on both private loggers."""
    rate = RateLimit(limit, clock=clock, schedule=timers)
    logging.getLogger("tests.lograte.a").addFilter(rate)
    logging.getLogger("tests.lograte.b").addFilter(rate)
    return rate


A = logging.getLogger("tests.lograte.a")
B = logging.getLogger("tests.lograte.b")


def test_limit_lines_pass_then_one_summary_counts_the_rest(clock, timers, handler):
    """Of 25 lines of one kind in a second, 10 pass; the timer then writes one summary."""
    limited(clock, timers)
    for n in range(25):
        A.info("bad request: %s", n)
        clock.now += 0.01
    assert handler.lines == [f"bad request: {n}" for n in range(10)]
    [(delay, _)] = timers.pending
    assert delay == pytest.approx(0.9)  # the window ends one second after its first line
    clock.now = 101.0
    timers.fire()
    assert handler.lines[10:] == [
        "… 15 more like this in the last second (the last: bad request: 24)"
    ]
    summary = handler.records[10]
    assert (summary.name, summary.levelno) == ("tests.lograte.a", logging.INFO)
    assert timers.pending == []


def test_no_summary_when_nothing_was_hidden(clock, timers, handler):
    """Exactly the limit of lines: all pass, no timer, no summary, even on flush."""
    rate = limited(clock, timers)
    for n in range(10):
        A.info("bad request: %s", n)
    rate.flush()
    assert len(handler.lines) == 10
    assert timers.pending == []


def test_other_kinds_are_counted_apart(clock, timers, handler):
    """Another message format, or the same one on another logger, is not suppressed."""
    limited(clock, timers, limit=2)
    for _ in range(5):
        A.info("bad request: %s", "x")
    A.info("request body stalled for %gs; closing", 5)
    B.info("bad request: %s", "y")
    assert handler.lines == [
        "bad request: x",
        "bad request: x",
        "request body stalled for 5s; closing",
        "bad request: y",
    ]


def test_the_window_resets_and_its_summary_comes_first(clock, timers, handler):
    """After the window a line of its kind passes, right after the window's summary."""
    limited(clock, timers, limit=2)
    for n in range(5):
        A.warning("websocket handshake not received within %gs", n)
    clock.now += 1.0
    for n in range(5, 8):
        A.warning("websocket handshake not received within %gs", n)
    assert handler.lines == [
        "websocket handshake not received within 0s",
        "websocket handshake not received within 1s",
        "… 3 more like this in the last second (the last: "
        "websocket handshake not received within 4s)",
        "websocket handshake not received within 5s",
        "websocket handshake not received within 6s",
    ]
    assert handler.records[2].levelno == logging.WARNING
    # The pending timer finds nothing due yet and waits for the second window's end.
    timers.fire()
    assert len(handler.lines) == 5
    clock.now += 1.0
    assert timers.fire() == pytest.approx(1.0)
    assert handler.lines[5:] == [
        "… 1 more like this in the last second (the last: "
        "websocket handshake not received within 7s)"
    ]


def test_a_line_of_any_kind_brings_out_a_due_summary(clock, timers, handler):
    """A summary whose window has ended is written before the next line of any kind."""
    limited(clock, timers, limit=1)
    A.info("bad request: %s", 1)
    A.info("bad request: %s", 2)
    clock.now += 1.5
    B.info("bad websocket handshake: %s", "z")
    assert handler.lines == [
        "bad request: 1",
        "… 1 more like this in the last second (the last: bad request: 2)",
        "bad websocket handshake: z",
    ]


def test_flush_writes_what_was_hidden_before_the_window_ends(clock, timers, handler):
    """flush() (the process is ending) writes the summary of a window still open."""
    rate = limited(clock, timers, limit=1)
    for n in range(4):
        B.error("exception in ASGI app while serving %s", n)
    rate.flush()
    assert handler.lines[1:] == [
        "… 3 more like this in the last second (the last: exception in ASGI app while serving 3)"
    ]
    timers.fire()
    assert len(handler.lines) == 2


def test_longer_windows_say_so(clock, timers, handler):
    """The summary names the window's length when it is not one second."""
    rate = RateLimit(1, 2.5, clock=clock, schedule=timers)
    A.addFilter(rate)
    A.info("x %s", 1)
    A.info("x %s", 2)
    rate.flush()
    assert handler.lines[1] == "… 1 more like this in the last 2.5 seconds (the last: x 2)"


def test_the_default_timer_writes_the_summary_without_another_line(handler):
    """With the real clock and timer thread, the summary comes on its own after the window."""
    summary = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("…"):
                summary.set()

    watch = Watch()
    A.addHandler(watch)
    try:
        A.addFilter(RateLimit(1, 0.05))
        A.info("bad request: %s", 1)
        A.info("bad request: %s", 2)
        assert summary.wait(10)
    finally:
        A.removeHandler(watch)
    assert handler.lines == [
        "bad request: 1",
        "… 1 more like this in the last 0.05 seconds (the last: bad request: 2)",
    ]


@pytest.fixture
def restore_edge_loggers() -> Iterator[None]:
    """Take the rate limits off the edge loggers afterwards."""
    yield
    install(None)


def test_install_replaces_and_flushes_the_previous_limit(
    clock, timers, handler, restore_edge_loggers
):
    """install() replaces the edge loggers' limit, summing up what the old one hid first."""
    http = logging.getLogger(LIMITED_LOGGERS[0])
    old = RateLimit(1, clock=clock, schedule=timers)
    install(old)
    assert all(installed(logging.getLogger(name)) == [old] for name in LIMITED_LOGGERS)
    http.addHandler(handler)
    level = http.level
    http.setLevel(logging.INFO)
    try:
        http.info("bad request: %s", 1)
        http.info("bad request: %s", 2)
        new = RateLimit(1, clock=clock, schedule=timers)
        install(new)
        assert all(installed(logging.getLogger(name)) == [new] for name in LIMITED_LOGGERS)
        http.info("bad request: %s", 3)
        http.info("bad request: %s", 4)
        flush_all()
    finally:
        http.setLevel(level)
        http.removeHandler(handler)
    assert handler.lines == [
        "bad request: 1",
        "… 1 more like this in the last second (the last: bad request: 2)",
        "bad request: 3",
        "… 1 more like this in the last second (the last: bad request: 4)",
    ]


def test_without_a_timer_thread_the_summary_still_comes(clock, handler):
    """When no timer can be started, the line is still hidden and its count comes later."""

    def no_threads(delay: float, callback: Callable[[], None]) -> None:
        raise RuntimeError("can't start new thread")

    limited_a = RateLimit(1, clock=clock, schedule=no_threads)
    A.addFilter(limited_a)
    A.info("bad request: %s", 1)
    A.info("bad request: %s", 2)
    clock.now += 1.0
    A.info("bad request: %s", 3)
    assert handler.lines == [
        "bad request: 1",
        "… 1 more like this in the last second (the last: bad request: 2)",
        "bad request: 3",
    ]


def test_kinds_seen_once_are_forgotten(clock, timers, handler):
    """Messages built without a format (a new kind each) do not pile up in memory."""
    rate = limited(clock, timers)
    for n in range(1000):
        A.info(f"made by an f-string {n}")
        clock.now += 0.01
    assert len(handler.lines) == 1000
    assert len(rate._windows) <= 300

"""Log lines that a client can cause, rate-limited: a flood of bad requests costs the log a
few lines a second, not one line per request.

:class:`RateLimit` is a :class:`logging.Filter` that :func:`~trioserve._logging.configure_logging`
puts on the loggers of the connection edges (:data:`LIMITED_LOGGERS`), one per process, so
every worker counts for itself. The call sites log as usual and know nothing about it.

A *kind* of line is its logger and its message format (``record.msg``, before the
arguments are filled in): "bad request: %s" is one kind whatever the reason. Of each kind,
the first ``limit`` lines of a ``window`` pass; the rest are counted, and once the window
is over one line stands for them::

    … 4983 more like this in the last second (the last: bad request: invalid Content-Length)

That line is written as soon as the window ends (by a timer thread), or earlier when the
next line of any limited kind comes after the window's end, or at :meth:`RateLimit.flush`
(when the worker stops, and when the logging is set up again) -- never lost, never late by
more than a moment, and never for a window that had nothing to hide.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import attrs

LIMIT = 10
WINDOW = 1.0
# The loggers of the edges, whose lines a client can cause once per connection or request,
# and trioserve.connection: what the pipeline logs for one connection (a PROXY header it
# drops, a connection or request hook that failed, an error that escaped an edge).
# Not trioserve.wsgi: its "%s" lines are the app's wsgi.errors stream, one line per record.
LIMITED_LOGGERS = (
    "trioserve.http",
    "trioserve.ws",
    "trioserve.tls",
    "trioserve.tcp",
    "trioserve.connection",
)

_SUMMARY = "… %d more like this in the last %s (the last: %s)"
# Expired windows that hid nothing are dropped once there are this many of them.
_PRUNE_ABOVE = 256

Clock = Callable[[], float]
Schedule = Callable[[float, Callable[[], None]], None]


def _thread_timer(delay: float, callback: Callable[[], None]) -> None:
    timer = threading.Timer(delay, callback)
    timer.daemon = True
    timer.start()


@attrs.define(slots=True)
class _Window:
    """One kind of line within its current window."""

    start: float
    passed: int = 1
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RateLimit(logging.Filter):
    """Let at most ``limit`` lines of each kind through per ``window`` seconds.

    Args:
        limit: How many lines of one kind pass per window.
        window: The window's length in seconds.
        clock: Monotonic seconds; a test passes its own.
        schedule: ``schedule(delay, callback)`` calls ``callback`` ``delay`` seconds
            later, from any thread; by default a daemon :class:`threading.Timer`. A test
            passes its own to fire timers when it likes.
    """

    def __init__(
        self,
        limit: int = LIMIT,
        window: float = WINDOW,
        *,
        clock: Clock = time.monotonic,
        schedule: Schedule = _thread_timer,
    ) -> None:
        super().__init__()
        self.limit = limit
        self.window = window
        self._clock = clock
        self._schedule = schedule
        self._per = "second" if window == 1 else f"{window:g} seconds"
        # Records come from the trio thread, WSGI threads and the timer.
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._next_due = float("inf")  # when the earliest window with hidden lines ends
        self._timer_pending = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg is _SUMMARY:
            return True
        msg = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, msg)
        now = self._clock()
        with self._lock:
            due = self._take_due(now) if now >= self._next_due else []
            window = self._windows.get(key)
            if window is None or now >= window.start + self.window:
                if len(self._windows) > _PRUNE_ABOVE:
                    self._prune(now)
                self._windows[key] = _Window(now)
                passed = True
            elif window.passed < self.limit:
                window.passed += 1
                passed = True
            else:
                window.suppressed += 1
                window.last = record
                self._next_due = min(self._next_due, window.start + self.window)
                passed = False
                if not self._timer_pending:
                    self._start_timer(now)
        self._emit(due)
        return passed

    def flush(self) -> None:
        """Write the summary line of every window that hid lines, ended or not."""
        with self._lock:
            due = self._take_due(float("inf"))
        self._emit(due)

    def _on_timer(self) -> None:
        now = self._clock()
        with self._lock:
            self._timer_pending = False
            due = self._take_due(now) if now >= self._next_due else []
            if self._next_due != float("inf"):
                self._start_timer(now)
        self._emit(due)

    def _start_timer(self, now: float) -> None:
        """Have _on_timer called when the earliest window with hidden lines ends. Called
        with the lock held."""
        try:
            self._schedule(max(self._next_due - now, 0.0), self._on_timer)
        except RuntimeError:
            # No thread to be had (at interpreter shutdown, or out of memory): the summary
            # comes with the next line of any kind, or at flush().
            return
        self._timer_pending = True

    def _take_due(self, now: float) -> list[logging.LogRecord]:
        """The summaries of the windows with hidden lines that ended by ``now``; those
        windows are forgotten. Called with the lock held."""
        due: list[logging.LogRecord] = []
        next_due = float("inf")
        for key, window in list(self._windows.items()):
            if not window.suppressed or window.last is None:
                continue
            end = window.start + self.window
            if end <= now:
                due.append(self._summary(window.suppressed, window.last))
                del self._windows[key]
            else:
                next_due = min(next_due, end)
        self._next_due = next_due
        return due

    def _prune(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            if not window.suppressed and now >= window.start + self.window:
                del self._windows[key]

    def _summary(self, count: int, last: logging.LogRecord) -> logging.LogRecord:
        return logging.LogRecord(
            last.name,
            last.levelno,
            last.pathname,
            last.lineno,
            _SUMMARY,
            (count, self._per, last.getMessage()),
            None,
            func=last.funcName,
        )

    def _emit(self, records: list[logging.LogRecord]) -> None:
        for record in records:
            logging.getLogger(record.name).handle(record)


def installed(logger: logging.Logger) -> list[RateLimit]:
    """The rate limits on ``logger``."""
    return [f for f in logger.filters if isinstance(f, RateLimit)]


def install(limit: RateLimit | None) -> None:
    """Put ``limit`` on every logger of :data:`LIMITED_LOGGERS` in place of the one there
    (whose hidden lines are summed up first); None takes them off."""
    for name in LIMITED_LOGGERS:
        logger = logging.getLogger(name)
        for old in installed(logger):
            old.flush()
            logger.removeFilter(old)
        if limit is not None:
            logger.addFilter(limit)


def flush_all() -> None:
    """Sum up what every installed rate limit hid so far: before the process ends."""
    for name in LIMITED_LOGGERS:
        for limit in installed(logging.getLogger(name)):
            limit.flush()

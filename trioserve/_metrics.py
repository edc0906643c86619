"""What ``--metrics-bind`` counts, in each serving process and, summed, in the master.

The hot path pays one call and a few increments per request: each serving process
keeps its counts in a :class:`ProcessCounts` (requests by method and status class, a
duration histogram, response body bytes, connections by kind, log records), fed by the
exchanges (each finished request, HTTP/1.1 or HTTP/2, is counted where the access log
is told of it) and by the connection handler of ``_pipeline``.
Requests refused by the edge are counted by :class:`~trioserve._state.ServerState`.

A worker sends its counts, cumulative, a few times a second at most and only when they
changed, as one :class:`~trioserve._proto.channel.Counts` message over its channel; the
master keeps the last report of each worker process in :class:`MasterCounts`. When a
worker exits (whatever the way: retired, crashed, killed with SIGKILL) its last report
is folded into its slot's totals, so counters never go back when a worker is replaced.
What a worker counted after its last report is lost if it dies without a last word
(SIGKILL, a crash of the interpreter): at most :data:`REPORT_INTERVAL` seconds of
counts. A worker that stops normally sends a final report first.

A scrape turns all of it into a :class:`Sample` (plain data, no prometheus_client
here); ``_metrics_server`` renders it.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import struct
import sys
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs
import trio

from ._hooks import ExitReason
from ._proto.channel import Counts
from ._state import ServerState

LOGGER = logging.getLogger("trioserve.metrics")

#: Seconds between two reports of a worker (sent only when something changed).
REPORT_INTERVAL = 0.5

#: The upper bounds (seconds) of the request duration histogram's buckets, +Inf apart:
#: prometheus_client's defaults, which dashboards are used to.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

#: Methods counted by name; any other (a client may send any token) counts as OTHER,
#: so that clients cannot create time series at will.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)
OTHER_METHOD = "OTHER"


#: Why the edge refused a request, by the status it answered with.
REJECTION_REASONS: dict[int, str] = {
    400: "bad_request",
    408: "timeout",
    413: "body_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
    503: "overloaded",
}

#: Kinds of connection (the ``kind`` label): an HTTP connection that upgrades to a
#: websocket counts as websocket from the upgrade on.
HTTP, WEBSOCKET, TCP = "http", "websocket", "tcp"
CONNECTION_KINDS = (HTTP, WEBSOCKET, TCP)

#: The levels of log records counted (gunicorn's statsd ``gunicorn.log.*`` names).
LOG_LEVELS = ("critical", "error", "exception", "warning")

#: The ``app`` label of a lone application (a MultiApp's applications use their prefix).
MAIN_APP = "main"


def app_label(prefix: str | None) -> str:
    """The ``app`` label of the application with ``prefix`` (None: a lone app)."""
    return prefix or MAIN_APP


#: The first bucket's bound: the requests within it are not counted one by one (see
#: ``ProcessCounts.durations``).
FIRST_BUCKET = DURATION_BUCKETS[0]

#: Why the master replaced a worker (the ``cause`` label of worker restarts): the exit
#: reasons of the workers the master replaces (``_hooks.ExitReason``), every one listed.
RESTART_CAUSES: tuple[ExitReason, ...] = (
    ExitReason.CRASH,
    ExitReason.TIMEOUT,
    ExitReason.MAX_REQUESTS,
    ExitReason.RELOAD,
    ExitReason.MEMORY,
    ExitReason.LIFETIME,
)


# -- in each serving process -----------------------------------------------------------


class ProcessCounts:
    """The counts of one serving process (a worker, or the in-process server).

    Each finished request is counted by the exchange itself, inline (the hot path:
    ``_exchange.Exchange.run``, which reads the attributes below, as
    ``_exchange.RequestCounts`` describes them); :meth:`request` does the same for the
    few other callers. No tuple is built or hashed per request.
    """

    __slots__ = (
        "accepted",
        "body_bytes",
        "duration_sum",
        "durations",
        "logs",
        "open",
        "other",
        "requests",
    )

    def __init__(self) -> None:
        #: Requests by method, then by status class (index ``status // 100``; the edges
        #: send statuses from 200 to 599 only): a row per method rather than a (method,
        #: class) key, so that counting a request builds and hashes no tuple. Every
        #: method of :data:`METHODS` has its row from the start; any other method
        #: counts in the ``OTHER`` row, which is also :attr:`other`.
        self.requests: dict[str, list[int]] = {
            method: [0] * 6 for method in (*sorted(METHODS), OTHER_METHOD)
        }
        self.other = self.requests[OTHER_METHOD]
        #: The duration histogram: index ``bisect_left(DURATION_BUCKETS, seconds)``,
        #: except the first bucket, which most requests fall in: it is never counted
        #: here (it stays 0) but worked out in :meth:`counts`, as the requests counted
        #: in no other bucket. Each counted request is in exactly one row of
        #: :attr:`requests`, so that is exact, and a request costs one increment less.
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.body_bytes = 0
        self.open = dict.fromkeys(CONNECTION_KINDS, 0)
        self.accepted = dict.fromkeys(CONNECTION_KINDS, 0)
        self.logs = dict.fromkeys(LOG_LEVELS, 0)

    def request(self, method: str, status: int, body_bytes: int, duration: float) -> None:
        """Count one finished request (as ``Exchange.run`` does inline)."""
        row = self.requests.get(method)
        if row is None:
            row = self.other
        row[status // 100] += 1
        if duration > FIRST_BUCKET:
            self.durations[bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.body_bytes += body_bytes

    def opened(self, kind: str) -> None:
        self.open[kind] += 1
        self.accepted[kind] += 1

    def closed(self, kind: str) -> None:
        self.open[kind] -= 1

    def counts(self, state: ServerState | None) -> Counts:
        """All of it as one channel message; ``state`` adds rejections and in-flight."""
        rejected = state.rejected if state is not None else {}
        durations = self.durations.copy()
        durations[0] = sum(map(sum, self.requests.values())) - sum(durations)
        return Counts(
            requests=tuple(
                (method, cls, n)
                for method, row in self.requests.items()
                for cls, n in enumerate(row)
                if n
            ),
            durations=tuple(durations),
            duration_sum=self.duration_sum,
            body_bytes=self.body_bytes,
            rejected=tuple(rejected.items()),
            connections=tuple((kind, self.open[kind], self.accepted[kind]) for kind in self.open),
            in_flight=state.active_requests if state is not None else 0,
            logs=tuple(self.logs.items()),
        )


class LogCounter(logging.Handler):
    """Counts trioserve's log records at warning and above, by level; writes nothing.

    As gunicorn's statsd counters: an error record with a traceback counts as
    ``exception`` instead of ``error``.
    """

    def __init__(self, logs: dict[str, int]) -> None:
        super().__init__(logging.WARNING)
        self.logs = logs

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.CRITICAL:
            level = "critical"
        elif record.levelno >= logging.ERROR:
            traceback = record.exc_info is not None and record.exc_info[0] is not None
            level = "exception" if traceback else "error"
        else:
            level = "warning"
        self.logs[level] += 1


def count_logs(logs: dict[str, int]) -> Callable[[], None]:
    """Count this process's ``trioserve`` log records into ``logs``; returns what stops
    it (serve() may run many times in one program: each removes its own handler)."""
    logger = logging.getLogger("trioserve")
    handler = LogCounter(logs)
    logger.addHandler(handler)
    return functools.partial(logger.removeHandler, handler)


async def report_counts(
    counts: ProcessCounts,
    state: Callable[[], ServerState | None],
    send: Callable[[Counts], Awaitable[None]],
    interval: float = REPORT_INTERVAL,
) -> None:
    """Send ``counts`` every ``interval`` seconds when they changed (a worker's task)."""
    last: Counts | None = None
    while True:
        await trio.sleep(interval)
        message = counts.counts(state())
        if message != last:
            await send(message)
            last = message


# -- in the master ---------------------------------------------------------------------


@attrs.define
class Totals:
    """Counts summed over processes (counters), and what the live ones say now (gauges)."""

    requests: dict[tuple[str, int], int] = attrs.field(factory=dict)
    durations: list[int] = attrs.field(factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    body_bytes: int = 0
    rejected: dict[int, int] = attrs.field(factory=dict)
    accepted: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(CONNECTION_KINDS, 0))
    logs: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(LOG_LEVELS, 0))
    # Gauges: only live processes add to them.
    open: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(CONNECTION_KINDS, 0))
    in_flight: int = 0

    def add(self, counts: Counts, *, live: bool) -> None:
        """Add a process's report; its gauges too when it is ``live``."""
        for method, cls, n in counts.requests:
            self.requests[method, cls] = self.requests.get((method, cls), 0) + n
        # A report from another version with other buckets is not mixed in.
        if len(counts.durations) == len(self.durations):
            for index, n in enumerate(counts.durations):
                self.durations[index] += n
            self.duration_sum += counts.duration_sum
        self.body_bytes += counts.body_bytes
        for status, n in counts.rejected:
            self.rejected[status] = self.rejected.get(status, 0) + n
        for kind, now, total in counts.connections:
            self.accepted[kind] = self.accepted.get(kind, 0) + total
            if live:
                self.open[kind] = self.open.get(kind, 0) + now
        for level, n in counts.logs:
            self.logs[level] = self.logs.get(level, 0) + n
        if live:
            self.in_flight += counts.in_flight


@attrs.define
class _Report:
    app: str
    slot: int
    counts: Counts


class MasterCounts:
    """The master's view: the last report of each live worker process, the totals of
    the processes that exited (per application and slot), and the restarts it made."""

    def __init__(self) -> None:
        self.live: dict[int, _Report] = {}
        self.gone: dict[tuple[str, int], Totals] = {}
        self.restarts: dict[tuple[str, ExitReason], int] = {}
        #: The master's own log records.
        self.logs = dict.fromkeys(LOG_LEVELS, 0)

    def report(self, app: str, slot: int, pid: int, counts: Counts) -> None:
        """Worker ``pid`` (of ``slot`` in ``app``) sent ``counts``."""
        self.live[pid] = _Report(app, slot, counts)

    def exited(self, pid: int) -> None:
        """Worker ``pid`` exited: what it reported last stays in its slot's totals."""
        report = self.live.pop(pid, None)
        if report is not None:
            totals = self.gone.setdefault((report.app, report.slot), Totals())
            totals.add(report.counts, live=False)

    def restarted(self, app: str, cause: ExitReason) -> None:
        """The master replaces a worker of ``app`` because of ``cause``."""
        key = (app, cause)
        self.restarts[key] = self.restarts.get(key, 0) + 1

    def totals(self, apps: Iterable[str]) -> dict[str, Totals]:
        """Per application: the exited processes' counts plus the live ones' reports."""
        result = {app: Totals() for app in apps}
        for (app, _), gone in self.gone.items():
            _merge(result.setdefault(app, Totals()), gone)
        for report in self.live.values():
            result.setdefault(report.app, Totals()).add(report.counts, live=True)
        return result


def _merge(into: Totals, other: Totals) -> None:
    for key, n in other.requests.items():
        into.requests[key] = into.requests.get(key, 0) + n
    for index, n in enumerate(other.durations):
        into.durations[index] += n
    into.duration_sum += other.duration_sum
    into.body_bytes += other.body_bytes
    for status, n in other.rejected.items():
        into.rejected[status] = into.rejected.get(status, 0) + n
    for kind, n in other.accepted.items():
        into.accepted[kind] = into.accepted.get(kind, 0) + n
    for level, n in other.logs.items():
        into.logs[level] = into.logs.get(level, 0) + n


# -- a scrape's sample -----------------------------------------------------------------


@attrs.frozen
class WorkerSample:
    """One worker process as the master sees it."""

    app: str
    slot: int
    pid: int
    rss_bytes: int | None
    heartbeat_age: float | None


@attrs.frozen
class ListenerSample:
    """A listening TCP socket's accept queue: connections waiting, and the limit."""

    app: str
    address: str
    queued: int
    limit: int


@attrs.define
class Sample:
    """Everything a scrape shows, as plain data."""

    apps: dict[str, Totals]
    restarts: dict[tuple[str, ExitReason], int]
    workers: dict[str, int]
    processes: list[WorkerSample]
    listeners: list[ListenerSample]
    master_logs: dict[str, int]


def resident_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (Linux: /proc/PID/statm), None where unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


# struct tcp_info (linux/tcp.h) up to tcpi_sacked: 8 one-byte fields, then u32s
# rto, ato, snd_mss, rcv_mss, unacked, sacked. On a LISTEN socket the kernel reports
# the accept queue's length as tcpi_unacked and its limit (the backlog) as tcpi_sacked.
_TCP_INFO = struct.Struct("=8B6I")
_TCP_LISTEN = 10


def accept_queue(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int] | None:
    """(connections waiting to be accepted, the backlog) of a listening TCP socket, on
    Linux; None elsewhere or for other sockets."""
    if not sys.platform.startswith("linux") or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(raw) < _TCP_INFO.size:
        return None
    fields = _TCP_INFO.unpack_from(raw)
    if fields[0] != _TCP_LISTEN:
        return None
    return fields[12], fields[13]


def format_address(address: Any) -> str:
    """A listener's address as a label: ``host:port``, ``[v6]:port`` or the path."""
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return os.fsdecode(address) if isinstance(address, bytes) else str(address)


def listener_samples(app: str, sockets: Iterable[trio.socket.SocketType]) -> list[ListenerSample]:
    """The accept queues of ``sockets`` that tell theirs."""
    samples = []
    for sock in sockets:
        queue = accept_queue(sock)
        if queue is not None:
            samples.append(ListenerSample(app, format_address(sock.getsockname()), *queue))
    return samples

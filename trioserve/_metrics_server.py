"""``GET /metrics``: the Prometheus exposition of ``--metrics-bind``, served by the master
(or by the one process of ``workers=0``) on a listener of its own.

The exposition is prometheus_client's (the ``metrics`` extra): a registry holding one
custom collector, which turns the :class:`~trioserve._metrics.Sample` the server takes at
each scrape into metric families. Nothing is stored in prometheus_client between
scrapes, no multiprocess-mode files are written, and no lock is taken per request: the
counts live in trioserve's own objects (see :mod:`trioserve._metrics`).

The responder is a deliberately tiny HTTP/1.1 server on h11: one request per connection
(``Connection: close``), a bounded head (8 KiB) and a bounded time (10 s) per
connection, at most 16 connections at once (more wait in the listen queue), ``GET`` or
``HEAD`` of ``/metrics`` (any query string) answered, 404 for other paths, 405 for
other methods. The text format is sent unless the ``Accept`` header asks for
``application/openmetrics-text``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import h11
import trio

from ._bind import create_listeners, listener_url, parse_bind
from ._errors import ConfigError
from ._metrics import DURATION_BUCKETS, REJECTION_REASONS, RESTART_CAUSES, Sample

try:
    from prometheus_client.core import (
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import choose_encoder
except ImportError:  # the "metrics" extra is not installed; require_prometheus() says so
    available = False
else:
    available = True

LOGGER = logging.getLogger("trioserve.metrics")

PATH = "/metrics"
_MAX_HEAD = 8192
_TIMEOUT = 10.0
_MAX_CONNECTIONS = 16


def require_prometheus() -> None:
    """Raise ConfigError if prometheus_client, which ``--metrics-bind`` needs, is absent."""
    if not available:
        raise ConfigError(
            "--metrics-bind: needs prometheus_client; install it with "
            "pip install 'trioserve[metrics]'"
        )


def families(sample: Sample) -> Iterator[Metric]:
    """The metric families of ``sample`` (see docs/metrics.md for each)."""
    apps = sorted(sample.apps)
    requests = CounterMetricFamily(
        "trioserve_requests",
        "HTTP requests served, by application, method and status class.",
        labels=["app", "method", "status"],
    )
    duration = HistogramMetricFamily(
        "trioserve_request_duration_seconds",
        "Time from a request's head to its complete response.",
        labels=["app"],
    )
    in_flight = GaugeMetricFamily(
        "trioserve_requests_in_flight", "HTTP requests being served now.", labels=["app"]
    )
    body = CounterMetricFamily(
        "trioserve_response_body_bytes", "Response body bytes sent.", labels=["app"]
    )
    rejected = CounterMetricFamily(
        "trioserve_request_rejections",
        "Requests the server refused before or while the app read them.",
        labels=["app", "status", "reason"],
    )
    open_connections = GaugeMetricFamily(
        "trioserve_connections_open", "Connections open now, by kind.", labels=["app", "kind"]
    )
    accepted = CounterMetricFamily(
        "trioserve_connections",
        "Connections accepted, by kind (an HTTP connection that upgrades to a websocket "
        "counts once as each).",
        labels=["app", "kind"],
    )
    for app in apps:
        totals = sample.apps[app]
        for (method, cls), n in sorted(totals.requests.items()):
            requests.add_metric([app, method, f"{cls}xx"], n)
        running = 0
        buckets = []
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), totals.durations, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        duration.add_metric([app], buckets, totals.duration_sum)
        in_flight.add_metric([app], totals.in_flight)
        body.add_metric([app], totals.body_bytes)
        for status, n in sorted(totals.rejected.items()):
            rejected.add_metric([app, str(status), REJECTION_REASONS.get(status, "other")], n)
        for kind, n in totals.open.items():
            open_connections.add_metric([app, kind], n)
        for kind, n in totals.accepted.items():
            accepted.add_metric([app, kind], n)
    yield from (requests, duration, in_flight, body, rejected, open_connections, accepted)

    restarts = CounterMetricFamily(
        "trioserve_worker_restarts",
        "Workers the master replaced, by cause.",
        labels=["app", "cause"],
    )
    workers = GaugeMetricFamily(
        "trioserve_workers", "Worker processes the master keeps.", labels=["app"]
    )
    for app in sorted(sample.workers):
        workers.add_metric([app], sample.workers[app])
        for cause in RESTART_CAUSES:
            restarts.add_metric([app, cause.value], sample.restarts.get((app, cause), 0))
    rss = GaugeMetricFamily(
        "trioserve_worker_resident_memory_bytes",
        "Resident memory of each serving process.",
        labels=["app", "worker"],
    )
    heartbeat = GaugeMetricFamily(
        "trioserve_worker_heartbeat_age_seconds",
        "Seconds since the master last heard from each worker.",
        labels=["app", "worker"],
    )
    for process in sample.processes:
        labels = [process.app, str(process.slot)]
        if process.rss_bytes is not None:
            rss.add_metric(labels, process.rss_bytes)
        if process.heartbeat_age is not None:
            heartbeat.add_metric(labels, process.heartbeat_age)
    queued = GaugeMetricFamily(
        "trioserve_listen_queue_length",
        "Connections waiting in a listening socket's accept queue (Linux, TCP).",
        labels=["app", "listener"],
    )
    limit = GaugeMetricFamily(
        "trioserve_listen_queue_limit",
        "The accept queue's limit (the effective backlog; Linux, TCP).",
        labels=["app", "listener"],
    )
    for listener in sample.listeners:
        queued.add_metric([listener.app, listener.address], listener.queued)
        limit.add_metric([listener.app, listener.address], listener.limit)
    logs = CounterMetricFamily(
        "trioserve_log_messages",
        "trioserve's log records at warning and above, by level, in every process.",
        labels=["level"],
    )
    levels: dict[str, int] = dict(sample.master_logs)
    for totals in sample.apps.values():
        for level, n in totals.logs.items():
            levels[level] = levels.get(level, 0) + n
    for level, n in sorted(levels.items()):
        logs.add_metric([level], n)
    yield from (restarts, workers, rss, heartbeat, queued, limit, logs)


class _Collector:
    """prometheus_client's collector protocol over a function taking a sample."""

    def __init__(self, take_sample: Callable[[], Sample]) -> None:
        self.take_sample = take_sample

    def collect(self) -> Iterator[Metric]:
        return families(self.take_sample())


def registry_for(take_sample: Callable[[], Sample]) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) holding the collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(take_sample))
    return registry


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The body and content type of a scrape with ``Accept: accept``."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


async def serve_metrics(
    bind: str,
    take_sample: Callable[[], Sample],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``bind`` until cancelled; ``started()`` gets the listeners.

    Raises:
        ConfigError: prometheus_client is not installed.
        BindError: ``bind`` cannot be listened on.
    """
    require_prometheus()
    try:
        spec = parse_bind(bind)
    except ValueError as exc:
        raise ConfigError(f"--metrics-bind: {exc}") from None
    registry = registry_for(take_sample)
    listeners = await create_listeners([spec], backlog=64)
    limit = trio.Semaphore(_MAX_CONNECTIONS)
    try:
        for listener in listeners:
            LOGGER.info("metrics: GET %s on %s", PATH, listener_url(listener, "http"))
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept, listener, registry, limit, nursery)
            task_status.started(listeners)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await trio.aclose_forcefully(listener)


async def _accept(
    listener: trio.SocketListener,
    registry: CollectorRegistry,
    limit: trio.Semaphore,
    nursery: trio.Nursery,
) -> None:
    while True:
        await limit.acquire()
        try:
            stream = await listener.accept()
        except OSError as exc:  # EMFILE and the like: not this listener's end
            limit.release()
            LOGGER.warning("metrics: accept failed: %s", exc)
            await trio.sleep(0.1)
            continue
        except BaseException:
            limit.release()
            raise
        nursery.start_soon(_respond, stream, registry, limit)


async def _respond(
    stream: trio.abc.Stream, registry: CollectorRegistry, limit: trio.Semaphore
) -> None:
    try:
        with trio.move_on_after(_TIMEOUT):
            await _exchange(stream, registry)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    except Exception:
        # A bug of the exposition must cost one scrape, never the master.
        LOGGER.exception("metrics: cannot answer a scrape")
    finally:
        limit.release()
        await trio.aclose_forcefully(stream)


async def _exchange(stream: trio.abc.Stream, registry: CollectorRegistry) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_MAX_HEAD)
            if not data:
                return
            connection.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            break
        return
    method = event.method.decode("ascii", "replace")
    path = event.target.decode("ascii", "replace").partition("?")[0]
    accept = ", ".join(
        value.decode("latin-1") for name, value in event.headers if name == b"accept"
    )
    if path != PATH:
        status, body, content_type = 404, b"Not Found: only /metrics is served here\n", "text/plain"
    elif method not in ("GET", "HEAD"):
        status, body, content_type = 405, b"Method Not Allowed\n", "text/plain"
    else:
        status = 200
        body, content_type = exposition(registry, accept)
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    if status == 405:
        headers.append(("allow", "GET, HEAD"))
    data = connection.send(h11.Response(status_code=status, headers=headers))
    if method != "HEAD":
        data += connection.send(h11.Data(data=body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)

"""Metrics over the statsD protocol (UDP), named as gunicorn names them.

Enabled with ``--statsd-host HOST:PORT`` (``[IPV6]:PORT`` for IPv6; a bare ``HOST``
means port 8125, as in gunicorn) and optionally ``--statsd-prefix``. One datagram per
metric, in the plain statsD text format::

    NAME:VALUE|c[|@RATE]    counter (|@RATE only when sampled, RATE < 1)
    NAME:VALUE|g            gauge
    NAME:VALUE|ms           timer, in milliseconds

The metrics carry exactly gunicorn's names, ``gunicorn.`` included, so that the
dashboards and alerts written for gunicorn (Grafana, Datadog, statsd_exporter mappings)
keep working unchanged when trioserve replaces it:

- ``gunicorn.requests``: counter, one per request served;
- ``gunicorn.request.status.<code>``: counter per response status, e.g.
  ``gunicorn.request.status.404``;
- ``gunicorn.request.duration``: timer, the request's duration in milliseconds
  (gunicorn calls it a histogram and sends it as ``|ms`` too);
- ``gunicorn.workers``: gauge, the number of workers the master manages;
- ``gunicorn.log.critical``, ``gunicorn.log.error``, ``gunicorn.log.warning``,
  ``gunicorn.log.exception``: counters of trioserve's log records at those levels
  (``exception`` is an error record carrying a traceback, counted instead of ``error``).

``--statsd-prefix`` is prepended with a dot (``--statsd-prefix web`` sends
``web.gunicorn.requests``), as gunicorn does; trailing dots in the prefix are ignored.

Sending never blocks and never fails: the socket is a non-blocking UDP socket, so a
full buffer, an unreachable collector or a closed port only drops the metric (counted
in :attr:`Statsd.dropped`). The host name is resolved once, when the :class:`Statsd`
is created at startup (in the master, and in each worker as it boots), never per
metric; a collector that moves to another address needs a restart or reload.
"""

from __future__ import annotations

import logging
import math
import random
import socket
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, Protocol

from ._errors import ConfigError

LOGGER = logging.getLogger("trioserve.statsd")

#: The port used when ``--statsd-host`` gives only a host, as in gunicorn.
DEFAULT_STATSD_PORT = 8125

#: Counter: one per request.
REQUESTS = "gunicorn.requests"
#: Counter per status code: ``REQUEST_STATUS.format(404)``.
REQUEST_STATUS = "gunicorn.request.status.{}"
#: Timer: request duration in milliseconds.
REQUEST_DURATION = "gunicorn.request.duration"
#: Gauge: the number of workers.
WORKERS = "gunicorn.workers"
#: Counters of log records by level.
LOG_CRITICAL = "gunicorn.log.critical"
LOG_ERROR = "gunicorn.log.error"
LOG_WARNING = "gunicorn.log.warning"
LOG_EXCEPTION = "gunicorn.log.exception"

_FLAG = "--statsd-host"
_EXPECTED = "expected HOST:PORT"
# These would end the name or the value early in the wire format.
_FORBIDDEN_IN_NAMES = frozenset(":|@\n")


def _bad_host(text: str, reason: str = "") -> ConfigError:
    detail = f" ({reason})" if reason else ""
    return ConfigError(f"{_FLAG}: {_EXPECTED}, got {text!r}{detail}")


def parse_statsd_host(text: str) -> tuple[str, int]:
    """Split a ``--statsd-host`` value into host and port, without resolving the host.

    Accepts ``HOST:PORT``, ``[IPV6]:PORT``, ``HOST`` and ``[IPV6]`` (port 8125).

    Raises:
        ConfigError: The value is none of these, or the port is not in 1-65535.
    """
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket:
            raise _bad_host(text, "missing ']' after the IPv6 address")
        if after and not after.startswith(":"):
            raise _bad_host(text, "expected ':' after ']'")
        port_text = after[1:] if after else None
    elif text.count(":") > 1:
        raise _bad_host(text, "put IPv6 addresses in brackets, e.g. [::1]:8125")
    else:
        host, colon, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if colon else None
    if not host or host != host.strip():
        raise _bad_host(text, "the host is empty" if not host.strip() else "stray spaces")
    if port_text is None:
        return host, DEFAULT_STATSD_PORT
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise _bad_host(text, "the port must be a number from 1 to 65535")
    return host, int(port_text)


def _connect(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket connected to the first address of ``host`` that works."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{_FLAG}: cannot resolve {host!r}: {exc}") from None
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            # Connected, so each send skips the route lookup and an unreachable port is
            # reported (as ECONNREFUSED on a later send) instead of silently ignored.
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
        else:
            return sock
    raise ConfigError(f"{_FLAG}: cannot send to {host!r} port {port}: {error}")


def _format_number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"statsd: expected a finite number, got {value!r}")
    # Three decimals are microseconds for a timer; statsD servers parse any decimal.
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


class Statsd:
    """A statsD client over UDP that never blocks and never raises on a send.

    Args:
        host: The collector's host name or address, resolved here, once.
        port: Its UDP port.
        prefix: Prepended to every metric name with a dot (``--statsd-prefix``).
        sampler: Draws a number in [0, 1) to decide whether a sampled counter is sent;
            ``random.random`` by default (tests pass a fixed one).

    Raises:
        ConfigError: The port is not in 1-65535, the host cannot be resolved, or no
            socket can be connected to it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str = "",
        *,
        sampler: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < port < 65536:
            raise ConfigError(f"{_FLAG}: expected a port from 1 to 65535, got {port!r}")
        self.host = host
        self.port = port
        self.prefix = prefix.rstrip(".")
        #: How many metrics could not be sent (network errors; sampling is not a drop).
        self.dropped = 0
        self._sampler = sampler
        self._socket = _connect(host, port)

    @classmethod
    def from_setting(cls, text: str, prefix: str) -> Statsd:
        """A client for a ``--statsd-host`` value and the ``--statsd-prefix`` value.

        Raises:
            ConfigError: ``text`` is not ``HOST:PORT`` (see :func:`parse_statsd_host`)
                or the host cannot be resolved.
        """
        host, port = parse_statsd_host(text)
        return cls(host, port, prefix)

    def incr(self, name: str, value: int = 1, rate: float = 1.0) -> None:
        """Add ``value`` to a counter; with ``rate`` < 1 only that fraction is sent."""
        self._send(name, _format_number(value), "c", rate)

    def decr(self, name: str, value: int = 1, rate: float = 1.0) -> None:
        """Subtract ``value`` from a counter; with ``rate`` < 1 only that fraction is sent."""
        self._send(name, _format_number(-value), "c", rate)

    def gauge(self, name: str, value: float) -> None:
        """Set a gauge to ``value``.

        Raises:
            ValueError: ``value`` is negative: statsD reads ``-N|g`` as "decrease by N".
        """
        if value < 0:
            raise ValueError(f"gauge {name!r}: statsD cannot set a negative value ({value!r})")
        self._send(name, _format_number(value), "g")

    def timing(self, name: str, milliseconds: float) -> None:
        """Record a duration, in milliseconds."""
        self._send(name, _format_number(milliseconds), "ms")

    def histogram(self, name: str, value: float) -> None:
        """Record a value in a distribution; sent as a timer (``|ms``), as gunicorn does."""
        self._send(name, _format_number(value), "ms")

    def close(self) -> None:
        """Close the socket; later metrics are dropped."""
        self._socket.close()

    def __enter__(self) -> Statsd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Statsd(host={self.host!r}, port={self.port!r}, prefix={self.prefix!r})"

    def _send(self, name: str, value: str, kind: str, rate: float = 1.0) -> None:
        if not name or not _FORBIDDEN_IN_NAMES.isdisjoint(name):
            raise ValueError(f"statsd: invalid metric name {name!r}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"statsd: the sample rate must be in (0, 1], got {rate!r}")
        line = f"{self.prefix}.{name}" if self.prefix else name
        line = f"{line}:{value}|{kind}"
        if rate < 1.0:
            if self._sampler() >= rate:
                return
            line = f"{line}|@{rate!r}"
        try:
            self._socket.send(line.encode())
        except OSError as exc:
            self.dropped += 1
            if self.dropped == 1:
                LOGGER.debug("statsd: cannot send to %s:%d: %s", self.host, self.port, exc)


def request_metrics(statsd: Statsd, status: int, duration_s: float) -> None:
    """Record one served request: its duration, the request count and its status."""
    statsd.timing(REQUEST_DURATION, duration_s * 1000)
    statsd.incr(REQUESTS)
    statsd.incr(REQUEST_STATUS.format(status))


class StatsdLogHandler(logging.Handler):
    """Counts log records as gunicorn's ``gunicorn.log.*`` metrics; writes nothing.

    CRITICAL records count as ``gunicorn.log.critical``, ERROR records with a traceback
    as ``gunicorn.log.exception`` and other ERROR records as ``gunicorn.log.error``,
    WARNING records as ``gunicorn.log.warning``; lower levels are not counted.

    Args:
        statsd: Where to send the counters.
        level: The handler's level; WARNING by default (nothing lower is counted).
    """

    def __init__(self, statsd: Statsd, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.statsd = statsd

    def emit(self, record: logging.LogRecord) -> None:
        """Count ``record`` (statsD errors are already swallowed by :class:`Statsd`)."""
        if record.levelno >= logging.CRITICAL:
            self.statsd.incr(LOG_CRITICAL)
        elif record.levelno >= logging.ERROR:
            traceback = record.exc_info is not None and record.exc_info[0] is not None
            self.statsd.incr(LOG_EXCEPTION if traceback else LOG_ERROR)
        elif record.levelno >= logging.WARNING:
            self.statsd.incr(LOG_WARNING)


class StatsdSettings(Protocol):
    """The settings :func:`install` reads (a :class:`~trioserve.Config`); a protocol,
    since the settings registry itself checks ``--statsd-host`` with this module."""

    @property
    def statsd_host(self) -> str | None: ...

    @property
    def statsd_prefix(self) -> str: ...


def install(config: StatsdSettings) -> Statsd | None:
    """For ``--statsd-host``: the client, with trioserve's warnings and errors counted.

    Called once per process (master, each worker, the in-process server).
    """
    if config.statsd_host is None:
        return None
    statsd = Statsd.from_setting(config.statsd_host, config.statsd_prefix)
    logger = logging.getLogger("trioserve")
    for old in [h for h in logger.handlers if isinstance(h, StatsdLogHandler)]:
        logger.removeHandler(old)
    logger.addHandler(StatsdLogHandler(statsd))
    return statsd


class RequestMetrics:
    """Sits where the HTTP edge reports each finished request (the access log), sends
    the request's metrics, and passes the report on to the access log if there is one."""

    def __init__(self, statsd: Statsd, access_log: Any | None) -> None:
        self.statsd = statsd
        self.access_log = access_log

    def log(
        self,
        scope: MutableMapping[str, Any],
        status: int,
        response_headers: Sequence[tuple[bytes, bytes]],
        body_bytes: int,
        request_time: float,
        duration: float,
    ) -> None:
        request_metrics(self.statsd, status, duration)
        if self.access_log is not None:
            self.access_log.log(scope, status, response_headers, body_bytes, request_time, duration)

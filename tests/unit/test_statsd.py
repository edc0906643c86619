"""statsD metrics: gunicorn's names, the wire format, and sends that never fail."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from tests.helpers import require_ipv6_loopback
from trioserve import ConfigError
from trioserve._statsd import (
    LOG_WARNING,
    REQUESTS,
    WORKERS,
    Statsd,
    StatsdLogHandler,
    parse_statsd_host,
    request_metrics,
)

TIMEOUT = 5


@pytest.fixture
async def collector() -> AsyncIterator[trio.socket.SocketType]:
    """A UDP socket on 127.0.0.1, standing in for the statsD server."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        yield sock


def port_of(sock: trio.socket.SocketType) -> int:
    port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def statsd(collector: trio.socket.SocketType) -> Iterator[Statsd]:
    """A client sending to the collector, without a prefix."""
    with Statsd("127.0.0.1", port_of(collector)) as client:
        yield client


async def receive(sock: trio.socket.SocketType, count: int = 1) -> list[bytes]:
    with trio.fail_after(TIMEOUT):
        return [await sock.recv(4096) for _ in range(count)]


async def test_wire_format_of_each_metric_type(
    statsd: Statsd, collector: trio.socket.SocketType
) -> None:
    """Counters are |c, gauges |g, timers and histograms |ms; one datagram per metric."""
    statsd.incr("hits")
    statsd.incr("hits", 5)
    statsd.decr("hits", 2)
    statsd.gauge(WORKERS, 4)
    statsd.timing("t", 12.5)
    statsd.histogram("h", 3)
    assert await receive(collector, 6) == [
        b"hits:1|c",
        b"hits:5|c",
        b"hits:-2|c",
        b"gunicorn.workers:4|g",
        b"t:12.5|ms",
        b"h:3|ms",
    ]
    assert statsd.dropped == 0


async def test_request_metrics_use_gunicorn_names(
    statsd: Statsd, collector: trio.socket.SocketType
) -> None:
    """A request sends gunicorn's duration timer (ms), request counter and status counter."""
    request_metrics(statsd, 404, 0.0123456)
    assert await receive(collector, 3) == [
        b"gunicorn.request.duration:12.346|ms",
        b"gunicorn.requests:1|c",
        b"gunicorn.request.status.404:1|c",
    ]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", b"gunicorn.requests:1|c"),
        ("web", b"web.gunicorn.requests:1|c"),
        ("svc.app.", b"svc.app.gunicorn.requests:1|c"),
    ],
)
async def test_prefix_is_joined_with_one_dot(
    collector: trio.socket.SocketType, prefix: str, expected: bytes
) -> None:
    """--statsd-prefix comes first, joined with a dot; a trailing dot is not doubled."""
    with Statsd.from_setting(f"127.0.0.1:{port_of(collector)}", prefix) as client:
        client.incr(REQUESTS)
    assert await receive(collector) == [expected]


async def test_sampled_counters_carry_the_rate(collector: trio.socket.SocketType) -> None:
    """With rate < 1 a counter is sent with |@rate when drawn, and skipped otherwise."""
    draws = iter([0.05, 0.5, 0.2])
    with Statsd("127.0.0.1", port_of(collector), sampler=lambda: next(draws)) as client:
        client.incr("sampled", rate=0.1)  # 0.05 < 0.1: sent
        client.incr("skipped", rate=0.1)  # 0.5 >= 0.1: not sent
        client.decr("sampled", 3, rate=0.25)  # 0.2 < 0.25: sent
        client.incr("always")  # rate 1: no draw, no |@
        assert client.dropped == 0
    assert await receive(collector, 3) == [
        b"sampled:1|c|@0.1",
        b"sampled:-3|c|@0.25",
        b"always:1|c",
    ]


async def test_float_values_are_rounded_to_three_decimals(
    statsd: Statsd, collector: trio.socket.SocketType
) -> None:
    """Floats are sent as plain decimals with at most three places, no exponent."""
    statsd.timing("a", 2.0)
    statsd.timing("b", 1234567.8912)
    statsd.timing("c", 0.0001)
    statsd.gauge("d", 0.5)
    assert await receive(collector, 4) == [b"a:2|ms", b"b:1234567.891|ms", b"c:0|ms", b"d:0.5|g"]


async def test_invalid_metrics_are_programming_errors(statsd: Statsd) -> None:
    """Bad names, rates and values raise ValueError instead of sending garbage."""
    with pytest.raises(ValueError, match="invalid metric name"):
        statsd.incr("a:b")
    with pytest.raises(ValueError, match="sample rate"):
        statsd.incr("a", rate=0)
    with pytest.raises(ValueError, match="negative"):
        statsd.gauge("a", -1)
    with pytest.raises(ValueError, match="finite"):
        statsd.timing("a", float("nan"))


def test_send_to_a_closed_port_is_swallowed_and_counted() -> None:
    """ECONNREFUSED from a port nobody listens on drops metrics without raising."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Statsd("127.0.0.1", port) as client:
        # The ICMP "port unreachable" answering one send fails the next one.
        for _ in range(20):
            client.incr(REQUESTS)
        assert client.dropped >= 1


async def test_send_after_close_is_dropped(statsd: Statsd) -> None:
    """A closed client drops metrics silently."""
    statsd.close()
    statsd.incr(REQUESTS)
    assert statsd.dropped == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:8125", ("localhost", 8125)),
        ("statsd.internal:9125", ("statsd.internal", 9125)),
        ("10.0.0.1", ("10.0.0.1", 8125)),
        ("[::1]:8125", ("::1", 8125)),
        ("[::1]", ("::1", 8125)),
    ],
)
def test_statsd_host_forms(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT and [IPV6]:PORT parse; without a port gunicorn's default 8125 is used."""
    assert parse_statsd_host(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the host is empty"),
        (":8125", "the host is empty"),
        ("localhost:", "the port must be a number from 1 to 65535"),
        ("localhost:http", "the port must be a number from 1 to 65535"),
        ("localhost:0", "the port must be a number from 1 to 65535"),
        ("localhost:65536", "the port must be a number from 1 to 65535"),
        ("::1:8125", "put IPv6 addresses in brackets, e.g. [::1]:8125"),
        ("[::1:8125", "missing ']' after the IPv6 address"),
        ("[::1]8125", "expected ':' after ']'"),
        (" localhost:8125", "stray spaces"),
    ],
)
def test_bad_statsd_host_is_a_config_error(text: str, reason: str) -> None:
    """A bad --statsd-host is a one-line ConfigError naming the flag and the value."""
    with pytest.raises(ConfigError) as info:
        Statsd.from_setting(text, "")
    assert str(info.value) == f"--statsd-host: expected HOST:PORT, got {text!r} ({reason})"


def test_unresolvable_host_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host name that does not resolve fails at startup, naming the flag and the host."""

    def fail(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(ConfigError, match=r"^--statsd-host: cannot resolve 'nowhere': "):
        Statsd.from_setting("nowhere:8125", "")


def test_port_out_of_range_is_a_config_error() -> None:
    """The constructor checks the port too."""
    with pytest.raises(ConfigError, match="expected a port from 1 to 65535, got 70000"):
        Statsd("127.0.0.1", 70000)


async def test_log_handler_counts_levels_like_gunicorn(
    statsd: Statsd, collector: trio.socket.SocketType
) -> None:
    """CRITICAL, ERROR, ERROR with a traceback and WARNING records each bump their counter."""
    logger = logging.getLogger("trioserve.test_statsd")
    logger.propagate = False
    handler = StatsdLogHandler(statsd)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("not counted")
        logger.warning("w")
        logger.error("e")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("x")
        logger.critical("c")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert await receive(collector, 4) == [
        LOG_WARNING.encode() + b":1|c",
        b"gunicorn.log.error:1|c",
        b"gunicorn.log.exception:1|c",
        b"gunicorn.log.critical:1|c",
    ]


async def test_ipv6_collector() -> None:
    """[::1]:PORT sends over IPv6."""
    require_ipv6_loopback()
    sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    await sock.bind(("::1", 0))
    with sock:
        with Statsd.from_setting(f"[::1]:{port_of(sock)}", "") as client:
            client.gauge(WORKERS, 2)
        assert await receive(sock) == [b"gunicorn.workers:2|g"]

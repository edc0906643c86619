"""A connection's failure costs that connection only, whatever stage it came from; the
lines a client can cause once per connection are rate-limited."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import trio
import trio_websocket

from tests.helpers import hello_app
from trioserve import Config, _accept, _pipeline, serve
from trioserve._lograte import LIMIT, RateLimit, install

GET = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
PROXY = b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n"


def fail_once(monkeypatch: pytest.MonkeyPatch, name: str) -> list[RuntimeError]:
    """Make ``_pipeline.<name>`` raise a RuntimeError on its first call only (a bug at
    that stage); the errors it raised."""
    real = getattr(_pipeline, name)
    raised: list[RuntimeError] = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        if not raised:
            raised.append(RuntimeError(f"injected failure in {name}"))
            raise raised[0]
        return real(*args, **kwargs)

    monkeypatch.setattr(_pipeline, name, failing)
    return raised


async def echo_handler(stream: trio.abc.Stream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def native_echo(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    await ws.send_message(await ws.get_message())


async def receive_all(stream: trio.abc.Stream) -> bytes:
    """What the server sends until it closes; a broken connection ends it too."""
    data = b""
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except (trio.BrokenResourceError, ssl.SSLError):
        pass
    return data


async def open_stream(host: str, port: int, tls: ssl.SSLContext | None) -> trio.abc.Stream:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if tls is not None:
        stream = trio.SSLStream(stream, tls, server_hostname="127.0.0.1")
    return stream


async def first_connection(host: str, port: int, tls: ssl.SSLContext | None, hello: bytes) -> None:
    """The connection that meets the injected failure: the server closes it."""
    stream = await open_stream(host, port, tls)
    try:
        await stream.send_all(hello)
    except (trio.BrokenResourceError, ssl.SSLError):
        pass  # closed during the TLS handshake
    else:
        assert b"200 OK" not in await receive_all(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def http_ok(host: str, port: int, tls: ssl.SSLContext | None, hello: bytes) -> None:
    stream = await open_stream(host, port, tls)
    async with stream:
        await stream.send_all(hello)
        assert (await receive_all(stream)).startswith(b"HTTP/1.1 200 OK")


async def echo_ok(host: str, port: int, tls: ssl.SSLContext | None, hello: bytes) -> None:
    stream = await open_stream(host, port, tls)
    async with stream:
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"


async def websocket_ok(host: str, port: int, tls: ssl.SSLContext | None, hello: bytes) -> None:
    async with trio_websocket.open_websocket_url(f"ws://{host}:{port}/") as ws:
        await ws.send_message("ping")
        assert await ws.get_message() == "ping"


Check = Callable[[str, int, "ssl.SSLContext | None", bytes], Any]

# stage: (the _pipeline function that fails, settings, TLS, what a client sends first,
# how the next connection checks that the server still serves)
STAGES: dict[str, tuple[str, dict[str, Any], bool, bytes, Check]] = {
    "proxy-protocol": (
        "read_proxy_protocol",
        {"proxy_protocol": "v1"},
        False,
        PROXY + GET,
        http_ok,
    ),
    "tls-handshake": ("tls_handshake", {}, True, GET, http_ok),
    "tls-extension": ("tls_extension", {}, True, GET, http_ok),
    "raw-tcp-edge": ("serve_stream_connection", {"app": echo_handler}, False, b"ping", echo_ok),
    "native-websocket-edge": (
        "serve_native_websocket",
        {"app": native_echo, "interface": "websocket"},
        False,
        b"GET / HTTP/1.1\r\n\r\n",
        websocket_ok,
    ),
}


def no_error_groups(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing at ERROR or above is an exception group or its traceback."""
    for record in caplog.records:
        if record.levelno >= logging.ERROR:
            assert record.exc_info is None or not isinstance(
                record.exc_info[1], BaseExceptionGroup
            ), record.getMessage()


@pytest.mark.parametrize("stage", list(STAGES))
async def test_a_failing_stage_costs_one_connection(nursery, pki, caplog, monkeypatch, stage):
    """An error escaping the PROXY header, the TLS handshake, the TLS extension, the raw
    TCP or native websocket edge is logged once at ERROR with its traceback and closes
    that connection; the server serves the next one."""
    name, settings, tls, hello, next_ok = STAGES[stage]
    raised = fail_once(monkeypatch, name)
    tls_settings: dict[str, Any] = (
        {"certfile": str(pki.cert_file), "keyfile": str(pki.key_file)} if tls else {}
    )
    config = Config(
        **cast(dict[str, Any], {"app": hello_app, "bind": ["127.0.0.1:0"], "workers": 0})
        | {"lifespan": "off"}
        | tls_settings
        | settings
    )
    client_tls = pki.client_context() if tls else None
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        await first_connection(host, port, client_tls, hello)
        await next_ok(host, port, client_tls, hello)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage().split(" from ")[0]) for r in errors] == [
        ("trioserve.connection", "unexpected error while serving a connection")
    ]
    assert errors[0].exc_info is not None and errors[0].exc_info[1] is raised[0]
    no_error_groups(caplog)


async def test_a_failing_edge_with_connection_hooks_costs_one_connection(
    nursery, caplog, monkeypatch
):
    """With connection_made/connection_lost set, an error escaping the edge reaches
    connection_lost as its exc, is logged once, and the server serves the next one."""
    raised = fail_once(monkeypatch, "serve_stream_connection")
    lost: list[BaseException | None] = []
    config = Config(
        app=echo_handler,
        bind=["127.0.0.1:0"],
        workers=0,
        connection_made=lambda conn: None,
        connection_lost=lambda conn, exc=None: lost.append(exc),
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        await first_connection(host, port, None, b"ping")
        await echo_ok(host, port, None, b"")
    assert lost[0] is raised[0]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert errors[0].exc_info[1] is raised[0]
    no_error_groups(caplog)


async def test_a_failing_connection_made_hook_costs_one_connection(nursery, caplog):
    """A connection_made hook that raises closes its connection, logged once on the
    rate-limited connection logger; the next connection is served."""
    calls: list[int] = []

    def connection_made(conn: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("hook bug")

    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        lifespan="off",
        connection_made=connection_made,
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        await first_connection(host, port, None, GET)
        await http_ok(host, port, None, GET)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [
        (
            "trioserve.connection",
            "hook connection_made raised ValueError: hook bug; closing the connection",
        )
    ]


async def test_connection_and_request_hook_failures_use_the_limited_logger(nursery, caplog):
    """connection_lost and post_request failures, once per connection or request, are
    logged on the rate-limited trioserve.connection logger."""

    lost = trio.Event()

    def fail(*args: Any, exc: BaseException | None = None) -> None:
        raise ValueError("hook bug")

    def fail_lost(*args: Any, exc: BaseException | None = None) -> None:
        lost.set()  # (logged as soon as it raises, before the test runs again)
        raise ValueError("hook bug")

    config = Config(
        app=hello_app,
        bind=["127.0.0.1:0"],
        workers=0,
        lifespan="off",
        connection_lost=fail_lost,
        post_request=fail,
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        await http_ok(host, port, None, GET)
        await lost.wait()
    errors = sorted((r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR)
    assert errors == [
        ("trioserve.connection", "hook connection_lost raised ValueError: hook bug"),
        ("trioserve.connection", "hook post_request raised ValueError: hook bug"),
    ]


async def test_a_stream_handler_group_is_logged_as_its_one_error(nursery, caplog):
    """A raw TCP handler that raises a group of one error is the app's error: logged
    as that error, never as a group, and the server goes on."""
    calls: list[int] = []

    async def handler(stream: trio.abc.Stream) -> None:
        calls.append(1)
        if len(calls) == 1:
            async with trio.open_nursery() as inner:
                inner.start_soon(_raise_value_error)
        await echo_handler(stream)

    [(host, port)] = await nursery.start(
        serve, Config(app=handler, bind=["127.0.0.1:0"], workers=0)
    )
    with trio.fail_after(10):
        await first_connection(host, port, None, b"ping")
        await echo_ok(host, port, None, b"")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [
        ("trioserve.tcp", "stream handler raised")
    ]
    assert isinstance(errors[0].exc_info[1], ValueError)
    no_error_groups(caplog)


async def _raise_value_error() -> None:
    raise ValueError("handler bug")


@pytest.fixture
def rate_limit() -> Iterator[RateLimit]:
    """The default rate limit on the edge loggers, on a clock that stands still (one
    window for the whole test) and no timer: what it hid is summed up at flush()."""
    limit = RateLimit(clock=lambda: 0.0, schedule=lambda delay, callback: None)
    install(limit)
    yield limit
    install(None)


async def test_a_burst_of_bad_proxy_headers_is_rate_limited(nursery, caplog, rate_limit):
    """Of 25 bad PROXY headers in a burst, LIMIT "dropping connection" lines are logged,
    then one line counts the rest."""
    caplog.set_level(logging.INFO, "trioserve")
    config = Config(
        app=hello_app, bind=["127.0.0.1:0"], workers=0, lifespan="off", proxy_protocol="v1"
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(10):
        for _ in range(25):
            await first_connection(host, port, None, b"PROXY BOGUS\r\n" + GET)
    rate_limit.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "trioserve.connection"]
    assert len(lines) == LIMIT + 1
    assert all(line.startswith("dropping connection from ") for line in lines[:LIMIT])
    assert lines[-1].startswith(f"… {25 - LIMIT} more like this in the last second (the last: ")
    assert "dropping connection from " in lines[-1]


class _NotAnError(BaseException):
    """Like trio.Cancelled and KeyboardInterrupt: not an Exception."""


async def test_what_is_not_an_exception_is_never_swallowed():
    """The per-connection catch lets a BaseException that is not an Exception (as
    trio.Cancelled and KeyboardInterrupt) go on, and still closes the connection."""
    server_side, client_side = socket.socketpair()

    async def handler(peer: Any) -> None:
        raise _NotAnError

    with client_side, pytest.raises(_NotAnError):
        await _accept._serve(server_side, "", None, None, handler, None)
    assert server_side.fileno() == -1  # closed

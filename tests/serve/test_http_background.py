"""Work an app does after its response (Starlette's and FastAPI's BackgroundTask) does not
hold up the connection: the next request is answered at once, in a new task, while the
app works on in the old one; over memory streams with virtual time."""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers import (
    H11Client,
    header,
    hello_app,
    read_until_eof,
    serve_http_connection,
    tcp_connection,
)
from trioserve import Config
from trioserve._mypyc import compiled_modules
from trioserve._serve_http import HANDOVER_AFTER, HTTPOptions
from trioserve._state import ServerState

# The next request waits at most this long for a handover (see Handovers).
AT_ONCE = 2 * HANDOVER_AFTER + 0.001


class BackgroundApp:
    """``/bg`` answers at once and then works ``seconds`` more (raising ``error`` at the
    end, if set), as a BackgroundTask does; every other path is ``hello_app``. Records
    which task served each request, and when the work began and ended."""

    def __init__(self, seconds: float = 10.0, error: Exception | None = None) -> None:
        self.seconds = seconds
        self.error = error
        self.tasks: list[trio.lowlevel.Task] = []
        self.working = 0
        self.done = trio.Event()
        self.cancelled = False
        self.started_at = self.ended_at = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.tasks.append(trio.lowlevel.current_task())
        if scope["path"] != "/bg":
            await hello_app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})
        self.working += 1
        self.started_at = trio.current_time()
        try:
            await trio.sleep(self.seconds)
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.working -= 1
        self.ended_at = trio.current_time()
        self.done.set()
        if self.error is not None:
            raise self.error


def start(
    nursery: trio.Nursery, app: Any, **settings: Any
) -> tuple[H11Client, ServerState, trio.Event]:
    """Serve one connection over a memory stream; the event is set once its serving
    returned (the connection ended and every app it ran returned)."""
    state = ServerState(Config(**settings))
    client, server = trio.testing.memory_stream_pair()
    returned = trio.Event()

    async def serve() -> None:
        await serve_http_connection(server, app, state)
        returned.set()

    nursery.start_soon(serve)
    return H11Client(client), state, returned


async def test_next_request_is_answered_while_the_app_works_on(nursery, autojump_clock):
    """After a complete response whose app works on for 10 s, the next request on the
    same connection is answered at once, by another task; the work completes."""
    app = BackgroundApp(seconds=10)
    client, _, _ = start(nursery, app, keep_alive=30)
    response, body = await client.request(target=b"/bg")
    assert (response.status_code, body) == (200, b"ok")
    answered = trio.current_time()
    response, body = await client.request(target=b"/")
    assert (response.status_code, body) == (200, b"Hello, world!")
    assert trio.current_time() - answered < AT_ONCE
    assert app.working == 1
    assert app.tasks[1] is not app.tasks[0]
    await app.done.wait()
    assert app.ended_at - app.started_at == pytest.approx(10)
    # The connection still serves, from its new task.
    response, _ = await client.request(target=b"/")
    assert response.status_code == 200
    assert app.tasks[2] is app.tasks[1]


def _function_name(name: str) -> str:
    """A task's name as trio gives it for a function (its qualified name), also for one
    compiled with mypyc (which trio names by its repr, ``<function NAME at 0x...>``)."""
    match = re.fullmatch(r"<function (\S+) at 0x[0-9a-f]+>", name)
    return match.group(1) if match else name


def descendants(task: trio.lowlevel.Task) -> list[str]:
    """The names of the tasks below ``task``, through all its nurseries."""
    names = []
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            names += [_function_name(child.name), *descendants(child)]
    return names


async def test_app_returning_after_its_response_keeps_its_task(nursery, autojump_clock):
    """An app that returns right after its last message costs no task: the same task
    serves the connection's next requests, and nothing is spawned."""
    app = BackgroundApp()
    state = ServerState(Config())
    client_stream, server = trio.testing.memory_stream_pair()
    client = H11Client(client_stream)
    async with trio.open_nursery() as inner:
        inner.start_soon(serve_http_connection, server, app, state)
        for _ in range(3):
            await client.request(target=b"/")
        await trio.sleep(1)  # (many handover periods)
        (serving,) = inner.child_tasks
        # Only the two watchers the helper runs beside the connection, as the server does.
        assert sorted(name.rpartition(".")[2] for name in descendants(serving)) == [
            "watch_deadlines",
            "watch_handovers",
        ]
        await client_stream.aclose()
    assert app.tasks == [app.tasks[0]] * 3


async def test_pipelined_request_is_answered_while_the_app_works_on(nursery, autojump_clock):
    """A request the client sent along with the previous one (pipelined, already
    buffered) is answered at once too."""
    app = BackgroundApp(seconds=10)
    client, _, _ = start(nursery, app)
    await client.stream.send_all(
        b"GET /bg HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    data = b""
    while b"Hello, world!" not in data:
        data += await client.stream.receive_some()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert data.endswith(b"\r\n\r\nHello, world!")
    assert trio.current_time() < AT_ONCE
    assert app.working == 1


async def test_several_handovers_in_a_row_end_with_the_connection(nursery, autojump_clock):
    """Background work on every request of a connection: each next one is answered at
    once; the connection's serving returns once it ended and every app returned."""
    app = BackgroundApp(seconds=10)
    client, state, returned = start(nursery, app)
    for _ in range(3):
        sent = trio.current_time()
        response, _ = await client.request(target=b"/bg")
        assert response.status_code == 200
        assert trio.current_time() - sent < AT_ONCE
    assert app.working == 3
    assert len(state.connections) == 1
    await client.stream.aclose()
    await returned.wait()
    assert app.working == 0 and not app.cancelled
    assert not state.connections
    assert state.active_requests == 0 and state.requests_served == 3


async def test_close_response_ends_the_connection_without_waiting_for_the_app(
    nursery, autojump_clock
):
    """A response that says Connection: close ends the connection at once (the client
    sees the end), while the app works on."""
    app = BackgroundApp(seconds=10)
    client, _, returned = start(nursery, app)
    await client.stream.send_all(b"GET /bg HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = await read_until_eof(client.stream)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\nok")
    assert trio.current_time() < AT_ONCE
    assert app.working == 1
    await returned.wait()
    assert trio.current_time() == pytest.approx(10, abs=AT_ONCE)


async def test_error_in_background_work_is_logged_and_the_connection_serves_on(
    nursery, autojump_clock, caplog
):
    """An exception the app raises after its complete response is an app error in the
    log; the connection is unaffected."""
    app = BackgroundApp(seconds=1, error=ValueError("background boom"))
    client, _, _ = start(nursery, app)
    await client.request(target=b"/bg")
    answered = trio.current_time()
    response, _ = await client.request(target=b"/")
    assert response.status_code == 200
    assert trio.current_time() - answered < AT_ONCE
    await app.done.wait()
    await trio.sleep(1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "exception in ASGI app while serving GET /bg (after its response was sent)"
    ]
    assert errors[0].exc_info is not None
    response, body = await client.request(target=b"/")
    assert (response.status_code, body) == (200, b"Hello, world!")
    assert header(response, b"connection") is None


async def test_error_right_after_a_complete_response_ends_the_connection(
    nursery, autojump_clock, caplog
):
    """An app that raises as soon as its complete response is out (no handover) is
    logged, and its connection ends after the response, as before and as in uvicorn and
    gunicorn."""
    app = BackgroundApp(seconds=0, error=ValueError("boom"))
    client, _, _ = start(nursery, app)
    response, body = await client.request(target=b"/bg")
    assert (response.status_code, body) == (200, b"ok")
    assert await read_until_eof(client.stream) == b""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "exception in ASGI app while serving GET /bg (after its response was sent)"
    ]


async def drain(
    app: BackgroundApp, request: bytes, *, graceful_timeout: float, stop_at: float
) -> float:
    """Serve one connection in a nursery drained as the server drains its connection
    nursery (stop at ``stop_at``, deadline ``graceful_timeout`` later); the time the
    drain ended."""
    state = ServerState(Config(graceful_timeout=graceful_timeout))
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as connections:
        connections.start_soon(serve_http_connection, server, app, state)
        await client.send_all(request)
        assert (await read_until_eof(client)).endswith(b"\r\n\r\nok")
        await trio.sleep_until(stop_at)
        state.request_stop()
        connections.cancel_scope.deadline = state.drain_deadline
    return trio.current_time()


async def test_graceful_stop_waits_for_background_work(autojump_clock):
    """A graceful stop waits for work an app does after its response, when it ends
    within the graceful timeout."""
    app = BackgroundApp(seconds=4)
    close = b"GET /bg HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ended = await drain(app, close, graceful_timeout=10, stop_at=1)
    assert ended == pytest.approx(4, abs=AT_ONCE)
    assert app.done.is_set() and not app.cancelled


async def test_graceful_stop_cancels_background_work_at_the_graceful_timeout(autojump_clock):
    """Work after the response that outlasts the graceful timeout is cancelled then."""
    app = BackgroundApp(seconds=100)
    close = b"GET /bg HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ended = await drain(app, close, graceful_timeout=3, stop_at=1)
    assert ended == pytest.approx(4)
    assert app.cancelled and not app.done.is_set()


async def test_request_during_a_stop_after_a_handover_is_answered_with_close(
    nursery, autojump_clock
):
    """A request on a handed-over connection after a stop began is answered with
    Connection: close, as on any kept-alive connection."""
    app = BackgroundApp(seconds=10)
    client, state, _ = start(nursery, app)
    await client.request(target=b"/bg")
    await trio.sleep(1)
    state.request_stop()
    response, _ = await client.request(target=b"/")
    assert header(response, b"connection") == b"close"
    assert await read_until_eof(client.stream) == b""
    assert app.working == 1


async def test_background_work_counts_against_limit_concurrency(nursery, autojump_clock):
    """A request whose app works on after its response still counts as in progress
    (as in uvicorn): with --limit-concurrency 1 the next request is refused until the
    work ends."""
    app = BackgroundApp(seconds=10)
    client, state, _ = start(nursery, app, limit_concurrency=1)
    await client.request(target=b"/bg")
    response, _ = await client.request(target=b"/")
    assert response.status_code == 503
    assert state.active_requests == 1


class RecordingAccessLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, int, float, float]] = []

    def log(
        self,
        scope: MutableMapping[str, Any],
        status: int,
        response_headers: Sequence[tuple[bytes, bytes]],
        body_bytes: int,
        request_time: float,
        duration: float,
    ) -> None:
        self.lines.append((scope["path"], status, trio.current_time(), duration))


async def test_access_log_line_comes_with_the_response_not_the_background_work(
    nursery, autojump_clock
):
    """The access log line of a request with background work is written once its
    response is complete (before the next request's line), not when the app returns."""
    app = BackgroundApp(seconds=10)
    access_log = RecordingAccessLog()
    state = ServerState(Config())
    options = HTTPOptions(state.config, access_log=access_log)
    client_stream, server = trio.testing.memory_stream_pair()
    nursery.start_soon(
        lambda: serve_http_connection(server, app, state, options=options),
    )
    client = H11Client(client_stream)
    await client.request(target=b"/bg")
    await client.request(target=b"/")
    await app.done.wait()
    await trio.sleep(1)
    assert [(path, status) for path, status, _, _ in access_log.lines] == [
        ("/bg", 200),
        ("/", 200),
    ]
    assert access_log.lines[0][2] < AT_ONCE


async def test_next_request_is_answered_at_once_on_a_plain_socket(nursery):
    """On a real TCP connection, served through its socket directly, the next request is
    answered while the app still works after its first response."""
    release = trio.Event()
    still_working = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/bg":
            still_working.append(not release.is_set())
            await hello_app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await release.wait()

    client_stream, server_stream, sock = await tcp_connection()
    state = ServerState(Config())
    nursery.start_soon(
        lambda: serve_http_connection(server_stream, app, state, sock=sock),
    )
    client = H11Client(client_stream)
    with trio.fail_after(5):
        _, body = await client.request(target=b"/bg")
        assert body == b"ok"
        response, body = await client.request(target=b"/")
    assert (response.status_code, body) == (200, b"Hello, world!")
    assert still_working == [True]
    release.set()
    await client_stream.aclose()


async def test_websocket_upgrade_after_a_handover_is_served(nursery, autojump_clock):
    """A WebSocket upgrade on a connection handed over is served by its new task, while
    the previous request's app works on."""
    app = BackgroundApp(seconds=10)
    upgraded: list[trio.lowlevel.Task] = []

    async def websocket(stream: trio.abc.Stream, **kwargs: Any) -> None:
        upgraded.append(trio.lowlevel.current_task())
        await stream.send_all(b"upgraded")

    state = ServerState(Config())
    options = HTTPOptions(state.config, websocket=websocket)
    client_stream, server = trio.testing.memory_stream_pair()
    nursery.start_soon(lambda: serve_http_connection(server, app, state, options=options))
    client = H11Client(client_stream)
    await client.request(target=b"/bg")
    await client_stream.send_all(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert await read_until_eof(client_stream) == b"upgraded"
    assert trio.current_time() < AT_ONCE
    assert upgraded[0] is not app.tasks[0]
    assert app.working == 1


async def test_connection_keeps_few_enough_attributes_for_compact_instances(nursery):
    """A served connection has at most 28 instance attributes: past CPython's limit
    (about 30 names per class, any set since counting) each connection gets a full
    ``__dict__`` and every request costs ~5% more instructions (see _Owner)."""
    connections: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        connections.extend(state.connections)
        await hello_app(scope, receive, send)

    client_stream, server_stream, sock = await tcp_connection()
    state = ServerState(Config())
    nursery.start_soon(
        lambda: serve_http_connection(server_stream, app, state, sock=sock),
    )
    client = H11Client(client_stream)
    with trio.fail_after(5):
        for _ in range(2):
            response, body = await client.request(target=b"/")
            assert (response.status_code, body) == (200, b"Hello, world!")
    await client_stream.aclose()
    assert len(connections) == 2
    assert connections[0] is connections[1]
    if "trioserve._serve_http" not in compiled_modules():
        # (Compiled with mypyc, the class has a fixed layout and no __dict__ at all.)
        assert len(vars(connections[0])) <= 28


async def test_watcher_sets_no_timer_for_apps_that_return_at_once(nursery, mock_clock):
    """Apps that return right after their response leave the handover watcher parked,
    with no timer: the clock never moves here, and the watcher waits for an offer."""
    state = ServerState(Config())
    options = HTTPOptions(state.config)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    app: Any = hello_app
    nursery.start_soon(
        lambda: serve_http_connection(server_stream, app, state, options=options),
    )
    client = H11Client(client_stream)
    for _ in range(3):
        response, body = await client.request(target=b"/")
        assert (response.status_code, body) == (200, b"Hello, world!")
        await trio.testing.wait_all_tasks_blocked()
        assert len(options.handover_watch.parked) == 1
    await client_stream.aclose()

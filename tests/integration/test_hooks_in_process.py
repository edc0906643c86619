"""Server hooks in the in-process server: serve() with workers=0 on 127.0.0.1:0, real clients."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import trio

from trioserve import (
    AppLoadError,
    Config,
    ConnectionInfo,
    ExitReason,
    HookError,
    RequestInfo,
    ResponseInfo,
    ServerInfo,
    WorkerInfo,
    serve,
)

TIMEOUT = 10


def in_process(app: Any, **settings: Any) -> Config:
    return Config(app=app, bind=["127.0.0.1:0"], workers=0, **settings)


class Recorder:
    """Hooks that append (name, arguments, exc) to one list, in the order they ran."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[Any, ...], BaseException | None]] = []

    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]

    def hook(self, name: str) -> Any:
        def record(*args: Any, exc: BaseException | None = None) -> None:
            self.events.append((name, args, exc))

        return record

    def hooks(self, *names: str) -> dict[str, Any]:
        return {name: self.hook(name) for name in names}


def lifespan_app(recorder: Recorder) -> Any:
    """An ASGI app that answers 'hi' and records its lifespan events with the hooks."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                recorder.events.append((message["type"], (), None))
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    return app


async def plain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": [(b"x-answer", b"42")]})
    await send({"type": "http.response.body", "body": b"created"})


# -- the server's life ------------------------------------------------------------------------


async def serve_once(recorder: Recorder, hooks: dict[str, Any]) -> None:
    """Serve the lifespan app with ``hooks``, answer one request, then cancel serve()."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            [(host, port)] = await nursery.start(serve, in_process(lifespan_app(recorder), **hooks))
            # when_ready ran before serve() reported the addresses.
            assert recorder.names() == [
                "on_starting",
                "lifespan.startup",
                "post_worker_init",
                "when_ready",
            ]
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://{host}:{port}/")).text == "hi"
            nursery.cancel_scope.cancel()


async def test_server_hooks_run_in_order_around_the_app() -> None:
    """on_starting, lifespan startup, post_worker_init, when_ready; on stop, lifespan
    shutdown then on_exit: each once, with exc None after a clean stop."""
    recorder = Recorder()
    await serve_once(
        recorder, recorder.hooks("on_starting", "post_worker_init", "when_ready", "on_exit")
    )
    assert recorder.names() == [
        "on_starting",
        "lifespan.startup",
        "post_worker_init",
        "when_ready",
        "lifespan.shutdown",
        "on_exit",
    ]
    assert [exc for _, _, exc in recorder.events] == [None] * 6
    arguments = {name: args for name, args, _ in recorder.events}
    [server] = arguments["on_starting"]
    assert isinstance(server, ServerInfo)
    assert server.pid == os.getpid()
    assert server.workers == []
    assert arguments["when_ready"] == (server,)
    assert arguments["on_exit"] == (server,)
    [worker] = arguments["post_worker_init"]
    assert isinstance(worker, WorkerInfo)
    assert (worker.id, worker.pid) == (0, os.getpid())


async def test_worker_exit_runs_when_serve_is_cancelled() -> None:
    """Cancelling serve() runs worker_exit after lifespan shutdown and before on_exit,
    with the worker's exit_reason "shutdown"."""
    recorder = Recorder()
    await serve_once(
        recorder,
        recorder.hooks("on_starting", "post_worker_init", "when_ready", "worker_exit", "on_exit"),
    )
    assert recorder.names()[4:] == ["lifespan.shutdown", "worker_exit", "on_exit"]
    [(_, (server, worker), exc)] = [e for e in recorder.events if e[0] == "worker_exit"]
    assert (isinstance(server, ServerInfo), isinstance(worker, WorkerInfo), exc) == (
        True,
        True,
        None,
    )
    assert worker.exit_reason is ExitReason.SHUTDOWN


async def test_async_server_hooks_are_awaited(nursery: trio.Nursery) -> None:
    """Async hooks run to completion, checkpoints included, before the server goes on."""
    done: list[str] = []

    async def on_starting(server: Any, *, exc: Any = None) -> None:
        await trio.sleep(0.01)
        done.append("on_starting")

    async def when_ready(server: Any, *, exc: Any = None) -> None:
        await trio.sleep(0.01)
        done.append("when_ready")

    config = in_process(plain_app, on_starting=on_starting, when_ready=when_ready)
    with trio.fail_after(TIMEOUT):
        await nursery.start(serve, config)
    assert done == ["on_starting", "when_ready"]


async def test_on_starting_raising_aborts_startup() -> None:
    """A raising on_starting makes serve() raise HookError naming it, with the original
    as its cause; the app is never called, and on_exit sees the error."""
    recorder = Recorder()
    original = RuntimeError("not today")

    def on_starting(server: Any, *, exc: Any = None) -> None:
        raise original

    config = in_process(
        lifespan_app(recorder), on_starting=on_starting, **recorder.hooks("on_exit")
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            with pytest.raises(HookError) as info:
                await nursery.start(serve, config)
    assert info.value.hook == "on_starting"
    assert str(info.value) == "hook on_starting raised RuntimeError: not today"
    assert info.value.__cause__ is original
    [(name, _, exc)] = recorder.events  # no lifespan.startup: the app was not called
    assert (name, exc) == ("on_exit", info.value)


async def test_on_exit_runs_after_an_app_that_cannot_be_imported() -> None:
    """on_exit runs 'also after a failed start': with the AppLoadError as exc."""
    recorder = Recorder()
    config = in_process("no_such_module_for_hooks:app", **recorder.hooks("on_starting", "on_exit"))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            with pytest.raises(AppLoadError) as info:
                await nursery.start(serve, config)
    assert recorder.names() == ["on_starting", "on_exit"]
    assert recorder.events[-1][2] is info.value


async def test_post_worker_init_raising_fails_startup_with_a_hook_error() -> None:
    """A raising post_worker_init makes serve() raise HookError naming it: when_ready is
    not called, and worker_exit and on_exit see the error (and no exit reason: the error
    is why)."""
    recorder = Recorder()

    async def post_worker_init(worker: Any, *, exc: Any = None) -> None:
        raise KeyError("no cache")

    config = in_process(
        lifespan_app(recorder),
        post_worker_init=post_worker_init,
        **recorder.hooks("when_ready", "worker_exit", "on_exit"),
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            with pytest.raises(HookError) as info:
                await nursery.start(serve, config)
    assert info.value.hook == "post_worker_init"
    assert str(info.value) == "hook post_worker_init raised KeyError: 'no cache'"
    names = recorder.names()
    assert "when_ready" not in names
    assert names[-2:] == ["worker_exit", "on_exit"]
    assert recorder.events[-2][2] is info.value
    assert recorder.events[-2][1][1].exit_reason is None
    assert recorder.events[-1][2] is info.value


async def test_hook_error_from_serve_keeps_its_cause() -> None:
    """A HookError raised from inside serve()'s nurseries still chains the hook's error."""

    async def post_worker_init(worker: Any, *, exc: Any = None) -> None:
        raise KeyError("no cache")

    config = in_process(plain_app, lifespan="off", post_worker_init=post_worker_init)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            with pytest.raises(HookError) as info:
                await nursery.start(serve, config)
    assert isinstance(info.value.__cause__, KeyError)


async def test_when_ready_raising_fails_startup_with_a_hook_error() -> None:
    """A raising when_ready makes serve() raise HookError naming it."""

    def when_ready(server: Any, *, exc: Any = None) -> None:
        raise ValueError("not ready")

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            with pytest.raises(HookError, match=r"^hook when_ready raised ValueError: not ready$"):
                await nursery.start(serve, in_process(plain_app, when_ready=when_ready))


# -- requests ---------------------------------------------------------------------------------


async def test_post_request_sees_the_status_headers_and_scope(nursery: trio.Nursery) -> None:
    """pre_request gets the scope before the app; post_request gets it with the response."""
    recorder = Recorder()
    config = in_process(plain_app, lifespan="off", **recorder.hooks("pre_request", "post_request"))
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{host}:{port}/things?x=1")
    assert (response.status_code, response.text) == (201, "created")
    assert recorder.names() == ["pre_request", "post_request"]
    (_, (worker, req), pre_exc), (_, (post_worker, post_req, resp), post_exc) = recorder.events
    assert isinstance(worker, WorkerInfo)
    assert post_worker is worker
    assert post_req is req
    assert (req["type"], req["path"], req["query_string"]) == ("http", "/things", b"x=1")
    assert isinstance(resp, ResponseInfo)
    assert resp.status == 201
    assert (b"x-answer", b"42") in list(resp.headers)
    assert (pre_exc, post_exc) == (None, None)


async def test_gunicorn_style_request_hooks_get_gunicorns_attributes(
    nursery: trio.Nursery,
) -> None:
    """gunicorn's pre_request(worker, req) and post_request(worker, req, environ, resp) run
    around a request: req has gunicorn's attributes, what pre_request stores in req the
    app finds in its scope, and environ is the request's."""
    seen: list[tuple[Any, ...]] = []

    def pre_request(worker: Any, req: Any) -> None:
        assert isinstance(req, RequestInfo)
        seen.append(("pre", req.method, req.path, req.query, dict(req.headers)["X-TRACE"]))
        req["trace"] = "t-1"

    def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
        seen.append(("post", environ["PATH_INFO"], environ["HTTP_X_TRACE"], resp.status_code))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"x-trace", scope["trace"].encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    config = in_process(app, lifespan="off", pre_request=pre_request, post_request=post_request)
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client:
            url = f"http://{host}:{port}/a%20b?x=1"
            response = await client.get(url, headers={"X-Trace": "abc"})
    assert (response.status_code, response.headers["x-trace"]) == (200, "t-1")
    assert seen == [("pre", "GET", "/a%20b", "x=1", "abc"), ("post", "/a b", "abc", 200)]


async def test_pre_request_raising_answers_500_and_post_request_sees_it(
    nursery: trio.Nursery,
) -> None:
    """A raising pre_request: the app is not called, the client gets 500, and post_request
    gets the HookError (naming pre_request, the original chained) as exc."""
    recorder = Recorder()
    called: list[str] = []
    original = PermissionError("no entry")

    def pre_request(worker: Any, req: Any, *, exc: Any = None) -> None:
        raise original

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await plain_app(scope, receive, send)

    config = in_process(
        app, lifespan="off", pre_request=pre_request, **recorder.hooks("post_request")
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{host}:{port}/")
            again = await client.get(f"http://{host}:{port}/")
    assert response.status_code == 500
    assert again.status_code == 500  # the server goes on serving
    assert called == []
    assert recorder.names() == ["post_request", "post_request"]
    _, (_, req, _), exc = recorder.events[0]
    assert req["path"] == "/"
    assert isinstance(exc, HookError)
    assert exc.hook == "pre_request"
    assert exc.__cause__ is original


async def test_post_request_sees_the_error_the_app_raised(nursery: trio.Nursery) -> None:
    """An app that raises: the client gets 500 and post_request gets the app's error."""
    recorder = Recorder()
    original = ZeroDivisionError("oops")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise original

    config = in_process(app, lifespan="off", **recorder.hooks("post_request"))
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{host}:{port}/")
    assert response.status_code == 500
    [(_, _, exc)] = recorder.events
    assert exc is original


async def test_post_request_raising_is_logged_and_the_response_stands(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising post_request does not change the response; the error is logged."""

    def post_request(worker: Any, req: Any, resp: Any, *, exc: Any = None) -> None:
        raise RuntimeError("after the fact")

    config = in_process(plain_app, lifespan="off", post_request=post_request)
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{host}:{port}/")
            again = await client.get(f"http://{host}:{port}/")
    assert (response.status_code, again.status_code) == (201, 201)
    # Once per request: on the connection logger, which is rate-limited.
    logged = [r for r in caplog.records if r.name == "trioserve.connection"]
    message = "hook post_request raised RuntimeError: after the fact"
    assert [r.getMessage() for r in logged] == [message, message]


# -- connections ------------------------------------------------------------------------------


class ConnectionRecorder:
    """connection_made and connection_lost hooks; ``lost_all`` is set after ``expected`` lost."""

    def __init__(self, expected: int) -> None:
        self.made: list[ConnectionInfo] = []
        self.lost: list[tuple[ConnectionInfo, BaseException | None]] = []
        self.expected = expected
        self.lost_all = trio.Event()

    def connection_made(self, conn: ConnectionInfo, *, exc: Any = None) -> None:
        self.made.append(conn)

    async def connection_lost(self, conn: ConnectionInfo, *, exc: Any = None) -> None:
        self.lost.append((conn, exc))
        if len(self.lost) == self.expected:
            self.lost_all.set()


async def send_request(stream: trio.abc.Stream, *, close: bool) -> bytes:
    """One GET; the raw response head and body (read to EOF when asking to close)."""
    connection = b"close" if close else b"keep-alive"
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: " + connection + b"\r\n\r\n")
    data = b""
    while not data.endswith(b"created"):
        chunk = await stream.receive_some()
        assert chunk, data
        data += chunk
    return data


async def test_connection_hooks_run_once_per_connection(nursery: trio.Nursery) -> None:
    """Two connections, one with two requests: connection_made and connection_lost run once
    each per connection, with the same ConnectionInfo and its real addresses."""
    hooks = ConnectionRecorder(expected=2)
    config = in_process(
        plain_app,
        lifespan="off",
        connection_made=hooks.connection_made,
        connection_lost=hooks.connection_lost,
    )
    [(host, port)] = await nursery.start(serve, config)
    local_ports = []
    with trio.fail_after(TIMEOUT):
        first = await trio.open_tcp_stream(host, port)
        async with first:
            local_ports.append(first.socket.getsockname()[1])
            assert (await send_request(first, close=False)).startswith(b"HTTP/1.1 201")
            assert (await send_request(first, close=True)).startswith(b"HTTP/1.1 201")
        second = await trio.open_tcp_stream(host, port)
        async with second:
            local_ports.append(second.socket.getsockname()[1])
            assert (await send_request(second, close=True)).startswith(b"HTTP/1.1 201")
        await hooks.lost_all.wait()
    assert len(hooks.made) == 2
    assert [conn for conn, _ in hooks.lost] == hooks.made
    assert [exc for _, exc in hooks.lost] == [None, None]
    for conn, local_port in zip(hooks.made, local_ports, strict=True):
        assert conn.client == ("127.0.0.1", local_port)
        assert conn.server == ("127.0.0.1", port)
        assert conn.secure is False
        assert isinstance(conn.worker, WorkerInfo)


async def test_connection_made_raising_closes_the_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising connection_made closes the connection unanswered; connection_lost gets
    the HookError, and the error is logged."""
    hooks = ConnectionRecorder(expected=1)

    def connection_made(conn: ConnectionInfo, *, exc: Any = None) -> None:
        raise ConnectionRefusedError("not from there")

    config = in_process(
        plain_app,
        lifespan="off",
        connection_made=connection_made,
        connection_lost=hooks.connection_lost,
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            try:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert await stream.receive_some() == b""
            except trio.BrokenResourceError:
                pass  # reset by the server: also unanswered
        await hooks.lost_all.wait()
    [(_, exc)] = hooks.lost
    assert isinstance(exc, HookError)
    assert exc.hook == "connection_made"
    assert any("hook connection_made raised" in r.getMessage() for r in caplog.records)

"""serve() on real sockets bound to 127.0.0.1:0, with httpx and trio clients."""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import echo_body_app, hello_app
from trioserve import AppLoadError, BindError, Config, LifespanError, serve
from trioserve import _accept as accept_module
from trioserve._mypyc import compiled_modules


async def test_serve_reports_bound_address_and_answers_httpx(nursery):
    """started() gives the real (host, port); httpx gets the app's response there."""
    addresses = await nursery.start(serve, Config(app=hello_app, bind=["127.0.0.1:0"], workers=0))
    assert len(addresses) == 1
    host, port = addresses[0]
    assert host == "127.0.0.1"
    assert port > 0
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/")
        again = await client.get(f"http://127.0.0.1:{port}/")
    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["server"] == "trioserve"
    assert again.status_code == 200


async def test_large_request_body_round_trip(nursery):
    """A multi-megabyte POST body is streamed through the app and echoed intact."""
    [(host, port)] = await nursery.start(
        serve, Config(app=echo_body_app, bind=["127.0.0.1:0"], workers=0)
    )
    payload = bytes(range(256)) * 8192  # 2 MiB
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://{host}:{port}/", content=payload)
    assert response.content == payload
    assert int(response.headers["x-chunks"]) > 2  # it came in pieces, not as one buffer


async def test_scope_client_and_server_are_real_addresses(nursery):
    """The scope's client and server are the connection's real addresses."""
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
        await hello_app(scope, receive, send)

    [(host, port)] = await nursery.start(
        serve, Config(app=app, bind=["127.0.0.1:0"], workers=0, lifespan="off")
    )
    async with httpx.AsyncClient() as client:
        await client.get(f"http://{host}:{port}/p?q=1")
    scope = scopes[0]
    assert scope["server"] == ("127.0.0.1", port)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["http_version"] == "1.1"
    assert scope["query_string"] == b"q=1"


async def echo_handler(stream: trio.abc.Stream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def test_stream_handler_echo(nursery):
    """A raw stream handler gets each connection's stream and owns it until it returns."""
    [(host, port)] = await nursery.start(
        serve, Config(app=echo_handler, bind=["127.0.0.1:0"], workers=0)
    )
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
            await stream.send_eof()
            assert await stream.receive_some() == b""


async def test_unix_socket_with_mode(nursery, tmp_path: Path):
    """A unix: bind serves HTTP on the socket file, created with the requested mode."""
    path = tmp_path / "app.sock"
    addresses = await nursery.start(
        serve, Config(app=hello_app, bind=[f"unix:{path}(0660)"], workers=0)
    )
    assert addresses == [str(path)]
    assert path.stat().st_mode & 0o777 == 0o660
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://localhost/")
    assert response.text == "Hello, world!"


async def test_unix_socket_file_removed_after_stop(tmp_path: Path):
    """The unix socket file is removed when the server stops."""
    path = tmp_path / "gone.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, Config(app=hello_app, bind=[f"unix:{path}"], workers=0))
        assert path.exists()
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_several_binds(nursery):
    """Every --bind gets its own listener, reported in order."""
    addresses = await nursery.start(
        serve, Config(app=hello_app, bind=["127.0.0.1:0", "127.0.0.1:0"], workers=0)
    )
    assert len(addresses) == 2
    assert addresses[0][1] != addresses[1][1]


async def test_cancelling_serve_is_a_graceful_stop():
    """Cancelling serve() lets the in-flight request finish, closes the socket and runs shutdown."""
    events: list[str] = []
    in_app = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        in_app.set()
        await trio.sleep(0.2)  # a slow handler: the app under test, not synchronisation
        await hello_app(scope, receive, send)

    results: list[httpx.Response] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as outer, trio.open_nursery() as server_nursery:
            [(host, port)] = await server_nursery.start(
                serve, Config(app=app, bind=["127.0.0.1:0"], workers=0, graceful_timeout=5)
            )

            async def request() -> None:
                async with httpx.AsyncClient() as client:
                    results.append(await client.get(f"http://{host}:{port}/"))

            outer.start_soon(request)
            await in_app.wait()
            server_nursery.cancel_scope.cancel()
    assert results[0].status_code == 200
    assert results[0].headers["connection"] == "close"
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    with pytest.raises(OSError), socket.create_connection((host, port), timeout=1):
        pass


async def test_graceful_timeout_cancels_stuck_requests(autojump_clock):
    """A request still running at graceful_timeout is cancelled, and serve() returns."""
    in_app = trio.Event()
    cancelled = trio.Event()

    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        in_app.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with trio.open_nursery() as nursery:
        [(host, port)] = await nursery.start(
            serve,
            Config(app=stuck, bind=["127.0.0.1:0"], workers=0, lifespan="off", graceful_timeout=3),
        )
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        await in_app.wait()
        start = trio.current_time()
        nursery.cancel_scope.cancel()
    assert cancelled.is_set()
    assert trio.current_time() - start == pytest.approx(3, abs=0.1)
    await stream.aclose()


async def test_lifespan_state_reaches_requests(nursery):
    """What lifespan startup puts in state is visible in each request's scope."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["greeting"] = b"from lifespan"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = scope["state"]["greeting"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    [(host, port)] = await nursery.start(serve, Config(app=app, bind=["127.0.0.1:0"], workers=0))
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}:{port}/")
    assert response.content == b"from lifespan"


async def test_startup_errors_surface_as_themselves(nursery):
    """App load, bind and lifespan failures raise their own error from nursery.start."""
    with pytest.raises(AppLoadError, match="no_such_module_for_test"):
        await nursery.start(
            serve, Config(app="no_such_module_for_test:app", bind=["127.0.0.1:0"], workers=0)
        )

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with busy:
        port = busy.getsockname()[1]
        with pytest.raises(BindError, match=f"127.0.0.1:{port}: address already in use"):
            await nursery.start(serve, Config(app=hello_app, bind=[f"127.0.0.1:{port}"], workers=0))

    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(LifespanError, match="no database"):
        await nursery.start(serve, Config(app=failing, bind=["127.0.0.1:0"], workers=0))


async def test_app_given_as_import_string(nursery):
    """Config(app='module:attr') imports the app, as the command line does."""
    [(host, port)] = await nursery.start(
        serve, Config(app="examples.hello:app", bind=["127.0.0.1:0"], workers=0)
    )
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}:{port}/")
    assert response.text == "Hello, world!\n"


@pytest.mark.skipif(
    "trioserve._serve_http" in compiled_modules(),
    reason="compiled with mypyc, the edge's coroutines have no Python frames to look at",
)
async def test_a_plain_http_connection_costs_no_stream_and_no_frame_of_ours(nursery):
    """Without TLS, a PROXY header, connection hooks or metrics, the accept loop's task
    runs the HTTP edge's coroutine directly (no wrapper coroutine between them), and the
    edge reads and writes the accepted socket without a trio stream built over it."""
    seen: list[tuple[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            # The frames of the connection's task, from the accept loop's down.
            frames = []
            frame: types.FrameType | None = sys._getframe()
            while frame is not None and frame.f_code is not accept_module._serve.__code__:
                frames.append(frame)
                frame = frame.f_back
            assert frame is not None, "the app runs in a connection's task"
            seen.append((frames[-1].f_code.co_name, frame.f_locals["peer"]))
        await hello_app(scope, receive, send)

    [(host, port)] = await nursery.start(
        serve, Config(app=app, bind=["127.0.0.1:0"], workers=0, lifespan="off")
    )
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://{host}:{port}/")
    assert response.text == "Hello, world!"
    [(name, peer)] = seen
    assert name == "serve_http_connection"
    assert peer._plain is None

"""Real framework apps (examples/frameworks/) under the real CLI, with httpx and curl.

One server process per framework configuration: each test starts ``trioserve`` on
127.0.0.1:0, talks to it, sends SIGTERM and checks the exit status and what the app's
lifespan printed. A framework that is not installed skips its tests.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import warnings

import httpx
import pytest

from tests.process.test_cli import assert_clean_log, run_cli, serving
from trioserve.testing import ServerProcess

PKG = "examples.frameworks"
CURL = shutil.which("curl")
NO_CURL = "curl is not on PATH: this test's curl checks did not run"
STREAM_LINES = [f"chunk {number}" for number in range(5)]
LIFESPAN_UNSUPPORTED = "the app does not support ASGI lifespan"
ASYNCIO_HINT = "--app-loop asyncio"


def needs(module: str) -> pytest.MarkDecorator:
    """Skip unless ``module`` is installed.

    A mark evaluated at collection, not pytest.importorskip() in the test: pytest-trio
    (0.8.0) re-raises a skip from inside a trio test without its reason.
    """
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"framework not installed: {module}")


async def curl(server: ServerProcess, path: str, *args: str) -> str:
    """curl's output for ``path`` on ``server``; only called when curl is on PATH."""
    assert CURL is not None
    status, out, err = await run_cli(
        "-s", "-S", "--max-time", "5", *args, server.url + path, command=[CURL]
    )
    assert status == 0, err
    return out


def warn_if_no_curl() -> None:
    """Called last: say that part of the test did not run.

    A warning, not pytest.skip(): the rest of the test ran and passed, and pytest-trio
    would drop a skip's reason anyway.
    """
    if CURL is None:
        warnings.warn(NO_CURL, pytest.PytestWarning, stacklevel=2)


async def stop(server: ServerProcess) -> None:
    """SIGTERM stops the server gracefully and it exits 0 (within the helper's timeout)."""
    assert await server.stop(signal.SIGTERM) == 0
    assert any("SIGTERM received: stopping gracefully" in line for line in server.lines)


def assert_lifespan_ran(lines: list[str], name: str) -> None:
    """Startup was printed before the ready line, shutdown after the stop began."""
    startup = lines.index(f"{name} startup")
    ready = next(i for i, line in enumerate(lines) if "listening on" in line)
    stopping = next(i for i, line in enumerate(lines) if "SIGTERM received" in line)
    shutdown = lines.index(f"{name} shutdown")
    assert startup < ready < stopping < shutdown, lines


# -- Starlette ----------------------------------------------------------------------------


@needs("starlette")
async def test_starlette_json_stream_echo_state_and_lifespan() -> None:
    """Starlette: JSON, a 5-chunk stream, a POST echo, lifespan state; SIGTERM runs shutdown."""
    async with serving(f"{PKG}.starlette_app:app", "-b", "127.0.0.1:0") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            home = await client.get("/")
            state = await client.get("/state")
            echoed = await client.post("/echo", content=b"ping \x00\xff")
            async with client.stream("GET", "/stream") as streamed:
                lines = [line async for line in streamed.aiter_lines()]
        assert (home.status_code, home.json()) == (200, {"framework": "starlette", "path": "/"})
        assert (state.status_code, state.json()) == (200, {"greeting": "hello from the lifespan"})
        assert (echoed.status_code, echoed.content) == (200, b"ping \x00\xff")
        assert streamed.status_code == 200
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert lines == STREAM_LINES
        if CURL is not None:
            assert await curl(server, "/stream", "-N") == "".join(f"{x}\n" for x in STREAM_LINES)
            assert await curl(server, "/echo", "--data-binary", "from curl") == "from curl"
        await stop(server)
    assert_lifespan_ran(server.lines, "starlette")
    assert_clean_log(server.lines)
    warn_if_no_curl()


@needs("starlette")
async def test_starlette_websocket_endpoint() -> None:
    """A Starlette WebSocket route echoes through trioserve; closing client-side is clean."""
    import trio
    import trio_websocket

    async with serving(f"{PKG}.starlette_app:app", "-b", "127.0.0.1:0") as server:
        url = server.url.replace("http://", "ws://") + "/ws"
        with trio.fail_after(10):
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message("hi")
                assert await ws.get_message() == "echo: hi"
                await ws.send_message("again")
                assert await ws.get_message() == "echo: again"
        await stop(server)
    assert_lifespan_ran(server.lines, "starlette")
    assert_clean_log(server.lines)


# -- FastAPI ------------------------------------------------------------------------------


@needs("fastapi")
async def test_fastapi_params_pydantic_body_and_lifespan() -> None:
    """FastAPI: path and query params, a validated pydantic body, a 422; SIGTERM runs shutdown."""
    item = {"name": "widget", "price": 2.5, "tags": ["a"]}
    async with serving(f"{PKG}.fastapi_app:app", "-b", "127.0.0.1:0") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            read = await client.get("/items/42", params={"q": "blue"})
            read_no_query = await client.get("/items/7")
            bad_id = await client.get("/items/not-a-number")
            created = await client.post("/items", params={"quantity": 3}, json=item)
            bad_body = await client.post("/items", json={"name": "widget"})
        assert (read.status_code, read.json()) == (200, {"item_id": 42, "q": "blue"})
        assert read_no_query.json() == {"item_id": 7, "q": None}
        assert bad_id.status_code == 422
        assert (created.status_code, created.json()) == (201, {"item": item, "total": 7.5})
        assert bad_body.status_code == 422
        assert bad_body.json()["detail"][0]["loc"] == ["body", "price"]
        if CURL is not None:
            out = await curl(
                server,
                "/items",
                "-H",
                "content-type: application/json",
                "--data-binary",
                json.dumps({"name": "curl", "price": 1}),
            )
            assert json.loads(out) == {
                "item": {"name": "curl", "price": 1.0, "tags": []},
                "total": 1.0,
            }
        await stop(server)
    assert_lifespan_ran(server.lines, "fastapi")
    assert_clean_log(server.lines)
    warn_if_no_curl()


# -- Flask (WSGI) -------------------------------------------------------------------------


@needs("flask")
@pytest.mark.parametrize("flags", [(), ("--interface", "wsgi")], ids=["auto", "interface-wsgi"])
async def test_flask_wsgi_page_echo_and_stream(flags: tuple[str, ...]) -> None:
    """Flask served as WSGI (detected or named): a page, a POST echo, a stream; SIGTERM exits 0."""
    payload = bytes(range(256)) * 64
    async with serving(f"{PKG}.flask_app:app", "-b", "127.0.0.1:0", *flags) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            home = await client.get("/")
            echoed = await client.post(
                "/echo", content=payload, headers={"content-type": "application/octet-stream"}
            )
            missing = await client.get("/missing")
            async with client.stream("GET", "/stream") as streamed:
                lines = [line async for line in streamed.aiter_lines()]
        assert (home.status_code, home.json()) == (200, {"framework": "flask"})
        assert (echoed.status_code, echoed.content) == (200, payload)
        assert echoed.headers["content-type"] == "application/octet-stream"
        assert missing.status_code == 404
        assert streamed.status_code == 200
        assert lines == STREAM_LINES
        if CURL is not None:
            assert json.loads(await curl(server, "/")) == {"framework": "flask"}
            assert await curl(server, "/echo", "--data-binary", "from curl") == "from curl"
        await stop(server)
    # WSGI has no lifespan: there is no startup or shutdown to run, only the exit to check.
    assert not [line for line in server.lines if "lifespan" in line], server.lines
    assert_clean_log(server.lines)
    warn_if_no_curl()


# -- Quart-Trio ---------------------------------------------------------------------------


@needs("quart_trio")
async def test_quart_trio_page_echo_and_serving_hooks() -> None:
    """Quart-Trio: a page and a POST echo; before/after_serving run as lifespan; SIGTERM exits 0."""
    payload = b"quart \x00\xff" * 1000
    async with serving(f"{PKG}.quart_trio_app:app", "-b", "127.0.0.1:0") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            home = await client.get("/")
            echoed = await client.post(
                "/echo", content=payload, headers={"content-type": "application/octet-stream"}
            )
        assert (home.status_code, home.json()) == (200, {"framework": "quart-trio"})
        assert (echoed.status_code, echoed.content) == (200, payload)
        if CURL is not None:
            assert json.loads(await curl(server, "/")) == {"framework": "quart-trio"}
            assert await curl(server, "/echo", "--data-binary", "from curl") == "from curl"
        await stop(server)
    assert_lifespan_ran(server.lines, "quart-trio")
    assert_clean_log(server.lines)
    warn_if_no_curl()


# -- Django -------------------------------------------------------------------------------

DJANGO_ASGI = f"{PKG}.django_project.asgi:application"
DJANGO_WSGI = f"{PKG}.django_project.wsgi:application"
DJANGO_HOME = "Hello from Django\n"
DJANGO_ASYNC = {"view": "async", "results": ["first", "second"]}


@needs("django")
@pytest.mark.parametrize(
    "app",
    [(DJANGO_WSGI,), (DJANGO_ASGI, "--app-loop", "asyncio")],
    ids=["wsgi", "asgi-on-asyncio-app-loop"],
)
async def test_django_sync_and_async_views(app: tuple[str, ...]) -> None:
    """Django over WSGI, and over ASGI with --app-loop asyncio: the sync view and the
    asyncio view answer; exits 0."""
    async with serving(*app, "-b", "127.0.0.1:0") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            home = await client.get("/")
            async_view = await client.get("/async")
            missing = await client.get("/missing")
        assert (home.status_code, home.text) == (200, DJANGO_HOME)
        assert (async_view.status_code, async_view.json()) == (200, DJANGO_ASYNC)
        assert missing.status_code == 404
        if CURL is not None:
            assert await curl(server, "/") == DJANGO_HOME
            assert json.loads(await curl(server, "/async")) == DJANGO_ASYNC
        await stop(server)
    assert_clean_log(server.lines)
    warn_if_no_curl()


@needs("django")
async def test_django_asgi_on_asyncio_app_loop_starts_without_lifespan_and_stops() -> None:
    """Django over ASGI, --app-loop asyncio: lifespan 'auto' serves without it; SIGTERM exits 0."""
    async with serving(DJANGO_ASGI, "--app-loop", "asyncio", "-b", "127.0.0.1:0") as server:
        await stop(server)
    # Django's handler raises for the lifespan scope: under --lifespan auto, "no lifespan".
    assert any(LIFESPAN_UNSUPPORTED in line for line in server.lines), server.lines
    assert_clean_log(server.lines)


@needs("django")
async def test_django_asgi_on_trio_app_loop_answers_500() -> None:
    """Django over ASGI without --app-loop asyncio fails every request with a 500; exits 0."""
    async with serving(DJANGO_ASGI, "-b", "127.0.0.1:0") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            async_view = await client.get("/async")
            # Not only asyncio views: Django's handler itself awaits asyncio.gather.
            home = await client.get("/")
        assert async_view.status_code == 500
        assert home.status_code == 500
        if CURL is not None:
            assert await curl(server, "/async", "-o", "/dev/null", "-w", "%{http_code}") == "500"
        await stop(server)
    errors = [line for line in server.lines if "exception in ASGI app while serving" in line]
    assert any("GET /async" in line for line in errors), server.lines
    warn_if_no_curl()


@needs("django")
async def test_django_asgi_on_trio_app_loop_logs_the_app_loop_hint() -> None:
    """The 500 from Django on the trio app loop is logged with the --app-loop asyncio hint."""
    async with serving(DJANGO_ASGI, "-b", "127.0.0.1:0") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            async_view = await client.get("/async")
        assert async_view.status_code == 500
        await stop(server)
    errors = [line for line in server.lines if "exception in ASGI app while serving" in line]
    assert errors, server.lines
    assert all(ASYNCIO_HINT in line for line in errors), errors

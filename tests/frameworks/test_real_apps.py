"""What real framework users hit on day one, under the real CLI (issue 12).

Each test runs a real framework app (Starlette, FastAPI, Flask, Django) the way a new
user would, and pins the behaviour a peer server gives for it: uvicorn and hypercorn
refuse to serve an app whose lifespan startup failed, gunicorn hands Werkzeug a
chunked upload, and ``--preload`` serves what a plain start serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from tests.frameworks.test_frameworks import (
    DJANGO_ASGI,
    DJANGO_ASYNC,
    DJANGO_HOME,
    DJANGO_WSGI,
    PKG,
    needs,
    stop,
)
from tests.process.test_cli import APPS, assert_clean_log, run_cli, serving
from trioserve import Config, LifespanError, serve

DB_DOWN = "lifespan startup failed: ConnectionRefusedError: database down"


# -- a lifespan that fails is not "no lifespan" -------------------------------------------


@needs("fastapi")
@pytest.mark.parametrize("app", ["starlette_app", "fastapi_app"])
@pytest.mark.parametrize("workers", ["0", "2"])
async def test_failing_framework_lifespan_exits_3_with_the_apps_message(
    app: str, workers: str
) -> None:
    """A Starlette/FastAPI lifespan that raises (startup.failed, re-raise) exits 3, never serves."""
    status, _, err = await run_cli(
        "--app-dir", APPS, f"db_down:{app}", "-b", "127.0.0.1:0", "-w", workers
    )
    assert status == 3, err
    assert err.splitlines()[-1].endswith(DB_DOWN), err
    assert "does not support ASGI lifespan" not in err
    assert "listening on" not in err


@needs("fastapi")
@pytest.mark.parametrize("app", ["starlette_app", "fastapi_app"])
async def test_failing_framework_lifespan_in_process_raises(app: str) -> None:
    """serve() of an app whose framework lifespan fails raises LifespanError with its message."""
    config = Config(app=f"db_down:{app}", app_dir=APPS, bind=["127.0.0.1:0"], workers=0)
    with trio.fail_after(10), pytest.raises(LifespanError, match=DB_DOWN):
        await serve(config)


# -- WSGI: chunked uploads and bodies read from the app's own threads ---------------------

UPLOAD = bytes(range(256)) * 280  # 70 KB, every byte value


async def in_chunks(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    """A generator body: httpx sends it chunked, with no Content-Length."""
    for start in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[start : start + size]


@needs("flask")
async def test_flask_gets_a_whole_chunked_upload() -> None:
    """Flask's request.get_data() returns all of a chunked 70 KB POST, as under gunicorn."""
    async with serving(f"{PKG}.flask_app:app", "-b", "127.0.0.1:0", "-w", "1") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            response = await client.post(
                "/echo", content=in_chunks(UPLOAD), headers={"content-type": "text/plain"}
            )
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.request.headers
        assert response.status_code == 200
        assert response.content == UPLOAD
        await stop(server)
    assert_clean_log(server.lines)


@needs("django")
async def test_django_async_view_under_wsgi_reads_the_body() -> None:
    """Django under WSGI reads request.body in its async view's own thread: all of it arrives."""
    async with serving(DJANGO_WSGI, "-b", "127.0.0.1:0", "-w", "2") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            # With a Content-Length: Django's WSGI request reads no chunked body (it
            # reads CONTENT_LENGTH bytes, 0 without it), under gunicorn as here.
            sized = await client.post("/async-echo", content=UPLOAD)
        assert (sized.status_code, sized.content) == (200, UPLOAD)
        await stop(server)
    assert_clean_log(server.lines)


# -- --preload serves the app a plain start serves ----------------------------------------


@needs("django")
@pytest.mark.parametrize("preload", [(), ("--preload",)], ids=["spawned", "preloaded"])
async def test_django_asgi_on_asyncio_app_loop_with_and_without_preload(
    preload: tuple[str, ...],
) -> None:
    """--preload --app-loop asyncio -w 1 serves Django's ASGI views (200), as without --preload."""
    args = (DJANGO_ASGI, "--app-loop", "asyncio", *preload, "-w", "1", "-b", "127.0.0.1:0")
    async with serving(*args) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            home = await client.get("/")
            async_view = await client.get("/async")
        assert (home.status_code, home.text) == (200, DJANGO_HOME)
        assert (async_view.status_code, async_view.json()) == (200, DJANGO_ASYNC)
        await stop(server)
    if preload:
        assert any("preloading the app" in line for line in server.lines), server.lines
    assert_clean_log(server.lines)


@needs("django")
async def test_check_config_loads_the_app_the_server_serves() -> None:
    """--check-config loads through the same loader: --app-loop asyncio is checked too."""
    status, out, err = await run_cli(DJANGO_ASGI, "--app-loop", "asyncio", "--check-config")
    assert (status, err) == (0, "")
    assert out.strip().endswith("loads as interface 'asgi3'")

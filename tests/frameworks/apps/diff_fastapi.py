"""The FastAPI app of the differential check: the Starlette app's views as FastAPI routes,
FastAPI's own BackgroundTasks, a GZip middleware and a lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import BackgroundTasks, FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import PlainTextResponse
from starlette.staticfiles import StaticFiles

from . import STARTUP_ERROR, STATIC, mark, say
from . import diff_starlette as views


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    say("startup")
    yield
    say("shutdown")


@asynccontextmanager
async def failing_lifespan(app: FastAPI) -> AsyncIterator[None]:
    raise ConnectionRefusedError(STARTUP_ERROR)
    yield  # pragma: no cover - never reached


def build(lifespan_: object) -> FastAPI:
    app = FastAPI(lifespan=lifespan_)  # type: ignore[arg-type]
    app.add_middleware(GZipMiddleware)

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"framework": "fastapi"}

    @app.get("/background")
    async def background(tasks: BackgroundTasks) -> PlainTextResponse:
        async def later() -> None:
            say("background started")
            await anyio.sleep(1)
            mark("background-done")
            say("background done")

        tasks.add_task(later)
        return PlainTextResponse("background\n")

    for path, view, methods in [
        ("/scope/{rest:path}", views.scope_view, ["GET", "POST"]),
        ("/echo", views.echo, ["POST", "PUT"]),
        ("/upload", views.upload, ["POST"]),
        ("/stream", views.stream, ["GET"]),
        ("/endless", views.endless, ["GET"]),
        ("/fail-mid-stream", views.fail_mid_stream, ["GET"]),
        ("/error", views.error, ["GET"]),
        ("/cookies", views.cookies, ["GET"]),
        ("/redirect", views.redirect, ["GET"]),
        ("/slash/", views.slash, ["GET"]),
        ("/big-header", views.big_header, ["GET"]),
        ("/file", views.file, ["GET"]),
    ]:
        app.add_api_route(path, view, methods=methods)
    app.mount("/static", StaticFiles(directory=STATIC))
    app.add_api_websocket_route("/ws", views.ws_echo)
    app.add_api_websocket_route("/ws-subprotocol", views.ws_subprotocol)
    app.add_api_websocket_route("/ws-reject", views.ws_reject)
    return app


app = build(lifespan)
app_failing = build(failing_lifespan)

"""The Starlette app of the differential check (and, with one route changed, FastAPI's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import HELLO, STARTUP_ERROR, STATIC, mark, say


async def scope_view(request: Request) -> JSONResponse:
    """What the app sees of the request target and the connection (ports left out)."""
    scope = request.scope
    return JSONResponse(
        {
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "root_path": scope["root_path"],
            "query_string": scope["query_string"].decode("latin-1"),
            "query": sorted(request.query_params.multi_items()),
            "scheme": scope["scheme"],
            "http_version": scope["http_version"],
            "client_host": scope["client"][0] if scope.get("client") else None,
            "method": scope["method"],
        }
    )


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "text/plain"))


async def upload(request: Request) -> Response:
    """Reads the whole body, saying whether the client left before sending all of it."""
    try:
        body = await request.body()
    except ClientDisconnect:
        say("upload: the client left")
        raise
    say(f"upload: {len(body)} bytes")
    return PlainTextResponse(f"{len(body)} bytes\n")


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for number in range(5):
            yield f"chunk {number}\n".encode()
            await anyio.lowlevel.checkpoint()

    return StreamingResponse(chunks(), media_type="text/plain")


async def endless(request: Request) -> StreamingResponse:
    """Server-sent events until the client leaves; the app says when its generator ends."""

    async def events() -> AsyncIterator[bytes]:
        say("endless started")
        number = 0
        try:
            while True:
                yield f"data: {number}\n\n".encode()
                number += 1
                await anyio.sleep(0.02)
        finally:
            say("endless closed")

    return StreamingResponse(events(), media_type="text/event-stream")


async def fail_mid_stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first\n"
        await anyio.lowlevel.checkpoint()
        raise RuntimeError("failing in the middle of a stream (differential check)")

    return StreamingResponse(chunks(), media_type="text/plain")


async def error(request: Request) -> Response:
    raise RuntimeError("failing view (differential check)")


async def cookies(request: Request) -> Response:
    response = PlainTextResponse("cookies\n")
    response.set_cookie("a", "1", path="/")
    response.set_cookie("b", "two words", httponly=True)
    response.set_cookie("c", "3", secure=True, samesite="strict")
    return response


async def redirect(request: Request) -> Response:
    return RedirectResponse("/scope/target?a=1&b=x%2Fy&c=d+e")


async def slash(request: Request) -> Response:
    return PlainTextResponse("slash\n")


async def big_header(request: Request) -> Response:
    return PlainTextResponse("big\n", headers={"x-big": "v" * 8000})


async def background(request: Request) -> Response:
    """Answers at once; the task runs after the response and marks when it is done."""

    async def later() -> None:
        say("background started")
        await anyio.sleep(1)
        mark("background-done")
        say("background done")

    return PlainTextResponse("background\n", background=BackgroundTask(later))


async def file(request: Request) -> FileResponse:
    return FileResponse(HELLO, media_type="text/plain")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                say(f"ws disconnect {message.get('code')}")
                return
            if message.get("text") is not None:
                await websocket.send_text("echo: " + message["text"])
            else:
                await websocket.send_bytes(b"echo: " + message["bytes"])
    except WebSocketDisconnect as exc:
        say(f"ws disconnect {exc.code}")


async def ws_subprotocol(websocket: WebSocket) -> None:
    offered = websocket.scope["subprotocols"]
    await websocket.accept(subprotocol="chat.v2" if "chat.v2" in offered else None)
    await websocket.send_text(",".join(offered))
    await websocket.close(code=4001, reason="bye from the app")


async def ws_reject(websocket: WebSocket) -> None:
    await websocket.close(code=1008)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    say("startup")
    yield
    say("shutdown")


@asynccontextmanager
async def failing_lifespan(app: Starlette) -> AsyncIterator[None]:
    raise ConnectionRefusedError(STARTUP_ERROR)
    yield  # pragma: no cover - never reached


ROUTES = [
    Route("/", lambda request: JSONResponse({"framework": "starlette"})),
    Route("/scope/{rest:path}", scope_view, methods=["GET", "POST"]),
    Route("/echo", echo, methods=["POST", "PUT"]),
    Route("/upload", upload, methods=["POST"]),
    Route("/stream", stream),
    Route("/endless", endless),
    Route("/fail-mid-stream", fail_mid_stream),
    Route("/error", error),
    Route("/cookies", cookies),
    Route("/redirect", redirect),
    Route("/slash/", slash),
    Route("/big-header", big_header),
    Route("/background", background),
    Route("/file", file),
    Mount("/static", StaticFiles(directory=STATIC)),
    WebSocketRoute("/ws", ws_echo),
    WebSocketRoute("/ws-subprotocol", ws_subprotocol),
    WebSocketRoute("/ws-reject", ws_reject),
]

app = Starlette(routes=ROUTES, lifespan=lifespan, middleware=[Middleware(GZipMiddleware)])
app_failing = Starlette(routes=ROUTES, lifespan=failing_lifespan)

"""A Starlette app: JSON, a streaming response, a POST echo, a WebSocket echo and
lifespan state.

trioserve examples.frameworks.starlette_app:app

Starlette runs on anyio, so it needs no --app-loop: anyio picks trio up by itself.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import anyio.lowlevel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

CHUNKS = 5


class State(TypedDict):
    greeting: str


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[State]:
    print("starlette startup", file=sys.stderr, flush=True)
    yield {"greeting": "hello from the lifespan"}
    print("starlette shutdown", file=sys.stderr, flush=True)


async def homepage(request: Request) -> JSONResponse:
    return JSONResponse({"framework": "starlette", "path": request.url.path})


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for number in range(CHUNKS):
            yield f"chunk {number}\n".encode()
            # A checkpoint between chunks (anyio.sleep(0), spelled as ruff prefers), so the
            # server gets to send each chunk on its own.
            await anyio.lowlevel.checkpoint()

    return StreamingResponse(chunks(), media_type="text/plain")


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "text/plain"))


async def state(request: Request) -> JSONResponse:
    greeting: str = request.state.greeting
    return JSONResponse({"greeting": greeting})


async def websocket_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"echo: {text}")
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/stream", stream),
        Route("/echo", echo, methods=["POST"]),
        Route("/state", state),
        WebSocketRoute("/ws", websocket_echo),
    ],
    lifespan=lifespan,
)

"""Endless event streams (server-sent events) in Starlette and FastAPI, to see that a
stream stops once its client leaves.

trioserve examples.frameworks.endless_streams:starlette_app
trioserve examples.frameworks.endless_streams:fastapi_app

Each stream sends an event every 50 ms until the client goes away, and prints to stderr
when it starts and when its generator is closed. trioserve speaks ASGI 2.4: its
``send()`` raises ``trioserve.ClientDisconnected`` (an ``OSError``) once the client
has gone, and Starlette's ``StreamingResponse`` then stops iterating the generator.
Try it with ``curl -N http://127.0.0.1:8000/events`` and Ctrl-C.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator

import anyio
from fastapi import FastAPI
from fastapi.responses import StreamingResponse as FastAPIStreamingResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

INTERVAL = 0.05


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def starlette_events(request: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        say("starlette stream started")
        sent = 0
        try:
            while True:
                yield f"data: event {sent}\n\n"
                sent += 1
                await anyio.sleep(INTERVAL)
        finally:
            say(f"starlette stream closed after {sent} events")

    return StreamingResponse(events(), media_type="text/event-stream")


starlette_app = Starlette(routes=[Route("/events", starlette_events)])


fastapi_app = FastAPI()


@fastapi_app.get("/events")
def fastapi_events() -> FastAPIStreamingResponse:
    # A plain generator: Starlette iterates it in a worker thread.
    def events() -> Iterator[str]:
        say("fastapi stream started")
        sent = 0
        try:
            while True:
                yield f"data: event {sent}\n\n"
                sent += 1
                time.sleep(INTERVAL)
        finally:
            say(f"fastapi stream closed after {sent} events")

    return FastAPIStreamingResponse(events(), media_type="text/event-stream")

"""Endless streamed responses that print to stderr when they stop: a raw ASGI app that
never calls receive(), and a WSGI app whose response iterable has a close()."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import trio

INTERVAL = 0.05


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan: with lifespan 'auto' the server serves without it
    await send({"type": "http.response.start", "status": 200, "headers": []})
    say("asgi stream started")
    sent = 0
    try:
        while True:
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            sent += 1
            await trio.sleep(INTERVAL)
    finally:
        say(f"asgi stream stopped after {sent} events")


class Ticks:
    """The WSGI response: a tick every INTERVAL seconds, forever, until closed."""

    def __init__(self) -> None:
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        say("wsgi stream started")
        while True:
            yield b"tick\n"
            self.sent += 1
            time.sleep(INTERVAL)

    def close(self) -> None:
        say(f"wsgi stream closed after {self.sent} events")


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Ticks:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Ticks()

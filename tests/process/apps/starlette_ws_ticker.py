"""A Starlette WebSocket endpoint that only sends (a ticker) and never catches
WebSocketDisconnect: when the client leaves, its send fails and the exception
propagates out of the app, as in many real endpoints.

Prints "ticker ended: <exception>" to stderr when its loop ends, so a test can see
how long after the client left that happened.
"""

from __future__ import annotations

import sys

import anyio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

# Between ticks: often enough that a send follows the client's leaving at once.
INTERVAL = 0.02


async def ticker(websocket: WebSocket) -> None:
    await websocket.accept()
    number = 0
    try:
        while True:
            await websocket.send_text(f"tick {number}")
            number += 1
            await anyio.sleep(INTERVAL)
    except BaseException as exc:
        print(f"ticker ended: {type(exc).__name__}", file=sys.stderr, flush=True)
        raise


app = Starlette(routes=[WebSocketRoute("/ticker", ticker)])

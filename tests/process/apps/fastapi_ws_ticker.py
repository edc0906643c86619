"""The FastAPI twin of starlette_ws_ticker: a WebSocket endpoint that only sends and
lets WebSocketDisconnect propagate when the client leaves.

Prints "ticker ended: <exception>" to stderr when its loop ends.
"""

from __future__ import annotations

import sys

import anyio
from fastapi import FastAPI, WebSocket

# Between ticks: often enough that a send follows the client's leaving at once.
INTERVAL = 0.02

app = FastAPI()


@app.websocket("/ticker")
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

"""A Quart-Trio app: a page and a POST echo, with before/after serving hooks.

trioserve examples.frameworks.quart_trio_app:app

trioserve runs the hooks through ASGI lifespan events.
"""

from __future__ import annotations

import sys

from quart import Response, request
from quart_trio import QuartTrio

app = QuartTrio(__name__)


@app.before_serving
async def startup() -> None:
    print("quart-trio startup", file=sys.stderr, flush=True)


@app.after_serving
async def shutdown() -> None:
    print("quart-trio shutdown", file=sys.stderr, flush=True)


@app.get("/")
async def index() -> dict[str, str]:
    return {"framework": "quart-trio"}


@app.post("/echo")
async def echo() -> Response:
    body = await request.get_data(as_text=False)
    return Response(body, mimetype=request.mimetype or "text/plain")

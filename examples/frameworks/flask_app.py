"""A Flask app, served as WSGI: a page, a POST echo and a streamed response.

trioserve examples.frameworks.flask_app:app

The interface is detected from the callable; ``--interface wsgi`` says it outright.
WSGI has no lifespan events.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, request

CHUNKS = 5

app = Flask(__name__)


@app.get("/")
def index() -> dict[str, str]:
    return {"framework": "flask"}


@app.post("/echo")
def echo() -> Response:
    return Response(request.get_data(), mimetype=request.mimetype or "text/plain")


@app.get("/stream")
def stream() -> Response:
    def chunks() -> Iterator[str]:
        for number in range(CHUNKS):
            yield f"chunk {number}\n"

    return Response(chunks(), mimetype="text/plain")

"""A WSGI app served by serve() on 127.0.0.1:0, with httpx as the client."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
import trio

import trioserve
from trioserve._wsgi import Environ, StartResponse


def echo_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answers with the method, the path and the request body."""
    body = environ["wsgi.input"].read()
    # PATH_INFO holds the path's bytes as latin-1 characters.
    head = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}\n".encode("latin-1")
    payload = head + body
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))]
    )
    return [payload]


async def test_wsgi_app_answers_get_and_post(nursery):
    """A WSGI app is detected, runs in threads, and answers GET and echoes a POST body."""
    config = trioserve.Config(
        app=echo_app, bind=["127.0.0.1:0"], workers=0, interface="auto", threads=2
    )
    [(host, port)] = await nursery.start(trioserve.serve, config)
    payload = bytes(range(256)) * 1024
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            got = await client.get("/caf%C3%A9?x=1")
            posted = await client.post("/upload", content=payload)
    assert got.status_code == 200
    assert got.headers["content-type"] == "text/plain"
    assert got.content == "GET /café\n".encode()
    assert posted.status_code == 200
    assert posted.content == b"POST /upload\n" + payload

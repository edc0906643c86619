"""The Flask (WSGI) app of the differential check."""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, redirect, request, send_file
from werkzeug.wrappers import Response as BaseResponse

from . import HELLO, STATIC, mark, say

app = Flask(__name__, static_folder=STATIC, static_url_path="/static")

# What the app sees of the WSGI environ (values that do not carry a port).
ENVIRON_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "CONTENT_LENGTH",
    "HTTP_TRANSFER_ENCODING",
    "wsgi.url_scheme",
    "wsgi.input_terminated",
    "wsgi.multithread",
    "wsgi.run_once",
)


@app.get("/")
def index() -> dict[str, str]:
    return {"framework": "flask"}


@app.route("/scope/<path:rest>", methods=["GET", "POST"])
def scope(rest: str) -> dict[str, object]:
    environ = request.environ
    seen: dict[str, object] = {key: environ.get(key) for key in ENVIRON_KEYS}
    seen["SERVER_PORT is str"] = isinstance(environ.get("SERVER_PORT"), str)
    seen["path"] = request.path
    seen["query"] = sorted(request.args.items(multi=True))
    return seen


@app.get("/raw-uri/<path:rest>")
def raw_uri(rest: str) -> dict[str, object]:
    """The request target as sent: gunicorn's RAW_URI, uWSGI's REQUEST_URI (neither is in
    PEP 3333; apps use them to tell an encoded slash from a real one)."""
    return {key: request.environ.get(key) for key in ("RAW_URI", "REQUEST_URI")}


@app.route("/echo", methods=["POST", "PUT"])
def echo() -> Response:
    return Response(request.get_data(), mimetype=request.mimetype or "text/plain")


@app.get("/stream")
def stream() -> Response:
    def chunks() -> Iterator[str]:
        for number in range(5):
            yield f"chunk {number}\n"

    return Response(chunks(), mimetype="text/plain")


@app.get("/endless")
def endless() -> Response:
    """An endless stream; the server must stop iterating and call close() (PEP 3333) once
    the client has gone, which ends the generator."""

    def events() -> Iterator[str]:
        say("endless started")
        number = 0
        try:
            while True:
                yield f"data: {number}\n\n"
                number += 1
                time.sleep(0.02)
        finally:
            say("endless closed")

    return Response(events(), mimetype="text/event-stream")


@app.get("/fail-mid-stream")
def fail_mid_stream() -> Response:
    def chunks() -> Iterator[str]:
        yield "first\n"
        raise RuntimeError("failing in the middle of a stream (differential check)")

    return Response(chunks(), mimetype="text/plain")


@app.get("/error")
def error() -> Response:
    raise RuntimeError("failing view (differential check)")


@app.get("/cookies")
def cookies() -> Response:
    response = Response("cookies\n", mimetype="text/plain")
    response.set_cookie("a", "1", path="/")
    response.set_cookie("b", "two words", httponly=True)
    response.set_cookie("c", "3", secure=True, samesite="Strict")
    return response


@app.get("/redirect")
def redirect_view() -> BaseResponse:
    return redirect("/scope/target?a=1&b=x%2Fy&c=d+e")


@app.get("/slash/")
def slash() -> Response:
    return Response("slash\n", mimetype="text/plain")


@app.get("/big-header")
def big_header() -> Response:
    return Response("big\n", mimetype="text/plain", headers={"x-big": "v" * 8000})


@app.get("/background")
def background() -> Response:
    """WSGI's "after the response": work in close(), which the server calls once the body
    is sent."""

    def later() -> None:
        say("background started")
        time.sleep(1)
        mark("background-done")
        say("background done")

    response = Response("background\n", mimetype="text/plain")
    response.call_on_close(later)
    return response


@app.get("/file")
def file() -> Response:
    return send_file(HELLO, mimetype="text/plain", conditional=True)

"""The Quart-Trio app of the differential check."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from quart import Response, redirect, request, send_file, websocket
from quart_trio import QuartTrio
from werkzeug.wrappers import Response as BaseResponse

from . import HELLO, STARTUP_ERROR, STATIC, mark, say


def build(*, failing: bool) -> QuartTrio:
    app = QuartTrio(__name__, static_folder=str(STATIC), static_url_path="/static")

    @app.before_serving
    async def startup() -> None:
        if failing:
            raise ConnectionRefusedError(STARTUP_ERROR)
        say("startup")

    @app.after_serving
    async def shutdown() -> None:
        say("shutdown")

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"framework": "quart-trio"}

    @app.route("/scope/<path:rest>", methods=["GET", "POST"])
    async def scope(rest: str) -> dict[str, object]:
        scope = request.scope
        client = scope.get("client")
        return {
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "root_path": scope["root_path"],
            "query_string": scope["query_string"].decode("latin-1"),
            "query": sorted(request.args.items(multi=True)),
            "scheme": scope["scheme"],
            "http_version": scope["http_version"],
            "client_host": client[0] if client else None,
            "method": request.method,
        }

    @app.route("/echo", methods=["POST", "PUT"])
    async def echo() -> Response:
        body = await request.get_data(as_text=False)
        return Response(body, mimetype=request.mimetype or "text/plain")

    @app.get("/stream")
    async def stream() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for number in range(5):
                yield f"chunk {number}\n".encode()
                await trio.lowlevel.checkpoint()

        return Response(chunks(), mimetype="text/plain")

    @app.get("/endless")
    async def endless() -> Response:
        async def events() -> AsyncIterator[bytes]:
            say("endless started")
            number = 0
            try:
                while True:
                    yield f"data: {number}\n\n".encode()
                    number += 1
                    await trio.sleep(0.02)
            finally:
                say("endless closed")

        return Response(events(), mimetype="text/event-stream")

    @app.get("/fail-mid-stream")
    async def fail_mid_stream() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            await trio.lowlevel.checkpoint()
            raise RuntimeError("failing in the middle of a stream (differential check)")

        return Response(chunks(), mimetype="text/plain")

    @app.get("/error")
    async def error() -> Response:
        raise RuntimeError("failing view (differential check)")

    @app.get("/cookies")
    async def cookies() -> Response:
        response = Response("cookies\n", mimetype="text/plain")
        response.set_cookie("a", "1", path="/")
        response.set_cookie("b", "two words", httponly=True)
        response.set_cookie("c", "3", secure=True, samesite="Strict")
        return response

    @app.get("/redirect")
    async def redirect_view() -> BaseResponse:
        return redirect("/scope/target?a=1&b=x%2Fy&c=d+e")

    @app.get("/slash/")
    async def slash() -> Response:
        return Response("slash\n", mimetype="text/plain")

    @app.get("/big-header")
    async def big_header() -> Response:
        return Response("big\n", mimetype="text/plain", headers={"x-big": "v" * 8000})

    @app.get("/background")
    async def background() -> Response:
        async def later() -> None:
            say("background started")
            await trio.sleep(1)
            mark("background-done")
            say("background done")

        app.add_background_task(later)
        return Response("background\n", mimetype="text/plain")

    @app.get("/file")
    async def file() -> Response:
        response = await send_file(HELLO, mimetype="text/plain", conditional=True)
        return response

    @app.websocket("/ws")
    async def ws_echo() -> None:
        try:
            while True:
                message = await websocket.receive()
                if isinstance(message, str):
                    await websocket.send("echo: " + message)
                else:
                    await websocket.send(b"echo: " + message)
        finally:
            say("ws disconnect")

    @app.websocket("/ws-subprotocol")
    async def ws_subprotocol() -> None:
        offered = websocket.requested_subprotocols
        await websocket.accept(subprotocol="chat.v2" if "chat.v2" in offered else None)
        await websocket.send(",".join(offered))
        await websocket.close(4001, "bye from the app")

    @app.websocket("/ws-reject")
    async def ws_reject() -> None:
        await websocket.close(1008)

    return app


app = build(failing=False)
app_failing = build(failing=True)

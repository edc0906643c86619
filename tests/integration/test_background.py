"""Work an app does after its response, through serve() on 127.0.0.1:0: the next request
on the connection is answered meanwhile, the connection hooks see one connection, and a
graceful stop waits for the work up to the graceful timeout."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.helpers import hello_app
from trioserve import Config, ConnectionInfo, serve

TIMEOUT = 10.0


class WorkingApp:
    """``/bg`` answers at once, then works until ``release`` is set (or it is cancelled)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.working = 0
        self.cancelled = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/bg":
            await hello_app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        self.working += 1
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.working -= 1


async def test_next_request_answered_while_the_app_works_and_hooks_see_one_connection(
    nursery: trio.Nursery,
) -> None:
    """httpx's second request on its kept-alive connection is answered while the first
    request's app still works; connection_made and connection_lost run once, lost only
    after the connection ended."""
    app = WorkingApp()
    made: list[ConnectionInfo] = []
    lost = trio.Event()

    def connection_lost(conn: ConnectionInfo, *, exc: Any = None) -> None:
        assert not lost.is_set()
        lost.set()

    config = Config(
        app=app,
        bind=["127.0.0.1:0"],
        workers=0,
        lifespan="off",
        connection_made=lambda conn, *, exc=None: made.append(conn),
        connection_lost=connection_lost,
    )
    [(host, port)] = await nursery.start(serve, config)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client:
            first = await client.get(f"http://{host}:{port}/bg")
            second = await client.get(f"http://{host}:{port}/")
            assert (first.text, second.text) == ("ok", "Hello, world!")
            assert app.working == 1
            assert len(made) == 1
            assert not lost.is_set()
            app.release.set()
        await lost.wait()
    assert app.working == 0 and not app.cancelled


async def test_graceful_stop_cancels_work_past_the_graceful_timeout() -> None:
    """A graceful stop waits for work after a response up to --graceful-timeout, then
    cancels it."""
    app = WorkingApp()
    config = Config(app=app, bind=["127.0.0.1:0"], workers=0, lifespan="off", graceful_timeout=1)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            [(host, port)] = await nursery.start(serve, config)
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{host}:{port}/bg")
            assert response.text == "ok"
            stop = trio.current_time()
            nursery.cancel_scope.cancel()  # (serve() turns it into a graceful stop)
        assert trio.current_time() - stop >= 1
    assert app.cancelled

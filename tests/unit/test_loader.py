"""load_config_app: the one way every entry point loads and wraps the configured app."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import trio

from tests.serve.test_wsgi import Recorder, body_receive, http_scope
from trioserve import Config
from trioserve._loader import load_config_app
from trioserve._wsgi import Environ, StartResponse


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI 3 app that is never called in these tests."""
    raise AssertionError("not called")


def environ_app(seen: list[Environ]) -> Any:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ)
        start_response("204 No Content", [])
        return []

    return app


@pytest.mark.parametrize(("workers", "multiprocess"), [(0, False), (1, False), (2, True)])
async def test_wsgi_multiprocess_follows_the_worker_count(workers: int, multiprocess: bool):
    """wsgi.multiprocess is True when more than one worker process serves the WSGI app."""
    seen: list[Environ] = []
    loaded = await load_config_app(Config(app=environ_app(seen), workers=workers))
    assert loaded.interface == "wsgi" and loaded.asgi is not None
    with trio.fail_after(5):
        await loaded.asgi(http_scope(), body_receive(), Recorder())
    assert seen[0]["wsgi.multiprocess"] is multiprocess


async def test_asyncio_app_loop_wraps_the_app():
    """--app-loop asyncio: the loaded app runs on the asyncio loop, so outside it it refuses."""
    plain = await load_config_app(Config(app=asgi_app))
    wrapped = await load_config_app(Config(app=asgi_app, app_loop="asyncio"))
    assert plain.asgi is asgi_app
    assert wrapped.asgi is not asgi_app and wrapped.app is asgi_app
    with pytest.raises(RuntimeError, match="called outside the asyncio loop"):
        assert wrapped.asgi is not None
        await wrapped.asgi(http_scope(), body_receive(), Recorder())

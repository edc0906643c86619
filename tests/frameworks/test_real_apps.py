"""What real framework users hit on day one, under the real CLI (issue 12).

Each test runs a real framework app (Starlette, FastAPI, Flask, Django) the way a new
user would, and pins the behaviour a peer server gives for it: uvicorn and hypercorn
refuse to serve an app whose lifespan startup failed, gunicorn hands Werkzeug a
chunked upload, and ``--preload`` serves what a plain start serves.
"""

from __future__ import annotations

import pytest
import trio

from tests.frameworks.test_frameworks import needs
from tests.process.test_cli import APPS, run_cli
from trioserve import Config, LifespanError, serve

DB_DOWN = "lifespan startup failed: ConnectionRefusedError: database down"


# -- a lifespan that fails is not "no lifespan" -------------------------------------------


@needs("fastapi")
@pytest.mark.parametrize("app", ["starlette_app", "fastapi_app"])
@pytest.mark.parametrize("workers", ["0", "2"])
async def test_failing_framework_lifespan_exits_3_with_the_apps_message(
    app: str, workers: str
) -> None:
    """A Starlette/FastAPI lifespan that raises (startup.failed, re-raise) exits 3, never serves."""
    status, _, err = await run_cli(
        "--app-dir", APPS, f"db_down:{app}", "-b", "127.0.0.1:0", "-w", workers
    )
    assert status == 3, err
    assert err.splitlines()[-1].endswith(DB_DOWN), err
    assert "does not support ASGI lifespan" not in err
    assert "listening on" not in err


@needs("fastapi")
@pytest.mark.parametrize("app", ["starlette_app", "fastapi_app"])
async def test_failing_framework_lifespan_in_process_raises(app: str) -> None:
    """serve() of an app whose framework lifespan fails raises LifespanError with its message."""
    config = Config(app=f"db_down:{app}", app_dir=APPS, bind=["127.0.0.1:0"], workers=0)
    with trio.fail_after(10), pytest.raises(LifespanError, match=DB_DOWN):
        await serve(config)

"""ASGI lifespan: startup, failure, unsupported apps and deadlines, on virtual time."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from trioserve import LifespanError
from trioserve._lifespan import Lifespan


def lifespan_for(app: Any, mode: str = "auto", **timeouts: float) -> Lifespan:
    return Lifespan(
        app,
        mode=mode,
        state={},
        startup_timeout=timeouts.get("startup", 10),
        shutdown_timeout=timeouts.get("shutdown", 10),
    )


def recording_app(events: list[str], *, fail_startup: str | None = None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            if message["type"] == "lifespan.startup":
                if fail_startup is not None:
                    await send({"type": "lifespan.startup.failed", "message": fail_startup})
                    return
                scope["state"]["ready"] = True
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app


async def test_startup_and_shutdown_are_exchanged(nursery):
    """Startup completes before serving and shutdown is sent at the end; state is filled in."""
    events: list[str] = []
    lifespan = lifespan_for(recording_app(events))
    await lifespan.startup(nursery)
    assert events == ["lifespan.startup"]
    assert lifespan.state == {"ready": True}
    await lifespan.shutdown()
    assert events == ["lifespan.startup", "lifespan.shutdown"]


async def test_startup_failed_message_is_raised(nursery):
    """lifespan.startup.failed stops startup with the app's message."""
    lifespan = lifespan_for(recording_app([], fail_startup="database down"))
    with pytest.raises(LifespanError, match="lifespan startup failed: database down"):
        await lifespan.startup(nursery)


async def test_auto_mode_ignores_app_without_lifespan_support(nursery, caplog):
    """In auto mode an app that raises on the lifespan scope is served without lifespan."""

    async def http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "only http is supported"

    caplog.set_level(logging.INFO, "trioserve")
    lifespan = lifespan_for(http_only, "auto")
    await lifespan.startup(nursery)
    assert not lifespan.supported
    assert any("does not support ASGI lifespan" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await lifespan.shutdown()  # nothing to do, returns at once


async def test_on_mode_fails_for_app_without_lifespan_support(nursery):
    """In on mode an app raising on the lifespan scope fails startup, naming the error."""

    async def http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("lifespan? never heard of it")

    with pytest.raises(LifespanError, match="RuntimeError: lifespan\\? never heard of it"):
        await lifespan_for(http_only, "on").startup(nursery)


async def test_startup_timeout(nursery, autojump_clock):
    """An app that never answers startup fails it after the startup timeout."""

    async def silent(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await trio.sleep_forever()

    start = trio.current_time()
    with pytest.raises(LifespanError, match="within 7 seconds"):
        await lifespan_for(silent, startup=7).startup(nursery)
    assert trio.current_time() - start == pytest.approx(7)
    nursery.cancel_scope.cancel()


async def test_shutdown_timeout_is_bounded(nursery, autojump_clock, caplog):
    """A shutdown that never completes is given up after the shutdown timeout, with an error log."""

    async def stuck_on_shutdown(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await trio.sleep_forever()

    lifespan = lifespan_for(stuck_on_shutdown, shutdown=3)
    await lifespan.startup(nursery)
    start = trio.current_time()
    await lifespan.shutdown()
    assert trio.current_time() - start == pytest.approx(3)
    assert any("did not complete within 3 seconds" in r.getMessage() for r in caplog.records)
    nursery.cancel_scope.cancel()


def failing_then_raising_app(message: str) -> Any:
    """What Starlette and FastAPI do when the lifespan raises: report, then re-raise."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        try:
            raise ConnectionRefusedError("database down")
        except ConnectionRefusedError:
            await send({"type": "lifespan.startup.failed", "message": message})
            raise

    return app


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_startup_failed_then_raise_fails_startup(nursery, mode, caplog):
    """An app that sends lifespan.startup.failed and then raises supports lifespan: it fails."""
    caplog.set_level(logging.INFO, "trioserve")
    lifespan = lifespan_for(failing_then_raising_app("database down"), mode)
    with pytest.raises(LifespanError, match=r"^lifespan startup failed: database down$"):
        await lifespan.startup(nursery)
    assert lifespan.supported
    assert not any("does not support" in r.getMessage() for r in caplog.records)


async def test_startup_failed_traceback_message_is_logged_and_summed_up(nursery, caplog):
    """A multi-line message (a traceback) is logged whole; the error names its last line."""
    traceback_text = (
        "Traceback (most recent call last):\n"
        '  File "app.py", line 3, in lifespan\n'
        "ConnectionRefusedError: database down\n"
    )
    lifespan = lifespan_for(failing_then_raising_app(traceback_text))
    with pytest.raises(
        LifespanError, match=r"^lifespan startup failed: ConnectionRefusedError: database down$"
    ):
        await lifespan.startup(nursery)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == ["lifespan startup failed; the app reported:\n" + traceback_text.strip()]


async def test_startup_complete_then_raise_is_served_with_an_error_log(nursery, caplog):
    """An app that completes startup and then raises supports lifespan: logged at ERROR, served."""

    async def complete_then_raise(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        raise RuntimeError("background task died")

    caplog.set_level(logging.INFO, "trioserve")
    lifespan = lifespan_for(complete_then_raise)
    await lifespan.startup(nursery)
    assert lifespan.supported
    await trio.testing.wait_all_tasks_blocked()
    assert not any("does not support" in r.getMessage() for r in caplog.records)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["lifespan task of the app raised after startup"]
    await lifespan.shutdown()  # the task has ended: nothing to send it


async def test_app_ending_its_lifespan_unasked_is_logged_with_its_reason(nursery, caplog):
    """An app whose lifespan ends by itself after startup (Starlette sends
    lifespan.shutdown.failed when its task fails) has its reason logged, and is not told
    it sent the wrong message."""
    sent: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        try:
            await send({"type": "lifespan.shutdown.failed", "message": "pool lost"})
        except RuntimeError as exc:
            sent.append(exc)

    lifespan = lifespan_for(app)
    await lifespan.startup(nursery)
    with trio.fail_after(1):
        await trio.testing.wait_all_tasks_blocked()
    assert sent == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["lifespan shutdown failed: pool lost"]
    await lifespan.shutdown()

"""--app-loop asyncio: asyncio apps run on trio-asyncio, with the trio receive/send bridged."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import sniffio
import trio

from trioserve import Config, ConfigError
from trioserve._asyncio_loop import ASYNCIO_HINT, app_loop, asyncio_app, asyncio_hint
from trioserve._lifespan import Lifespan
from trioserve._types import Message

ASYNCIO = Config(app_loop="asyncio")


def http_scope() -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "method": "POST", "path": "/"}


class TrioPeer:
    """The server's side of one ASGI call: trio receive/send over scripted messages."""

    def __init__(self, *bodies: bytes) -> None:
        self.incoming: list[Message] = [
            {"type": "http.request", "body": body, "more_body": i < len(bodies) - 1}
            for i, body in enumerate(bodies)
        ]
        self.sent: list[Message] = []
        self.libraries: set[str] = set()

    async def receive(self) -> Message:
        await trio.lowlevel.checkpoint()
        self.libraries.add(sniffio.current_async_library())
        if self.incoming:
            return self.incoming.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        self.libraries.add(sniffio.current_async_library())
        self.sent.append(message)


async def _upper(data: bytes) -> bytes:
    await asyncio.sleep(0)
    return data.upper()


async def asyncio_only_app(scope: Any, receive: Any, send: Any) -> None:
    """Echoes the request body chunks upper-cased and joined by '|', the asyncio way."""
    loop = asyncio.get_running_loop()
    await asyncio.gather(asyncio.sleep(0), asyncio.sleep(0))
    chunks = []
    while True:
        message = await receive()
        chunks.append(message["body"])
        if not message.get("more_body", False):
            break
    reply = await asyncio.create_task(_upper(b"|".join(chunks)))
    library = sniffio.current_async_library().encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-library", library), (b"x-loop", type(loop).__name__.encode())],
        }
    )
    await send({"type": "http.response.body", "body": reply})


async def test_asyncio_app_serves_a_request_through_the_bridge():
    """An asyncio-only app gets its body in order and its response reaches the trio send."""
    peer = TrioPeer(b"one", b"two", b"three")
    with trio.fail_after(5):
        async with app_loop(ASYNCIO):
            await asyncio_app(asyncio_only_app)(http_scope(), peer.receive, peer.send)
    assert peer.sent == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-library", b"asyncio"), (b"x-loop", b"TrioEventLoop")],
        },
        {"type": "http.response.body", "body": b"ONE|TWO|THREE"},
    ]
    assert peer.incoming == []
    assert peer.libraries == {"trio"}


async def test_asyncio_app_under_plain_trio_fails_with_a_hint():
    """Called on plain trio the asyncio app fails, and asyncio_hint points at --app-loop."""
    peer = TrioPeer(b"body")
    with trio.fail_after(5), pytest.raises(RuntimeError) as info:
        await asyncio_only_app(http_scope(), peer.receive, peer.send)
    assert asyncio_hint(info.value) == ASYNCIO_HINT


async def test_error_raised_inside_asyncio_code_gets_the_hint():
    """An error whose traceback passes through asyncio's modules gets the hint."""

    async def sleeps_the_asyncio_way() -> None:
        await asyncio.sleep(0)

    # Trio throws this TypeError in at the point where asyncio's sleep yields.
    with trio.fail_after(5), pytest.raises(TypeError, match="unrecognized yield message") as info:
        await sleeps_the_asyncio_way()
    assert asyncio_hint(info.value) == ASYNCIO_HINT


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def _chained() -> Exception:
    try:
        raise RuntimeError("no running event loop")
    except RuntimeError as cause:
        try:
            raise ValueError("could not start the database pool") from cause
        except ValueError as exc:
            return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("There is no current event loop in thread 'MainThread'."), ASYNCIO_HINT),
        (sniffio.AsyncLibraryNotFoundError("unknown async library"), ASYNCIO_HINT),
        (_chained(), ASYNCIO_HINT),
        (ExceptionGroup("app", [ValueError("x"), _chained()]), ASYNCIO_HINT),
        (ValueError("bad input"), None),
        (_raised(ValueError("bad input")), None),
        (RuntimeError("something else"), None),
        (ExceptionGroup("app", [ValueError("x"), KeyError("y")]), None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_asyncio_hint_recognises_asyncio_errors_only(exc, expected):
    """The hint is given for asyncio-loop errors, also in causes and groups, and not otherwise."""
    assert asyncio_hint(exc) == expected


async def test_asyncio_app_exception_propagates_with_its_type():
    """An exception raised by the asyncio app reaches the trio caller as itself."""

    class AppFailure(Exception):
        pass

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0)
        raise AppFailure("broken view")

    peer = TrioPeer(b"")
    with trio.fail_after(5):
        async with app_loop(ASYNCIO):
            with pytest.raises(AppFailure, match="broken view") as info:
                await asyncio_app(failing)(http_scope(), peer.receive, peer.send)
    assert info.type is AppFailure


async def test_cancelling_the_trio_caller_cancels_the_asyncio_task(autojump_clock):
    """A trio cancel reaches the app as asyncio.CancelledError and waits for the task to end."""
    events: list[str] = []

    async def sleeper(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        events.append("slept")

    peer = TrioPeer(b"")
    with trio.fail_after(5):
        async with app_loop(ASYNCIO):
            start = trio.current_time()
            with trio.move_on_after(1) as deadline:
                await asyncio_app(sleeper)(http_scope(), peer.receive, peer.send)
            assert deadline.cancelled_caught
            assert trio.current_time() - start == pytest.approx(1)
            assert events == ["cancelled"]


async def test_cancelling_while_the_app_awaits_receive_cancels_the_trio_receive(autojump_clock):
    """A cancel while the app waits on receive() ends the trio receive call as well."""
    events: list[str] = []

    class WatchedPeer(TrioPeer):
        async def receive(self) -> Message:
            try:
                return await super().receive()
            finally:
                events.append("trio receive ended")

    async def waits_for_disconnect(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    peer = WatchedPeer()
    with trio.fail_after(5):
        async with app_loop(ASYNCIO):
            with trio.move_on_after(1) as deadline:
                await asyncio_app(waits_for_disconnect)(http_scope(), peer.receive, peer.send)
            assert deadline.cancelled_caught
            assert events == ["trio receive ended"]


async def test_lifespan_exchange_through_the_bridge():
    """Lifespan startup and shutdown reach a long-lived asyncio lifespan task and back."""
    events: list[str] = []

    async def asyncio_lifespan(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        message = await receive()
        events.append(message["type"])
        # A background task that lives as long as the app, like a connection pool's.
        background = asyncio.create_task(asyncio.sleep(3600))
        scope["state"]["library"] = sniffio.current_async_library()
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        events.append(message["type"])
        background.cancel()
        with pytest.raises(asyncio.CancelledError):
            await background
        await send({"type": "lifespan.shutdown.complete"})
        events.append("returned")

    state: dict[str, Any] = {}
    lifespan = Lifespan(
        asyncio_app(asyncio_lifespan),
        mode="on",
        state=state,
        startup_timeout=5,
        shutdown_timeout=5,
    )
    with trio.fail_after(5):
        async with app_loop(ASYNCIO), trio.open_nursery() as nursery:
            await lifespan.startup(nursery)
            assert lifespan.supported
            assert state == {"library": "asyncio"}
            assert events == ["lifespan.startup"]
            await lifespan.shutdown()
    assert events == ["lifespan.startup", "lifespan.shutdown", "returned"]


async def test_asyncio_app_outside_app_loop_says_so():
    """Calling the wrapped app with no asyncio loop open fails with a clear RuntimeError."""
    peer = TrioPeer(b"")
    with trio.fail_after(5), pytest.raises(RuntimeError, match="outside the asyncio loop"):
        await asyncio_app(asyncio_only_app)(http_scope(), peer.receive, peer.send)


async def test_trio_app_loop_does_not_import_trio_asyncio(monkeypatch):
    """app_loop with the default "trio" never imports trio-asyncio."""
    # None in sys.modules makes any import of it fail.
    monkeypatch.setitem(sys.modules, "trio_asyncio", None)
    async with app_loop(Config()):
        await trio.lowlevel.checkpoint()


async def test_asyncio_without_trio_asyncio_is_a_config_error(monkeypatch):
    """Asking for asyncio without trio-asyncio installed is a ConfigError saying what to install."""
    monkeypatch.setitem(sys.modules, "trio_asyncio", None)
    with pytest.raises(ConfigError, match=r"--app-loop asyncio: needs trio-asyncio; install it"):
        async with app_loop(ASYNCIO):
            pass
    with pytest.raises(ConfigError, match=r"pip install 'trioserve\[asyncio\]'"):
        asyncio_app(asyncio_only_app)


async def test_hint_for_asyncio_future_awaited_under_trio():
    """An asyncio future awaited under trio (no asyncio frame in the traceback) gets the hint."""

    # A plain selector loop, never run: trio-asyncio refuses new_event_loop() inside trio.
    loop = asyncio.SelectorEventLoop()
    try:
        future = loop.create_future()
        with pytest.raises(TypeError, match="unrecognized yield message") as info:
            await future
    finally:
        loop.close()
    assert asyncio_hint(info.value) == ASYNCIO_HINT


async def test_run_in_executor_accepts_a_plain_thread_pool():
    """On the asyncio app loop, run_in_executor takes any executor (asgiref passes its own)."""
    from concurrent.futures import ThreadPoolExecutor

    async def app(scope: Any, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as pool:
            scope["result"] = await loop.run_in_executor(pool, sum, [1, 2, 3])

    scope: dict[str, Any] = {"type": "http"}

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    with trio.fail_after(5):
        async with app_loop(Config(app_loop="asyncio")):
            await asyncio_app(app)(scope, receive, send)
    assert scope["result"] == 6

"""``--app-loop asyncio``: run apps written for asyncio inside the trio server.

trio-asyncio provides an asyncio event loop that runs on top of trio. :func:`app_loop`
opens that loop around the server; :func:`asyncio_app` wraps an ASGI app so that each
call runs as an asyncio task on it, with the server's trio ``receive``/``send`` made
awaitable from asyncio. :func:`asyncio_hint` recognises the errors an asyncio app
raises when it is served on plain trio, so the logs can say which setting fixes them.

trio-asyncio is optional (the ``asyncio`` extra) and imported only when asked for.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import sniffio

from ._config import Config
from ._errors import ConfigError
from ._types import ASGIApp, Message, Receive, Scope, Send

ASYNCIO_HINT = (
    "this app looks written for asyncio; run it with --app-loop asyncio "
    "(pip install 'trioserve[asyncio]')"
)

_MISSING = (
    "--app-loop asyncio: needs trio-asyncio; install it with pip install 'trioserve[asyncio]'"
)

# What asyncio says when it is used with no asyncio loop running (get_running_loop(),
# and get_event_loop() on Python 3.12+).
_NO_LOOP_MESSAGES = ("no running event loop", "There is no current event loop")

# An app that raises through a long chain is not worth an unbounded walk on an error path.
_MAX_EXCEPTIONS = 64


def _trio_asyncio() -> Any:
    try:
        import trio_asyncio  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigError(_MISSING) from exc
    return trio_asyncio


@contextlib.asynccontextmanager
async def app_loop(config: Config) -> AsyncIterator[None]:
    """Open the event loop ``config.app_loop`` asks for, for as long as the server runs.

    For "asyncio" this is a trio-asyncio loop: every :func:`asyncio_app` call made
    inside the block runs on it, and leaving the block cancels the asyncio tasks still
    running. For "trio" there is nothing to open. trio-asyncio runs the block inside
    its nurseries, so with "asyncio" an exception leaving the block comes out wrapped in
    an exception group.

    Raises:
        ConfigError: "asyncio" was asked for and trio-asyncio is not installed.
    """
    if config.app_loop != "asyncio":
        yield
        return
    trio_asyncio = _trio_asyncio()
    async with trio_asyncio.open_loop() as loop:
        _accept_any_executor(loop, trio_asyncio.TrioExecutor)
        yield


def _accept_any_executor(loop: Any, trio_executor: type) -> None:
    """Let ``loop.run_in_executor`` take any concurrent.futures executor.

    trio-asyncio accepts only its own TrioExecutor there, but asyncio code passes its
    own: asgiref's thread-sensitive sync_to_async (which Django calls on every request)
    hands in a ThreadPoolExecutor. Such work is submitted to that executor, and its
    future wrapped for the loop, as asyncio's own loop does.
    """
    import asyncio  # only needed with --app-loop asyncio

    original = loop.run_in_executor

    def run_in_executor(executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        if executor is None or isinstance(executor, trio_executor):
            return original(executor, func, *args)
        return asyncio.wrap_future(executor.submit(func, *args), loop=loop)

    loop.run_in_executor = run_in_executor


def asyncio_app(app: ASGIApp) -> ASGIApp:
    """Wrap an asyncio ASGI 3 app into one that trio code can call.

    Each call of the returned app must happen inside :func:`app_loop` with "asyncio".
    It runs ``app(scope, receive, send)`` as an asyncio task on that loop; the trio
    ``receive`` and ``send`` it was given run as trio tasks when the app awaits them.
    Cancelling the trio caller cancels the asyncio task (the app sees
    ``asyncio.CancelledError``) and waits for it to end; whatever the app raises is
    raised to the caller unchanged. Lifespan calls, which last as long as the server,
    work the same way.

    Raises:
        ConfigError: trio-asyncio is not installed.
    """
    trio_asyncio = _trio_asyncio()

    async def run_on_asyncio(scope: Scope, receive: Receive, send: Send) -> None:
        loop = trio_asyncio.current_loop.get()
        if loop is None:
            raise RuntimeError(
                "--app-loop asyncio: the app was called outside the asyncio loop; "
                "call it inside 'async with app_loop(config)'"
            )
        receive_future = trio_asyncio.trio_as_aio(receive, loop=loop)
        send_future = trio_asyncio.trio_as_aio(send, loop=loop)

        # Coroutine functions rather than the future-returning wrappers themselves:
        # an app may check what receive and send are before awaiting them.
        async def receive_aio() -> Message:
            message: Message = await receive_future()
            return message

        async def send_aio(message: Message) -> None:
            await send_future(message)

        await trio_asyncio.aio_as_trio(app, loop=loop)(scope, receive_aio, send_aio)

    return run_on_asyncio


def asyncio_hint(exc: BaseException) -> str | None:
    """Say how to fix ``exc`` when it looks like an asyncio app served on trio.

    Looks at ``exc``, its ``__cause__`` and ``__context__`` chain and the members of
    exception groups for asyncio's "no running event loop" errors, sniffio failing to
    tell the async library, or a traceback that passes through asyncio's own modules.

    Returns:
        The hint to log next to the error, or None when nothing points at asyncio.
    """
    asyncio_dir = _asyncio_dir()
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < _MAX_EXCEPTIONS:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if _points_at_asyncio(current, asyncio_dir):
            return ASYNCIO_HINT
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
    return None


def _asyncio_dir() -> str | None:
    # asyncio not imported means no frame can come from it; importing it here just to
    # compare paths would be waste on an error path.
    module = sys.modules.get("asyncio")
    path: str | None = getattr(module, "__file__", None)
    if not path:
        return None
    return os.path.dirname(path) + os.sep


def _points_at_asyncio(exc: BaseException, asyncio_dir: str | None) -> bool:
    if isinstance(exc, sniffio.AsyncLibraryNotFoundError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        if any(message in text for message in _NO_LOOP_MESSAGES):
            return True
    if isinstance(exc, TypeError) and "unrecognized yield message" in str(exc):
        # An asyncio future awaited under trio: its __await__ is C code, so no asyncio
        # frame shows in the traceback; trio's own message gives it away.
        return True
    return asyncio_dir is not None and _traceback_enters(exc.__traceback__, asyncio_dir)


def _traceback_enters(tb: types.TracebackType | None, directory: str) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(directory):
            return True
        tb = tb.tb_next
    return False

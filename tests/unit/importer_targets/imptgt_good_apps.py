"""Import targets for tests/unit/test_importer.py: one of each kind of app and factory.

Has neither ``app`` nor ``application`` on purpose, and more than ten public callables.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from trioserve._types import ASGIApp, Receive, Scope, Send


async def asgi3_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "test.asgi3", "path": scope["path"]})


class ASGI3App:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "test.asgi3-instance"})


asgi3_instance = ASGI3App()


class ASGI2App:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        message = await receive()
        await send({"type": "test.asgi2", "path": self.scope["path"], "echo": message})


async def stream_handler(stream: trio.abc.Stream) -> None:
    await stream.send_all(b"hello\n")


class StreamServer:
    async def __call__(self, stream: trio.abc.Stream) -> None:
        await stream.send_all(b"hello from an instance\n")


stream_instance = StreamServer()


def asgi2_function(scope: Scope) -> Callable[[Receive, Send], Awaitable[None]]:
    return ASGI2App(scope)


def _log_calls(app: ASGIApp) -> ASGIApp:
    @functools.wraps(app)
    def wrapper(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return app(scope, receive, send)

    return wrapper


decorated_asgi3 = _log_calls(asgi3_app)


def _unwrapped_decorator(app: ASGIApp) -> Callable[..., Awaitable[None]]:
    async def wrapper(*args: Any, **kwargs: Any) -> None:
        await app(*args, **kwargs)

    return wrapper


varargs_asgi3 = _unwrapped_decorator(asgi3_app)


async def greeting_app(greeting: str, scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "test.greeting", "greeting": greeting})


partial_asgi3 = functools.partial(greeting_app, "hi")


async def greeting_handler(greeting: bytes, stream: trio.abc.Stream) -> None:
    await stream.send_all(greeting)


partial_stream = functools.partial(greeting_handler, b"hi\n")


def create_app() -> ASGI3App:
    return ASGI3App()


async def create_app_async() -> ASGIApp:
    await trio.lowlevel.checkpoint()
    return asgi3_app


async def create_stream_handler_async() -> Callable[[trio.abc.Stream], Awaitable[None]]:
    await trio.lowlevel.checkpoint()
    return stream_handler


class ConfiguredApp:
    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args
        self.kwargs = kwargs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "test.configured"})


def make_app(*args: object, **kwargs: object) -> ConfiguredApp:
    return ConfiguredApp(*args, **kwargs)


def create_app_with_defaults(greeting: str = "hello", *, debug: bool = False) -> ConfiguredApp:
    return ConfiguredApp(greeting, debug=debug)


def needs_settings(*, settings: dict[str, object], environment: str) -> ConfiguredApp:
    return ConfiguredApp(settings=settings, environment=environment)


class ZeroArgApp:
    """Named as a class in a target: calling the class builds the app."""

    def __init__(self) -> None:
        self.built = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "test.zero-arg"})


def failing_factory() -> ASGIApp:
    raise RuntimeError("database is down")


def factory_of_factory() -> Callable[[], ASGI3App]:
    return create_app


def factory_of_nothing() -> None:
    return None


def plugin_factory(*plugins: str) -> ConfiguredApp:
    return ConfiguredApp(*plugins)


def wsgi_app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("200 OK", [])
    return [b"hello"]


async def two_arg_coroutine(first: object, second: object) -> None:
    pass


settings = {"debug": True}

routes = types.SimpleNamespace(api=asgi3_app)

"""Type aliases shared across the package (ASGI 3 callables, stream handlers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

import trio

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
StreamHandler: TypeAlias = Callable[[trio.abc.Stream], Awaitable[object]]
# The started() value of serve(): (host, port) for TCP listeners, the path for unix sockets.
Address: TypeAlias = tuple[str, int] | str

"""Import target inside a package; names its app ``app``, the first default name."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trioserve._types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    pass


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    pass


def create_app() -> object:
    return app

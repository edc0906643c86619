"""Import target that names its app ``application``, the second default name."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trioserve._types import Receive, Scope, Send


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    pass

"""An ASGI app whose lifespan startup fails with the message "database down"."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "database down"})
        return
    raise AssertionError("never serves: startup fails")

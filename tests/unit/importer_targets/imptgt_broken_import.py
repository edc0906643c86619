"""Import target whose own import of a dependency fails."""

from __future__ import annotations

import imptgt_missing_dependency  # type: ignore[import-not-found]  # noqa: F401


async def app(scope: object, receive: object, send: object) -> None:
    pass

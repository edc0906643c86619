"""Raw stream handlers: ``async def handler(stream)`` owns each accepted connection."""

from __future__ import annotations

import logging

import trio

from ._streams import is_disconnect
from ._types import StreamHandler

LOGGER = logging.getLogger("trioserve.tcp")


async def serve_stream_connection(stream: trio.abc.Stream, handler: StreamHandler) -> None:
    """Give ``stream`` to ``handler`` until it returns, then close the stream.

    A handler that raises costs its own connection only: the error is logged and the
    server goes on. A peer that vanishes is not an error.
    """
    try:
        await handler(stream)
    except Exception as exc:
        if is_disconnect(exc):
            LOGGER.debug("stream connection closed by the peer")
        else:
            LOGGER.exception("stream handler raised")
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()

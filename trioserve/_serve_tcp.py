"""Raw stream handlers: ``async def handler(stream)`` owns each accepted connection."""

from __future__ import annotations

import logging

import trio

from ._errors import single_error
from ._streams import is_disconnect
from ._types import StreamHandler

LOGGER = logging.getLogger("trioserve.tcp")


async def serve_stream_connection(stream: trio.abc.Stream, handler: StreamHandler) -> None:
    """Give ``stream`` to ``handler`` until it returns, then close the stream.

    A handler that raises costs its own connection only: the error is logged (the one
    error of a group as itself) and the server goes on. A peer that vanishes is not an
    error. A cancellation, even in a group beside the handler's error, goes on.
    """
    try:
        await handler(stream)
    except* Exception as group:
        if is_disconnect(group):
            LOGGER.debug("stream connection closed by the peer")
        else:
            LOGGER.error("stream handler raised", exc_info=single_error(group) or group)
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()

"""A raw TCP echo server: each connection's bytes are sent straight back.

trioserve examples.echo:handler --bind 127.0.0.1:8070
"""

from __future__ import annotations

import trio


async def handler(stream: trio.abc.Stream) -> None:
    async for data in stream:
        await stream.send_all(data)

"""The two bare WebSocket servers bench/ws_memory.py compares trioserve with.

Not servers anyone would deploy: they bound what a websocket costs on trio
without an application server around it.

    python -m bench.ws_memory_servers trio-websocket --port PORT
        trio_websocket.serve_websocket with its default settings and an echo
        handler (bench.ws_app:handler).
    python -m bench.ws_memory_servers wsproto --port PORT
        trio.serve_tcp, one task per connection driving a
        wsproto.WSConnection(SERVER): the handshake, then an echo loop that
        sits in receive_some while the peer is idle.

Both listen on 127.0.0.1 only and print ``listening on 127.0.0.1:PORT`` once
they accept connections. They run until SIGINT or SIGTERM. Run them from the
repository root (``-m``), so that ``bench.ws_app`` is importable.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from bench.ws_app import handler

HOST = "127.0.0.1"
RECEIVE_BYTES = 4096
# A peer that connects but never sends its handshake is dropped after this long.
HANDSHAKE_TIMEOUT = 30.0


async def _wsproto_connection(stream: trio.SocketStream) -> None:
    """One connection: handshake, then echo, answering pings and the close handshake."""
    ws = WSConnection(ConnectionType.SERVER)
    accepted = False
    try:
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as handshake_scope:
            while not accepted:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        await stream.send_all(ws.send(AcceptConnection()))
                        accepted = True
        if handshake_scope.cancelled_caught:
            return
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    await stream.send_all(ws.send(event))
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(ws.send(event.response()))
                    return
            if not data:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    except (LocalProtocolError, RemoteProtocolError):
        # A bad peer: nothing to measure there; drop it.
        return
    finally:
        await stream.aclose()


async def _serve_wsproto(port: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_tcp, _wsproto_connection, port, host=HOST))
        print(f"listening on {HOST}:{port}", flush=True)


async def _serve_trio_websocket(port: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio_websocket.serve_websocket, handler, HOST, port, None))
        print(f"listening on {HOST}:{port}", flush=True)


async def _serve(kind: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if kind == "wsproto":
                nursery.start_soon(_serve_wsproto, port)
            else:
                nursery.start_soon(_serve_trio_websocket, port)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ws_memory_servers",
        description="A bare trio WebSocket echo server (trio-websocket or wsproto).",
    )
    parser.add_argument("kind", choices=("trio-websocket", "wsproto"))
    parser.add_argument("--port", type=int, required=True, help="Port on 127.0.0.1.")
    args = parser.parse_args(argv)
    trio.run(_serve, args.kind, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

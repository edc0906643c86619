"""A calibration server, not an ASGI server: the least a trio + h11 loop can do.

One task per connection, ``trio.serve_tcp``, h11 parsing each request and writing
the same hello-world response as ``bench/app.py``; no ASGI, no limits, no deadlines.
``bench/run.py`` runs it as ``bare`` and ``bare-compiled`` (``--servers``) to show
how much of the time per request is the loop and the parser rather than the server.

    python -m bench.bare PORT [h11|h11_mypyc]
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Any

import trio

from bench.app import BODY, HEADERS


def make_handler(h11: Any) -> Any:
    response_headers = [*HEADERS]

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.EndOfMessage):
                    await stream.send_all(
                        conn.send(h11.Response(status_code=200, headers=response_headers))
                        + conn.send(h11.Data(data=BODY))
                        + conn.send(h11.EndOfMessage())
                    )
                    conn.start_next_cycle()
                elif not isinstance(event, h11.Request):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass

    return handle


def main() -> None:
    port = int(sys.argv[1])
    h11 = importlib.import_module(sys.argv[2] if len(sys.argv) > 2 else "h11")
    print(f"listening on {port}", file=sys.stderr, flush=True)
    trio.run(functools.partial(trio.serve_tcp, make_handler(h11), port, host="127.0.0.1"))


if __name__ == "__main__":
    main()

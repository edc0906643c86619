"""A program that serves an app defined in itself, run as ``python script_serve.py W``.

W is the worker count; ``--log`` sets up logging.basicConfig(level=INFO) first;
``--by-name`` serves ``examples.hello:app`` of the project instead of its own app;
``--run PATH`` serves that with trioserve.run() on a unix socket, until SIGTERM. It
prints "script: serving on URL" to stderr once serve() started, and stops gracefully
when its stdin closes. Apps in the main script work with worker processes the way
multiprocessing's spawn makes them work: the workers import this file as __mp_main__.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import trio

import trioserve

ROOT = str(Path(__file__).resolve().parents[3])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = f"served by {__name__} in pid {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def main(workers: int, by_name: bool) -> None:
    served: object = app
    if by_name:
        served = "examples.hello:app"
    config = trioserve.Config(app=served, app_dir=ROOT, bind=["127.0.0.1:0"], workers=workers)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(trioserve.serve, config)
        host, port = addresses[0][:2]
        print(f"script: serving on http://{host}:{port}", file=sys.stderr, flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()


def say_ready(server: trioserve.ServerInfo, *, exc: BaseException | None = None) -> None:
    print(f"script: serving on {server.config.bind[0]}", file=sys.stderr, flush=True)


def run(workers: int, path: str) -> None:
    """trioserve.run() on a unix socket at ``path``: it blocks, and SIGTERM stops it."""
    trioserve.run(
        trioserve.Config(
            app="examples.hello:app",
            app_dir=ROOT,
            bind=[f"unix:{path}"],
            workers=workers,
            when_ready=say_ready,
        )
    )


if __name__ == "__main__":
    if "--log" in sys.argv:
        logging.basicConfig(level=logging.INFO)
    if "--run" in sys.argv:
        run(int(sys.argv[1]), sys.argv[sys.argv.index("--run") + 1])
    else:
        trio.run(main, int(sys.argv[1]), "--by-name" in sys.argv)

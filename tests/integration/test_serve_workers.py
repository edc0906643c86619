"""``await serve(cfg)`` with worker processes, from inside a trio program."""

from __future__ import annotations

import os

import httpx
import pytest
import trio

from trioserve import Config, ConfigError, serve
from trioserve._apps import Application, MultiApp, NewApp

TIMEOUT = 20


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: it serves nothing and holds no socket.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _children() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().split(") ")[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                found.add(int(entry))
    return found


async def test_serve_with_workers_supervises_processes_and_cancel_stops_them() -> None:
    """serve() with workers=2 serves from two worker processes; cancelling it stops them."""
    config = Config(app="examples.hello:app", workers=2, bind=["127.0.0.1:0"], graceful_timeout=2)
    before = _children()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(serve, config)
            host, port = addresses[0]
            workers = _children() - before
            assert len(workers) == 2
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://{host}:{port}/")
            assert response.text == "Hello, world!\n"
            nursery.cancel_scope.cancel()
    assert not [pid for pid in workers if _alive(pid)]


async def test_lambda_app_with_workers_is_a_clear_config_error() -> None:
    """An app that cannot be sent to a worker (a lambda) is refused with a one-line reason."""

    async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
        pass

    config = Config(app=app, workers=1, bind=["127.0.0.1:0"])
    with trio.fail_after(TIMEOUT), pytest.raises(ConfigError, match="importable by name"):
        await serve(config)


class _Pair(MultiApp):
    def build(self) -> list[NewApp]:
        return [
            self.new_app("examples.hello:app", "web", bind=["127.0.0.1:0"]),
            self.new_app("examples.echo:handler", "echo", bind=["127.0.0.1:0"]),
        ]


async def test_serve_runs_a_multiapp_with_one_pool_per_application() -> None:
    """A MultiApp given to serve() serves each application on its own sockets."""
    config = Config(app=_Pair(), graceful_timeout=2)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(serve, config)
            (web_host, web_port), (echo_host, echo_port) = addresses
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://{web_host}:{web_port}/")
            assert response.status_code == 200
            stream = await trio.open_tcp_stream(echo_host, echo_port)
            async with stream:
                await stream.send_all(b"ping")
                assert await stream.receive_some() == b"ping"
            nursery.cancel_scope.cancel()


async def test_application_with_zero_workers_is_served_in_process() -> None:
    """An Application whose settings say workers=0 is served in this process."""
    config = Config(app=Application("examples.hello:app", workers=0, bind=["127.0.0.1:0"]))
    before = _children()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(serve, config)
            host, port = addresses[0]
            assert _children() == before
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"http://{host}:{port}/")
            assert response.status_code == 200
            nursery.cancel_scope.cancel()

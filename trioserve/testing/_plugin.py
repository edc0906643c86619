"""The pytest plugin (entry point ``pytest11``: ``trioserve``): three async fixtures.

The fixtures run in the test's trio run, so they need pytest-trio, with
``trio_mode = true`` or tests marked ``@pytest.mark.trio``. This module imports the
rest of trioserve only when a fixture is used: pytest sessions that never use them
stay as fast as without trioserve installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import os

    import httpx
    import trio

    from ._factories import ClientFactory, ProcessFactory, ServerFactory
    from ._process import ServerProcess
    from ._server import Server


@pytest.fixture
async def trioserve_server(nursery: trio.Nursery) -> AsyncIterator[ServerFactory]:
    """Serve apps in the test's trio run: ``server = await trioserve_server(app, **settings)``.

    Each call serves on ``127.0.0.1:0`` (``unix=True``: a unix socket in a temporary
    directory) with ``workers=0`` and returns a :class:`trioserve.testing.Server` once it
    listens; settings are :class:`trioserve.Config` keywords. At the end of the test every
    server stops gracefully (lifespan shutdown included); then errors trioserve logged
    while serving (an app that raised and was answered with a 500) fail the test as
    :class:`trioserve.testing.ServerErrorLogged`, with the app's traceback, unless the
    test took them with ``server.take_errors()``.
    """
    import trio

    from ._server import raise_logged_errors, start_server

    servers: list[Server] = []

    async def serve(app: object, /, *, unix: bool = False, **settings: Any) -> Server:
        server = await start_server(nursery, app, unix=unix, **settings)
        servers.append(server)
        return server

    try:
        yield serve
    finally:
        with trio.CancelScope(shield=True):
            for server in reversed(servers):
                await server.stop()
    raise_logged_errors([record for server in servers for record in server.take_errors()])


@pytest.fixture
async def trioserve_process(nursery: trio.Nursery) -> AsyncIterator[ProcessFactory]:
    """Run the real ``trioserve`` command: ``proc = await trioserve_process(*args, ...)``.

    Each call starts ``python -m trioserve *args`` (with ``--bind 127.0.0.1:0`` unless
    ``args`` binds) and returns a :class:`trioserve.testing.ServerProcess` once it printed
    its "listening on URL" line (``ready=False``: at once). Every process still running at
    the end of the test is stopped (SIGTERM, then SIGKILL) and reaped, whether the test
    passed or not.
    """
    import trio

    from ._process import READY_TIMEOUT, start_process

    processes: list[ServerProcess] = []

    async def run(
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready: bool = True,
        timeout: float = READY_TIMEOUT,  # noqa: ASYNC109 - start_process's bound
    ) -> ServerProcess:
        proc = await start_process(nursery, *args, env=env, cwd=cwd, ready=ready, timeout=timeout)
        processes.append(proc)
        return proc

    try:
        yield run
    finally:
        with trio.CancelScope(shield=True):
            for proc in reversed(processes):
                await proc.stop()


@pytest.fixture
async def trioserve_client() -> AsyncIterator[ClientFactory]:
    """httpx clients for test servers: ``client = await trioserve_client(server, **kwargs)``.

    ``server`` is what ``trioserve_server`` or ``trioserve_process`` returned; the client's
    ``base_url`` is its URL (a unix socket works too) and ``kwargs`` go to
    :class:`httpx.AsyncClient`. Clients are closed at the end of the test. Without httpx
    installed, a test using this fixture fails saying so.
    """
    from ._client import HTTPX_MISSING, http_client

    try:
        import httpx  # noqa: F401 - only whether it can be imported
    except ImportError:
        pytest.fail(f"trioserve_client: {HTTPX_MISSING}", pytrace=False)

    clients: list[httpx.AsyncClient] = []

    async def client(server: Server | ServerProcess, /, **kwargs: Any) -> httpx.AsyncClient:
        opened = http_client(server, **kwargs)
        clients.append(opened)
        return opened

    try:
        yield client
    finally:
        for opened in reversed(clients):
            await opened.aclose()

"""The types of the pytest fixtures' values, for annotating tests."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ._process import READY_TIMEOUT, ServerProcess
from ._server import Server

if TYPE_CHECKING:
    import httpx


class ServerFactory(Protocol):
    """The ``trioserve_server`` fixture: ``await trioserve_server(app, **settings)``.

    Takes the arguments of :func:`trioserve.testing.start_server` after the nursery.
    """

    async def __call__(self, app: object, /, *, unix: bool = False, **settings: Any) -> Server:
        """Serve ``app`` in the test's trio run until the test ends."""
        ...


class ProcessFactory(Protocol):
    """The ``trioserve_process`` fixture: ``await trioserve_process(*args, ...)``.

    Takes the arguments of :func:`trioserve.testing.start_process` after the nursery.
    """

    async def __call__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready: bool = True,
        timeout: float = READY_TIMEOUT,  # noqa: ASYNC109 - start_process's bound
    ) -> ServerProcess:
        """Run ``trioserve *args`` until the test ends."""
        ...


class ClientFactory(Protocol):
    """The ``trioserve_client`` fixture: ``await trioserve_client(server, **httpx_kwargs)``.

    Takes the arguments of :func:`trioserve.testing.http_client`.
    """

    async def __call__(self, server: Server | ServerProcess, /, **kwargs: Any) -> httpx.AsyncClient:
        """An open httpx client for ``server``, closed when the test ends."""
        ...

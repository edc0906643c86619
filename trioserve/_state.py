"""Runtime state of one running server, shared by its connections.

Kept apart from :class:`~trioserve.Config`, which is frozen and holds settings only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import trio

from ._config import Config


@attrs.define(eq=False)
class ServerState:
    """What connections need to know about the server they belong to.

    Attributes:
        config: The settings the server runs with.
        lifespan_state: The ASGI lifespan ``state`` dict; each request gets a shallow copy.
        stopping: True once a graceful stop began: no new requests on kept-alive
            connections, and responses carry ``Connection: close``.
    """

    config: Config
    lifespan_state: dict[str, Any] | None = None
    stopping: bool = False
    stop_requested: trio.Event = attrs.field(factory=trio.Event)
    # Requests being served right now (for limit_concurrency).
    active_requests: int = 0
    # The HTTP edge's options, worked out from config on first use (_serve_http).
    http_options: object = None
    _idle: set[trio.CancelScope] = attrs.field(factory=set)

    def request_stop(self) -> None:
        """Begin a graceful stop: wake the server and close connections that are idle."""
        self.stopping = True
        self.stop_requested.set()
        for scope in self._idle:
            scope.cancel()

    @contextmanager
    def idle(self, timeout: float) -> Iterator[trio.CancelScope]:
        """A cancel scope for waiting on an idle connection: it ends after ``timeout``
        seconds, or as soon as a graceful stop begins."""
        scope = trio.move_on_after(timeout)
        if self.stopping:
            scope.cancel()
        self._idle.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._idle.discard(scope)

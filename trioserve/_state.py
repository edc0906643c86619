"""Runtime state of one running server, shared by its connections.

Kept apart from :class:`~trioserve.Config`, which is frozen and holds settings only.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

from ._config import Config


class Stoppable(Protocol):
    """A connection a graceful stop may close: it says whether it is idle right now."""

    idle: bool
    timer: trio.CancelScope
    deadline: float


@attrs.define(eq=False)
class ServerState:
    """What connections need to know about the server they belong to.

    Attributes:
        config: The settings the server runs with.
        lifespan_state: The ASGI lifespan ``state`` dict; each request gets a shallow copy.
        stopping: True once a graceful stop began: no new requests on kept-alive
            connections, and responses carry ``Connection: close``.
        active_requests: Requests being served right now (for limit_concurrency).
        connections: The open connections that a graceful stop closes when idle.
        http_options: The HTTP edge's options, worked out from config on first use.
        watchdog: True while the server runs one deadline watchdog for all connections.
        requests_served: Requests served so far (HTTP requests and websockets).
        request_limit: After this many requests the worker retires (0: never).
        limit_reached: Set once ``request_limit`` requests were served.
    """

    config: Config
    lifespan_state: dict[str, Any] | None = None
    stopping: bool = False
    stop_requested: trio.Event = attrs.field(factory=trio.Event)
    active_requests: int = 0
    connections: set[Stoppable] = attrs.field(factory=set)
    http_options: object = None
    # True while the server runs the deadline watchdog for all its connections.
    watchdog: bool = False
    # Requests served so far, and the count (max_requests) at which the worker retires.
    requests_served: int = 0
    request_limit: int = 0
    limit_reached: trio.Event = attrs.field(factory=trio.Event)

    def request_limit_reached(self) -> None:
        """Called by the HTTP edge when ``requests_served`` reaches ``request_limit``."""
        self.limit_reached.set()

    def request_stop(self) -> None:
        """Begin a graceful stop: wake the server and close connections that are idle."""
        self.stopping = True
        self.stop_requested.set()
        for connection in self.connections:
            if connection.idle:
                connection.timer.cancel()

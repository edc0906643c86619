"""Runtime state of one running server, shared by its connections.

Kept apart from :class:`~trioserve.Config`, which is frozen and holds settings only.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import trio

from ._config import Config


class Stoppable(Protocol):
    """A connection a graceful stop drains: it says whether it is idle right now, and
    when its current wait ends."""

    idle: bool
    timer: trio.CancelScope
    deadline: float


@attrs.define(eq=False)
class ServerState:
    """What connections need to know about the server they belong to.

    Attributes:
        config: The settings the server runs with.
        lifespan_state: The ASGI lifespan ``state`` dict; each request gets a shallow copy.
        stopping: True once a graceful stop began: responses carry ``Connection:
            close``, and each connection ends after the request it is serving or waiting
            for.
        drain_deadline: When the graceful stop ends (``graceful_timeout`` after it
            began); an idle connection waits for its next request until its keep-alive
            deadline, but never past this.
        active_requests: Requests being served right now (for limit_concurrency).
        connections: The open connections, which a graceful stop drains.
        requests_served: Requests served so far (HTTP requests and websockets).
        request_limit: After this many requests the worker retires (0: never).
        limit_reached: Set once ``request_limit`` requests were served.
        rejected: Requests the edges refused, by the status they answered (400, 408,
            413, 414, 431, 503): for ``--metrics-bind``.
    """

    config: Config
    lifespan_state: dict[str, Any] | None = None
    stopping: bool = False
    drain_deadline: float = float("inf")
    stop_requested: trio.Event = attrs.field(factory=trio.Event)
    active_requests: int = 0
    connections: set[Stoppable] = attrs.field(factory=set)
    # Requests served so far, and the count (max_requests) at which the worker retires.
    requests_served: int = 0
    request_limit: int = 0
    limit_reached: trio.Event = attrs.field(factory=trio.Event)
    rejected: dict[int, int] = attrs.field(factory=dict)

    def reject(self, status: int) -> None:
        """Called by an edge that refuses a request with ``status`` (never per request
        served: only on the way of an error response)."""
        self.rejected[status] = self.rejected.get(status, 0) + 1

    def request_limit_reached(self) -> None:
        """Called by the HTTP edge when ``requests_served`` reaches ``request_limit``."""
        self.limit_reached.set()

    def request_stop(self) -> None:
        """Begin a graceful stop: wake the server, and bound the wait of the idle
        connections by the drain deadline.

        Idle connections are not closed here: a kept-alive client may be sending its
        next request right now, and closing under it would fail that request. Each one
        gets until its keep-alive deadline to send one more request, which is answered
        with ``Connection: close``.
        """
        if not self.stopping:
            self.stopping = True
            self.drain_deadline = trio.current_time() + self.config.graceful_timeout
        self.stop_requested.set()
        drain_deadline = self.drain_deadline
        for connection in self.connections:
            if connection.idle and connection.deadline > drain_deadline:
                connection.deadline = drain_deadline

"""Hooks named as 'tests.unit.hook_targets:NAME' by tests/unit/test_hooks.py."""

from __future__ import annotations

from typing import Any

CALLS: list[tuple[str, tuple[Any, ...], BaseException | None]] = []


def on_starting(server: Any, *, exc: BaseException | None = None) -> None:
    CALLS.append(("on_starting", (server,), exc))


async def post_request(
    worker: Any, req: Any, resp: Any, *, exc: BaseException | None = None
) -> None:
    CALLS.append(("post_request", (worker, req, resp), exc))


def no_exc_keyword(server: Any) -> None:
    """The signature gunicorn hooks have: called without the exc keyword."""
    CALLS.append(("no_exc_keyword", (server,), None))


def two_arguments(server: Any, worker: Any) -> None:
    """A signature that fits on_starting neither with nor without exc."""


class Namespace:
    """Holds a hook one attribute deeper: 'tests.unit.hook_targets:Namespace.hook'."""

    @staticmethod
    def hook(server: Any, *, exc: BaseException | None = None) -> None:
        CALLS.append(("Namespace.hook", (server,), exc))


NOT_CALLABLE = 42

"""Typed errors and the exit codes the command line maps them to."""

from __future__ import annotations

from typing import Any

import trio

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BOOT = 3
EXIT_APP_LOAD = 4


class TrioserveError(Exception):
    """Base class of every error trioserve raises on purpose.

    The message is one line that says what went wrong and what to do about it.
    ``exit_code`` is what the command line exits with when it ends on this error.
    """

    exit_code: int = EXIT_FAILURE


class ConfigError(TrioserveError):
    """A setting has a bad value, or a configuration source cannot be read."""

    exit_code = EXIT_USAGE


class AppLoadError(TrioserveError):
    """The application target could not be imported, found, built or recognised."""

    exit_code = EXIT_APP_LOAD


class BindError(TrioserveError):
    """A listening socket could not be created."""

    exit_code = EXIT_FAILURE


class LifespanError(TrioserveError):
    """The application's ASGI lifespan startup failed or timed out."""

    exit_code = EXIT_BOOT


class ClientDisconnected(OSError):
    """Raised by an app's ``send()`` once the client has gone.

    ASGI 2.4 promises that ``send()`` on a closed connection raises an ``OSError``
    subclass; frameworks (Starlette's ``StreamingResponse``) rely on it to stop producing
    a response nobody will read. An app may catch it to clean up; letting it propagate
    is fine too: the server knows the client left and logs nothing at ERROR for it.
    """


def departure(exc: BaseException, *, gone: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``exc`` only says that the client left, so that it is no app bug to log at
    ERROR: a ClientDisconnected from ``send()``, or an error raised from or while
    handling one (frameworks pass it on as their own: Starlette's ``ClientDisconnect``
    and ``WebSocketDisconnect``), or one of the ``gone`` types an edge knows for the
    same, or a group of only such errors. The one rule of every edge."""
    if isinstance(exc, BaseExceptionGroup):
        return all(departure(inner, gone=gone) for inner in exc.exceptions)
    if isinstance(exc, gone):
        return True
    link: BaseException | None = exc
    for _ in range(8):  # (a chain may loop; a framework's is a link or two)
        if link is None:
            return False
        if isinstance(link, ClientDisconnected):
            return True
        link = link.__cause__ or link.__context__
    return False


def single_error(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The one exception in a nursery's (nested) group, not counting cancellations; None
    when there are none or several. Lets our own errors surface as themselves."""
    leaves = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None

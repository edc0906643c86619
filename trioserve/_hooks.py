"""Server hooks: ``run_hook``, the one way they are called, and what they receive.

Every hook is a setting (``Config.on_starting`` ...) holding a plain function or an
``async def``. :func:`run_hook` awaits async hooks, calls sync ones, passes the keyword
``exc`` (None, or the exception that caused the event) to every hook that takes it (a
hook written for gunicorn, ``def on_starting(server)``, does not), passes gunicorn's
form of the arguments to a hook written in it (``post_request(worker, req, environ,
resp)``: the environ is built only for such a hook), and never swallows
what a hook raises: the exception comes out as a :class:`HookError` naming the hook,
and the caller's structure decides what fails (startup, the worker, or one request).
The one table of them is :data:`~trioserve._hooktable.HOOKS`, re-exported here.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import io
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping, Sequence
from typing import Any

import attrs
import trio

from ._config import Config
from ._errors import EXIT_BOOT, TrioserveError, single_error
from ._hooktable import HOOK_NAMES as HOOK_NAMES
from ._hooktable import HOOKS as HOOKS
from ._hooktable import Hook as Hook
from ._hooktable import arity_problem as arity_problem
from ._hooktable import call_form
from ._hooktable import hook_info as hook_info
from ._hooktable import signature_problem as signature_problem
from ._hooktable import signature_text as signature_text
from ._types import Scope
from ._wsgi import Environ, build_environ, sent_target

LOGGER = logging.getLogger("trioserve.hooks")


_BOOT_HOOKS = frozenset({"pre_fork", "post_fork", "post_worker_init"})


class HookError(TrioserveError):
    """A server hook raised; ``__cause__`` holds what it raised, ``hook`` its name."""

    def __init__(self, hook: str, exc: BaseException) -> None:
        super().__init__(f"hook {hook} raised {type(exc).__name__}: {exc}")
        self.hook = hook
        if hook in _BOOT_HOOKS:
            self.exit_code = EXIT_BOOT  # the server could not boot: as a lifespan failure


class WorkerBootError(TrioserveError):
    """A worker process failed while booting; the master halts instead of restarting it."""

    exit_code = EXIT_BOOT

    def __init__(self, message: str, exit_code: int = EXIT_BOOT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def run_hook(config: Config, name: str, *args: Any, exc: BaseException | None = None) -> None:
    """Call hook ``name`` of ``config`` (if set) with ``args`` and ``exc`` (when it takes
    ``exc``); await it if async.

    Raises:
        HookError: the hook raised; the original exception is the ``__cause__``.
    """
    hook = getattr(config, name)
    if hook is None:
        return
    form = call_form(name, hook)
    try:
        if form.args is not hook_info(name).args:
            args = _gunicorn_arguments(config, name, form.args, args)
        result = hook(*args, exc=exc) if form.exc else hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception as error:
        raise HookError(name, error) from error


def _gunicorn_arguments(
    config: Config, name: str, form: tuple[str, ...], args: tuple[Any, ...]
) -> tuple[Any, ...]:
    """``args`` (in the table's order) rearranged into gunicorn's ``form`` of hook
    ``name``; its ``environ`` is built here, only for a hook that takes it."""
    named = dict(zip(hook_info(name).args, args, strict=True))
    if "environ" in form:
        named["environ"] = request_environ(named["req"], multiprocess=config.workers > 1)
    return tuple(named[argument] for argument in form)


def request_environ(req: RequestInfo | Scope, *, multiprocess: bool = False) -> Environ:
    """A WSGI environ (PEP 3333) for the request ``req`` (a RequestInfo or an ASGI scope),
    as gunicorn's ``post_request(worker, req, environ, resp)`` gets: built afresh from the
    scope, so what a WSGI app changed in its own environ is not in it, and its
    ``wsgi.input`` is empty (the app read the body)."""
    scope = req.scope if isinstance(req, RequestInfo) else req
    if "method" not in scope:
        scope = {**scope, "method": "GET"}  # a websocket's handshake is a GET
    return build_environ(scope, io.BytesIO(), sys.stderr, multiprocess=multiprocess)


def reportable(error: BaseException | None) -> BaseException | None:
    """What a hook's ``exc`` gets for how something ended: cancellation is a normal end."""
    if error is None or isinstance(error, trio.Cancelled | KeyboardInterrupt):
        return None
    if isinstance(error, BaseExceptionGroup):
        if error.split(trio.Cancelled)[1] is None:
            return None  # cancellation only: a normal stop
        return single_error(error) or error
    return error


@contextlib.asynccontextmanager
async def hook_after(config: Config, name: str, *args: Any) -> AsyncIterator[None]:
    """Run hook ``name`` (logged, shielded) when the block ends, however it ends; ``exc``
    is what ended it (see :func:`reportable`). Whatever ended it goes on propagating."""
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        with trio.CancelScope(shield=True):
            await run_hook_logged(config, name, *args, exc=reportable(error))


async def run_hook_logged(
    config: Config,
    name: str,
    *args: Any,
    exc: BaseException | None = None,
    logger: logging.Logger = LOGGER,
) -> bool:
    """Run a hook whose failure must not stop the event; log it on ``logger`` (a
    rate-limited one for a hook that runs once per connection or request). False if it
    raised."""
    try:
        await run_hook(config, name, *args, exc=exc)
    except HookError as error:
        logger.error("%s", error, exc_info=error.__cause__)
        return False
    return True


class ExitReason(enum.StrEnum):
    """Why a worker process exits: its :attr:`WorkerInfo.exit_reason`.

    A string enum, so ``worker.exit_reason == "memory"`` holds for a worker recycled by
    ``--max-worker-memory``; ``str()`` of a member is its value.
    """

    #: It served ``--max-requests`` (plus its jitter): replaced, then drained.
    MAX_REQUESTS = "max_requests"
    #: Its memory stayed over ``--max-worker-memory``: replaced, then drained.
    MEMORY = "memory"
    #: It reached ``--max-worker-lifetime`` (plus its jitter): replaced, then drained.
    LIFETIME = "lifetime"
    #: A rolling restart (SIGHUP, ``--reload``) replaced it.
    RELOAD = "reload"
    #: SIGTTOU took one worker away.
    SCALE_DOWN = "scale_down"
    #: The server (or, after SIGWINCH, every worker) stops.
    SHUTDOWN = "shutdown"
    #: It sent no heartbeat for ``--timeout`` seconds: aborted, then killed.
    TIMEOUT = "timeout"
    #: It exited on its own after it was ready (an error, ``os._exit``, a kill).
    CRASH = "crash"
    #: It exited before it was ready.
    BOOT_FAILED = "boot_failed"


#: The reasons for which the master replaces a healthy worker on purpose: a fresh worker
#: takes its slot first, then the old one drains.
RECYCLED: frozenset[ExitReason] = frozenset(
    {ExitReason.MAX_REQUESTS, ExitReason.MEMORY, ExitReason.LIFETIME}
)


@attrs.define(eq=False)
class WorkerInfo:
    """A worker process, as hooks see it.

    Attributes:
        id: The worker's slot, 0..workers-1, kept when the worker is replaced; the app
            sees it as the ``TRIOSERVE_WORKER_ID`` environment variable.
        pid: Its process id (None before it was started).
        app: The prefix of its application in a MultiApp, or None.
        config: The settings it runs with.
        requests: Requests it served so far (in the master: as of its last heartbeat).
        started_at: ``time.time()`` when it was started.
        exit_code: Its exit status once it exited; negative when a signal ended it.
        exit_reason: Why it exits, once that is known (None while it serves): an
            ``ExitReason``, a string enum, one of ``"max_requests"``, ``"memory"``,
            ``"lifetime"`` (recycled: replaced first, then drained), ``"reload"``,
            ``"scale_down"`` (SIGTTOU), ``"shutdown"``, ``"timeout"`` (aborted),
            ``"crash"``, ``"boot_failed"``. The master's ``child_exit`` always gets
            one. In the worker, ``worker_exit`` gets the one the master sent with its
            stop request, ``"shutdown"`` for a stop by a signal, and None when an error
            ended the worker (``exc`` holds it).
    """

    id: int
    config: Config
    pid: int | None = None
    app: str | None = None
    requests: int = 0
    started_at: float = attrs.field(factory=time.time)
    exit_code: int | None = None
    exit_reason: ExitReason | None = None

    @property
    def log(self) -> logging.Logger:
        """The ``trioserve.hooks`` logger, as ``server.log`` (gunicorn's ``worker.log``)."""
        return LOGGER

    @property
    def cfg(self) -> Config:
        """``config``, by gunicorn's name (``worker.cfg``)."""
        return self.config


@attrs.define(eq=False)
class ServerInfo:
    """The server (the master, or the in-process server), as hooks see it.

    Attributes:
        config: The settings of the application (for a MultiApp, of this application).
        pid: The master's process id.
        app: The prefix of the application in a MultiApp, or None.
        workers: The worker processes running now (in the master; empty in a worker).
    """

    config: Config
    pid: int = attrs.field(factory=os.getpid)
    app: str | None = None
    workers: list[WorkerInfo] = attrs.field(factory=list)

    @property
    def num_workers(self) -> int:
        """The number of workers the application is meant to have right now."""
        return int(self.config.workers)

    @property
    def log(self) -> logging.Logger:
        """The ``trioserve.hooks`` logger: what a hook logs through it goes to trioserve's
        error log, with its time, pid and level (gunicorn's ``server.log``)."""
        return LOGGER

    @property
    def cfg(self) -> Config:
        """``config``, by gunicorn's name (``server.cfg.workers``, ``server.cfg.bind``)."""
        return self.config


@attrs.define(eq=False)
class ConnectionInfo:
    """A connection, as ``connection_made`` and ``connection_lost`` see it.

    Attributes:
        client: The peer's (host, port), after PROXY protocol; None for unix sockets.
        server: The local (host, port), or None.
        secure: Whether TLS is in use.
        worker: The worker serving it.
    """

    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    secure: bool
    worker: WorkerInfo


@attrs.define(eq=False)
class RequestInfo(MutableMapping[str, Any]):
    """A request, as ``pre_request`` and ``post_request`` see it.

    A mapping over the ASGI scope the app is called with (``req["method"]``,
    ``req.get("path")``; what a hook stores in it, the app finds in its scope), with the
    attributes of gunicorn's request besides (``req.method``, ``req.path``,
    ``req.headers`` ...), so a hook written for gunicorn runs as it is. The attributes
    are worked out from the scope when read.

    Attributes:
        scope: The ASGI scope (``http`` or ``websocket``) the app is called with.
    """

    scope: Scope

    def __getitem__(self, key: str) -> Any:
        return self.scope[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.scope[key] = value

    def __delitem__(self, key: str) -> None:
        del self.scope[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scope)

    def __len__(self) -> int:
        return len(self.scope)

    @property
    def method(self) -> str:
        """The request method, ``"GET"``; a websocket's handshake is a GET."""
        return str(self.scope.get("method", "GET"))

    @property
    def uri(self) -> str:
        """The request target as the client sent it: path and query, percent-encoded."""
        path, query = sent_target(self.scope)
        return f"{path}?{query}" if query else path

    @property
    def path(self) -> str:
        """The target's path as the client sent it (percent-encoded, as gunicorn's
        ``req.path``; ``req["path"]`` is the ASGI one: decoded, ``root_path`` first)."""
        return sent_target(self.scope)[0]

    @property
    def query(self) -> str:
        """The query string, without the ``?``; ``""`` when there is none."""
        return bytes(self.scope.get("query_string", b"")).decode("latin-1")

    @property
    def version(self) -> tuple[int, int]:
        """The HTTP version, ``(1, 1)``."""
        major, _, minor = str(self.scope.get("http_version", "1.1")).partition(".")
        return int(major), int(minor or 0)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The request headers as (NAME, value) strings, names upper-cased as gunicorn's."""
        return [
            (bytes(name).decode("latin-1").upper(), bytes(value).decode("latin-1"))
            for name, value in self.scope.get("headers", ())
        ]

    @property
    def scheme(self) -> str:
        """``"http"`` or ``"https"`` (``"ws"`` or ``"wss"`` for a websocket)."""
        return str(self.scope.get("scheme", "http"))

    @property
    def remote_addr(self) -> tuple[str, int] | None:
        """The client's (host, port), after PROXY protocol and trusted proxy headers;
        None when unknown (a unix socket)."""
        client = self.scope.get("client")
        return (str(client[0]), int(client[1])) if client else None


@attrs.define(eq=False)
class ResponseInfo:
    """A response, as ``post_request`` sees it.

    Attributes:
        status: The status code sent (101 for an accepted websocket, 403 for one closed
            before it was accepted), or None when nothing was sent. An int, where
            gunicorn's ``resp.status`` is the status line (``"200 OK"``).
        headers: The response headers as the app sent them, (name, value) byte pairs.
    """

    status: int | None = None
    headers: Sequence[tuple[bytes, bytes]] = ()

    @property
    def status_code(self) -> int | None:
        """``status``, by gunicorn's name: the same int in both servers."""
        return self.status

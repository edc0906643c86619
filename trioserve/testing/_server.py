"""Serving an app inside the test's own trio run: ``serving()`` and ``start_server()``."""

from __future__ import annotations

import contextvars
import logging
import shutil
import tempfile
import traceback
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from .._config import Config, unknown_key_message
from .._errors import ConfigError, single_error
from .._server import serve
from .._types import Address
from ._listening import Listening, url_for_address

# The server whose tasks are running: records logged there are that server's.
# Trio copies the context into every task and worker thread a server starts.
_CURRENT: contextvars.ContextVar[Server] = contextvars.ContextVar("trioserve.testing.server")

# Where trioserve says "listening on URL" (in-process, and the master with workers).
_READY_LOGGERS = ("trioserve.server", "trioserve.master")
_READY_MESSAGE = "listening on "


class ServerErrorLogged(AssertionError):
    """trioserve logged an error while a test server ran: usually an app that raised.

    Raised when :func:`serving` ends and at the teardown of the ``trioserve_server``
    fixture, from the first logged exception, so that its traceback is shown too.
    Call :meth:`Server.take_errors` in the test to expect errors instead.

    Attributes:
        records: The log records, at level ERROR or above.
    """

    def __init__(self, records: Sequence[logging.LogRecord]) -> None:
        self.records = list(records)
        count = len(self.records)
        lines = [
            f"trioserve logged {count} error{'s' if count != 1 else ''} while serving"
            " (call take_errors() on the server if the test expects them):"
        ]
        for record in self.records:
            line = f"- {record.name}: {record.getMessage()}"
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None:
                line += f" [{traceback.format_exception_only(exc)[-1].strip()}]"
            lines.append(line)
        super().__init__("\n".join(lines))


def raise_logged_errors(records: Sequence[logging.LogRecord]) -> None:
    """Raise :class:`ServerErrorLogged` for ``records`` (if any), from the first exception."""
    if not records:
        return
    cause = next((r.exc_info[1] for r in records if r.exc_info and r.exc_info[1] is not None), None)
    raise ServerErrorLogged(records) from cause


class Server(Listening):
    """An app served in this process by :func:`serving`, :func:`start_server` or the
    ``trioserve_server`` fixture.

    Attributes:
        config: The :class:`trioserve.Config` it serves.
        urls: One URL per listening socket, as trioserve logs them
            (``http://127.0.0.1:PORT``, ``tcp://…`` for stream handlers, ``unix:PATH``).
    """

    def __init__(self, config: Config, *, tmpdir: str | None = None) -> None:
        self.config = config
        self.urls: list[str] = []
        self._addresses: list[Address] = []
        self._logged_urls: list[str] = []
        self._errors: list[logging.LogRecord] = []
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._tmpdir = tmpdir
        self._starting = False

    def __repr__(self) -> str:
        where = ", ".join(self.urls) if self.urls else "not listening"
        return f"<trioserve.testing.Server {where}>"

    @property
    def addresses(self) -> list[Address]:
        """What :func:`trioserve.serve` reported: ``(host, port)`` for TCP sockets, the
        path for unix sockets."""
        return list(self._addresses)

    @property
    def errors(self) -> list[logging.LogRecord]:
        """What trioserve logged at ERROR or above while serving (a copy)."""
        return list(self._errors)

    def take_errors(self) -> list[logging.LogRecord]:
        """Return the errors logged so far and forget them, so that they do not fail the
        test: for tests that expect the app to fail."""
        taken, self._errors = self._errors, []
        return taken

    def check_errors(self) -> None:
        """Raise :class:`ServerErrorLogged` if errors were logged and not taken."""
        raise_logged_errors(self._errors)

    async def stop(self) -> None:
        """Stop gracefully, as a cancelled :func:`trioserve.serve` does: stop accepting,
        let requests in flight finish (within ``graceful_timeout``), run the lifespan
        shutdown; return once it stopped. Calling it again does nothing."""
        self._scope.cancel()
        await self._stopped.wait()

    def _record(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self._errors.append(record)
        elif record.name in _READY_LOGGERS:
            message = record.getMessage()
            if message.startswith(_READY_MESSAGE):
                self._logged_urls.append(message[len(_READY_MESSAGE) :])

    def _started(self) -> None:
        if self._starting:
            self._starting = False
            _READY_LINES.release()

    def _listening(self, addresses: list[Address]) -> None:
        self._addresses = list(addresses)
        if len(self._logged_urls) == len(addresses):
            self.urls = list(self._logged_urls)
        else:  # the log line was filtered out (a disabled logger): take HTTP
            self.urls = [url_for_address(address) for address in addresses]

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        _CURRENT.set(self)
        try:
            with _CAPTURE.active(), self._scope:
                await serve(self.config, task_status=_Started(self, task_status))
        finally:
            self._stopped.set()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)


class _Started(trio.TaskStatus[list[Address]]):
    """Passed to serve() as its task status: records the addresses, then reports ready."""

    def __init__(self, server: Server, outer: trio.TaskStatus[None]) -> None:
        self._server = server
        self._outer = outer

    def started(self, value: list[Address] | None = None) -> None:
        self._server._listening(value or [])
        self._server._started()
        self._outer.started()


class _Capture(logging.Handler):
    """On the ``trioserve`` logger while test servers run: hands each record to the
    server whose task logged it."""

    def emit(self, record: logging.LogRecord) -> None:
        server = _CURRENT.get(None)
        if server is not None:
            server._record(record)


class _RecordCapture:
    """Keeps a :class:`_Capture` handler on the ``trioserve`` logger while servers run."""

    def __init__(self) -> None:
        self.users = 0
        self.handler = _Capture()

    @contextmanager
    def active(self) -> Iterator[None]:
        if self.users == 0:
            logging.getLogger("trioserve").addHandler(self.handler)
        self.users += 1
        try:
            yield
        finally:
            self.users -= 1
            if self.users == 0:
                logging.getLogger("trioserve").removeHandler(self.handler)


class _ReadyLines:
    """Lets the "listening on URL" lines through while servers start.

    They are logged at INFO, which loggers usually drop; the URL's scheme is what
    trioserve chose for the app (http, tcp, ws, https...).
    """

    def __init__(self) -> None:
        self.users = 0
        self.saved_levels: dict[str, int] = {}

    def acquire(self) -> None:
        if self.users == 0:
            for name in _READY_LOGGERS:
                logger = logging.getLogger(name)
                if not logger.isEnabledFor(logging.INFO):
                    self.saved_levels[name] = logger.level
                    logger.setLevel(logging.INFO)
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            for name, level in self.saved_levels.items():
                logging.getLogger(name).setLevel(level)
            self.saved_levels.clear()


_CAPTURE = _RecordCapture()
_READY_LINES = _ReadyLines()


def server_config(
    app: object, *, unix: bool, settings: dict[str, Any]
) -> tuple[Config, str | None]:
    """The Config a test server serves, and the temporary directory of its unix socket.

    Raises:
        ConfigError: an unknown setting or a bad value.
    """
    known = {field.name for field in attrs.fields(Config)}
    for key in settings:
        if key == "app":
            raise ConfigError("app: pass the app as the first argument, not as app=...")
        if key not in known:
            raise ConfigError(unknown_key_message(key, "settings"))
    tmpdir = None
    params: dict[str, Any] = {"bind": ["127.0.0.1:0"], "workers": 0}
    if unix:
        if "bind" in settings:
            raise ConfigError("unix=True chooses the bind itself: pass unix=True or bind, not both")
        # Short and private: unix socket paths are limited to about 100 bytes.
        tmpdir = tempfile.mkdtemp(prefix="trioserve-")
        params["bind"] = [f"unix:{Path(tmpdir) / 'server.sock'}"]
    params.update(settings)
    try:
        return Config(app=app, **params), tmpdir
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise


async def start_server(
    nursery: trio.Nursery, app: object, /, *, unix: bool = False, **settings: Any
) -> Server:
    """Serve ``app`` in a task of ``nursery``; return once it listens.

    The server runs until :meth:`Server.stop` or until ``nursery`` is cancelled, which
    stops it gracefully. Errors it logs are kept in :attr:`Server.errors`; nothing checks
    them unless you call :meth:`Server.check_errors` (:func:`serving` and the fixture do).

    Args:
        nursery: The nursery the server runs in.
        app: Anything trioserve serves: an ASGI or WSGI app, ``async def handler(stream)``,
            a native trio-websocket handler, or a ``"module:attribute"`` target.
        unix: Listen on a unix socket in a new temporary directory instead of
            ``127.0.0.1:0``; the directory is removed when the server stops.
        **settings: :class:`trioserve.Config` settings. The defaults differ from
            trioserve's in two: ``bind=["127.0.0.1:0"]`` and ``workers=0`` (serve in this
            process and trio run; with ``workers`` > 0 the app must be importable by name).

    Returns:
        The running :class:`Server`.

    Raises:
        ConfigError: an unknown setting or a bad value.
        TrioserveError: the server could not start (AppLoadError, BindError, LifespanError).
    """
    config, tmpdir = server_config(app, unix=unix, settings=settings)
    server = Server(config, tmpdir=tmpdir)
    _READY_LINES.acquire()
    server._starting = True
    try:
        await nursery.start(server._run)
    except BaseException:
        server._started()
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return server


@asynccontextmanager
async def serving(app: object, /, *, unix: bool = False, **settings: Any) -> AsyncIterator[Server]:
    """Serve ``app`` in this trio run for the duration of an ``async with`` block.

    ::

        async with serving(app) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                assert (await client.get("/")).status_code == 200

    The arguments are those of :func:`start_server`. On leaving the block the server
    stops gracefully (lifespan shutdown included); then, unless the block raised,
    errors trioserve logged meanwhile (an app that raised, answered with a 500) are
    raised as :class:`ServerErrorLogged`, unless the block took them with
    :meth:`Server.take_errors`.

    Raises:
        ConfigError: an unknown setting or a bad value.
        TrioserveError: the server could not start.
        ServerErrorLogged: trioserve logged errors while serving.
    """
    try:
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, app, unix=unix, **settings)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = single_error(group)
        if error is None:
            raise
        raise error from error.__cause__
    server.check_errors()

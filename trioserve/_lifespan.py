"""ASGI lifespan: startup before serving, shutdown after, each with a deadline.

Whether an app supports lifespan is decided by what it *sends*, never by whether it
raises: an app that answered ``lifespan.startup.failed`` (Starlette and FastAPI do, then
re-raise) supports lifespan and failed, so the server must not start. Only an app that
raises or returns before sending any lifespan message is served without lifespan (in
"auto" mode), as uvicorn and hypercorn do.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import MutableMapping
from typing import Any

import trio

from ._errors import LifespanError
from ._proto.http import ASGI_VERSION
from ._types import ASGIApp, Message

LOGGER = logging.getLogger("trioserve.lifespan")


class _Phase(enum.Enum):
    """Where the exchange with the app's lifespan task stands."""

    STARTING = "starting"  # lifespan.startup sent, not answered yet
    STARTED = "started"  # the app answered lifespan.startup.complete
    FAILED = "failed"  # the app answered lifespan.startup.failed
    UNSUPPORTED = "unsupported"  # it ended before sending a lifespan message ("auto")
    STOPPING = "stopping"  # lifespan.shutdown sent, not answered yet
    STOPPED = "stopped"  # the app answered shutdown, or its lifespan task ended


def _reason(message: Message) -> str:
    """The app's failure message on one line: the last line of a multi-line message
    (Starlette sends a whole traceback; its last line names the exception)."""
    text = str(message.get("message", "") or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


class Lifespan:
    """Runs the app's lifespan task and exchanges its startup and shutdown events.

    Args:
        app: The ASGI 3 app.
        mode: "auto" (an app that ends before sending any lifespan message is taken not
            to support lifespan) or "on" (that is an error).
        state: The dict given to the app as ``scope["state"]``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        mode: str,
        state: dict[str, Any],
        startup_timeout: float,
        shutdown_timeout: float,
    ) -> None:
        self.app = app
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.mode = mode
        self.state = state
        self._phase = _Phase.STARTING
        self._to_app_send, self._to_app_receive = trio.open_memory_channel[Message](1)
        self._answer: Message | None = None
        self._answered = trio.Event()
        # What the app's lifespan task raised, and whether it has ended at all.
        self._error: Exception | None = None
        self._app_ended = False

    @property
    def supported(self) -> bool:
        """False once the app turned out not to support lifespan (in "auto" mode)."""
        return self._phase is not _Phase.UNSUPPORTED

    async def _run_app(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            self._error = exc
            if self._phase in (_Phase.STARTED, _Phase.STOPPING):
                LOGGER.error("lifespan task of the app raised after startup", exc_info=True)
            elif self._phase is _Phase.FAILED:
                # It reported its failure first (the message says why): the traceback
                # only adds where it was re-raised.
                LOGGER.debug("lifespan task raised after lifespan.startup.failed", exc_info=True)
        finally:
            self._app_ended = True
            self._answered.set()

    async def _receive(self) -> Message:
        return await self._to_app_receive.receive()

    async def _send(self, message: Message) -> None:
        stage = "startup" if self._phase is _Phase.STARTING else "shutdown"
        kind = message.get("type") if isinstance(message, MutableMapping) else None
        # STARTED: an app may end its lifespan unasked (Starlette reports its task's
        # failure as lifespan.shutdown.failed).
        if self._phase not in (_Phase.STARTING, _Phase.STARTED, _Phase.STOPPING) or kind not in {
            f"lifespan.{stage}.complete",
            f"lifespan.{stage}.failed",
        }:
            # Raised into the app: in auto mode an app that answers lifespan with,
            # say, an HTTP response is taken not to support lifespan.
            raise RuntimeError(
                f"expected 'lifespan.{stage}.complete' or 'lifespan.{stage}.failed', got {kind!r}"
            )
        # Decided here, when the app sends, not when startup() wakes up: an app may
        # send lifespan.startup.failed and raise before startup() runs again.
        if self._phase is _Phase.STARTING:
            self._phase = _Phase.STARTED if kind.endswith(".complete") else _Phase.FAILED
        elif self._phase is _Phase.STARTED:
            self._phase = _Phase.STOPPED
            if kind.endswith(".failed"):
                LOGGER.error(
                    "lifespan shutdown failed: %s", message.get("message", "") or "no reason given"
                )
            return
        else:
            self._phase = _Phase.STOPPED
        self._answer = message
        self._answered.set()

    async def startup(self, nursery: trio.Nursery) -> None:
        """Start the lifespan task in ``nursery``; wait up to ``startup_timeout`` for startup.

        Raises:
            LifespanError: the app reported startup failure, ended without a lifespan
                message (in "on" mode) or did not answer within ``startup_timeout``.
        """
        timeout = self.startup_timeout
        nursery.start_soon(self._run_app)
        await self._to_app_send.send({"type": "lifespan.startup"})
        with trio.move_on_after(timeout):
            await self._answered.wait()
        if self._phase is _Phase.STARTED:
            return
        if self._phase is _Phase.FAILED:
            assert self._answer is not None  # _send() set both
            self._log_full_message(self._answer)
            raise LifespanError(f"lifespan startup failed: {_reason(self._answer)}")
        if not self._app_ended:
            raise LifespanError(
                f"lifespan startup did not complete within {timeout:g} seconds "
                "(--lifespan-startup-timeout)"
            )
        # The app ended before sending any lifespan message.
        error = self._error
        if self.mode == "on":
            if error is None:
                raise LifespanError("lifespan startup failed: the app returned without answering")
            raise LifespanError(
                f"lifespan startup failed: {type(error).__name__}: {error}"
            ) from error
        self._phase = _Phase.UNSUPPORTED
        if error is None:
            LOGGER.info("the app returned from lifespan without answering; serving without it")
        else:
            LOGGER.info(
                "the app does not support ASGI lifespan (it raised %s: %s); serving without it",
                type(error).__name__,
                error,
            )

    def _log_full_message(self, answer: Message) -> None:
        text = str(answer.get("message", "") or "").strip()
        if "\n" in text:
            # The error says the last line; the app's whole report (a traceback) is here.
            # (In the message, not an argument: the log keeps a message's own lines.)
            LOGGER.error("lifespan startup failed; the app reported:\n" + text)

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait up to ``shutdown_timeout`` for the answer."""
        timeout = self.shutdown_timeout
        if self._phase is not _Phase.STARTED or self._app_ended:
            return
        self._phase = _Phase.STOPPING
        self._answer = None
        self._answered = trio.Event()
        with trio.move_on_after(timeout) as scope:
            await self._to_app_send.send({"type": "lifespan.shutdown"})
            await self._answered.wait()
        if scope.cancelled_caught:
            LOGGER.error("lifespan shutdown did not complete within %g seconds", timeout)
            return
        answer: Message = self._answer or {}
        if answer.get("type") == "lifespan.shutdown.failed":
            LOGGER.error(
                "lifespan shutdown failed: %s", answer.get("message", "") or "no reason given"
            )

"""ASGI lifespan: startup before serving, shutdown after, each with a deadline."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import trio

from ._errors import LifespanError
from ._proto.http import ASGI_VERSION
from ._types import ASGIApp, Message

LOGGER = logging.getLogger("trioserve.lifespan")


class Lifespan:
    """Runs the app's lifespan task and exchanges its startup and shutdown events.

    Args:
        app: The ASGI 3 app.
        mode: "auto" (an app that fails before answering startup is taken not to support
            lifespan) or "on" (that is an error).
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
        self.supported = True
        self._to_app_send, self._to_app_receive = trio.open_memory_channel[Message](1)
        self._answer: Message | None = None
        self._answered = trio.Event()
        self._app_ended = False
        self._started_ok = False

    async def _run_app(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            if self._started_ok:
                LOGGER.error("lifespan task of the app raised after startup", exc_info=True)
            elif self.mode == "auto":
                self.supported = False
                LOGGER.info(
                    "the app does not support ASGI lifespan (it raised %s: %s); serving without it",
                    type(exc).__name__,
                    exc,
                )
            else:
                self._answer = {
                    "type": "lifespan.startup.failed",
                    "message": f"{type(exc).__name__}: {exc}",
                }
                LOGGER.debug("lifespan startup raised", exc_info=True)
        finally:
            self._app_ended = True
            self._answered.set()

    async def _receive(self) -> Message:
        return await self._to_app_receive.receive()

    async def _send(self, message: Message) -> None:
        phase = "shutdown" if self._started_ok else "startup"
        kind = message.get("type") if isinstance(message, MutableMapping) else None
        if kind not in {f"lifespan.{phase}.complete", f"lifespan.{phase}.failed"}:
            # Raised into the app: in auto mode an app that answers lifespan with,
            # say, an HTTP response is taken not to support lifespan.
            raise RuntimeError(
                f"expected 'lifespan.{phase}.complete' or 'lifespan.{phase}.failed', got {kind!r}"
            )
        self._answer = message
        self._answered.set()

    async def startup(self, nursery: trio.Nursery) -> None:
        """Start the lifespan task in ``nursery``; wait up to ``startup_timeout`` for startup.

        Raises:
            LifespanError: the app reported startup failure, raised (in "on" mode) or
                did not answer within ``timeout``.
        """
        timeout = self.startup_timeout
        nursery.start_soon(self._run_app)
        await self._to_app_send.send({"type": "lifespan.startup"})
        with trio.move_on_after(timeout):
            await self._answered.wait()
            answer = self._answer
            if not self.supported:
                return
            if answer is None:
                # The app returned without a word.
                if self.mode == "on":
                    raise LifespanError(
                        "lifespan startup failed: the app returned without answering"
                    )
                self.supported = False
                LOGGER.info("the app returned from lifespan without answering; serving without it")
                return
            kind = answer.get("type")
            if kind == "lifespan.startup.complete":
                self._started_ok = True
                return
            # _send() lets through only complete and failed.
            reason = answer.get("message", "") or "no reason given"
            raise LifespanError(f"lifespan startup failed: {reason}")
        raise LifespanError(
            f"lifespan startup did not complete within {timeout:g} seconds "
            "(--lifespan-startup-timeout)"
        )

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait up to ``shutdown_timeout`` for the answer."""
        timeout = self.shutdown_timeout
        if not self.supported or not self._started_ok or self._app_ended:
            return
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

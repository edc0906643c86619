"""The trio edge of HTTP/1.1: one accepted stream in, ASGI calls out.

``serve_http_connection`` takes any ``trio.abc.Stream``, so tests drive it with
``trio.testing.memory_stream_pair()``. One task per connection: the request body is
read inside ``receive()`` as the app asks for it, nothing is buffered whole.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import h11
import trio

from ._proto.http import ASGIProtocolError, Response, ResponsePhase, error_response, http_scope
from ._state import ServerState
from ._types import ASGIApp, Message

LOGGER = logging.getLogger("trioserve.http")

RECEIVE_SIZE = 64 * 1024
# Pipelined bytes buffered while the app runs; past this we stop reading until it is done.
MAX_PIPELINE_BUFFER = 64 * 1024
MAX_HEAD_SIZE = 64 * 1024
# Unread request body we are willing to read and drop to keep a connection alive.
MAX_DISCARD = 256 * 1024

_DISCONNECT: Message = {"type": "http.disconnect"}
_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)


async def serve_http_connection(
    stream: trio.abc.Stream,
    app: ASGIApp,
    state: ServerState,
    *,
    client: tuple[str, int] | None = None,
    server: tuple[str, int | None] | None = None,
    scheme: str = "http",
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until the peer leaves, the connection
    idles out, or the server stops. Never raises for a client's or an app's fault;
    closes ``stream`` before returning."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
    try:
        while True:
            request = await _next_request(stream, conn, state)
            if request is None:
                break
            scope = http_scope(
                request,
                scheme=scheme,
                client=client,
                server=server,
                root_path=state.config.root_path,
                state=state.lifespan_state,
            )
            cycle = _Cycle(stream, conn, request, state)
            await cycle.run(app, scope)
            if not cycle.broken and conn.their_state is h11.SEND_BODY:
                await _discard_body(stream, conn, state)
            if (
                cycle.broken
                or state.stopping
                or conn.our_state is not h11.DONE
                or conn.their_state is not h11.DONE
            ):
                break
            conn.start_next_cycle()
    except _BROKEN:
        LOGGER.debug("client went away")
    except Exception:
        # A bug of ours must cost one connection, never the server.
        LOGGER.exception("unexpected error while serving a connection")
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _next_request(
    stream: trio.abc.Stream, conn: h11.Connection, state: ServerState
) -> h11.Request | None:
    """Read until a request head is complete; None when the connection should close."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            await _reject(stream, conn, exc)
            return None
        if isinstance(event, h11.Request):
            return event
        if event is not h11.NEED_DATA:
            # ConnectionClosed, or anything unexpected between requests.
            return None
        # Waiting with nothing of the next request received yet: the connection is idle,
        # so a graceful stop may close it at once.
        idle = not conn.trailing_data[0]
        if idle and state.stopping:
            return None
        with state.idle(state.config.keep_alive) as scope:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except _BROKEN:
                return None
        if scope.cancelled_caught:
            return None
        conn.receive_data(bytes(data))


async def _discard_body(stream: trio.abc.Stream, conn: h11.Connection, state: ServerState) -> None:
    """Read and drop what the app left unread of the request body, so the connection
    can be reused; past MAX_DISCARD bytes it is cheaper to close."""
    discarded = 0
    while discarded <= MAX_DISCARD:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return
        if isinstance(event, h11.Data):
            discarded += len(event.data)
        elif event is h11.NEED_DATA:
            with trio.move_on_after(state.config.keep_alive):
                try:
                    conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
                    continue
                except _BROKEN:
                    return
            return
        else:
            return


async def _reject(
    stream: trio.abc.Stream, conn: h11.Connection, exc: h11.RemoteProtocolError
) -> None:
    """Answer a malformed request with its status (400 unless h11 says otherwise)."""
    LOGGER.info("bad request: %s", exc)
    if conn.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
        return
    status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
    try:
        data = b"".join(
            conn.send(ev) or b"" for ev in error_response(status, f"Bad request: {exc}")
        )
        await stream.send_all(data)
    except (h11.LocalProtocolError, *_BROKEN):
        pass


class _Cycle:
    """One request/response exchange: the ``receive`` and ``send`` given to the app."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        request: h11.Request,
        state: ServerState,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.state = state
        self.response = Response(head=request.method == b"HEAD")
        self.body_done = False
        self.disconnected = False
        # True when the connection must not be reused (a broken response).
        self.broken = False
        self._disconnect_waiter: trio.CancelScope | None = None
        self._response_done = trio.Event()

    async def run(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            LOGGER.exception(
                "exception in ASGI app while serving %s %s", scope["method"], scope["path"]
            )
            await self._fail("Internal Server Error")
            return
        if not self.response.started:
            LOGGER.error(
                "ASGI app returned without sending a response to %s %s",
                scope["method"],
                scope["path"],
            )
            await self._fail("Internal Server Error")
        elif not self.response.done:
            LOGGER.error(
                "ASGI app returned before finishing its response to %s %s",
                scope["method"],
                scope["path"],
            )
            self.broken = True

    async def _fail(self, message: str) -> None:
        """500 if nothing was sent yet; otherwise the only honest thing is to close."""
        self.broken = True
        self._finish()
        if self.response.started or self.disconnected:
            return
        self.response.phase = ResponsePhase.DONE
        with contextlib.suppress(h11.LocalProtocolError):
            await self._write(error_response(500, message))

    def _finish(self) -> None:
        self._response_done.set()
        if self._disconnect_waiter is not None:
            self._disconnect_waiter.cancel()

    async def receive(self) -> Message:
        if self.disconnected or self.response.done:
            return _DISCONNECT
        if not self.body_done:
            return await self._receive_body()
        return await self._wait_for_disconnect()

    async def _receive_body(self) -> Message:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                # The client sent a broken body or went away mid-body.
                self.disconnected = True
                self.broken = True
                return _DISCONNECT
            if isinstance(event, h11.Data):
                return {"type": "http.request", "body": bytes(event.data), "more_body": True}
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if event is not h11.NEED_DATA:
                self.disconnected = True
                return _DISCONNECT
            if self.conn.they_are_waiting_for_100_continue:
                await self._write([h11.InformationalResponse(status_code=100, headers=[])])
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except _BROKEN:
                data = b""
            self.conn.receive_data(bytes(data))

    async def _wait_for_disconnect(self) -> Message:
        """After the body: block until the response is done or the client leaves.

        Bytes that arrive meanwhile are the next pipelined request; they are kept for
        the next cycle, and reading pauses once enough are buffered.
        """
        with trio.CancelScope() as waiter:
            self._disconnect_waiter = waiter
            while not self.response.done:
                if len(self.conn.trailing_data[0]) >= MAX_PIPELINE_BUFFER:
                    await self._response_done.wait()
                    break
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except _BROKEN:
                    data = b""
                if not data:
                    self.disconnected = True
                    self.broken = True
                    break
                self.conn.receive_data(bytes(data))
        self._disconnect_waiter = None
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        # A stop that began while the app worked still marks this response as the last.
        self.response.close = self.state.stopping
        try:
            events = self.response.on_send(message)
        except ASGIProtocolError as exc:
            LOGGER.error("ASGI app sent a bad message: %s", exc)
            raise RuntimeError(f"ASGI protocol error: {exc}") from None
        if self.response.done:
            self._finish()
        if self.disconnected or not events:
            return
        try:
            await self._write(events)
        except h11.LocalProtocolError as exc:
            self.broken = True
            raise RuntimeError(f"invalid HTTP response from the ASGI app: {exc}") from None

    async def _write(self, events: list[h11.Event]) -> None:
        data = b"".join(self.conn.send(event) or b"" for event in events)
        try:
            await self.stream.send_all(data)
        except _BROKEN:
            # The client left: drop the rest; receive() now reports http.disconnect.
            self.disconnected = True
            self.broken = True

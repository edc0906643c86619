"""One ASGI HTTP exchange, whatever the protocol that carries it: the scope, the
``receive`` and ``send`` given to the app, and what happens when the app fails, returns
early or outlives its client.

:class:`Exchange` holds every rule of the ASGI ``http`` exchange that does not depend
on the wire: the phases of ``receive()`` (the body, then waiting for the disconnect, then
``http.disconnect`` for good), the checks around ``send()`` (a stop that began while the
app worked marks the response the last on its connection; a bad message is the app's
error; ``ClientDisconnected`` once the client has gone), a 500 for an app that fails or
returns without a response, a rejected request body (413, bad framing) answered while
the app reads it, and the logs (the departure of a client at debug level, the app's
errors, the access log). An edge subclasses it and supplies only the transport: how the
response's output is written, how body bytes are read, how a departure is noticed.

The HTTP/1.1 edge's ``_Cycle`` (in ``_serve_http``) is one such subclass; the HTTP/2
edge's stream is another. The response object is the protocol's own (HTTP/1.1:
:class:`~trioserve._proto.http.Response`, which serializes bytes): what the exchange
needs of it is :class:`ExchangeResponse`.

Layer: below the edges, above ``_proto``. It awaits (trio), but does no I/O itself.
"""

from __future__ import annotations

import abc
import logging
from bisect import bisect_left
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from time import time as _wall_clock
from typing import Any, BinaryIO, Generic, NoReturn, Protocol, TypeVar

import trio

from ._errors import ClientDisconnected, departure
from ._metrics import DURATION_BUCKETS, ProcessCounts
from ._metrics import FIRST_BUCKET as _FIRST_BUCKET  # (a module constant: read per request)
from ._peer import Peer
from ._proto.compiled import mypyc_attr
from ._proto.http import (
    EARLY_HINT,
    PATHSEND,
    TRAILERS,
    AppEnd,
    ASGIProtocolError,
    PathSend,
    ResponsePhase,
    accepts_trailers,
    app_returned,
    error_status_text,
)
from ._proto.validate import RequestRejected
from ._state import ServerState
from ._types import ASGIApp, Message

LOGGER = logging.getLogger("trioserve.http")

DISCONNECT: Message = {"type": "http.disconnect"}
_GONE = "the client has gone; the response cannot be sent"
# How much of a file (http.response.pathsend) one read in a worker thread takes.
FILE_CHUNK = 256 * 1024
_START = ResponsePhase.START
_DONE = ResponsePhase.DONE

# What the transport writes: bytes for HTTP/1.1, the protocol's own actions for HTTP/2.
Payload = TypeVar("Payload")
Payload_co = TypeVar("Payload_co", covariant=True)


class AccessLogger(Protocol):
    def log(
        self,
        scope: MutableMapping[str, Any],
        status: int,
        response_headers: Sequence[tuple[bytes, bytes]],
        body_bytes: int,
        request_time: float,
        duration: float,
    ) -> None: ...


class ExchangeResponse(Protocol[Payload_co]):
    """What an :class:`Exchange` needs of its protocol's response object, which checks
    the app's ``send()`` messages and turns them into the transport's payload.

    Attributes:
        phase: Where the response is: waiting for ``http.response.start``, sending the
            body, or complete (:class:`~trioserve._proto.http.ResponsePhase`).
        close: Set by the exchange while the response has not started: True makes it
            the last on its connection (the server is stopping).
        must_close: True once the connection cannot carry another response after this
            one (decided with the head, or when the body ended short or overran).
        missing: How many bytes the body fell short of its Content-Length, once it ended.
        body_bytes: Body bytes produced so far, framing not counted.
        status: The status of the response's head, valid once ``head_sent``.
        headers: The app's response headers as it gave them (for the access log).
        trailers_accepted: Set by the exchange before ``http.response.start`` when the
            app's start asks for trailers: whether the client takes them (``TE:
            trailers``). When it does not, the response takes the app's trailer messages
            and sends none.
        done_at: The wall-clock time (``time.time()``) the response read as it
            serialized its last message, or 0.0 when it read none: the exchange then
            spares a clock read as the response completes (the exchange sets it back to
            0.0 when that last write had to wait).
    """

    phase: ResponsePhase
    close: bool
    must_close: bool
    missing: int
    body_bytes: int
    status: int
    headers: Sequence[Any]
    trailers_accepted: bool
    done_at: float

    @property
    def started(self) -> bool:
        """True once ``http.response.start`` was accepted."""

    @property
    def head_sent(self) -> bool:
        """True once the status and headers were produced (the transport has them)."""

    @property
    def sent_status(self) -> int:
        """The status of the head that went out: 0 while none did."""

    @property
    def keep_alive(self) -> bool:
        """True when the response is complete and the connection may carry another."""

    def on_send(self, message: MutableMapping[str, Any]) -> Payload_co:
        """The payload for one app message (empty/falsy when there is nothing to write
        yet). Raises ASGIProtocolError for a message wrong for the phase, and
        :class:`~trioserve._proto.http.PathSend` for ``http.response.pathsend`` in the
        body phase (the exchange then sends the file)."""

    def fail(self, status: int, message: str) -> Payload_co:
        """The error response that replaces this one, which has not started."""


class HandoverWatch(Protocol):
    """Where an edge watches complete exchanges whose app may work on (see
    :attr:`ExchangeOptions.handovers`)."""

    # How many watchers run: without one, nothing is offered.
    watchers: int
    # The complete exchanges offered since the watcher last looked.
    offered: list[Any]
    # The watchers parked until an offer comes (wake() wakes them).
    parked: list[Any]

    def wake(self) -> None: ...


# Compiled in the optional mypyc build; the HTTP/2 edge's H2Options, pure Python, extends it.
@mypyc_attr(allow_interpreted_subclasses=True)
class ExchangeOptions:
    """What an exchange needs from the settings, worked out once per server (the edges'
    options extend it).

    Args:
        root_path: The ASGI ``root_path`` (--root-path).
        access_log: Where complete exchanges are logged, or None.
        counts: Where complete exchanges are counted (``--metrics-bind``), or None.
        proxy: Rewrites a request scope from trusted proxy headers, or None.
        app_hint: Adds advice to the log of an app's exception (the asyncio hint).
        pathsend: Offer ``http.response.pathsend`` (--pathsend).

    Attributes:
        offered: The ASGI extensions offered in the scope of a request (HTTP/1.1 and
            later), and ``offered_http_10`` those of an HTTP/1.0 request (no early hints
            or trailers). Their values are the same empty dicts for every request (apps
            only test for the names): a copy each would cost every request.
        handovers: Where every complete exchange is offered while its app may still be
            working (HTTP/1.1: the connection then goes on in a new task; see
            ``_serve_http.Handovers``); None for an edge with no use for it. Set by the
            edge's options.
    """

    handovers: HandoverWatch | None

    def __init__(
        self,
        *,
        root_path: str = "",
        access_log: AccessLogger | None = None,
        counts: ProcessCounts | None = None,
        proxy: Callable[[MutableMapping[str, Any]], None] | None = None,
        app_hint: Callable[[BaseException], str | None] | None = None,
        pathsend: bool = True,
    ) -> None:
        self.offered: dict[str, Any] = {EARLY_HINT: {}, TRAILERS: {}}
        self.offered_http_10: dict[str, Any] = {}
        if pathsend:
            self.offered[PATHSEND] = self.offered_http_10[PATHSEND] = {}
        self.root_path = root_path
        self.access_log = access_log
        self.counts = counts
        # Whether exchanges take the time they begin and end (for either of those).
        self.timed = access_log is not None or counts is not None
        self.proxy = proxy
        self.app_hint = app_hint
        # (Set here, not as a class default: compiled with mypyc, this class did not
        # apply that default to its instances.)
        self.handovers = None


# Compiled in the optional mypyc build; the HTTP/2 edge's _H2Stream, pure Python, extends it.
@mypyc_attr(allow_interpreted_subclasses=True)
class Exchange(abc.ABC, Generic[Payload]):
    """One request/response exchange: the ``receive`` and ``send`` given to the app, and
    :meth:`run`, which calls the app with them.

    A subclass supplies the transport. Its ``__init__`` sets these attributes (no
    ``super().__init__``: a call less on every request):

    - ``state`` (:class:`~trioserve._state.ServerState`), ``options``
      (:class:`ExchangeOptions` or an extension of it), ``peer``
      (:class:`~trioserve._peer.Peer`: its ``extensions`` go into the scope);
    - ``response``: the protocol's response (:class:`ExchangeResponse`), fresh;
    - ``body_done``: True when the request has no body left to read (then ``receive()``
      never calls :meth:`read_body`), and ``empty_body_due``: True when, in addition,
      the app's first ``receive()`` is still owed the empty ``http.request``.

    And it implements the transport hooks:

    - :meth:`request_scope`: the protocol's ASGI ``http`` scope (lifespan state
      included), whose ``extensions`` is a fresh dict (empty, or with the protocol's
      own); the exchange adds the extensions it offers and the peer's, and applies the
      proxy rewriting.
    - ``transmit(payload)``: write a payload of the response; its answer is False when
      the client is gone (it left, or stopped reading within the write timeout), True
      otherwise: either the bool itself (a write done at once: no coroutine is made,
      the HTTP/1.1 edge's common case) or an awaitable of it (an async method is
      fine). Never raises for the client's fault. A callable set as an attribute in
      ``__init__`` (the HTTP/1.1 edge sets its connection's ``write_now``: a call layer
      less on every write; the HTTP/2 edge a method of its own under another name: with
      this class compiled by mypyc, its code reads the attribute, never a method).
    - ``async`` :meth:`read_body` ``() -> Message | None``: the next ``http.request``
      message (the exchange notes the end of the body); None when the client has gone
      (the exchange then says ``http.disconnect``; set ``broken`` first if the
      connection cannot carry another request). Raises
      :class:`~trioserve._proto.validate.RequestRejected` when the body breaks a rule:
      the exchange answers with its error if it still can.
    - ``async`` :meth:`watch_client` ``() -> None``: return when the client has gone;
      called once the body is read, by a ``receive()`` that must block until the
      response is complete. The exchange runs it in a cancel scope that it cancels once
      the response is complete (or never will be), so it may wait forever.

    The ASGI extensions ``http.response.early_hint`` and ``http.response.trailers`` are
    offered in the scope of every request but HTTP/1.0's (by ``scope["http_version"]``);
    the exchange tells the response whether the client takes trailers
    (``trailers_accepted``); the response serializes both for its protocol (a ``103``
    while the final head has not gone out; the trailer section after the body).
    ``http.response.pathsend`` is offered to every request (unless the options say
    not): the response's ``on_send``
    raises :class:`~trioserve._proto.http.PathSend` for it, and the exchange opens the
    file and hands it to :meth:`transmit_file` (a hook with a default that works for any
    protocol: the file read in a worker thread, each chunk through the response).

    Attributes the transport reads: ``finished`` (the response is out whole, or never
    will be), ``broken`` (the connection must not carry another exchange),
    ``disconnected`` (the client is gone), ``rejected`` (the request body was refused and
    answered), ``returned`` (the app returned or raised), ``handed_over`` (set by the
    transport: the exchange no longer owns its connection; the app's later failure then
    neither answers nor logs access).
    """

    # Set by the subclass's __init__ (see above).
    state: ServerState
    options: ExchangeOptions
    peer: Peer
    response: ExchangeResponse[Payload]
    body_done: bool
    empty_body_due: bool
    # Write a payload; False when the client is gone, as a bool or an awaitable of one
    # (see the class doc): a callable the subclass sets in __init__.
    transmit: Callable[[Payload], bool | Awaitable[bool]]

    # Defaults at class level: most exchanges never change them, and one exchange is
    # made per request.
    disconnected = False
    # True when the connection must not be reused (a broken response).
    broken = False
    # Set when the body broke a limit or framing rule after the app started.
    rejected: RequestRejected | None = None
    # True once the response is written out whole, or never will be (see _finish).
    finished = False
    # The app returned (or raised): set before anything else happens after it.
    returned = False
    # The transport no longer belongs to this exchange (HTTP/1.1: the connection went on
    # in another task while the app works on; see _serve_http.Handovers).
    handed_over = False
    # For the access log: when the exchange began and when its response was complete
    # (wall clock); 0.0 when neither an access log nor a count (``timed``) needs them.
    started = 0.0
    ended = 0.0
    # The cancel scope of a receive() blocked in watch_client.
    _disconnect_waiter: trio.CancelScope | None = None
    # The scope given to the app (set by run).
    _scope: dict[str, Any]

    # -- transport hooks -------------------------------------------------------------

    # Abstract: each protocol's exchange (HTTP/1.1's _Cycle, HTTP/2's _H2Stream) defines
    # them; a subclass that misses one cannot be instantiated.

    @abc.abstractmethod
    def request_scope(self) -> dict[str, Any]:
        """The protocol's ASGI ``http`` scope for this request (see the class doc)."""

    @abc.abstractmethod
    async def read_body(self) -> Message | None:
        """The next ``http.request`` message; None when the client has gone (see the
        class doc)."""

    @abc.abstractmethod
    async def watch_client(self) -> None:
        """Return when the client has gone (see the class doc)."""

    # -- the exchange ----------------------------------------------------------------

    @property
    def status(self) -> int:
        """The status that went out, 0 if none (the response keeps it)."""
        return self.response.sent_status

    @property
    def body_bytes(self) -> int:
        """The body bytes that went out, framing not counted."""
        return self.response.body_bytes

    async def run(self, app: ASGIApp) -> None:
        """Call ``app`` for this exchange, and answer for it when it fails: never raises
        for the app's or the client's fault."""
        # The scope: the protocol's, with the peer's extensions, rewritten from trusted
        # proxy headers. (Built here rather than in a method of its own: a call less on
        # every request.)
        scope = self.request_scope()
        # Early hints and trailers are offered to every request but HTTP/1.0's (no 1xx
        # response may go to an HTTP/1.0 client, and it knows no chunked framing).
        options = self.options
        extensions = scope["extensions"]
        extensions.update(
            options.offered if scope["http_version"] != "1.0" else options.offered_http_10
        )
        peer_extensions = self.peer.extensions
        if peer_extensions:
            extensions.update(peer_extensions)
        proxy = options.proxy
        if proxy is not None:
            proxy(scope)
        self._scope = scope
        timed = options.timed
        if timed:
            self.started = _wall_clock()
        try:
            try:
                await app(scope, self.receive, self.send)
            finally:
                self.returned = True
        except Exception as exc:
            if self.disconnected and departure(exc):
                # The app stopped because send() said the client had gone: routine. (The
                # traceback, at debug level, when a framework turned it into another error.)
                LOGGER.debug(
                    "client went away during %s %s; the app stopped with %s",
                    scope["method"],
                    scope["path"],
                    type(exc).__name__,
                    exc_info=None if type(exc) is ClientDisconnected else exc,
                )
                self.broken = True
            elif self.rejected is None:
                after = self.finished and not self.broken
                hint = self.options.app_hint
                text = hint(exc) if hint is not None else None
                LOGGER.exception(
                    "exception in ASGI app while serving %s %s%s%s",
                    scope["method"],
                    scope["path"],
                    " (after its response was sent)" if after else "",
                    f" ({text})" if text else "",
                )
                if not self.handed_over:
                    # (Even after a complete response the connection then ends, as in
                    # uvicorn and gunicorn.) One handed over is served elsewhere already:
                    # the error of the app's later work does not affect it.
                    await self._fail()
        else:
            if self.response.phase is not _DONE and self.rejected is None:
                end = app_returned(self.response, disconnected=self.disconnected)
                if end is not AppEnd.CLIENT_LEFT:
                    LOGGER.error(
                        "ASGI app returned %s to %s %s", end.value, scope["method"], scope["path"]
                    )
                if end is AppEnd.NO_RESPONSE:
                    await self._fail()
                else:
                    self.broken = True
        if timed and not self.ended and not self.handed_over and self.response.head_sent:
            # A response that started but never completed (a complete one was counted
            # and logged as it completed: see _complete).
            self._log_incomplete()

    def log_access(self) -> None:
        """Count this exchange and write its access log line if its response started
        but did not complete (a complete one was, as it completed: see ``_complete``)."""
        if self.options.timed and not self.ended and self.response.head_sent:
            self._log_incomplete()

    def _log_incomplete(self) -> None:
        """Count and log an exchange whose response started but never completed (an
        error answer, a client gone, a broken body), its duration until now."""
        response = self.response
        started = self.started
        duration = _wall_clock() - started
        scope = self._scope
        options = self.options
        counts = options.counts
        if counts is not None:
            counts.request(scope["method"], response.status, response.body_bytes, duration)
        access_log = options.access_log
        if access_log is not None:
            access_log.log(
                scope, response.status, response.headers, response.body_bytes, started, duration
            )

    def _complete(self) -> None:
        """The response is written out whole: the exchange is finished, and the
        transport may go on without waiting for the app to return."""
        self.finished = True
        if self._disconnect_waiter is not None:
            self._disconnect_waiter.cancel()
        started = self.started
        if started:
            # Counted and logged here, as the response is complete (the access log line
            # comes with the response, not with the app's later work). Inlined: with
            # --metrics-bind this runs for every request, and a call costs more than the
            # counting (ProcessCounts.request does the same; the first duration bucket
            # is not counted: see ProcessCounts.durations). The response's own reading
            # of the clock, when it made one as it was written out whole (most
            # responses: see ExchangeResponse.done_at), spares a second reading here:
            # under load, each costs more than all the counting.
            response = self.response
            self.ended = ended = response.done_at or _wall_clock()
            options = self.options
            counts = options.counts
            if counts is not None:
                try:
                    counts.requests[self._scope["method"]][response.status // 100] += 1
                except KeyError:
                    counts.other[response.status // 100] += 1
                duration = ended - started
                if duration > _FIRST_BUCKET:
                    counts.durations[bisect_left(DURATION_BUCKETS, duration)] += 1
                counts.duration_sum += duration
                counts.body_bytes += response.body_bytes
            access_log = options.access_log
            if access_log is not None:
                access_log.log(
                    self._scope,
                    response.status,
                    response.headers,
                    response.body_bytes,
                    started,
                    ended - started,
                )
        handovers = self.options.handovers
        if handovers is not None and handovers.watchers:
            handovers.offered.append(self)
            if handovers.parked:
                handovers.wake()

    def _finish(self) -> None:
        """The exchange is over for receive(): the response is written out whole, or it
        never will be. Wakes a receive() waiting for that, with http.disconnect."""
        self.finished = True
        if self._disconnect_waiter is not None:
            self._disconnect_waiter.cancel()

    async def _fail(self) -> None:
        """500 if nothing was sent yet; otherwise the only honest thing is to close."""
        self.broken = True
        self._finish()
        if self.response.started or self.disconnected:
            return
        await self._write(self.response.fail(500, "Internal Server Error"))

    async def _reject(self, exc: RequestRejected) -> Message:
        """The body broke a rule while the app reads it: answer with the error if nothing
        was sent yet, and tell the app the client is gone."""
        LOGGER.info("bad request body: %s", exc.reason)
        self.rejected = exc
        self.state.reject(exc.status)
        self.broken = True
        self.disconnected = True
        if not self.response.started:
            message = f"{error_status_text(exc.status)}: {exc.reason}"
            await self._write(self.response.fail(exc.status, message), force=True)
        self._finish()
        return DISCONNECT

    async def _write(self, payload: Payload, *, force: bool = False) -> None:
        """Write ``payload`` unless the client is gone (``force``: even then, as for a
        rejection's answer); a failed write marks the client gone."""
        if self.disconnected and not force:
            return
        if not await self._transmitted(payload):
            # The client left or stopped reading: drop the rest; receive() now reports
            # http.disconnect.
            self.disconnected = True
            self.broken = True

    async def receive(self) -> Message:
        """The ``receive`` given to the app: the body, then (blocking until the
        response is complete or the client leaves) ``http.disconnect``."""
        if self.disconnected or self.finished:
            return DISCONNECT
        if not self.body_done:
            try:
                message = await self.read_body()
            except RequestRejected as exc:
                return await self._reject(exc)
            if message is None:
                self.disconnected = True
                return DISCONNECT
            if not message["more_body"]:
                self.body_done = True
            return message
        if self.empty_body_due:
            self.empty_body_due = False
            return {"type": "http.request", "body": b"", "more_body": False}
        with trio.CancelScope() as waiter:
            self._disconnect_waiter = waiter
            await self.watch_client()
            self.disconnected = True
        self._disconnect_waiter = None
        return DISCONNECT

    async def send(self, message: Message) -> None:
        """The ``send`` given to the app."""
        if self.rejected is not None:
            # The request was refused (413, bad framing) and answered already.
            return
        if self.disconnected:
            await _client_gone()
        response = self.response
        if response.phase is _START:
            # A stop that began while the app worked still marks this response the last.
            response.close = self.state.stopping
            if type(message) is not dict or message.get("trailers"):
                # Trailers go out only to a client that said it takes them (TE: trailers),
                # as the ASGI trailers extension has it.
                response.trailers_accepted = accepts_trailers(self._scope["headers"])
        try:
            payload = response.on_send(message)
        except PathSend as request:
            await self._send_path(request.path)
            return
        except ASGIProtocolError as exc:
            self._bad_message(exc)
        # The last message: the exchange is finished once its payload is written out
        # (not before: an app that stops its sender on http.disconnect would cut the
        # write).
        last = response.phase is _DONE
        if last and response.missing:
            self._log_missing()
        if payload:
            # (_transmitted, inline: a write done at once answers without a coroutine.)
            sent = self.transmit(payload)
            if sent is not True:
                if sent is False or not await sent:
                    self._gone_while_sending()
                # The write waited: the time read as it was serialized is not when the
                # response completed.
                response.done_at = 0.0
        if last:
            self._complete()

    def _bad_message(self, exc: ASGIProtocolError) -> NoReturn:
        """The app sent a message wrong for the response (its error, raised into it)."""
        response = self.response
        if response.head_sent and response.must_close:
            # Part of the response is out and it cannot be completed (a body longer
            # than its length): the connection cannot carry on.
            self.broken = True
            self._finish()
        LOGGER.error("ASGI app sent a bad message: %s", exc)
        raise RuntimeError(f"ASGI protocol error: {exc}") from None

    def _log_missing(self) -> None:
        LOGGER.error(
            "ASGI app sent %d bytes less than its Content-Length to %s %s; closing the connection",
            self.response.missing,
            self._scope["method"],
            self._scope["path"],
        )

    def _gone_while_sending(self) -> NoReturn:
        """A write of the response failed: the client left or stopped reading."""
        self.disconnected = True
        self.broken = True
        self._finish()
        LOGGER.debug(
            "client went away during %s %s; the app's send() raises ClientDisconnected",
            self._scope["method"],
            self._scope["path"],
        )
        raise ClientDisconnected(_GONE)

    async def _send_path(self, path: str) -> None:
        """``http.response.pathsend``: the rest of the body is the file at ``path``."""
        try:
            file = await trio.to_thread.run_sync(open, path, "rb")
        except OSError as exc:
            LOGGER.error("ASGI app sent http.response.pathsend for %r: %s", path, exc.strerror)
            raise RuntimeError(f"http.response.pathsend: cannot read {path!r}: {exc}") from None
        try:
            sent = await self.transmit_file(file)
        except ASGIProtocolError as error:
            # (Not ``exc``, the OSError above: compiled with mypyc, a name keeps its
            # first type.)
            self._bad_message(error)
        finally:
            file.close()
        if not sent:
            self._gone_while_sending()
        response = self.response
        if response.phase is _DONE:
            if response.missing:
                self._log_missing()
            self._complete()

    async def transmit_file(self, file: BinaryIO) -> bool:
        """Send the content of ``file`` (open for reading, at its start) as the rest of
        the body; False when the client is gone (see the class doc).

        This default reads it in a worker thread, a chunk at a time, and sends each as
        an ``http.response.body`` message would be (through the response and
        :attr:`transmit`): right for any protocol and stream. An edge may do better
        (the HTTP/1.1 edge uses ``os.sendfile`` on a plain socket).

        Raises:
            ASGIProtocolError: the file is longer than the Content-Length the app gave.
        """
        response = self.response
        while True:
            chunk = await trio.to_thread.run_sync(file.read, FILE_CHUNK)
            more = len(chunk) == FILE_CHUNK
            payload = response.on_send(
                {"type": "http.response.body", "body": chunk, "more_body": more}
            )
            if payload and not await self._transmitted(payload):
                return False
            if not more:
                return True

    async def _transmitted(self, payload: Payload) -> bool:
        """Write ``payload`` with :attr:`transmit`: False when the client is gone."""
        sent = self.transmit(payload)
        return sent if type(sent) is bool else await sent


async def _client_gone() -> NoReturn:
    """What ``send()`` does once the client has gone: raise ClientDisconnected (ASGI
    2.4 promises an OSError there). A checkpoint first: an app that ignores the error
    and sends again in a loop must still let the other connections run."""
    await trio.lowlevel.checkpoint()
    raise ClientDisconnected(_GONE)

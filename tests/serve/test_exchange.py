"""The protocol-neutral ASGI exchange (``_exchange.Exchange``) under a toy transport:
the rules hold without HTTP/1.1 (what the HTTP/2 edge relies on)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from trioserve import ClientDisconnected, Config
from trioserve._exchange import Exchange, ExchangeOptions
from trioserve._mypyc import compiled_modules
from trioserve._peer import Peer
from trioserve._proto.http import Response
from trioserve._proto.validate import RequestRejected
from trioserve._state import ServerState
from trioserve._types import Message


class ToyExchange(Exchange[bytes]):
    """An exchange whose transport is a list of written payloads and a list of body
    messages; ``gone`` makes writes fail, ``left`` ends the wait for a disconnect."""

    def __init__(
        self,
        body: list[Message | RequestRejected | None],
        *,
        state: ServerState | None = None,
        options: ExchangeOptions | None = None,
        peer: Peer | None = None,
    ) -> None:
        self.state = state or ServerState(Config())
        self.options = options or ExchangeOptions()
        self.peer = peer or Peer(trio.testing.memory_stream_pair()[0], None, None, None)
        self.response = Response()
        self.body = body
        self.body_done = self.empty_body_due = not body
        self.written: list[bytes] = []
        self.gone = False
        self.left = trio.Event()
        # An attribute, as Exchange asks (compiled, it does not see a method).
        self.transmit = self._transmit

    def request_scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "http_version": "2",
            "method": "POST",
            "path": "/toy",
            "headers": [],
            "extensions": {},
        }

    async def _transmit(self, payload: bytes) -> bool:
        if self.gone:
            return False
        self.written.append(payload)
        return True

    async def read_body(self) -> Message | None:
        item = self.body.pop(0)
        if isinstance(item, RequestRejected):
            raise item
        return item

    async def watch_client(self) -> None:
        await self.left.wait()


def chunk(data: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
BODY = {"type": "http.response.body", "body": b"ok"}


async def test_receive_gives_the_body_then_waits_for_the_response_then_disconnect():
    """receive(): the body's messages, then a wait that ends with http.disconnect once the
    response is complete (not before), and http.disconnect for good after that."""
    exchange = ToyExchange([chunk(b"a", True), chunk(b"b", False)])
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        received.append(await receive())
        async with trio.open_nursery() as nursery:

            async def wait() -> None:
                received.append(await receive())

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert len(received) == 2
            await send(START)
            await send(BODY)
        received.append(await receive())

    with trio.fail_after(5):
        await exchange.run(app)
    assert [m.get("body") for m in received[:2]] == [b"a", b"b"]
    assert received[2:] == [{"type": "http.disconnect"}] * 2
    assert exchange.finished and not exchange.disconnected and not exchange.broken
    assert b"".join(exchange.written).endswith(b"\r\n\r\nok")


async def test_empty_body_is_owed_once_then_the_client_leaving_is_a_disconnect():
    """A request without a body: one empty http.request, then a receive() that ends when
    the transport says the client left, which marks the exchange disconnected."""
    exchange = ToyExchange([])
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        exchange.left.set()
        received.append(await receive())

    with trio.fail_after(5):
        await exchange.run(app)
    # (The app sent no response and the client left: no 500 is written.)
    assert received == [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert exchange.disconnected and exchange.written == []


async def test_failing_app_gets_a_500_before_its_response_starts(caplog):
    """An app that raises before http.response.start is answered with a 500 through the
    transport; the exchange is broken and the error logged."""
    exchange = ToyExchange([])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="trioserve.http"):
        await exchange.run(app)
    assert exchange.written[0].startswith(b"HTTP/1.1 500 ")
    assert exchange.broken and exchange.finished
    assert "exception in ASGI app while serving POST /toy" in caplog.text


async def test_app_returning_without_a_response_gets_a_500(caplog):
    """An app that returns without sending anything gets a 500 and an error log line."""
    exchange = ToyExchange([])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    await exchange.run(app)
    assert exchange.written[0].startswith(b"HTTP/1.1 500 ")
    assert "returned without sending a response" in caplog.text


async def test_gone_client_makes_send_raise_client_disconnected_every_time():
    """A failed write makes send() raise ClientDisconnected, and every later send too;
    the app stopping with it is routine (no error log)."""
    exchange = ToyExchange([])
    exchange.gone = True
    raised: list[type[BaseException]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        for _ in range(2):
            try:
                await send(BODY)
            except ClientDisconnected as exc:
                raised.append(type(exc))
        await send(BODY)

    await exchange.run(app)
    assert raised == [ClientDisconnected, ClientDisconnected]
    assert exchange.disconnected and exchange.broken and exchange.finished


async def test_rejected_body_is_answered_and_the_app_hears_disconnect():
    """A body the transport refuses (413) is answered through the transport if nothing
    was sent; the app gets http.disconnect and its later sends are dropped."""
    exchange = ToyExchange([chunk(b"a", True), RequestRejected(413, "too large")])
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        received.append(await receive())
        await send(START)
        await send(BODY)

    await exchange.run(app)
    assert received[1] == {"type": "http.disconnect"}
    assert len(exchange.written) == 1
    assert exchange.written[0].startswith(b"HTTP/1.1 413 ")
    assert exchange.rejected is not None and exchange.broken


async def test_stop_that_began_while_the_app_worked_marks_the_response_last():
    """A graceful stop that began before http.response.start makes the response the
    last on its connection (HTTP/1.1: Connection: close)."""
    exchange = ToyExchange([])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        exchange.state.stopping = True
        await send(START)
        await send(BODY)

    await exchange.run(app)
    assert b"Connection: close\r\n" in exchange.written[0]
    assert not exchange.response.keep_alive


async def test_scope_has_the_peer_extensions_and_the_proxy_rewriting():
    """The scope given to the app is the transport's, with the peer's extensions added
    and the proxy rewriting applied."""
    peer = Peer(trio.testing.memory_stream_pair()[0], None, None, None)
    peer.extensions = {"tls": {"server_cert": None}}

    def proxy(scope: Any) -> None:
        scope["scheme"] = "https"

    exchange = ToyExchange([], options=ExchangeOptions(proxy=proxy), peer=peer)
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await send(START)
        await send(BODY)

    await exchange.run(app)
    assert seen[0]["scheme"] == "https"
    assert seen[0]["extensions"]["tls"] == {"server_cert": None}


@pytest.mark.skipif(
    "trioserve._exchange" in compiled_modules(),
    reason="compiled with mypyc, Exchange's constructor does not check abstract methods "
    "(mypy --strict still reports a missing hook)",
)
def test_an_exchange_without_its_transport_hooks_cannot_be_made() -> None:
    """Exchange's transport hooks are abstract: a protocol's subclass that leaves one
    out fails at construction, naming it, instead of at the first request."""

    class Incomplete(Exchange[bytes]):
        def request_scope(self) -> dict[str, Any]:
            return {}

    with pytest.raises(TypeError, match="read_body"):
        Incomplete()  # type: ignore[abstract]

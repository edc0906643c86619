"""The ASGI response extensions over the HTTP/1.1 edge: trailers and early hints, as a
client reads them (memory streams, and a real socket that the edge writes directly)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import h11
import pytest
import trio

from tests.helpers import served_connection
from trioserve import Config
from trioserve._state import ServerState

TRANSPORTS = ["memory", "socket"]


class Client:
    """An h11 client that keeps what H11Client skips: 1xx responses and trailers."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, headers: Sequence[tuple[bytes, bytes]] = (), *, http_version: bytes = b"1.1"
    ) -> tuple[list[Any], bytes, list[tuple[bytes, bytes]]]:
        """(the 1xx and final response heads, the body, the trailer fields)."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        request = h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"a"), *headers])
        data = self.conn.send(request) + self.conn.send(h11.EndOfMessage())
        if http_version != b"1.1":
            # (h11 sends only HTTP/1.1; its client reads the answer all the same.)
            data = data.replace(b" HTTP/1.1\r\n", b" HTTP/" + http_version + b"\r\n", 1)
        await self.stream.send_all(data)
        heads: list[Any] = []
        body = b""
        with trio.fail_after(5):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                elif isinstance(event, h11.InformationalResponse | h11.Response):
                    heads.append(event)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return heads, body, list(event.headers)
                else:
                    raise AssertionError(f"unexpected {event!r}")


async def trailer_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Streams a body in two parts, then sends a checksum trailer in two messages."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"trailer", b"x-checksum, x-count")],
            "trailers": True,
        }
    )
    await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
    await send({"type": "http.response.body", "body": b"world"})
    await send(
        {
            "type": "http.response.trailers",
            "headers": [(b"x-checksum", b"abc")],
            "more_trailers": True,
        }
    )
    await send({"type": "http.response.trailers", "headers": [(b"x-count", b"2")]})


async def hint_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Sends an early hint, then the response."""
    await send(
        {"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload; as=style"]}
    )
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"page"})


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_trailers_reach_a_client_that_takes_them(nursery, transport):
    """With TE: trailers, the body is chunked and the trailer fields follow it; the
    connection carries the next request."""
    stream, _ = await served_connection(
        nursery, trailer_app, ServerState(Config()), transport=transport
    )
    client = Client(stream)
    for _ in range(2):
        heads, body, fields = await client.request([(b"te", b"trailers")])
        assert heads[-1].status_code == 200
        assert (b"transfer-encoding", b"chunked") in list(heads[-1].headers)
        assert body == b"hello world"
        assert fields == [(b"x-checksum", b"abc"), (b"x-count", b"2")]


async def test_trailers_are_dropped_for_a_client_without_te_trailers(nursery):
    """Without TE: trailers, the response is complete without them and the connection
    lives on."""
    stream, _ = await served_connection(nursery, trailer_app, ServerState(Config()))
    client = Client(stream)
    for _ in range(2):
        _, body, fields = await client.request()
        assert body == b"hello world" and fields == []


async def test_app_that_never_sends_its_trailers_ends_the_connection(nursery, caplog):
    """An app that asked for trailers and returns without them left its response
    unfinished: an error is logged and the connection closes without the last chunk."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"x"})

    stream, _ = await served_connection(nursery, app, ServerState(Config()))
    client = Client(stream)
    with pytest.raises(h11.RemoteProtocolError):
        await client.request([(b"te", b"trailers")])
    assert "returned before finishing its response" in caplog.text


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_early_hint_is_a_103_before_the_response(nursery, transport):
    """An early hint goes out as 103 Early Hints with its Link field, before the final
    response."""
    stream, _ = await served_connection(
        nursery, hint_app, ServerState(Config()), transport=transport
    )
    heads, body, _ = await Client(stream).request()
    assert [head.status_code for head in heads] == [103, 200]
    assert list(heads[0].headers) == [(b"link", b"</style.css>; rel=preload; as=style")]
    assert body == b"page"


async def test_no_early_hint_to_an_http_10_client(nursery):
    """An HTTP/1.0 client gets no 1xx response (RFC 9110 section 15.2)."""
    stream, _ = await served_connection(nursery, hint_app, ServerState(Config()))
    heads, body, _ = await Client(stream).request(http_version=b"1.0")
    assert [head.status_code for head in heads] == [200]
    assert body == b"page"


@pytest.mark.parametrize(("version", "offered"), [(b"1.1", True), (b"1.0", False)])
async def test_scope_offers_the_extensions_but_to_http_10(nursery, version, offered):
    """scope["extensions"] names http.response.trailers and http.response.early_hint for
    HTTP/1.1 requests, neither for HTTP/1.0."""
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hint_app(scope, receive, send)

    stream, _ = await served_connection(nursery, app, ServerState(Config()))
    await Client(stream).request(http_version=version)
    extensions = scopes[0]["extensions"]
    assert ("http.response.trailers" in extensions) is offered
    assert ("http.response.early_hint" in extensions) is offered
    if offered:
        assert extensions["http.response.trailers"] == {}


async def test_bad_early_hint_is_the_apps_error_and_gets_a_500(nursery, caplog):
    """An early hint with a link that is not bytes is a protocol error of the app: its
    exception is logged and, nothing else being out, the client gets a 500."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.early_hint", "links": ["</a>; rel=preload"]})

    stream, _ = await served_connection(nursery, app, ServerState(Config()))
    with caplog.at_level(logging.ERROR):
        heads, _, _ = await Client(stream).request()
    assert [head.status_code for head in heads] == [500]
    assert "'links' must be an iterable of byte strings" in caplog.text

"""Tests for trioserve._proto.http1: the server side of an HTTP/1.1 connection without
I/O (request heads in pieces or whole, bodies, keep-alive after a response)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import parser_module
from trioserve._proto import http1
from trioserve._proto.http1 import (
    CONTINUE,
    MAX_DISCARD,
    MAX_PIPELINE_BUFFER,
    BodyEnd,
    Next,
    ServerConnection,
)
from trioserve._proto.validate import Limits, RequestRejected

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
CHUNKED = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
OK = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"ok"}


@pytest.fixture(autouse=True)
def _every_parser(http_parser: str) -> None:
    """Each test runs on each HTTP/1.1 parser (tests/conftest.py's http_parser)."""


def server(**options: object) -> ServerConnection:
    return ServerConnection(parser_module(), Limits(), **options)  # type: ignore[arg-type]


def respond(connection: ServerConnection) -> bool:
    """Answer the current request with a small 200; whether the response keeps the
    connection."""
    response = connection.response
    response.on_send(OK)
    response.on_send(BODY)
    return response.keep_alive


def test_plain_request_then_the_next_pipelined_one() -> None:
    """A plain head is parsed at once with its end of message; after a kept-alive
    response the parser holds the next request the client already sent."""
    connection = server()
    request = connection.request_head(GET + GET.replace(b"/a", b"/b"), 0)
    assert request.target == b"/a" and connection.body_done
    assert connection.upgrade_bytes is None
    assert connection.next_exchange(respond(connection), True) is Next.REQUEST
    assert connection.request_bytes_held
    pending = connection.parser.trailing_data[0]
    assert connection.request_head(pending, len(pending)).target == b"/b"


def test_plain_head_is_split_without_the_parser() -> None:
    """A plain head is split here: the parser never sees it and holds only what came
    after it, whether the bytes were just read or already in the parser."""
    second = GET.replace(b"/a", b"/b")
    connection = server()
    request = connection.request_head(GET + second, 0)
    assert type(request) is http1.Request
    assert (request.method, request.target, request.http_version) == (b"GET", b"/a", b"1.1")
    assert request.headers == connection.request_headers == [(b"host", b"x")]
    assert connection.parser.trailing_data == (second, False)
    assert connection.next_exchange(respond(connection), True) is Next.REQUEST
    connection.receive_data(b"")  # the client closes after its second request
    pending = connection.parser.trailing_data[0]
    request = connection.request_head(pending, len(pending))
    assert type(request) is http1.Request and request.target == b"/b"
    assert connection.parser.trailing_data == (b"", True)


def test_parser_kept_after_a_split_request() -> None:
    """After a request split from a plain head, the parser (which saw none of it) serves
    the next one as it is: no fresh parser per request; Connection: close still closes."""
    connection = server()
    connection.request_head(GET + GET, 0)
    parser = connection.parser
    assert connection.next_exchange(respond(connection), True) is Next.REQUEST
    assert connection.parser is parser
    assert parser.trailing_data[0] == GET
    closing = server()
    closing.request_head(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), 0)
    assert closing.next_exchange(respond(closing), True) is Next.CLOSE


def test_split_head_with_classes_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Request and Response cannot be made by object.__new__ (classes compiled by
    mypyc), the split head calls the classes: the same request and response."""
    from trioserve._proto import http

    monkeypatch.setattr(http1, "_REQUEST_BY_NEW", False)
    monkeypatch.setattr(http, "_MADE_BY_NEW", False)
    connection = server()
    request = connection.request_head(GET, 0)
    assert type(request) is http1.Request
    assert (request.method, request.target, request.http_version) == (b"GET", b"/a", b"1.1")
    assert request.headers == [(b"host", b"x")]
    assert type(connection.response) is http.Response
    assert respond(connection)


def test_nothing_held_only_while_the_parser_is_idle_and_empty() -> None:
    """``nothing_held`` (the edge then skips trailing_data and next_exchange) is True only
    after a plain head with nothing after it, and False as soon as bytes reach the
    parser, or a request goes through it."""
    connection = server()
    assert not connection.nothing_held
    connection.request_head(GET, 0)
    assert connection.nothing_held
    assert connection.parser.trailing_data == (b"", False)
    connection.receive_data(b"GET")  # the next request, arriving while the app works
    assert not connection.nothing_held
    assert connection.next_exchange(respond(connection), True) is Next.REQUEST
    pending = connection.parser.trailing_data[0] + b" /b HTTP/1.1\r\nHost: x\r\n\r\n"
    connection.request_head(pending, 3)
    assert not connection.nothing_held  # (bytes were in the parser: a fresh one)
    connection.request_head(GET + GET, 0)
    assert not connection.nothing_held  # (the second request waits in the parser)
    connection.request_head(POST, 0)
    assert not connection.nothing_held  # (a body: the parser has the request)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",  # a target byte above 0x7e
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",  # HTTP/1.1 without Host
    ],
)
def test_plain_head_the_parser_must_refuse_goes_to_it(head: bytes) -> None:
    """A plain head that h11 refuses is not split but parsed, and refused with 400."""
    with pytest.raises(RequestRejected) as caught:
        server().request_head(head, 0)
    assert caught.value.status == 400


def test_head_in_pieces_after_empty_lines() -> None:
    """Empty lines before a request are dropped; a head in pieces is None until whole."""
    connection = server()
    assert connection.request_head(b"\r\n\r\n", 0) is None
    assert not connection.head_started
    assert connection.more_head(b"GET /a HT") is None
    assert connection.head_started
    assert connection.more_head(b"TP/1.1\r\nHost: x\r\n") is None
    request = connection.more_head(b"\r\n")
    assert request.target == b"/a" and connection.body_done
    assert not connection.head_started


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 5000, 414),
        (b"GET / HTTP/1.1\r\nX: " + b"v" * 9000, 431),
        (b"\x16\x03\x01\x00", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    ],
)
def test_bad_head_is_refused_with_its_status(data: bytes, status: int) -> None:
    """A head that breaks a limit or a rule is refused as soon as the bytes show it."""
    with pytest.raises(RequestRejected) as caught:
        server().request_head(data, 0)
    assert caught.value.status == status


def test_request_with_a_body_reads_it_in_messages() -> None:
    """A Content-Length body: None until bytes come, then one message per piece."""
    connection = server()
    request = connection.request_head(POST + b"he", 0)
    assert request.method == b"POST" and not connection.body_done
    assert connection.body_received == 2
    assert connection.body_message() == {"type": "http.request", "body": b"he", "more_body": True}
    assert connection.body_message() is None
    connection.feed_body(b"llo")
    assert connection.body_received == 5
    assert connection.body_message() == {
        "type": "http.request",
        "body": b"llo",
        "more_body": True,
    }
    assert connection.body_message() == {"type": "http.request", "body": b"", "more_body": False}


def test_bad_chunk_framing_is_refused_as_it_arrives() -> None:
    """A chunked body's framing is checked before h11 sees it."""
    connection = server()
    connection.request_head(CHUNKED, 0)
    with pytest.raises(RequestRejected) as caught:
        connection.feed_body(b"zz\r\n")
    assert caught.value.status == 400


def test_client_leaving_mid_body() -> None:
    """An end of input before the body is whole is the client leaving."""
    connection = server()
    connection.request_head(POST, 0)
    connection.feed_body(b"")
    assert connection.body_message() is BodyEnd.LEFT


def test_expect_100_continue() -> None:
    """A client sending Expect: 100-continue waits for CONTINUE."""
    connection = server()
    connection.request_head(POST.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"), 0)
    assert connection.expects_continue
    assert CONTINUE.startswith(b"HTTP/1.1 100 ")


def test_unread_body_is_dropped_before_the_next_request() -> None:
    """A body the app left unread is dropped, then the connection carries on."""
    connection = server()
    connection.request_head(POST, 0)
    keep = respond(connection)
    assert connection.next_exchange(keep, True) is Next.DISCARD_BODY
    assert connection.drop_body()
    connection.feed_body(b"hello" + GET)
    assert not connection.drop_body()
    assert connection.next_exchange(keep, False) is Next.REQUEST
    assert connection.request_head(GET, len(GET)).target == b"/a"


def test_too_large_unread_body_closes() -> None:
    """Past MAX_DISCARD bytes of unread body, closing is cheaper."""
    connection = server()
    size = MAX_DISCARD + 10
    connection.request_head(POST.replace(b": 5", b": %d" % size), 0)
    keep = respond(connection)
    assert connection.next_exchange(keep, True) is Next.DISCARD_BODY
    connection.feed_body(b"x" * size)
    assert not connection.drop_body()
    assert connection.next_exchange(keep, False) is Next.CLOSE


@pytest.mark.parametrize(
    ("head", "options", "expected"),
    [
        (GET, {}, Next.REQUEST),
        (GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), {}, Next.CLOSE),
        (GET.replace(b"1.1", b"1.0"), {}, Next.CLOSE),
        (
            GET.replace(b"1.1", b"1.0").replace(b"x\r\n", b"x\r\nConnection: keep-alive\r\n"),
            {},
            Next.REQUEST,
        ),
        (GET, {"allow_keep_alive": False}, Next.CLOSE),
    ],
)
def test_keep_alive_after_a_response(
    head: bytes, options: dict[str, object], expected: Next
) -> None:
    """The client's Connection header, its HTTP version and the settings decide."""
    connection = server(**options)
    connection.request_head(head, 0)
    assert connection.next_exchange(respond(connection), True) is expected


def test_broken_exchange_closes() -> None:
    """An exchange that broke (keep_alive False from the edge) never carries on."""
    connection = server()
    connection.request_head(GET, 0)
    assert connection.next_exchange(False, False) is Next.CLOSE


def test_pipelined_bytes_are_kept_up_to_a_bound() -> None:
    """Bytes of next requests are kept while a response is under way, up to a bound."""
    connection = server()
    connection.request_head(GET, 0)
    connection.receive_data(GET * (MAX_PIPELINE_BUFFER // len(GET)))
    assert not connection.pipeline_full
    connection.receive_data(GET)
    assert connection.pipeline_full


def test_upgrade_request_keeps_its_bytes() -> None:
    """A request that may ask for an upgrade keeps its raw bytes for the replay."""
    head = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    connection = server()
    connection.request_head(head, 0)
    assert connection.upgrade_bytes == head


def test_proto_http1_does_not_import_trio() -> None:
    """The sans-IO module loads with only the stdlib, h11 and the rest of _proto: trio is
    never imported."""
    code = f"""
import importlib, os, sys, types
# The package without its __init__ (which imports trio), as in test_http.py.
package = types.ModuleType("trioserve")
package.__path__ = [os.path.dirname(os.path.dirname({http1.__file__!r}))]
sys.modules["trioserve"] = package
module = importlib.import_module("trioserve._proto.http1")
assert module.ServerConnection is not None
loaded = sorted(
    name for name in sys.modules
    if name.split(".")[0] == "trio"
    or (name.startswith("trioserve.") and not name.startswith("trioserve._proto"))
)
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr

"""Tests for trioserve._proto.llhttp: httptools behind the part of h11's interface the
server uses, one request per parser, framed by trioserve's own rules."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("httptools", reason="--http httptools needs the speed extra (trioserve[speed])")

from trioserve._proto import llhttp

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n"


def parse(data: bytes, *, close: bool = False) -> tuple[list[Any], llhttp.Connection]:
    """Every event of one request in ``data`` (up to NEED_DATA or PAUSED)."""
    connection = llhttp.Connection(llhttp.SERVER, max_incomplete_event_size=16384)
    connection.receive_data(data)
    if close:
        connection.receive_data(b"")
    events = []
    while True:
        event = connection.next_event()
        events.append(event)
        if event is llhttp.NEED_DATA or event is llhttp.PAUSED:
            return events, connection


def body(events: list[Any]) -> bytes:
    return b"".join(event.data for event in events if type(event) is llhttp.Data)


def test_one_request_per_parser_the_rest_kept_as_trailing_data() -> None:
    """Two pipelined requests: the first is parsed whole, the second stays unparsed."""
    events, connection = parse(GET + GET)
    request, end, paused = events
    assert (request.method, request.target, request.http_version) == (b"GET", b"/a?b=1", b"1.1")
    assert request.headers == [(b"host", b"x")]
    assert type(end) is llhttp.EndOfMessage
    assert paused is llhttp.PAUSED
    assert connection.their_state is llhttp.DONE
    assert connection.trailing_data == (GET, False)


def test_content_length_body_ends_where_its_length_says() -> None:
    """A body framed by Content-Length is given whole; what follows is the next request."""
    events, connection = parse(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + GET
    )
    assert body(events) == b"hello"
    assert type(events[-2]) is llhttp.EndOfMessage
    assert connection.trailing_data[0] == GET


def test_chunked_body_is_decoded_and_ends_at_its_last_chunk() -> None:
    """A chunked body comes out without its framing; the next request is left alone."""
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    events, connection = parse(chunked + b"3\r\nabc\r\n2;e=1\r\nde\r\n0\r\nT: v\r\n\r\n" + GET)
    assert body(events) == b"abcde"
    assert connection.trailing_data[0] == GET


def test_body_in_pieces() -> None:
    """Body bytes arriving in pieces come out as they arrive, then the end of message."""
    connection = llhttp.Connection()
    connection.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    assert type(connection.next_event()) is llhttp.Request
    assert connection.next_event().data == b"ab"
    assert connection.next_event() is llhttp.NEED_DATA
    connection.receive_data(b"cd")
    assert connection.next_event().data == b"cd"
    assert type(connection.next_event()) is llhttp.EndOfMessage


def test_http11_without_host_is_refused() -> None:
    """llhttp takes an HTTP/1.1 request without Host; h11 and this parser refuse it."""
    with pytest.raises(llhttp.RemoteProtocolError, match="Host"):
        parse(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
    events, _ = parse(b"GET / HTTP/1.0\r\n\r\n")
    assert events[0].http_version == b"1.0"


def test_extension_method_keeps_its_name_and_its_chunked_body() -> None:
    """A method llhttp does not know (any token is allowed) is parsed, body and all."""
    head = b"FROB /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    events, _ = parse(head + b"2\r\nhi\r\n0\r\n\r\n")
    assert events[0].method == b"FROB"
    assert body(events) == b"hi"


def test_method_that_is_not_a_token_is_refused() -> None:
    """An unknown method is parsed only if it is a token."""
    with pytest.raises(llhttp.RemoteProtocolError):
        parse(b"G(E)T / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_repeated_equal_content_length_is_taken() -> None:
    """Content-Length twice with one value: llhttp refuses it, RFC 9110 allows it."""
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n"
    events, connection = parse(head + b"abc" + GET)
    assert events[0].headers == [
        (b"host", b"x"),
        (b"content-length", b"3"),
        (b"content-length", b"3"),
    ]
    assert body(events) == b"abc"
    assert connection.trailing_data[0] == GET
    events, _ = parse(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
    )
    assert type(events[1]) is llhttp.EndOfMessage


def test_header_values_lose_surrounding_whitespace() -> None:
    """Whitespace around a field value is not part of it (llhttp keeps what trails)."""
    events, _ = parse(b"GET / HTTP/1.1\r\nHost:  x \t\r\nX-A:\t\r\n\r\n")
    assert events[0].headers == [(b"host", b"x"), (b"x-a", b"")]


def test_expect_100_continue_until_the_body_comes() -> None:
    """The client waits for 100 Continue until body bytes arrive."""
    connection = llhttp.Connection()
    connection.receive_data(
        b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
    )
    connection.next_event()
    assert connection.they_are_waiting_for_100_continue
    connection.receive_data(b"z")
    assert connection.next_event().data == b"z"
    assert not connection.they_are_waiting_for_100_continue


def test_client_gone_mid_body() -> None:
    """The client closing mid-body is a protocol error, and trailing_data says it closed."""
    connection = llhttp.Connection()
    connection.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab")
    connection.next_event()
    assert connection.next_event().data == b"ab"
    connection.receive_data(b"")
    with pytest.raises(llhttp.RemoteProtocolError):
        connection.next_event()
    assert connection.trailing_data == (b"", True)


def test_upgrade_request_is_an_ordinary_request() -> None:
    """A request asking for an upgrade parses like any other; the bytes after it stay."""
    head = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    events, connection = parse(head + b"\x81\x00")
    assert events[0].target == b"/ws"
    assert type(events[1]) is llhttp.EndOfMessage
    assert connection.trailing_data[0] == b"\x81\x00"


def test_incomplete_head_needs_data_until_too_long() -> None:
    """A head without its blank line waits for more, up to the size bound."""
    connection = llhttp.Connection(max_incomplete_event_size=64)
    connection.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert connection.next_event() is llhttp.NEED_DATA
    connection.receive_data(b"X: " + b"a" * 64)
    with pytest.raises(llhttp.RemoteProtocolError):
        connection.next_event()

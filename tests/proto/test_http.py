"""Tests for trioserve._proto.http: request targets, the ASGI scope, and responses: checks
and serialization."""

from __future__ import annotations

import email.utils
import itertools
import subprocess
import sys
import time
from http import HTTPStatus
from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserve._mypyc import compiled_modules
from trioserve._proto import http
from trioserve._proto.http import (
    ASGIProtocolError,
    Response,
    ResponsePhase,
    client_keep_alive,
    decode_path,
    error_response,
    http_scope,
    split_target,
)

START = {"type": "http.response.start", "status": 200, "headers": []}


def body(data: bytes | bytearray | memoryview = b"", *, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def parse(wire: bytes, method: bytes = b"GET", *, eof: bool = False) -> tuple[h11.Response, bytes]:
    """What a real HTTP/1.1 client makes of ``wire``: the response head and the body.

    ``eof``: the connection closes after ``wire`` (the end of a close-delimited body).
    """
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"example.com")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    if eof:
        client.receive_data(b"")
    head = client.next_event()
    assert isinstance(head, h11.Response)
    data = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            data += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            return head, data


def header_values(response: h11.Response, name: bytes) -> list[bytes]:
    return [value for key, value in response.headers if key == name]


def send_all(response: Response, messages: list[dict[str, Any]]) -> bytes:
    """The bytes a Response serializes for ``messages``, in order."""
    return b"".join(response.on_send(message) for message in messages)


def run_app(messages: list[dict[str, Any]], *, head: bool = False, close: bool = False) -> bytes:
    """Feed ``messages`` to a Response for a GET (or HEAD) and return its bytes."""
    return send_all(Response(head=head, close=close), messages)


DATE = b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
HEAD_TAIL = DATE + b"server: trioserve\r\n"


@pytest.fixture
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """Responses carry DATE, so that their exact bytes can be compared."""
    # The second of DATE, as the clock every response reads, and the lines of it.
    monkeypatch.setattr(http, "_time", lambda: 784111777.5)
    monkeypatch.setattr(http, "_date_cache", (784111777, DATE[6:-2], DATE, HEAD_TAIL))


# -- split_target / decode_path ---------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "raw_path", "query"),
    [
        (b"/", b"/", b""),
        (b"/a/b/", b"/a/b/", b""),
        (b"/search?q=trio&page=2", b"/search", b"q=trio&page=2"),
        (b"/a?b?c", b"/a", b"b?c"),
        (b"/empty?", b"/empty", b""),
        (b"*", b"*", b""),
    ],
)
def test_split_target_origin_form(target: bytes, raw_path: bytes, query: bytes) -> None:
    """An origin-form target splits at the first '?' into raw path and query string."""
    assert split_target(target) == (raw_path, query)


@pytest.mark.parametrize(
    ("target", "raw_path", "query"),
    [
        (b"http://example.com/a/b?x=1", b"/a/b", b"x=1"),
        (b"https://example.com:8443/x", b"/x", b""),
        (b"http://example.com", b"/", b""),
        (b"http://example.com/", b"/", b""),
    ],
)
def test_split_target_absolute_form_keeps_only_the_path(
    target: bytes, raw_path: bytes, query: bytes
) -> None:
    """An absolute-form target (as sent to proxies) loses its scheme and authority."""
    assert split_target(target) == (raw_path, query)


@pytest.mark.parametrize(
    ("target", "raw_path", "query"),
    [
        (b"http://example.com?q=1", b"/", b"q=1"),
        (b"http://example.com?next=/admin", b"/", b"next=/admin"),
    ],
)
def test_split_target_absolute_form_with_empty_path_keeps_the_query(
    target: bytes, raw_path: bytes, query: bytes
) -> None:
    """'http://host?q' has path '/' and query 'q' (RFC 3986 allows an empty path)."""
    assert split_target(target) == (raw_path, query)


@pytest.mark.parametrize(
    ("raw_path", "path"),
    [
        (b"/", "/"),
        (b"/plain/path", "/plain/path"),
        (b"/caf%C3%A9", "/café"),
        (b"/caf%c3%a9", "/café"),
        (b"/a%20b", "/a b"),
        (b"/100%25", "/100%"),
    ],
)
def test_decode_path_percent_decodes_utf8(raw_path: bytes, path: str) -> None:
    """Percent-escapes are decoded and the bytes read as UTF-8."""
    assert decode_path(raw_path) == path


def test_encoded_slash_is_decoded_in_path_but_kept_in_raw_path() -> None:
    """'%2F' becomes '/' in ``path`` while ``raw_path`` keeps the escape."""
    raw_path, _ = split_target(b"/files/a%2Fb?x=1")
    assert raw_path == b"/files/a%2Fb"
    assert decode_path(raw_path) == "/files/a/b"


@pytest.mark.parametrize(
    ("raw_path", "path"),
    [
        (b"/%FF", "/\ufffd"),
        (b"/caf%C3", "/caf\ufffd"),
        (b"/\xff", "/\ufffd"),
    ],
)
def test_decode_path_replaces_invalid_utf8(raw_path: bytes, path: str) -> None:
    """Bytes that are not UTF-8, escaped or not, become U+FFFD instead of raising."""
    assert decode_path(raw_path) == path


_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "?#%")
_piece = st.one_of(
    st.sampled_from(_SAFE),
    st.integers(0, 255).map(lambda byte: f"%{byte:02X}"),
)
_text = st.lists(_piece).map("".join)


@given(path=_text, query=st.one_of(st.none(), _text.filter(bool)), extra_marks=st.booleans())
def test_split_target_reassembles_origin_form(
    path: str, query: str | None, extra_marks: bool
) -> None:
    """raw_path + '?' + query gives back any origin-form target, escapes untouched."""
    if query is not None and extra_marks:
        query = "?" + query  # a '?' inside the query belongs to the query
    target = ("/" + path + ("" if query is None else "?" + query)).encode("ascii")
    raw_path, query_string = split_target(target)
    assert b"?" not in raw_path
    assert raw_path + (b"?" + query_string if query_string else b"") == target


# -- http_scope -------------------------------------------------------------------------


def make_request(target: bytes = b"/caf%C3%A9/a%2Fb?x=1&y=%20", **kwargs: Any) -> h11.Request:
    kwargs.setdefault("headers", [(b"Host", b"example.com"), (b"X-Custom-Thing", b"Some Value")])
    return h11.Request(method=kwargs.pop("method", b"GET"), target=target, **kwargs)


def scope_for(request: h11.Request, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "scheme": "http",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "root_path": "",
        "state": None,
    }
    options.update(kwargs)
    return http_scope(request, **options)


def test_http_scope_has_every_asgi_key() -> None:
    """The scope carries every key of the ASGI HTTP scope, with the right types."""
    scope = scope_for(make_request(), scheme="https", root_path="/mounted")
    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        # path includes root_path, as ASGI says (and uvicorn >= 0.26 serves it).
        "path": "/mounted/café/a/b",
        "raw_path": b"/mounted/caf%C3%A9/a%2Fb",
        "query_string": b"x=1&y=%20",
        "root_path": "/mounted",
        "headers": [(b"host", b"example.com"), (b"x-custom-thing", b"Some Value")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }


def test_http_scope_headers_are_lowercased_bytes_pairs() -> None:
    """Header names are lowercase bytes, values bytes as sent, in order, repeats kept."""
    request = make_request(
        headers=[(b"Host", b"h"), (b"Accept", b"A/B"), (b"ACCEPT", b"c/d"), (b"Cookie", b"X=1")]
    )
    headers = scope_for(request)["headers"]
    assert headers == [
        (b"host", b"h"),
        (b"accept", b"A/B"),
        (b"accept", b"c/d"),
        (b"cookie", b"X=1"),
    ]
    assert all(type(name) is bytes and type(value) is bytes for name, value in headers)


def test_http_scope_method_and_http_version() -> None:
    """method and http_version are text, as the request gave them."""
    scope = scope_for(make_request(b"/", method=b"POST", http_version=b"1.0", headers=[]))
    assert (scope["method"], scope["http_version"]) == ("POST", "1.0")


def test_http_scope_absolute_form_target() -> None:
    """An absolute-form target gives the path and query of the URL."""
    scope = scope_for(make_request(b"http://example.com/p%C3%A5?q=1"))
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/på", b"/p%C3%A5", b"q=1")


def test_http_scope_without_client_or_server() -> None:
    """client and server may be None (for instance on a unix socket)."""
    scope = scope_for(make_request(), client=None, server=None)
    assert scope["client"] is None
    assert scope["server"] is None


def test_http_scope_without_lifespan_state_has_no_state_key() -> None:
    """Without lifespan state the scope has no 'state' key."""
    assert "state" not in scope_for(make_request())


def test_http_scope_state_is_a_shallow_copy() -> None:
    """Each request's state is a shallow copy: new keys stay local, values are shared."""
    pool: list[str] = []
    original: dict[str, Any] = {"pool": pool, "name": "db"}
    scope = scope_for(make_request(), state=original)
    assert scope["state"] == original
    assert scope["state"] is not original
    scope["state"]["name"] = "changed"
    scope["state"]["new"] = 1
    assert original == {"pool": pool, "name": "db"}
    assert scope["state"]["pool"] is pool


# -- the Date header ---------------------------------------------------------------------


def test_date_header_is_an_http_date_of_now() -> None:
    """A response's Date header is an IMF-fixdate in GMT within a couple of seconds of now."""
    response = Response()
    response.on_send(START)
    head = response.on_send(body(b""))
    dates = [line for line in head.split(b"\r\n") if line.lower().startswith(b"date: ")]
    assert len(dates) == 1
    value = dates[0][len(b"date: ") :].decode("ascii")
    assert value.endswith(" GMT")
    when = email.utils.parsedate_to_datetime(value)
    assert abs(when.timestamp() - time.time()) < 3


# -- Response: the happy paths ----------------------------------------------------------


def test_response_start_is_held_until_the_first_body_message(fixed_date: None) -> None:
    """http.response.start alone gives no bytes; the first body message sends head and body."""
    response = Response()
    assert not response.started
    assert response.on_send({**START, "headers": [(b"content-type", b"text/plain")]}) == b""
    assert response.started
    assert not response.head_sent
    assert not response.done
    assert response.on_send(body(b"Hello, world!")) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
        + HEAD_TAIL
        + b"content-length: 13\r\n\r\nHello, world!"
    )
    assert response.head_sent
    assert response.done
    assert response.keep_alive
    assert response.body_bytes == 13


def test_app_content_length_is_sent_and_counted(fixed_date: None) -> None:
    """The app's own Content-Length is sent once, and the body bytes are counted against it."""
    wire = run_app(
        [
            {**START, "headers": [(b"Content-Length", b"5"), (b"X-A", b"1")]},
            body(b"hel", more=True),
            body(b"lo"),
        ]
    )
    assert wire == b"HTTP/1.1 200 OK\r\nX-A: 1\r\n" + HEAD_TAIL + b"content-length: 5\r\n\r\nhello"


def test_response_on_the_wire() -> None:
    """A real client reads status, reason, the app's headers plus date and server, and body."""
    wire = run_app(
        [
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
            },
            body(b"hello"),
        ]
    )
    head, data = parse(wire)
    assert head.status_code == 201
    assert head.reason == b"Created"
    assert header_values(head, b"content-type") == [b"text/plain"]
    assert header_values(head, b"content-length") == [b"5"]
    assert header_values(head, b"server") == [b"trioserve"]
    [date] = header_values(head, b"date")
    assert abs(email.utils.parsedate_to_datetime(date.decode()).timestamp() - time.time()) < 3
    assert header_values(head, b"connection") == []
    assert data == b"hello"


def test_streamed_response_is_chunked(fixed_date: None) -> None:
    """Without a length, each body message is a chunk and the last one ends with 0 CRLF CRLF."""
    response = Response()
    assert response.on_send(START) == b""
    assert response.on_send(body(b"one,", more=True)) == (
        b"HTTP/1.1 200 OK\r\n" + HEAD_TAIL + b"Transfer-Encoding: chunked\r\n\r\n4\r\none,\r\n"
    )
    assert response.on_send(body(b"", more=True)) == b""
    assert response.on_send(body(b"0123456789abcdef", more=True)) == (b"10\r\n0123456789abcdef\r\n")
    assert not response.done
    assert response.on_send(body(b"end")) == b"3\r\nend\r\n0\r\n\r\n"
    assert response.done
    assert response.keep_alive


def test_streamed_response_on_the_wire() -> None:
    """A streamed response of bytes, bytearray and memoryview reaches a client whole."""
    wire = run_app(
        [
            START,
            body(b"one,", more=True),
            body(bytearray(b"two,"), more=True),
            body(memoryview(b"three")),
        ]
    )
    head, data = parse(wire)
    assert header_values(head, b"transfer-encoding") == [b"chunked"]
    assert data == b"one,two,three"


def test_body_key_may_be_omitted() -> None:
    """A body message without 'body' or 'more_body' ends an empty response."""
    head, data = parse(run_app([START, {"type": "http.response.body"}]))
    assert head.status_code == 200
    assert header_values(head, b"content-length") == [b"0"]
    assert data == b""


def test_head_response_keeps_content_length_and_drops_body(fixed_date: None) -> None:
    """For HEAD the app's body is dropped and its content-length kept."""
    response = Response(head=True)
    wire = send_all(response, [{**START, "headers": [(b"content-length", b"5")]}, body(b"hello")])
    assert wire == b"HTTP/1.1 200 OK\r\n" + HEAD_TAIL + b"content-length: 5\r\n\r\n"
    assert response.keep_alive
    head, data = parse(wire, method=b"HEAD")
    assert header_values(head, b"content-length") == [b"5"]
    assert data == b""


def test_head_response_has_the_framing_of_a_get(fixed_date: None) -> None:
    """HEAD gets the framing headers a GET would get, and never a body or its last chunk."""
    whole = send_all(Response(head=True), [START, body(b"hello")])
    assert whole == b"HTTP/1.1 200 OK\r\n" + HEAD_TAIL + b"content-length: 5\r\n\r\n"
    response = Response(head=True)
    streamed = send_all(response, [START, body(b"a", more=True), body(b"b")])
    assert streamed == b"HTTP/1.1 200 OK\r\n" + HEAD_TAIL + b"Transfer-Encoding: chunked\r\n\r\n"
    assert response.keep_alive


@pytest.mark.parametrize(("status", "reason"), [(204, b"No Content"), (304, b"Not Modified")])
def test_no_body_status_sends_no_body(fixed_date: None, status: int, reason: bytes) -> None:
    """204 and 304 carry no body and no added length, whatever the app sends."""
    response = Response()
    wire = send_all(response, [{**START, "status": status}, body(b"dropped")])
    assert wire == b"HTTP/1.1 %d %s\r\n" % (status, reason) + HEAD_TAIL + b"\r\n"
    assert response.keep_alive
    assert response.body_bytes == 0


def test_close_adds_connection_close(fixed_date: None) -> None:
    """close=True adds 'Connection: close', and the connection is not to be reused."""
    response = Response(close=True)
    wire = send_all(response, [START, body(b"bye")])
    assert wire == (
        b"HTTP/1.1 200 OK\r\n" + HEAD_TAIL + b"content-length: 3\r\nConnection: close\r\n\r\nbye"
    )
    assert response.done
    assert not response.keep_alive


def test_client_asking_close_gets_connection_close() -> None:
    """A client that asked to close (keep_alive=False) is told so, once, and not kept."""
    response = Response(keep_alive=False)
    wire = send_all(response, [{**START, "headers": [(b"connection", b"keep-alive")]}, body()])
    head, _ = parse(wire)
    assert header_values(head, b"connection") == [b"close"]
    assert not response.keep_alive


@pytest.mark.parametrize(
    ("keep_alive", "close", "headers"),
    [
        (False, False, []),
        (False, False, [(b"content-length", b"3")]),
        (True, True, [(b"x-a", b"1")]),
    ],
)
def test_common_answer_on_a_closing_connection_is_whole_and_says_close(
    fixed_date: None, keep_alive: bool, close: bool, headers: list[tuple[bytes, bytes]]
) -> None:
    """The common answer (one body, plain headers) on a connection that ends after it
    has the app's lines, Date and Server, its length and Connection: close, in order."""
    response = Response(keep_alive=keep_alive, close=close)
    wire = send_all(response, [{**START, "headers": headers}, body(b"bye")])
    lines = b"".join(b"%s: %s\r\n" % pair for pair in headers if pair[0] != b"content-length")
    assert wire == (
        b"HTTP/1.1 200 OK\r\n"
        + lines
        + HEAD_TAIL
        + b"content-length: 3\r\nConnection: close\r\n\r\nbye"
    )
    assert response.done
    assert response.body_bytes == 3
    assert not response.keep_alive


@pytest.mark.parametrize("value", [b"close", b"Close", b"upgrade, CLOSE"])
def test_app_connection_close_closes_the_connection(value: bytes) -> None:
    """The app's own Connection: close is sent once and ends the connection after it."""
    response = Response()
    wire = send_all(response, [{**START, "headers": [(b"Connection", value)]}, body(b"x")])
    head, data = parse(wire)
    [connection] = header_values(head, b"connection")
    assert b"close" in connection.split(b", ")
    assert data == b"x"
    assert response.done
    assert not response.keep_alive


def test_app_connection_tokens_are_kept_on_a_kept_connection() -> None:
    """Other Connection tokens of the app go out as they are when the connection stays."""
    response = Response()
    wire = send_all(response, [{**START, "headers": [(b"Connection", b"x-hop")]}, body()])
    head, _ = parse(wire)
    assert header_values(head, b"connection") == [b"x-hop"]
    assert response.keep_alive


def test_http10_streamed_response_is_close_delimited(fixed_date: None) -> None:
    """HTTP/1.0 and no length: no framing at all, Connection: close, and the close ends it."""
    response = Response(http_10=True, keep_alive=True)
    wire = send_all(response, [START, body(b"a", more=True), body(b"", more=True), body(b"b")])
    assert wire == b"HTTP/1.1 200 OK\r\n" + HEAD_TAIL + b"Connection: close\r\n\r\nab"
    assert response.done
    assert not response.keep_alive
    _, data = parse(wire, eof=True)
    assert data == b"ab"


def test_http10_app_chunked_is_close_delimited() -> None:
    """An app's Transfer-Encoding: chunked is not sent to HTTP/1.0: the close ends the body."""
    response = Response(http_10=True, keep_alive=True)
    headers = [(b"transfer-encoding", b"chunked"), (b"content-length", b"2")]
    wire = send_all(response, [{**START, "headers": headers}, body(b"ab", more=True), body()])
    assert b"transfer-encoding" not in wire.lower()
    assert b"content-length" not in wire.lower()
    assert wire.endswith(b"Connection: close\r\n\r\nab")
    assert not response.keep_alive


def test_http10_keep_alive_with_known_length(fixed_date: None) -> None:
    """HTTP/1.0 asking keep-alive, length known: Connection: keep-alive, connection kept."""
    response = Response(http_10=True, keep_alive=True)
    wire = send_all(response, [START, body(b"hi")])
    assert wire == (
        b"HTTP/1.1 200 OK\r\n"
        + HEAD_TAIL
        + b"content-length: 2\r\nConnection: keep-alive\r\n\r\nhi"
    )
    assert response.keep_alive


def test_http10_without_keep_alive_closes() -> None:
    """HTTP/1.0 without keep-alive gets Connection: close even with a known length."""
    response = Response(http_10=True, keep_alive=False)
    head, data = parse(send_all(response, [START, body(b"hi")]))
    assert header_values(head, b"connection") == [b"close"]
    assert data == b"hi"
    assert not response.keep_alive


def test_app_server_and_date_headers_are_not_duplicated() -> None:
    """An app's own Server and Date headers (any case) replace the defaults."""
    date = b"Sun, 06 Nov 1994 08:49:37 GMT"
    wire = run_app([{**START, "headers": [(b"Server", b"custom/1.0"), (b"DATE", date)]}, body()])
    head, _ = parse(wire)
    assert header_values(head, b"server") == [b"custom/1.0"]
    assert header_values(head, b"date") == [date]


def test_default_headers_unless_the_app_sets_them() -> None:
    """Default headers are added, except those the app sets itself (any case)."""
    response = Response(
        server_header=False, default_headers=[(b"x-a", b"default"), (b"x-b", b"default")]
    )
    head, _ = parse(send_all(response, [{**START, "headers": [(b"X-B", b"app")]}, body()]))
    assert header_values(head, b"x-a") == [b"default"]
    assert header_values(head, b"x-b") == [b"app"]
    assert header_values(head, b"server") == []


def test_unknown_status_has_an_empty_reason() -> None:
    """A status code without a standard phrase goes out with an empty reason."""
    wire = run_app([{**START, "status": 599}, body()])
    assert wire.startswith(b"HTTP/1.1 599 \r\n")
    head, _ = parse(wire)
    assert (head.status_code, head.reason) == (599, b"")


@given(
    pieces=st.lists(st.binary(max_size=20), max_size=6),
    declare_length=st.booleans(),
    head=st.booleans(),
)
def test_any_body_split_reaches_a_client_whole(
    pieces: list[bytes], declare_length: bool, head: bool
) -> None:
    """However the body is split into messages, a real client reads exactly that body."""
    whole = b"".join(pieces)
    headers = [(b"content-length", str(len(whole)).encode())] if declare_length else []
    messages = [{**START, "headers": headers}]
    messages += [body(piece, more=True) for piece in pieces] + [body()]
    response = Response(head=head)
    wire = send_all(response, messages)
    _, data = parse(wire, method=b"HEAD" if head else b"GET")
    assert data == (b"" if head else whole)
    assert response.keep_alive
    assert response.body_bytes == (0 if head else len(whole))


# -- Response: framing errors -----------------------------------------------------------


def test_too_much_data_in_the_first_message_sends_nothing() -> None:
    """A first body message longer than the Content-Length is refused before anything is
    out: the response is back at its start, so the app (or the server) may answer anew."""
    response = Response()
    response.on_send({**START, "headers": [(b"content-length", b"3")]})
    with pytest.raises(ASGIProtocolError, match="longer than its Content-Length"):
        response.on_send(body(b"four"))
    assert not response.started
    assert response.on_send({**START, "status": 500}) == b""
    head, _ = parse(response.on_send(body(b"oops")))
    assert head.status_code == 500


def test_too_much_data_after_the_head_breaks_the_response() -> None:
    """More body than the Content-Length once the head is out: error, and close."""
    response = Response()
    response.on_send({**START, "headers": [(b"content-length", b"3")]})
    assert response.on_send(body(b"ab", more=True)).endswith(b"\r\n\r\nab")
    with pytest.raises(ASGIProtocolError, match="longer than its Content-Length"):
        response.on_send(body(b"cd"))
    assert response.done
    assert response.must_close
    assert not response.keep_alive


def test_too_little_data_closes_the_connection() -> None:
    """A body shorter than its Content-Length is sent, then the connection must close."""
    response = Response()
    response.on_send({**START, "headers": [(b"content-length", b"10")]})
    assert response.on_send(body(b"four", more=True)).endswith(b"four")
    assert response.on_send(body()) == b""
    assert response.done
    assert response.missing == 6
    assert not response.keep_alive


def test_too_little_data_in_one_message_says_connection_close() -> None:
    """When the short body is the only message, the head itself says Connection: close."""
    response = Response()
    wire = send_all(response, [{**START, "headers": [(b"content-length", b"10")]}, body(b"four")])
    assert b"\r\nConnection: close\r\n" in wire
    assert response.missing == 6
    assert not response.keep_alive


def test_transfer_encoding_wins_over_content_length() -> None:
    """With both Transfer-Encoding: chunked and Content-Length, only the former is sent."""
    headers = [(b"Transfer-Encoding", b"Chunked"), (b"Content-Length", b"5")]
    wire = run_app([{**START, "headers": headers}, body(b"hello")])
    assert b"content-length" not in wire.lower()
    assert wire.endswith(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    head, data = parse(wire)
    assert header_values(head, b"transfer-encoding") == [b"chunked"]
    assert data == b"hello"


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ([(b"transfer-encoding", b"gzip")], "Transfer-Encoding b'gzip' is not supported"),
        ([(b"transfer-encoding", b"gzip, chunked")], "Transfer-Encoding b'gzip, chunked'"),
        (
            [(b"transfer-encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
            "more than one Transfer-Encoding header",
        ),
        ([(b"content-length", b"five")], "bad Content-Length b'five'"),
        ([(b"content-length", b"-1")], "bad Content-Length b'-1'"),
        ([(b"content-length", b"1" * 21)], "bad Content-Length"),
        ([(b"content-length", b"1, 2")], "bad Content-Length b'1, 2'"),
        (
            [(b"content-length", b"1"), (b"content-length", b"2")],
            "conflicting Content-Length headers",
        ),
    ],
)
def test_bad_framing_headers_are_refused(headers: list[tuple[bytes, bytes]], error: str) -> None:
    """Only Transfer-Encoding: chunked, once, and one well-formed length are accepted."""
    response = Response()
    with pytest.raises(ASGIProtocolError, match=r"^invalid response header: ") as info:
        response.on_send({**START, "headers": headers})
    assert error in str(info.value)
    assert not response.started


def test_repeated_equal_content_lengths_are_one() -> None:
    """Content-Length given twice with the same value (or as '5, 5') is sent once."""
    headers = [(b"content-length", b"5, 5"), (b"Content-Length", b"5")]
    head, data = parse(run_app([{**START, "headers": headers}, body(b"hello")]))
    assert header_values(head, b"content-length") == [b"5"]
    assert data == b"hello"


@pytest.mark.parametrize(
    "name", [b"bad name", b"", b"colon:", b"caf\xc3\xa9", b"x\r\ny", b"a\x00", b"(x)"]
)
def test_header_name_that_is_not_a_token_is_refused(name: bytes) -> None:
    """A header name must be a token; the error names it, and nothing was started."""
    response = Response()
    with pytest.raises(ASGIProtocolError) as info:
        response.on_send({**START, "headers": [(b"x-ok", b"1"), (name, b"v")]})
    assert str(info.value) == f"invalid response header: illegal header name {name!r}"
    assert not response.started


def test_refused_start_leaves_nothing_behind() -> None:
    """After a refused http.response.start, the next one starts from scratch."""
    response = Response()
    bad = [
        (b"content-length", b"5"),
        (b"connection", b"close"),
        (b"date", b"x"),
        (b"bad name", b""),
    ]
    with pytest.raises(ASGIProtocolError):
        response.on_send({**START, "headers": bad})
    response.on_send(START)
    head, data = parse(send_all(response, [body(b"ab", more=True), body(b"c")]))
    assert header_values(head, b"transfer-encoding") == [b"chunked"]
    assert header_values(head, b"connection") == []
    assert len(header_values(head, b"date")) == 1
    assert data == b"abc"
    assert response.keep_alive


@pytest.mark.parametrize("name", [b"x-custom", b"connection", b"server"])
@pytest.mark.parametrize("value", [b"a\rb", b"a\nb", b"a\x00b", b"ok\r\nX-Injected: 1", b"\n"])
def test_header_value_with_cr_lf_or_nul_is_refused(name: bytes, value: bytes) -> None:
    """A value with CR, LF or NUL could split the response: refused, naming the header."""
    response = Response()
    with pytest.raises(ASGIProtocolError) as info:
        response.on_send({**START, "headers": [(b"x-ok", b"1"), (name, value)]})
    assert str(info.value).startswith(
        f"invalid response header: illegal value {value!r} of {name!r}"
    )
    assert not response.started


def test_header_values_with_spaces_tabs_and_latin1_are_sent() -> None:
    """Inner spaces, tabs and obs-text bytes are legal in a value and sent as they are."""
    value = b"a b\tc \xe9"
    head, _ = parse(run_app([{**START, "headers": [(b"x-v", value)]}, body()]))
    assert header_values(head, b"x-v") == [value]


def test_invalid_default_header_is_refused() -> None:
    """A default header is checked like the app's own."""
    response = Response(default_headers=[(b"x-a", b"1\r\nx-b: 2")])
    response.on_send(START)
    with pytest.raises(ASGIProtocolError, match="invalid response header: illegal value"):
        response.on_send(body())


# -- the header lists already checked (Response._take_headers) -------------------------


class _Bytes(bytes):
    """A bytes subclass, as an app might send (its equality could be its own)."""


@pytest.fixture
def known_heads(monkeypatch: pytest.MonkeyPatch) -> dict[Any, Any]:
    """An empty cache of checked header lists for the test."""
    heads: dict[Any, Any] = {}
    monkeypatch.setattr(http, "_known_heads", heads)
    return heads


def test_an_equal_header_list_is_taken_from_the_known_heads(known_heads: dict[Any, Any]) -> None:
    """A list equal to one checked before (another object) is looked up by its items, not
    checked again: what the first check made of it is what the second response uses."""
    run_app([{**START, "headers": [(b"content-type", b"text/plain")]}, body(b"x")])
    key = ((b"content-type", b"text/plain"),)
    assert key in known_heads
    # What was kept is what goes out: mark it to see the look-up use it.
    known_heads[key] = (b"x-marker: 1\r\n", *known_heads[key][1:])
    head, _ = parse(run_app([{**START, "headers": [(b"content-type", b"text/plain")]}, body()]))
    assert header_values(head, b"x-marker") == [b"1"]
    assert header_values(head, b"content-type") == []


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        [(b"Content-Length", b"5"), (b"content-length", b"5"), (b"X-A", b"1")],
        [(b"content-length", b"9")],
        [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")],
        [(b"connection", b"close")],
        [(b"connection", b"keep-alive, x-y")],
        [(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"), (b"server", b"other")],
        [(b"server", b"other"), (b"x-b", b"2")],
    ],
)
@pytest.mark.parametrize("request_kind", ["get", "head", "http10", "close"])
def test_a_known_header_list_gives_what_a_fresh_check_gives(
    known_heads: dict[Any, Any],
    fixed_date: None,
    headers: list[tuple[bytes, bytes]],
    request_kind: str,
) -> None:
    """Bytes and connection state of a response from a known header list are those of
    the same response checked afresh, whatever the framing and connection headers."""

    def serve() -> tuple[bytes, bool, int]:
        response = Response(
            head=request_kind == "head",
            http_10=request_kind == "http10",
            close=request_kind == "close",
        )
        wire = send_all(response, [{**START, "headers": list(headers)}, body(b"hello")])
        return wire, response.keep_alive, response.missing

    fresh = serve()
    assert len(known_heads) == 1
    assert serve() == fresh
    known_heads.clear()
    assert serve() == fresh


def test_a_changed_header_list_is_checked_again(known_heads: dict[Any, Any]) -> None:
    """The same list object, changed by the app after a response, is checked as new: a
    value with CR LF in it is refused."""
    headers = [(b"x-a", b"1")]
    run_app([{**START, "headers": headers}, body()])
    headers[0] = (b"x-a", b"1\r\nx-injected: 1")
    response = Response()
    with pytest.raises(ASGIProtocolError, match="illegal value"):
        response.on_send({**START, "headers": headers})
    assert len(known_heads) == 1


@pytest.mark.parametrize(
    "headers",
    [
        [[b"x-a", b"1"]],
        [(b"x-a", _Bytes(b"1"))],
        ((b"x-a", b"1"),),
        [(b"x-a", b"v" * 4096)],
    ],
    ids=["list-pair", "bytes-subclass", "tuple", "long"],
)
def test_header_lists_not_kept_are_served(known_heads: dict[Any, Any], headers: Any) -> None:
    """Pairs as lists, a bytes subclass, a tuple of pairs and long lines are served as always,
    and not kept (the look-up is for lists of exact bytes pairs, of bounded size)."""
    head, _ = parse(run_app([{**START, "headers": headers}, body()]))
    assert len(header_values(head, b"x-a")) == 1
    assert known_heads == {}


def test_known_heads_are_bounded(known_heads: dict[Any, Any]) -> None:
    """An app that sends a different list each time (a changing value) keeps at most
    _MAX_KNOWN_HEADS lists."""
    for n in range(http._MAX_KNOWN_HEADS + 10):
        run_app([{**START, "headers": [(b"x-n", b"%d" % n)]}, body()])
        assert len(known_heads) <= http._MAX_KNOWN_HEADS
    assert ((b"x-n", b"%d" % (http._MAX_KNOWN_HEADS + 9)),) in known_heads


def test_a_refused_start_leaves_the_state_of_a_fresh_response() -> None:
    """A start refused after its headers were taken (a body longer than its length)
    leaves every attribute the start sets as a fresh response has it."""
    response = Response()
    start = {
        **START,
        "status": 404,
        "trailers": True,
        "headers": [
            (b"content-length", b"1"),
            (b"connection", b"close, x-y"),
            (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"server", b"other"),
            (b"x-a", b"1"),
        ],
    }
    response.on_send(start)
    with pytest.raises(ASGIProtocolError, match="longer than its Content-Length"):
        response.on_send(body(b"hello"))
    fresh = Response()
    for name in http._START_STATE:
        assert getattr(response, name) == getattr(fresh, name), name
    assert response.phase is http.ResponsePhase.START


def test_length_lines_are_bounded_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common answer's Content-Length line, kept by body size, is the body's own for
    every size, and at most _MAX_LENGTH_LINES sizes are kept."""
    lines: dict[int, bytes] = {}
    monkeypatch.setattr(http, "_LENGTH_LINES", lines)
    for size in [*range(http._MAX_LENGTH_LINES + 10), 3, 3]:
        head, data = parse(run_app([START, body(b"x" * size)]))
        assert header_values(head, b"content-length") == [b"%d" % size]
        assert data == b"x" * size
        assert len(lines) <= http._MAX_LENGTH_LINES
    assert lines[3] == b"content-length: 3\r\n\r\n"


@pytest.mark.parametrize("head", [False, True])
@pytest.mark.parametrize("server_header", [False, True])
@pytest.mark.parametrize("default_headers", [(), ((b"x-d", b"1"),)])
@pytest.mark.parametrize("keep_alive", [False, True])
@pytest.mark.parametrize("http_10", [False, True])
def test_new_response_is_the_class_call(
    head: bool,
    server_header: bool,
    default_headers: tuple[tuple[bytes, bytes], ...],
    keep_alive: bool,
    http_10: bool,
) -> None:
    """new_response (the request loop's, without calling the class) makes exactly the
    response the class makes from the same arguments."""
    made = http.new_response(head, server_header, default_headers, keep_alive, http_10)
    called = Response(
        head=head,
        server_header=server_header,
        default_headers=default_headers,
        keep_alive=keep_alive,
        http_10=http_10,
    )
    assert type(made) is Response
    if "trioserve._proto.http" not in compiled_modules():
        # (Compiled with mypyc, new_response calls the class, and a Response has no
        # __dict__ to compare.)
        assert vars(made) == vars(called)


# -- client_keep_alive ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "headers", "keep_alive"),
    [
        (b"1.1", [], True),
        (b"1.1", [(b"Connection", b"close")], False),
        (b"1.1", [(b"Connection", b"Upgrade, Close")], False),
        (b"1.1", [(b"Connection", b"keep-alive"), (b"Connection", b"close")], False),
        (b"1.1", [(b"Connection", b"keep-alive")], True),
        (b"1.1", [(b"Connection", b"closed")], True),
        (b"1.0", [], False),
        (b"1.0", [(b"Connection", b"Keep-Alive")], True),
        (b"1.0", [(b"Connection", b"keep-alive, close")], False),
        (b"1.0", [(b"Connection", b"Keep-Alive"), (b"Connection", b"CLOSE")], False),
    ],
)
def test_client_keep_alive(version: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool):
    """HTTP/1.1 keeps the connection unless told close; HTTP/1.0 only when told keep-alive."""
    request = h11.Request(
        method=b"GET", target=b"/", headers=[(b"host", b"a"), *headers], http_version=version
    )
    assert client_keep_alive(request) is keep_alive


# -- Response: wrong messages -----------------------------------------------------------


def started() -> Response:
    response = Response()
    response.on_send(START)
    return response


def finished() -> Response:
    response = started()
    response.on_send(body())
    return response


@pytest.mark.parametrize(
    ("make", "message", "error"),
    [
        (Response, body(b"x"), "expected 'http.response.start' first, got 'http.response.body'"),
        (Response, {"status": 200}, "expected 'http.response.start' first, got None"),
        (Response, "http.response.start", "expected 'http.response.start' first, got None"),
        (started, START, "expected 'http.response.body', got 'http.response.start'"),
        (finished, body(b"x"), "the response is complete; got 'http.response.body' after it"),
        (finished, START, "the response is complete; got 'http.response.start' after it"),
    ],
    ids=["body-first", "no-type", "not-a-mapping", "start-twice", "body-after", "start-after"],
)
def test_message_out_of_order_is_refused(make: Any, message: Any, error: str) -> None:
    """A message that is wrong for the response's phase raises with what was expected."""
    with pytest.raises(ASGIProtocolError) as info:
        make().on_send(message)
    assert str(info.value) == error


@pytest.mark.parametrize("status", ["200", 200.0, None, True, False, 199, 100, 600, -1, 1000])
def test_bad_status_is_refused(status: object) -> None:
    """status must be an int (not a bool) from 200 to 599."""
    response = Response()
    with pytest.raises(ASGIProtocolError) as info:
        response.on_send({**START, "status": status})
    assert str(info.value) == f"'status' must be an int from 200 to 599, got {status!r}"
    assert not response.started


def test_int_enum_status_is_taken_as_its_number(fixed_date: None) -> None:
    """http.HTTPStatus members (int subclasses) are statuses like their numbers."""
    response = Response()
    response.on_send({**START, "status": HTTPStatus.NOT_FOUND})
    assert response.on_send(body(b"")).startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert type(response.status) is int


def test_missing_status_is_refused() -> None:
    """A start message without a status is refused."""
    with pytest.raises(
        ASGIProtocolError, match="'status' must be an int from 200 to 599, got None"
    ):
        Response().on_send({"type": "http.response.start"})


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", "text/plain")],
        [(b"content-type", "text/plain")],
        [("content-type", b"text/plain")],
        [(b"content-type",)],
        [(b"a", b"b", b"c")],
        [b"ab"],
        [None],
        5,
        None,
    ],
)
def test_bad_headers_are_refused(headers: object) -> None:
    """headers must be an iterable of (name, value) pairs of bytes."""
    with pytest.raises(ASGIProtocolError) as info:
        Response().on_send({**START, "headers": headers})
    assert str(info.value) == "'headers' must be an iterable of [name, value] pairs of bytes"


@pytest.mark.parametrize(("value", "name"), [("text", "str"), (None, "NoneType"), ([1], "list")])
def test_body_that_is_not_bytes_is_refused(value: object, name: str) -> None:
    """body must be bytes-like; the error names the type that was given."""
    response = started()
    with pytest.raises(ASGIProtocolError) as info:
        response.on_send({"type": "http.response.body", "body": value})
    assert str(info.value) == f"'body' must be bytes, got {name}"
    assert not response.done


# -- error_response ---------------------------------------------------------------------


def test_error_response_400_is_complete_sized_and_closes() -> None:
    """A 400 is complete, sized, plain text, and says Connection: close."""
    wire = error_response(400, "Bad request: no HTTP version\n")
    assert wire.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    head, data = parse(wire)
    assert (head.status_code, head.reason) == (400, b"Bad Request")
    assert data == b"Bad request: no HTTP version\n"
    assert header_values(head, b"content-length") == [str(len(data)).encode()]
    assert header_values(head, b"content-type") == [b"text/plain; charset=utf-8"]
    assert header_values(head, b"connection") == [b"close"]
    assert header_values(head, b"server") == [b"trioserve"]
    assert len(header_values(head, b"date")) == 1


def test_error_response_500_is_utf8_and_ends_with_a_newline() -> None:
    """A 500 body is the message in UTF-8 with exactly one trailing newline."""
    head, data = parse(error_response(500, "Internal Server Error: déjà vu"))
    assert (head.status_code, head.reason) == (500, b"Internal Server Error")
    assert data == "Internal Server Error: déjà vu\n".encode()
    assert header_values(head, b"content-length") == [str(len(data)).encode()]
    assert header_values(head, b"connection") == [b"close"]


def test_error_response_without_server_header() -> None:
    """server_header=False leaves the Server header out."""
    head, _ = parse(error_response(503, "busy", server_header=False))
    assert header_values(head, b"server") == []


# -- the one-piece answer ---------------------------------------------------------------

RESPONSE_HEADERS = [
    (b"content-type", b"text/plain"),
    (b"Content-Length", b"5"),
    (b"content-length", b"0"),
    (b"Date", b"Sun, 06 Nov 1994 08:49:37 GMT"),
    (b"server", b"app"),
    (b"connection", b"close"),
    (b"Transfer-Encoding", b"chunked"),
]
REQUESTS: list[dict[str, Any]] = [
    {},
    {"head": True},
    {"keep_alive": False},
    {"http_10": True},
    {"close": True},
    {"server_header": False},
    {"default_headers": [(b"x-d", b"1")]},
]


def serialized(shortcut: bool, request: dict[str, Any], messages: list[Any]) -> tuple[Any, ...]:
    response = Response(**request)
    if not shortcut:
        response._plain = False
    try:
        data = send_all(response, messages)
    except ASGIProtocolError as exc:
        data = str(exc).encode()
    return data, response.phase, response.keep_alive, response.body_bytes, response.missing


def test_one_piece_answer_matches_the_general_path(
    fixed_date: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shortcut for a whole body framed by its length gives exactly the bytes, and
    leaves the response in exactly the state, that the general serializer does: every
    combination of status, up to two telling headers, body, more_body and request."""
    header_lists = [[], *([h] for h in RESPONSE_HEADERS)]
    header_lists += [[a, b] for a in RESPONSE_HEADERS for b in RESPONSE_HEADERS]
    cases = itertools.product(
        [200, 204, 304, 404], header_lists, [b"", b"hello", b"hello!"], [False, True], REQUESTS
    )
    shortcuts = general = 0
    head_and_body = Response._head_and_body

    def counted(self: Response, *args: Any) -> bytes:
        nonlocal general
        general += 1
        return head_and_body(self, *args)

    # Compiled with mypyc, Response calls its method directly, not through the class
    # attribute: the count is kept only for the pure-Python module.
    counting = "trioserve._proto.http" not in compiled_modules()
    if counting:
        monkeypatch.setattr(Response, "_head_and_body", counted)
    for status, headers, content, more, request in cases:
        messages = [{**START, "status": status, "headers": headers}, body(content, more=more)]
        before = general
        fast = serialized(True, request, messages)
        if general == before and fast[1] is ResponsePhase.DONE:
            shortcuts += 1  # (a complete response without the general serializer)
        assert fast == serialized(False, request, messages), (status, headers, content, request)
    if counting:
        assert shortcuts >= 30  # the shortcut was taken, not only the general path


# -- sans-IO ----------------------------------------------------------------------------


def test_proto_http_does_not_import_trio() -> None:
    """The sans-IO module loads with only the stdlib and h11: trio is never imported."""
    # Importing trioserve._proto.http would run trioserve/__init__.py, which imports
    # trio; load the subpackage on its own, under an empty parent package.
    code = f"""
import importlib, os, sys, types
# The package without its __init__ (which imports trio), so that _proto's modules
# import each other as they do in the package.
package = types.ModuleType("trioserve")
package.__path__ = [os.path.dirname(os.path.dirname({http.__file__!r}))]
sys.modules["trioserve"] = package
module = importlib.import_module("trioserve._proto.http")
assert module.Response is not None
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


def test_sent_status_is_the_status_of_the_head_that_went_out() -> None:
    """sent_status stays 0 while the head is held back, then is the app's status."""
    response = Response()
    response.on_send({**START, "status": 201})
    assert response.status == 201 and response.sent_status == 0
    response.on_send(body(b"hi", more=True))
    assert response.sent_status == 201


def test_fail_replaces_an_unstarted_response_with_a_closing_error() -> None:
    """fail() answers the error in place of the response: its status counts as sent,
    no body bytes of the app's, and the connection closes."""
    response = Response(server_header=False)
    wire = response.fail(413, f"{http.error_status_text(413)}: too big")
    head, content = parse(wire, eof=True)
    assert head.status_code == 413
    assert content == b"Content Too Large: too big\n"
    assert header_values(head, b"server") == []
    assert (response.sent_status, response.body_bytes) == (413, 0)
    assert response.done and not response.keep_alive
    assert http.error_status_text(999) == "Error"


def test_app_returned_says_what_the_return_left() -> None:
    """A return with the response complete is fine; before any response it asks for a
    500; mid-response it is unfinished, unless the client had left."""
    assert http.app_returned(Response(), disconnected=False) is http.AppEnd.NO_RESPONSE
    assert http.app_returned(Response(), disconnected=True) is http.AppEnd.CLIENT_LEFT
    response = Response()
    response.on_send(START)
    assert http.app_returned(response, disconnected=False) is http.AppEnd.UNFINISHED
    response.on_send(body(b"x", more=True))
    assert http.app_returned(response, disconnected=False) is http.AppEnd.UNFINISHED
    response.on_send(body())
    assert http.app_returned(response, disconnected=True) is http.AppEnd.COMPLETE

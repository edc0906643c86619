"""Tests for trioserve._proto.http: request targets, the ASGI scope, and response checking."""

from __future__ import annotations

import email.utils
import subprocess
import sys
import time
from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserve._proto import http
from trioserve._proto.http import (
    ASGIProtocolError,
    Response,
    date_header,
    decode_path,
    error_response,
    http_scope,
    split_target,
)

START = {"type": "http.response.start", "status": 200, "headers": []}


def body(data: bytes | bytearray = b"", *, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def server_after(method: bytes = b"GET") -> h11.Connection:
    """An h11 server connection that has read one complete request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(method + b" / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    return conn


def to_wire(conn: h11.Connection, events: list[h11.Event]) -> bytes:
    return b"".join(conn.send(event) or b"" for event in events)


def parse(wire: bytes, method: bytes = b"GET") -> tuple[h11.Response, bytes]:
    """What a real HTTP/1.1 client makes of ``wire``: the response head and the body."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"example.com")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
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


def run_app(messages: list[dict[str, Any]], *, head: bool = False, close: bool = False) -> bytes:
    """Feed ``messages`` to a Response and return the bytes h11 writes for them."""
    conn = server_after(b"HEAD" if head else b"GET")
    response = Response(head=head, close=close)
    return to_wire(conn, [event for message in messages for event in response.on_send(message)])


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
        "path": "/café/a/b",
        "raw_path": b"/caf%C3%A9/a%2Fb",
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


# -- date_header ------------------------------------------------------------------------


def test_date_header_is_an_http_date_of_now() -> None:
    """date_header() is an IMF-fixdate in GMT within a couple of seconds of now."""
    value = date_header().decode("ascii")
    assert value.endswith(" GMT")
    when = email.utils.parsedate_to_datetime(value)
    assert abs(when.timestamp() - time.time()) < 3


# -- Response: the happy paths ----------------------------------------------------------


def test_response_start_is_held_until_the_first_body_message() -> None:
    """http.response.start alone produces no event; the first body sends head, data, end."""
    response = Response()
    assert not response.started
    assert response.on_send({**START, "headers": [(b"content-type", b"text/plain")]}) == []
    assert response.started
    assert not response.done
    events = response.on_send(body(b"hello"))
    assert [type(event) for event in events] == [h11.Response, h11.Data, h11.EndOfMessage]
    assert response.done


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


def test_response_streams_with_more_body() -> None:
    """Body messages with more_body=True each give Data; the last one ends the message."""
    response = Response()
    response.on_send(START)
    first = response.on_send(body(b"one,", more=True))
    assert [type(event) for event in first] == [h11.Response, h11.Data]
    assert response.on_send(body(b"", more=True)) == []
    assert [type(event) for event in response.on_send(body(b"two,", more=True))] == [h11.Data]
    assert not response.done
    assert [type(event) for event in response.on_send(body(b"three"))] == [
        h11.Data,
        h11.EndOfMessage,
    ]
    assert response.done


def test_streamed_response_on_the_wire() -> None:
    """A streamed response without content-length reaches a client whole (chunked)."""
    wire = run_app([START, body(b"one,", more=True), body(bytearray(b"two,"), more=True), body()])
    head, data = parse(wire)
    assert header_values(head, b"transfer-encoding") == [b"chunked"]
    assert data == b"one,two,"


def test_body_key_may_be_omitted() -> None:
    """A body message without 'body' or 'more_body' ends an empty response."""
    head, data = parse(run_app([START, {"type": "http.response.body"}]))
    assert head.status_code == 200
    assert data == b""


def test_head_response_drops_body_bytes() -> None:
    """For HEAD the app's body is dropped, its content-length kept."""
    response = Response(head=True)
    response.on_send({**START, "headers": [(b"content-length", b"5")]})
    events = response.on_send(body(b"hello"))
    assert [type(event) for event in events] == [h11.Response, h11.EndOfMessage]
    wire = run_app([{**START, "headers": [(b"content-length", b"5")]}, body(b"hello")], head=True)
    head, data = parse(wire, method=b"HEAD")
    assert header_values(head, b"content-length") == [b"5"]
    assert data == b""
    assert b"hello" not in wire


def test_close_adds_connection_close() -> None:
    """close=True adds 'Connection: close' and h11 then closes the connection."""
    conn = server_after()
    response = Response(close=True)
    events = response.on_send(START) + response.on_send(body(b"bye"))
    head, _ = parse(to_wire(conn, events))
    assert header_values(head, b"connection") == [b"close"]
    assert conn.our_state is h11.MUST_CLOSE


def test_app_server_and_date_headers_are_not_duplicated() -> None:
    """An app's own Server and Date headers (any case) replace the defaults."""
    date = b"Sun, 06 Nov 1994 08:49:37 GMT"
    wire = run_app([{**START, "headers": [(b"Server", b"custom/1.0"), (b"DATE", date)]}, body()])
    head, _ = parse(wire)
    assert header_values(head, b"server") == [b"custom/1.0"]
    assert header_values(head, b"date") == [date]


def test_unknown_status_has_an_empty_reason() -> None:
    """A status code without a standard phrase goes out with an empty reason."""
    head, _ = parse(run_app([{**START, "status": 599}, body()]))
    assert (head.status_code, head.reason) == (599, b"")


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


def test_error_response_400_after_a_malformed_request() -> None:
    """A 400 after a request h11 rejected is complete, sized and closes the connection."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()
    wire = to_wire(conn, error_response(400, "Bad request: no HTTP version\n"))
    head, data = parse(wire)
    assert (head.status_code, head.reason) == (400, b"Bad Request")
    assert data == b"Bad request: no HTTP version\n"
    assert header_values(head, b"content-length") == [str(len(data)).encode()]
    assert header_values(head, b"content-type") == [b"text/plain; charset=utf-8"]
    assert header_values(head, b"connection") == [b"close"]
    assert header_values(head, b"server") == [b"trioserve"]
    assert len(header_values(head, b"date")) == 1
    assert conn.our_state is h11.MUST_CLOSE


def test_error_response_500_is_utf8_and_ends_with_a_newline() -> None:
    """A 500 body is the message in UTF-8 with exactly one trailing newline."""
    events = error_response(500, "Internal Server Error: déjà vu")
    assert [type(event) for event in events] == [h11.Response, h11.Data, h11.EndOfMessage]
    head, data = parse(to_wire(server_after(), events))
    assert (head.status_code, head.reason) == (500, b"Internal Server Error")
    assert data == "Internal Server Error: déjà vu\n".encode()
    assert header_values(head, b"content-length") == [str(len(data)).encode()]
    assert header_values(head, b"connection") == [b"close"]


# -- sans-IO ----------------------------------------------------------------------------


def test_proto_http_does_not_import_trio() -> None:
    """The sans-IO module loads with only the stdlib and h11: trio is never imported."""
    # Importing trioserve._proto.http would run trioserve/__init__.py, which imports
    # trio; load the file on its own, under a name outside the package.
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("isolated_proto_http", {http.__file__!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert module.Response is not None
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("trio", "trioserve"))
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr

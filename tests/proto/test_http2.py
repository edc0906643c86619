"""Tests for trioserve._proto.http2: HTTP/2 request events, validation, flow control,
the response serializer and the hostile-client guards, without I/O (h2 as the client)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("h2", reason="HTTP/2 needs the http2 extra: pip install 'trioserve[http2]'")

import h2.config
import h2.connection
import h2.events
import h2.frame_buffer
import h2.settings
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from trioserve._proto import http2
from trioserve._proto.http import ASGIProtocolError
from trioserve._proto.http2 import (
    PREFACE,
    ConnectionEnded,
    Error,
    GoAwayReceived,
    Guards,
    H2Response,
    H2Server,
    Rejected,
    RequestData,
    RequestEnded,
    RequestHead,
    StreamReset,
    http2_scope,
)
from trioserve._proto.validate import Limits

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
       (b":path", b"/a%20b?x=1")]  # fmt: skip
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h"), (b":path", b"/up")]
START = {"type": "http.response.start", "status": 200, "headers": []}


def body(data: bytes = b"", *, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


class Pair:
    """An h2 client and an H2Server, the bytes carried between them by hand."""

    def __init__(self, server: H2Server | None = None, *, validate: bool = True) -> None:
        self.server = server or H2Server()
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=validate,
                normalize_outbound_headers=validate,
            )
        )
        self.client.initiate_connection()
        self.server.initiate()
        self.now = 0.0
        self.events: list[Any] = []
        self.client_events: list[Any] = []
        # Every frame the server sent, parsed apart from the client (which cannot follow
        # the streams that raw frames opened behind its back).
        self.frames: list[Frame] = []
        self._parser = h2.frame_buffer.FrameBuffer()
        self._parser.max_frame_size = 2**24
        self.flush()

    def _down(self, *, to_client: bool) -> bytes:
        down = self.server.data_to_send()
        if down:
            self._parser.add_data(down)
            self.frames += list(self._parser)
            if to_client:
                self.client_events += self.client.receive_data(down)
        return down

    def flush(self) -> list[Any]:
        """Carry bytes both ways until neither side has any; the server's new events."""
        new: list[Any] = []
        while True:
            up = self.client.data_to_send()
            if up:
                new += self.server.receive_data(up, self.now)
            down = self._down(to_client=True)
            if not up and not down:
                break
        self.events += new
        return new

    def raw(self, *frames: Frame | bytes) -> list[Any]:
        """Send frames as they are (h2's client would refuse to make them)."""
        data = self.client.data_to_send() + b"".join(
            f if isinstance(f, bytes) else f.serialize() for f in frames
        )
        new = self.server.receive_data(data, self.now)
        self.events += new
        self._down(to_client=False)
        return new

    def request(
        self, headers: list[tuple[bytes, bytes]] = GET, *, end: bool = True, stream_id: int = 0
    ) -> int:
        stream_id = stream_id or self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers, end_stream=end)
        return stream_id

    def respond(
        self,
        stream_id: int,
        *messages: dict[str, Any],
        accept_trailers: bool = False,
        **kwargs: Any,
    ) -> H2Response:
        response = H2Response(**kwargs)
        response.trailers_accepted = accept_trailers  # (the exchange's decision)
        for message in messages:
            self.server.send(stream_id, response.on_send(message))
        self.flush()
        return response

    def client_of(self, kind: type) -> list[Any]:
        return [e for e in self.client_events if isinstance(e, kind)]

    def resets(self) -> dict[int, int]:
        return {f.stream_id: f.error_code for f in self.frames if isinstance(f, RstStreamFrame)}

    def goaways(self) -> list[GoAwayFrame]:
        return [f for f in self.frames if isinstance(f, GoAwayFrame)]

    def goaway(self) -> int | None:
        goaways = self.goaways()
        return goaways[-1].error_code if goaways else None


def encode(headers: list[tuple[bytes, bytes]], encoder: hpack.Encoder | None = None) -> bytes:
    return (encoder or hpack.Encoder()).encode(headers)


def answer(pair: Pair, stream_id: int, data: bytes = b"") -> None:
    """Queue a complete 200 response with ``data`` on ``stream_id``."""
    response = H2Response()
    pair.server.send(stream_id, response.on_send(START) + response.on_send(body(data)))


def get_frame(pair: Pair, stream_id: int) -> HeadersFrame:
    """A GET on ``stream_id`` encoded by the client's encoder (keeping HPACK in step), to
    send behind the client's back."""
    return HeadersFrame(
        stream_id, pair.client.encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"]
    )


def send_body(pair: Pair, stream_id: int, size: int) -> None:
    """Send ``size`` body bytes in frames the server accepts."""
    while size:
        take = min(size, 16384)
        pair.client.send_data(stream_id, b"x" * take)
        size -= take


def server_events(pair: Pair, kind: type) -> list[Any]:
    return [e for e in pair.events if isinstance(e, kind)]


# -- requests ---------------------------------------------------------------------------


def test_a_get_request_becomes_a_head_with_scope_parts() -> None:
    """A GET arrives as one RequestHead: method, path and query apart, :authority as Host,
    no pseudo-headers among the headers, and no body."""
    pair = Pair()
    pair.request([*GET, (b"accept", b"*/*")])
    (head,) = pair.flush()
    assert head == RequestHead(
        stream_id=1,
        method="GET",
        scheme="https",
        raw_path=b"/a%20b",
        query_string=b"x=1",
        authority=b"example.com",
        headers=[(b"host", b"example.com"), (b"accept", b"*/*")],
        content_length=None,
        ended=True,
    )


def test_a_host_header_is_kept_as_the_client_gave_it() -> None:
    """With a Host header and a matching :authority, the headers hold the one Host."""
    pair = Pair()
    pair.request([*GET, (b"host", b"example.com")])
    (head,) = pair.flush()
    assert [v for n, v in head.headers if n == b"host"] == [b"example.com"]


def test_a_body_comes_as_data_then_the_end() -> None:
    """A POST's body arrives as RequestData events, then RequestEnded."""
    pair = Pair()
    stream_id = pair.request([*POST, (b"content-length", b"5")], end=False)
    pair.client.send_data(stream_id, b"hel")
    pair.client.send_data(stream_id, b"lo", end_stream=True)
    events = pair.flush()
    assert events[0].content_length == 5 and not events[0].ended
    assert events[1:] == [
        RequestData(stream_id, b"hel"),
        RequestData(stream_id, b"lo"),
        RequestEnded(stream_id),
    ]


def test_cookies_are_joined_into_one_header() -> None:
    """Cookie fields sent apart (RFC 9113 section 8.2.3) reach the app as one header."""
    pair = Pair()
    pair.request([*GET, (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    (head,) = pair.flush()
    assert (b"cookie", b"a=1; b=2") in head.headers


def test_request_trailers_are_dropped() -> None:
    """Request trailers end the body; ASGI has no message for them."""
    pair = Pair()
    stream_id = pair.request(POST, end=False)
    pair.client.send_data(stream_id, b"x")
    pair.client.send_headers(stream_id, [(b"checksum", b"1")], end_stream=True)
    assert pair.flush()[1:] == [RequestData(stream_id, b"x"), RequestEnded(stream_id)]


# -- flow control -----------------------------------------------------------------------


def test_the_window_reopens_only_as_the_app_consumes() -> None:
    """A client may send one window of body; the window reopens when the app took it."""
    pair = Pair()
    stream_id = pair.request(POST, end=False)
    pair.flush()
    window = pair.client.local_flow_control_window(stream_id)
    assert window == 65535
    send_body(pair, stream_id, window)
    received = sum(len(e.data) for e in pair.flush() if isinstance(e, RequestData))
    assert received == window
    assert pair.client.local_flow_control_window(stream_id) == 0
    pair.server.consumed(stream_id, received)
    pair.flush()
    assert pair.client.local_flow_control_window(stream_id) == window


def test_the_connection_window_covers_several_streams() -> None:
    """The connection window is larger than one stream's, so one slow stream does not
    hold the others' uploads."""
    pair = Pair()
    assert pair.client.outbound_flow_control_window == 16 * 65535


def test_released_streams_give_their_unread_bytes_back_to_the_connection() -> None:
    """Body bytes an app never read do not stay counted against the connection window."""
    pair = Pair(H2Server(max_concurrent_streams=1))  # (a connection window of 65535)
    stream_id = pair.request(POST, end=False)
    pair.flush()
    send_body(pair, stream_id, 60000)
    pair.flush()
    before = pair.client.outbound_flow_control_window
    answer(pair, stream_id)
    pair.server.release(stream_id)
    pair.flush()
    assert pair.client.outbound_flow_control_window == before + 60000


def test_an_unread_body_is_taken_in_and_dropped_after_the_answer() -> None:
    """A client still sending after its response (an app that did not read the body)
    may finish its request: the rest of the body is let in and dropped, the stream
    closes without a reset, and the connection serves on (httpx sends its whole body
    before it reads the response and would wait for a window forever)."""
    pair = Pair(H2Server(max_concurrent_streams=1))
    stream_id = pair.request(POST, end=False)
    pair.flush()
    send_body(pair, stream_id, 60000)
    pair.flush()
    answer(pair, stream_id)
    pair.server.release(stream_id)
    pair.flush()
    sent = 60000
    while sent < 3_000_000:
        window = pair.client.local_flow_control_window(stream_id)
        assert window > 0  # the server keeps the windows open
        take = min(window, 16384, 3_000_000 - sent)
        pair.client.send_data(stream_id, b"x" * take)
        sent += take
        pair.flush()
    pair.client.end_stream(stream_id)
    pair.flush()
    assert pair.resets() == {}
    assert pair.goaway() is None
    assert [e.stream_id for e in pair.client_of(h2.events.StreamEnded)] == [stream_id]
    # Only what came before the release reached the edge.
    assert sum(len(e.data) for e in server_events(pair, RequestData)) == 60000
    # The stream is over: a new one fits under the concurrency limit of 1.
    second = pair.request()
    pair.flush()
    assert server_events(pair, RequestHead)[-1].stream_id == second


def test_draining_stops_with_a_reset_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_DRAIN dropped bytes the client is told to stop, RST_STREAM(NO_ERROR)
    (RFC 9113 section 8.1: its response is complete), and the stream stops counting."""
    monkeypatch.setattr(http2, "MAX_DRAIN", 100_000)
    pair = Pair(H2Server(max_concurrent_streams=1))
    stream_id = pair.request(POST, end=False)
    pair.flush()
    answer(pair, stream_id)
    pair.server.release(stream_id)
    pair.flush()
    for _ in range(7):
        send_body(pair, stream_id, 16384)
        pair.flush()
    assert pair.resets() == {stream_id: Error.NO_ERROR}
    second = pair.request()
    pair.flush()
    assert server_events(pair, RequestHead)[-1].stream_id == second


def test_stop_draining_resets_the_stream_and_frees_its_place() -> None:
    """The edge ends a drain that stopped moving: RST_STREAM(NO_ERROR), drained() says
    -1, and the stream no longer counts against the concurrency limit."""
    pair = Pair(H2Server(max_concurrent_streams=1))
    stream_id = pair.request(POST, end=False)
    pair.flush()
    answer(pair, stream_id)
    pair.server.release(stream_id)
    pair.flush()
    send_body(pair, stream_id, 1000)
    pair.flush()
    assert pair.server.drained(stream_id) == 1000
    pair.server.stop_draining(stream_id)
    pair.flush()
    assert pair.resets() == {stream_id: Error.NO_ERROR}
    assert pair.server.drained(stream_id) == -1
    second = pair.request()
    pair.flush()
    assert server_events(pair, RequestHead)[-1].stream_id == second


def test_a_draining_stream_counts_against_the_concurrency_limit() -> None:
    """A stream whose client is still sending is open (RFC 9113 section 5.1.2): while
    its body drains, a stream over the limit is refused."""
    pair = Pair(H2Server(max_concurrent_streams=1))
    stream_id = pair.request(POST, end=False)
    pair.flush()
    answer(pair, stream_id)
    pair.server.release(stream_id)
    pair.flush()
    pair.raw(get_frame(pair, 3))
    assert pair.resets() == {3: Error.REFUSED_STREAM}


def test_padding_is_acknowledged_at_once() -> None:
    """Padding counts against the window but no app consumes it: it is given back at
    once, while the data waits for the app."""
    pair = Pair()
    stream_id = pair.request(POST, end=False)
    pair.flush()
    for _ in range(300):
        pair.client.send_data(stream_id, b"x" * 10, pad_length=200)
    pair.flush()
    # (Without the padding given back the window would be down to 2235.)
    assert pair.client.local_flow_control_window(stream_id) > 30000


# -- responses --------------------------------------------------------------------------


def response_headers(pair: Pair) -> dict[bytes, bytes]:
    (got,) = pair.client_of(h2.events.ResponseReceived)
    return dict(got.headers)


def body_of(pair: Pair) -> bytes:
    return b"".join(e.data for e in pair.client_of(h2.events.DataReceived))


def test_a_response_in_one_message_gets_a_content_length() -> None:
    """A single-message body goes out with :status, content-length, date and server."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    headers = [(b"Content-Type", b"text/plain")]
    pair.respond(stream_id, {**START, "headers": headers}, body(b"hello"))
    fields = response_headers(pair)
    assert fields[b":status"] == b"200"
    assert fields[b"content-type"] == b"text/plain"
    assert fields[b"content-length"] == b"5"
    assert fields[b"server"] == b"trioserve" and b"date" in fields
    assert body_of(pair) == b"hello"
    assert pair.client_of(h2.events.StreamEnded)


def test_a_streamed_response_has_no_content_length() -> None:
    """A body in several messages goes out as it comes, without a length."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    response = pair.respond(stream_id, START, body(b"a", more=True), body(b"b"))
    assert b"content-length" not in response_headers(pair)
    assert body_of(pair) == b"ab" and response.done and response.body_bytes == 2


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
def test_head_204_and_304_have_no_body(method: bytes, status: int) -> None:
    """HEAD, 204 and 304 responses end with their headers; the app's bytes are dropped."""
    pair = Pair()
    stream_id = pair.request([(b":method", method), *GET[1:]])
    pair.flush()
    pair.respond(stream_id, {**START, "status": status}, body(b"dropped"), head=method == b"HEAD")
    assert body_of(pair) == b""
    assert pair.client_of(h2.events.StreamEnded)
    assert b"content-length" not in response_headers(pair)


def test_connection_specific_headers_from_the_app_are_dropped() -> None:
    """Connection, Keep-Alive, Transfer-Encoding, Upgrade and TE never go out over
    HTTP/2 (h2 would refuse the whole head)."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    headers = [
        (b"connection", b"close"),
        (b"keep-alive", b"5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"x"),
        (b"te", b"gzip"),
        (b"x-kept", b"1"),
    ]
    pair.respond(stream_id, {**START, "headers": headers}, body(b"ok"))
    fields = response_headers(pair)
    assert b"x-kept" in fields
    assert not {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te"} & set(fields)
    assert pair.client_of(h2.events.StreamEnded)


def test_whitespace_around_values_is_stripped() -> None:
    """A header or trailer value with whitespace around it (malformed in HTTP/2, which
    clients refuse) goes out stripped."""
    pair = Pair()
    stream_id = pair.request([*GET, (b"te", b"trailers")])
    pair.flush()
    pair.respond(
        stream_id,
        {**START, "headers": [(b"x-pad", b" value\t")], "trailers": True},
        body(b"ok"),
        {"type": "http.response.trailers", "headers": [(b"x-sum", b" 1 ")]},
        accept_trailers=True,
    )
    assert response_headers(pair)[b"x-pad"] == b"value"
    (trailers,) = pair.client_of(h2.events.TrailersReceived)
    assert trailers.headers == [(b"x-sum", b"1")]


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ([(b"bad name", b"x")], "illegal header name"),
        ([(b"x", b"a\r\nb")], "CR, LF and NUL"),
        ([(b"content-length", b"x")], "bad Content-Length"),
        ([("str", b"x")], "pairs of bytes"),
    ],
)
def test_invalid_response_headers_are_refused(headers: list[Any], error: str) -> None:
    """The app's header names and values get the checks of the HTTP/1.1 serializer."""
    with pytest.raises(ASGIProtocolError, match=error):
        H2Response().on_send({**START, "headers": headers})


def test_the_status_is_checked() -> None:
    """A status outside 200-599 is the app's error, as over HTTP/1.1."""
    with pytest.raises(ASGIProtocolError, match="from 200 to 599"):
        H2Response().on_send({**START, "status": 101})


def test_a_body_over_its_length_before_the_head_went_out_leaves_the_start_open() -> None:
    """Overrunning the Content-Length in the first body message is refused and the
    response can start again (nothing went out)."""
    response = H2Response()
    response.on_send({**START, "headers": [(b"content-length", b"2")]})
    with pytest.raises(ASGIProtocolError, match="longer than its Content-Length"):
        response.on_send(body(b"abc"))
    assert not response.started


def test_a_body_over_its_length_after_the_head_is_an_error() -> None:
    """Overrunning the Content-Length later is an error and the stream must be reset."""
    response = H2Response()
    response.on_send({**START, "headers": [(b"content-length", b"2")]})
    response.on_send(body(b"a", more=True))
    with pytest.raises(ASGIProtocolError, match="longer than its Content-Length"):
        response.on_send(body(b"bc"))
    assert response.must_close


def test_a_body_short_of_its_length_resets_the_stream() -> None:
    """A body that ends short of its Content-Length is reset, not ended: the client must
    not take it for complete."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    headers = [(b"content-length", b"10")]
    response = pair.respond(stream_id, {**START, "headers": headers}, body(b"abc"))
    assert response.missing == 7
    assert pair.resets() == {stream_id: Error.INTERNAL_ERROR}
    assert not pair.client_of(h2.events.StreamEnded)


TRAILER_MESSAGES = (
    {**START, "trailers": True},
    body(b"data"),
    {"type": "http.response.trailers", "headers": [(b"checksum", b"abc")], "more_trailers": True},
    {"type": "http.response.trailers", "headers": [(b"x-more", b"1")]},
)


def test_trailers_follow_the_body() -> None:
    """With http.response.trailers (and a client taking them) the body does not end
    the stream; the trailers, gathered over their messages, do."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    response = pair.respond(stream_id, *TRAILER_MESSAGES, accept_trailers=True)
    (trailers,) = pair.client_of(h2.events.TrailersReceived)
    assert trailers.headers == [(b"checksum", b"abc"), (b"x-more", b"1")]
    assert body_of(pair) == b"data" and response.done


def test_trailers_a_client_does_not_take_are_dropped() -> None:
    """Without te: trailers the body ends the stream and the trailer messages are
    taken and dropped."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    response = pair.respond(stream_id, *TRAILER_MESSAGES)
    assert not pair.client_of(h2.events.TrailersReceived)
    assert pair.client_of(h2.events.StreamEnded) and response.done


def test_trailers_are_checked() -> None:
    """A trailer field only a header section may carry is the app's error."""
    response = H2Response()
    response.on_send({**START, "trailers": True})
    response.on_send(body(b"x"))
    with pytest.raises(ASGIProtocolError, match="not allowed in trailers"):
        response.on_send({"type": "http.response.trailers", "headers": [(b"content-length", b"1")]})
    assert response.must_close


@pytest.mark.parametrize("name", [b"proxy-connection", b"Connection", b"upgrade"])
def test_connection_specific_trailers_are_refused(name: bytes) -> None:
    """A connection-specific trailer field (RFC 9113 section 8.2.2), including one that
    HTTP/1.1 lets through (Proxy-Connection), is the app's error, and the stream cannot
    end normally: h2 does not check what goes out (H2Response does)."""
    response = H2Response()
    response.on_send({**START, "trailers": True})
    response.on_send(body(b"x"))
    with pytest.raises(ASGIProtocolError, match="not allowed in"):
        response.on_send({"type": "http.response.trailers", "headers": [(name, b"1")]})
    assert response.must_close and response.done


def test_connection_specific_default_headers_are_not_sent() -> None:
    """Default headers (--header) that HTTP/2 forbids are not sent; the others go out
    lowercase, their values stripped, and the client (which checks what it receives)
    takes the head."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    defaults = [
        (b"Connection", b"close"),
        (b"proxy-connection", b"x"),
        (b"te", b"trailers"),
        (b"X-Default", b" v\t"),
    ]
    pair.respond(stream_id, START, body(b"ok"), default_headers=defaults)
    fields = response_headers(pair)
    assert fields[b"x-default"] == b"v"
    assert not {b"connection", b"proxy-connection", b"te"} & set(fields)
    assert pair.client_of(h2.events.StreamEnded)


def test_default_header_value_with_cr_lf_is_refused() -> None:
    """A default header's value is checked as the app's are (as HTTP/1.1 does)."""
    response = H2Response(default_headers=[(b"x-a", b"1\r\nx-b: 2")])
    response.on_send(START)
    with pytest.raises(ASGIProtocolError, match="illegal value"):
        response.on_send(body())


def test_early_hint_links_are_checked_and_stripped() -> None:
    """An early hint's links go out without surrounding whitespace, and one holding CR,
    LF or NUL is the app's error: h2 does not check what goes out (H2Response does)."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    hint = {"type": "http.response.early_hint", "links": [b" </a.css>; rel=preload\t"]}
    pair.respond(stream_id, hint, START, body(b"x"))
    hints = [e.headers for e in pair.client_of(h2.events.InformationalResponseReceived)]
    assert hints == [[(b":status", b"103"), (b"link", b"</a.css>; rel=preload")]]
    for bad in (b"</a>\r\nx-injected: 1", b"</a>\x00", b"</a>\nx"):
        with pytest.raises(ASGIProtocolError, match="illegal value"):
            H2Response().on_send({"type": "http.response.early_hint", "links": [bad]})


def test_early_hints_go_before_the_final_head() -> None:
    """http.response.early_hint becomes a 103 HEADERS frame before the final head; once
    the head is out, hints are dropped."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    hint = {"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload"]}
    pair.respond(stream_id, hint, START, hint, body(b"x", more=True), hint, body(b"y"))
    # (The second hint came while the final head was held back: still before it.)
    hints = [e.headers for e in pair.client_of(h2.events.InformationalResponseReceived)]
    assert hints == [[(b":status", b"103"), (b"link", b"</a.css>; rel=preload")]] * 2
    assert response_headers(pair)[b":status"] == b"200" and body_of(pair) == b"xy"


def test_a_large_body_waits_for_the_clients_window() -> None:
    """Data beyond the client's window stays queued until it opens the window."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    pair.respond(stream_id, START, body(b"x" * 100_000))
    assert len(body_of(pair)) == 65535
    assert pair.server.pending(stream_id) == 100_000 - 65535
    pair.client.acknowledge_received_data(65535, stream_id)
    pair.flush()
    assert len(body_of(pair)) == 100_000
    assert pair.server.pending(stream_id) == 0
    assert pair.client_of(h2.events.StreamEnded)


def test_frames_respect_the_clients_max_frame_size() -> None:
    """No DATA frame is larger than the client's SETTINGS_MAX_FRAME_SIZE."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    pair.respond(stream_id, START, body(b"x" * 40_000))
    sizes = [len(e.data) for e in pair.client_of(h2.events.DataReceived)]
    assert max(sizes) <= 16384 and sum(sizes) == 40_000


def test_a_reset_stream_drops_its_queued_data() -> None:
    """When the client resets a stream, its queued data is dropped and the edge hears."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    pair.respond(stream_id, START, body(b"x" * 100_000))
    pair.client.reset_stream(stream_id, 8)
    assert pair.flush() == [StreamReset(stream_id, 8)]
    assert pair.server.pending(stream_id) == 0


# -- request validation -----------------------------------------------------------------


def rejected(pair: Pair) -> tuple[int, dict[bytes, bytes], bytes]:
    (event,) = server_events(pair, Rejected)
    assert event.answered
    fields = response_headers(pair)
    assert int(fields[b":status"]) == event.status
    return event.status, fields, body_of(pair)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ([(b"x-bad", b"a\x01b")], 400),
        ([(b"x-bad", b"a\x7fb")], 400),
    ],
)
def test_heads_the_http1_edge_refuses_are_answered_400(
    extra: list[tuple[bytes, bytes]], status: int
) -> None:
    """What HTTP/1.1 refuses beyond h2's checks (control characters, bad lengths) is
    answered with 400 on the stream; no app runs."""
    pair = Pair()
    pair.request([*GET, *extra])
    pair.flush()
    assert rejected(pair)[0] == status
    assert not server_events(pair, RequestHead)


@pytest.mark.parametrize("path", [b"nopath", b"/a b", b"*"])
def test_malformed_paths_are_answered_400_and_reset(path: bytes) -> None:
    """A :path that is not origin-form (or * for OPTIONS) is malformed: 400, and the
    stream is reset with PROTOCOL_ERROR when the client is still sending (RFC 9113
    section 8.1.1)."""
    pair = Pair(validate=False)
    stream_id = pair.request([*GET[:3], (b":path", path)], end=False)
    pair.flush()
    assert rejected(pair)[0] == 400
    assert pair.resets() == {stream_id: Error.PROTOCOL_ERROR}
    assert pair.goaway() is None


def test_connect_is_answered_501() -> None:
    """CONNECT is not supported, as over HTTP/1.1."""
    pair = Pair()
    pair.request([(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
    pair.flush()
    assert rejected(pair)[0] == 501


def test_a_declared_body_over_the_limit_is_answered_413() -> None:
    """A Content-Length over --limit-request-body is answered 413 at once; the client,
    still sending, is told to stop with RST_STREAM(NO_ERROR)."""
    pair = Pair(H2Server(limits=Limits(body=10)))
    stream_id = pair.request([*POST, (b"content-length", b"11")], end=False)
    pair.flush()
    assert rejected(pair)[0] == 413
    assert pair.resets() == {stream_id: Error.NO_ERROR}


def test_a_streamed_body_over_the_limit_is_refused_to_the_app() -> None:
    """A body without a length that passes the limit is refused while the app reads it
    (the edge answers 413 as over HTTP/1.1)."""
    pair = Pair(H2Server(limits=Limits(body=10)))
    stream_id = pair.request(POST, end=False)
    pair.client.send_data(stream_id, b"x" * 8)
    pair.client.send_data(stream_id, b"x" * 8)
    pair.flush()
    assert pair.events[1:] == [
        RequestData(stream_id, b"x" * 8),
        Rejected(stream_id, 413, "request body larger than 10 bytes", answered=False),
    ]


@pytest.mark.parametrize(
    ("limits", "extra", "status"),
    [
        (Limits(fields=2), [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], 431),
        (Limits(field_size=20), [(b"a", b"x" * 30)], 431),
        (Limits(request_line=8), [], 414),
    ],
)
def test_header_limits_are_answered(
    limits: Limits, extra: list[tuple[bytes, bytes]], status: int
) -> None:
    """The field count and size limits (431) and the request line limit, applied to the
    path (414), hold for HTTP/2 as for HTTP/1.1."""
    pair = Pair(H2Server(limits=limits))
    pair.request([*GET[:3], (b":path", b"/0123456789"), *extra])
    pair.flush()
    assert rejected(pair)[0] == status


def test_a_header_list_over_the_limit_is_answered_431() -> None:
    """A header list larger than SETTINGS_MAX_HEADER_LIST_SIZE (but not a bomb) gets 431."""
    pair = Pair(H2Server(max_header_list_size=4000))
    pair.request([*GET, (b"big", b"x" * 5000)])
    pair.flush()
    assert rejected(pair)[0] == 431
    assert pair.goaway() is None


@pytest.mark.parametrize(
    "headers",
    [
        [*GET, (b"Upper", b"x")],
        [*GET, (b"connection", b"keep-alive")],
        [*GET, (b"te", b"gzip")],
        [*GET, (b"transfer-encoding", b"chunked")],
        GET[:3],
        [*GET, (b":method", b"POST")],
        [*GET, (b":custom", b"x")],
        [(b"x", b"1"), *GET],
        [*GET, (b"host", b"other.example")],
        [*GET, (b"content-length", b"abc")],
        [*GET, (b"content-length", b"1, 2")],
    ],
    ids=[
        "uppercase",
        "connection",
        "te",
        "transfer-encoding",
        "no-path",
        "duplicate-pseudo",
        "unknown-pseudo",
        "pseudo-after-regular",
        "host-vs-authority",
        "content-length",
        "content-lengths",
    ],
)
def test_malformed_heads_h2_refuses_end_the_connection(headers: list[tuple[bytes, bytes]]) -> None:
    """What h2's own validation refuses ends the connection with GOAWAY(PROTOCOL_ERROR)
    (RFC 9113 section 5.4.1 allows it for a stream error); no app runs."""
    pair = Pair(validate=False)
    pair.request(headers)
    events = pair.flush()
    assert [type(e) for e in events] == [ConnectionEnded]
    assert events[0].error_code == Error.PROTOCOL_ERROR
    assert pair.goaway() == Error.PROTOCOL_ERROR


def test_a_body_that_disagrees_with_its_length_ends_the_connection() -> None:
    """More data than the Content-Length said is refused (by h2: PROTOCOL_ERROR)."""
    pair = Pair()
    stream_id = pair.request([*POST, (b"content-length", b"2")], end=False)
    pair.flush()
    pair.raw(DataFrame(stream_id, b"abc", flags=["END_STREAM"]))
    assert isinstance(pair.events[-1], ConnectionEnded)
    assert pair.goaway() == Error.PROTOCOL_ERROR


# -- streams ----------------------------------------------------------------------------


def test_streams_past_the_concurrency_limit_are_refused() -> None:
    """A stream over SETTINGS_MAX_CONCURRENT_STREAMS is reset with REFUSED_STREAM and the
    connection lives on; once a stream is released, a new one is served."""
    pair = Pair(H2Server(max_concurrent_streams=2))
    for _ in range(2):
        pair.request()
    pair.flush()
    pair.raw(get_frame(pair, 5))
    assert len(server_events(pair, RequestHead)) == 2
    assert pair.resets() == {5: Error.REFUSED_STREAM}
    answer(pair, 1)
    pair.server.release(1)
    pair.flush()
    pair.raw(get_frame(pair, 7))
    assert server_events(pair, RequestHead)[-1].stream_id == 7
    assert pair.goaway() is None


def test_a_stream_counts_until_released_not_until_reset() -> None:
    """A stream the client reset still counts against the limit until its app returned:
    resetting streams does not make room for more apps."""
    pair = Pair(H2Server(max_concurrent_streams=1))
    stream_id = pair.request()
    pair.flush()
    pair.client.reset_stream(stream_id)
    pair.flush()
    pair.raw(get_frame(pair, 3))
    assert pair.resets().get(3) == Error.REFUSED_STREAM


def test_stream_ids_going_backwards_end_the_connection() -> None:
    """A new stream with a lower id than one already opened is a connection error."""
    pair = Pair()
    encoder = hpack.Encoder()
    pair.raw(HeadersFrame(5, encode(GET, encoder), flags=["END_HEADERS", "END_STREAM"]))
    pair.raw(HeadersFrame(3, encode(GET, encoder), flags=["END_HEADERS", "END_STREAM"]))
    assert isinstance(pair.events[-1], ConnectionEnded)
    assert pair.goaway() == Error.PROTOCOL_ERROR


def test_an_even_stream_id_ends_the_connection() -> None:
    """Clients open odd streams only."""
    pair = Pair()
    pair.raw(HeadersFrame(2, encode(GET), flags=["END_HEADERS", "END_STREAM"]))
    assert pair.goaway() == Error.PROTOCOL_ERROR


def test_data_after_the_end_of_a_request_resets_its_stream() -> None:
    """DATA on a stream the client already ended is a stream error STREAM_CLOSED (RFC
    9113 section 5.1): the stream is reset, the edge hears, the connection lives on."""
    pair = Pair()
    pair.raw(HeadersFrame(1, encode(GET), flags=["END_HEADERS", "END_STREAM"]))
    assert pair.raw(DataFrame(1, b"late")) == [StreamReset(1, Error.STREAM_CLOSED)]
    assert pair.resets() == {1: Error.STREAM_CLOSED}
    assert pair.goaway() is None


def test_data_on_closed_streams_is_reset_and_counted() -> None:
    """DATA on a stream closed at both ends gets RST_STREAM(STREAM_CLOSED) (h2's answer),
    and counts as a reset: a client making the server answer so, again and again,
    is cut off."""
    pair = Pair(H2Server(guards=Guards(resets_per_second=10)))
    stream_id = pair.request()
    pair.flush()
    answer(pair, stream_id)
    pair.server.release(stream_id)
    pair.flush()
    pair.raw(DataFrame(stream_id, b"late"))
    assert pair.resets() == {stream_id: Error.STREAM_CLOSED}
    pair.raw(*(DataFrame(stream_id, b"late") for _ in range(10)))
    assert_calm(pair)


def test_a_graceful_goaway_lets_streams_in_flight_finish() -> None:
    """goaway() announces the last stream taken; that stream still gets its response,
    and a later one is refused."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    pair.server.goaway()
    pair.flush()
    (goaway,) = pair.client_of(h2.events.ConnectionTerminated)
    assert goaway.error_code == 0 and goaway.last_stream_id == stream_id
    pair.raw(get_frame(pair, 3))
    assert len(server_events(pair, RequestHead)) == 1
    server = pair.server
    answer(pair, stream_id, b"bye")
    data = server.data_to_send()
    frames = h2.frame_buffer.FrameBuffer()
    frames.max_frame_size = 16384
    frames.add_data(data)
    assert [type(f).__name__ for f in frames] == ["HeadersFrame", "DataFrame"]


def test_a_clients_goaway_lets_streams_in_flight_finish() -> None:
    """A client's GOAWAY is an event; the streams it opened can still be answered."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 0
    assert pair.raw(goaway) == [GoAwayReceived(0, 0)]
    answer(pair, stream_id, b"ok")
    pair.flush()
    assert body_of(pair) == b"ok"


def test_an_invalid_preface_ends_the_connection() -> None:
    """Bytes that are not the HTTP/2 preface end the connection at once."""
    server = H2Server()
    server.initiate()
    (event,) = server.receive_data(b"GET / HTTP/1.1\r\n", 0.0)
    assert isinstance(event, ConnectionEnded) and event.error_code == Error.PROTOCOL_ERROR


def test_an_h2c_upgrade_request_becomes_stream_1() -> None:
    """After Upgrade: h2c, the upgrade request is stream 1 and gets its answer there."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    settings = client.initiate_upgrade_connection()
    assert settings is not None
    server = H2Server()
    head = server.initiate_upgrade(
        settings,
        method=b"GET",
        target=b"/up?x=1",
        headers=[(b"Host", b"example.com"), (b"Upgrade", b"h2c"), (b"HTTP2-Settings", settings)],
    )
    assert head.stream_id == 1 and head.raw_path == b"/up" and head.query_string == b"x=1"
    assert head.headers == [(b"host", b"example.com")]
    assert server.receive_data(client.data_to_send(), 0.0) == []
    response = H2Response()
    server.send(1, response.on_send(START) + response.on_send(body(b"hi")))
    events = client.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.DataReceived) and e.data == b"hi" for e in events)


# -- hostile clients --------------------------------------------------------------------


def assert_calm(pair: Pair) -> None:
    """The connection ended with GOAWAY(ENHANCE_YOUR_CALM), flagged as hostile."""
    ended = server_events(pair, ConnectionEnded)
    assert ended and ended[-1].error_code == Error.ENHANCE_YOUR_CALM and ended[-1].hostile
    assert pair.goaway() == Error.ENHANCE_YOUR_CALM


def test_rapid_reset_ends_the_connection() -> None:
    """Streams opened and reset at once (CVE-2023-44487) past resets_per_second end
    the connection with ENHANCE_YOUR_CALM."""
    pair = Pair(H2Server(guards=Guards(resets_per_second=50)))
    for _ in range(51):
        stream_id = pair.request()
        pair.client.reset_stream(stream_id)
        pair.server.release(stream_id)  # (the edge cancels the app at once)
        pair.flush()
        if pair.goaway() is not None:
            break
    assert_calm(pair)
    assert len(server_events(pair, RequestHead)) == 51


def test_resets_spread_over_seconds_are_allowed() -> None:
    """The reset count is per second: the same number spread out ends nothing."""
    pair = Pair(H2Server(guards=Guards(resets_per_second=50)))
    for i in range(100):
        pair.now = i * 0.05  # 20 a second
        stream_id = pair.request()
        pair.client.reset_stream(stream_id)
        pair.server.release(stream_id)
        pair.flush()
    assert pair.goaway() is None


def test_refused_streams_count_as_resets() -> None:
    """Opening streams past the concurrency limit over and over ends the connection:
    each refusal is a reset the client caused."""
    pair = Pair(H2Server(max_concurrent_streams=1, guards=Guards(resets_per_second=20)))
    pair.request()
    pair.flush()
    for i in range(25):
        pair.raw(get_frame(pair, 3 + 2 * i))
    assert_calm(pair)
    assert list(pair.resets().values()).count(Error.REFUSED_STREAM) == 21


def header_block_frames(count: int, size: int) -> list[Frame]:
    frames: list[Frame] = [HeadersFrame(1, b"\x00" * size)]
    frames += [ContinuationFrame(1, b"\x00" * size) for _ in range(count)]
    return frames


def test_a_continuation_flood_is_cut_at_the_header_list_limit() -> None:
    """A header block that grows past what the header list limit allows (CVE-2024-27316)
    ends the connection before h2 buffers more of it."""
    pair = Pair(H2Server(max_header_list_size=8192))
    pair.raw(*header_block_frames(3, 2000))
    assert pair.server.header_block_open and pair.goaway() is None
    pair.raw(*header_block_frames(0, 0)[:0], ContinuationFrame(1, b"\x00" * 8000))
    assert_calm(pair)
    # Nothing more is taken in after the cut.
    assert pair.raw(ContinuationFrame(1, b"\x00" * 8000)) == []


def test_an_oversized_frame_is_refused_from_its_header() -> None:
    """A frame announcing more than SETTINGS_MAX_FRAME_SIZE is refused as soon as its
    9-byte header arrives, without waiting for (and buffering) its payload."""
    pair = Pair()
    header = (16 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    pair.raw(HeadersFrame(1, encode(POST), flags=["END_HEADERS"]))
    (ended,) = pair.raw(header + b"x" * 100)
    assert isinstance(ended, ConnectionEnded) and ended.error_code == Error.FRAME_SIZE_ERROR
    assert len(pair.server._buffer) < 200


def test_a_header_list_under_the_limit_is_decoded_whatever_its_size() -> None:
    """The decoder's limit follows max_header_list_size (h2's own is 64 KiB)."""
    pair = Pair(H2Server(max_header_list_size=200_000))
    pair.request([*GET, *((b"x-%d" % i, b"y" * 8000) for i in range(10))])
    (head,) = pair.flush()
    assert isinstance(head, RequestHead) and len(head.headers) == 11


def test_an_hpack_bomb_ends_the_connection() -> None:
    """A small header block that decodes to a huge header list (an entry of the dynamic
    table named over and over) ends the connection with ENHANCE_YOUR_CALM."""
    pair = Pair(H2Server(max_header_list_size=8192))
    encoder = hpack.Encoder()
    first = encode([*GET, (b"bomb", b"x" * 3000)], encoder)
    pair.raw(HeadersFrame(1, first, flags=["END_HEADERS", "END_STREAM"]))
    assert pair.goaway() is None
    # 0xbe: the newest dynamic table entry (index 62), 1 byte for 3 KB each time.
    block = encode(GET, encoder) + b"\xbe" * 10  # 30 KB, under h2's default limit
    assert len(block) < 100
    pair.raw(HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM"]))
    ended = server_events(pair, ConnectionEnded)
    assert ended and ended[-1].error_code == Error.ENHANCE_YOUR_CALM


@pytest.mark.parametrize(
    ("frame", "guards"),
    [
        (lambda: SettingsFrame(0), Guards(settings_per_second=10)),
        (lambda: PingFrame(0, b"12345678"), Guards(pings_per_second=10)),
        (lambda: DataFrame(1, b""), Guards(empty_data_per_second=10)),
        (lambda: PriorityFrame(1, depends_on=0, stream_weight=1), Guards(priority_per_second=10)),
        (lambda: ExtensionFrame(0xEE, 0, flag_byte=0, body=b""), Guards(unknown_per_second=10)),
    ],
    ids=["settings", "ping", "empty-data", "priority", "unknown"],
)
def test_control_frame_floods_end_the_connection(frame: Any, guards: Guards) -> None:
    """Past its limit in a second, a flood of SETTINGS, PING, empty DATA, PRIORITY or
    unknown frames ends the connection with ENHANCE_YOUR_CALM; the limit itself is
    fine, and so is the same count in the next second."""
    pair = Pair(H2Server(guards=guards))
    pair.request(POST, end=False)
    pair.flush()
    pair.now = 1.0
    pair.raw(*(frame() for _ in range(10)))
    pair.now = 2.0
    pair.raw(*(frame() for _ in range(10)))
    assert pair.goaway() is None
    pair.raw(frame())
    assert_calm(pair)


def test_a_zero_window_update_ends_the_connection() -> None:
    """WINDOW_UPDATE with an increment of 0 is a protocol error."""
    pair = Pair()
    raw = WindowUpdateFrame(0).serialize_body()
    assert raw == b"\x00\x00\x00\x00"
    pair.raw(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + raw)
    assert pair.goaway() == Error.PROTOCOL_ERROR


def test_rst_stream_floods_count_frames_not_streams() -> None:
    """Resets of streams already closed still count (each costs a look-up and maybe an
    answer)."""
    pair = Pair(H2Server(guards=Guards(resets_per_second=10)))
    pair.request()
    pair.flush()
    answer(pair, 1)
    pair.server.release(1)
    pair.flush()
    pair.raw(*(RstStreamFrame(1) for _ in range(11)))
    assert_calm(pair)


# -- the corpus, split at random points -------------------------------------------------


def hpack_bomb() -> bytes:
    """A header block of ~200 bytes that decodes to ~400 KB."""
    encoder = hpack.Encoder()
    first = encode([*GET, (b"bomb", b"x" * 4000)], encoder)
    return (
        HeadersFrame(1, first, flags=["END_HEADERS", "END_STREAM"]).serialize()
        + HeadersFrame(3, encode(GET, encoder) + b"\xbe" * 100, flags=["END_HEADERS"]).serialize()
    )


def _corpus() -> dict[str, bytes]:
    """Frame sequences, valid and invalid, each from the preface on."""
    settings_frame = SettingsFrame(0).serialize()

    def headers(stream_id: int, fields: list[tuple[bytes, bytes]], flags: list[str]) -> bytes:
        # (A new encoder each time: no entry refers to another's dynamic table.)
        return HeadersFrame(stream_id, encode(fields), flags=flags).serialize()

    start = PREFACE + settings_frame
    corpus = {
        "get": start + headers(1, GET, ["END_HEADERS", "END_STREAM"]),
        "post": start
        + headers(1, [*POST, (b"content-length", b"6")], ["END_HEADERS"])
        + DataFrame(1, b"abc").serialize()
        + DataFrame(1, b"def", flags=["END_STREAM"]).serialize(),
        "two-streams": start
        + headers(1, GET, ["END_HEADERS", "END_STREAM"])
        + headers(3, POST, ["END_HEADERS"])
        + DataFrame(3, b"x" * 300, flags=["END_STREAM", "PADDED"], pad_length=20).serialize(),
        "reset": start
        + headers(1, POST, ["END_HEADERS"])
        + RstStreamFrame(1, error_code=8).serialize(),
        "ping-and-settings": start
        + PingFrame(0, b"abcdefgh").serialize()
        + SettingsFrame(0, settings={4: 100000}).serialize(),
        "bad-header": start + headers(1, [*GET, (b"connection", b"x")], ["END_HEADERS"]),
        "rejected": start + headers(1, [*GET[:3], (b":path", b"x")], ["END_HEADERS"]),
        "goaway": start + headers(1, GET, ["END_HEADERS"]) + GoAwayFrame(0).serialize(),
        "oversized": start + b"\x01\x00\x00\x00\x00\x00\x00\x00\x01" + b"x" * 50,
        "bad-preface": b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + settings_frame,
        "flood": start + PingFrame(0, b"12345678").serialize() * 120,
        "rapid-reset": start
        + b"".join(
            headers(i, GET, ["END_HEADERS", "END_STREAM"])
            + RstStreamFrame(i, error_code=8).serialize()
            for i in range(1, 420, 2)
        ),
        "continuation-flood": start
        + HeadersFrame(1, b"\x00" * 100).serialize()
        + ContinuationFrame(1, b"\x00" * 16384).serialize() * 5,
        "hpack-bomb": start + hpack_bomb(),
    }
    # The continuation sequence, finished.
    block = encode(GET)
    corpus["continuation"] = (
        start
        + HeadersFrame(3, block[:3]).serialize()
        + ContinuationFrame(3, block[3:5]).serialize()
        + ContinuationFrame(3, block[5:], flags=["END_HEADERS"]).serialize()
    )
    return corpus


CORPUS = _corpus()


def _events(pieces: list[bytes]) -> list[Any]:
    server = H2Server()
    server.initiate()
    events: list[Any] = []
    for piece in pieces:
        events += server.receive_data(piece, 0.0)
    return events


def test_the_corpus_gives_the_expected_events() -> None:
    """Each corpus sequence gives the events it was made for (the split test below
    would pass for a server that ignored everything)."""
    kinds = {name: [type(e).__name__ for e in _events([data])] for name, data in CORPUS.items()}
    assert kinds["get"] == ["RequestHead"]
    assert kinds["post"] == ["RequestHead", "RequestData", "RequestData", "RequestEnded"]
    assert kinds["two-streams"] == ["RequestHead", "RequestHead", "RequestData", "RequestEnded"]
    assert kinds["continuation"] == ["RequestHead"]
    assert kinds["reset"] == ["RequestHead", "StreamReset"]
    assert kinds["ping-and-settings"] == []
    assert kinds["bad-header"] == ["ConnectionEnded"]
    assert kinds["rejected"] == ["Rejected"]
    assert kinds["goaway"] == ["RequestHead", "GoAwayReceived"]
    assert kinds["oversized"] == ["ConnectionEnded"]
    assert kinds["bad-preface"] == ["ConnectionEnded"]
    assert kinds["flood"] == ["ConnectionEnded"]
    # Streams reset at once, none let go by an edge: the first 100 are taken and reset
    # (100 resets), the next are refused, and their resets count too (2 each), up to 200.
    assert kinds["rapid-reset"][-1] == "ConnectionEnded"
    assert kinds["rapid-reset"].count("StreamReset") == 100
    assert kinds["continuation-flood"] == ["ConnectionEnded"]
    assert kinds["hpack-bomb"] == ["RequestHead", "ConnectionEnded"]


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(CORPUS)),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_events_do_not_depend_on_how_the_bytes_are_split(name: str, cuts: list[int]) -> None:
    """The corpus split at random points gives the same events as in one piece."""
    data = CORPUS[name]
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert _events([p for p in pieces if p]) == _events([data])


# -- sans-IO ----------------------------------------------------------------------------


def test_proto_http2_does_not_import_trio() -> None:
    """The HTTP/2 core loads with the stdlib, h11 and h2: trio is never imported."""
    code = f"""
import importlib, os, sys, types
package = types.ModuleType("trioserve")
package.__path__ = [os.path.dirname(os.path.dirname({http2.__file__!r}))]
sys.modules["trioserve"] = package
module = importlib.import_module("trioserve._proto.http2")
assert module.H2Server is not None
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


def test_trioserve_imports_without_h2() -> None:
    """trioserve and its HTTP/1.1 edge load when h2 is not installed."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("h2", "hpack", "hyperframe"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import trioserve, trioserve._serve_http, trioserve._pipeline
assert "h2" not in sys.modules
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_stream_h2_closed_on_its_own_takes_no_more_output() -> None:
    """Should h2 close a stream without telling (a stream error it answered itself),
    sending on it is a no-op and the stream reads as gone, not an exception in the
    app's send()."""
    pair = Pair()
    stream_id = pair.request()
    pair.flush()
    pair.server._conn.reset_stream(stream_id)  # (behind H2Server's back)
    assert not pair.server.stream_gone(stream_id)
    answer(pair, stream_id, b"late")
    assert pair.server.stream_gone(stream_id)


def test_a_window_below_the_default_applies_once_acknowledged() -> None:
    """A stream window smaller than 65535 is announced in a second SETTINGS frame and
    holds from the client's acknowledgement on: a client that sends 65535 bytes before
    it heard of it breaks no rule; one that heard is held to it."""
    server = H2Server(initial_window_size=1000)
    server.initiate()
    early = b"".join(DataFrame(1, b"x" * 16383).serialize() for _ in range(4))
    events = server.receive_data(
        PREFACE
        + SettingsFrame(0).serialize()
        + HeadersFrame(1, encode(POST), flags=["END_HEADERS"]).serialize()
        + early
        + DataFrame(1, b"x" * 3).serialize(),
        0.0,
    )
    assert not any(isinstance(e, ConnectionEnded) for e in events)
    assert sum(len(e.data) for e in events if isinstance(e, RequestData)) == 65535
    pair = Pair(H2Server(initial_window_size=1000))
    stream_id = pair.request(POST, end=False)
    pair.flush()
    assert pair.client.local_flow_control_window(stream_id) == 1000


def test_the_scope_of_a_request() -> None:
    """http2_scope: HTTP version "2", the path decoded and under root_path, the raw path
    and query as sent, a copy of the lifespan state."""
    head = RequestHead(
        stream_id=1,
        method="GET",
        scheme="https",
        raw_path=b"/a%20b",
        query_string=b"q=1",
        authority=b"h",
        headers=[(b"host", b"h")],
        content_length=None,
        ended=True,
    )
    state = {"db": 1}
    scope = http2_scope(
        head,
        scheme="http",
        client=("1.2.3.4", 5),
        server=("127.0.0.1", 8000),
        root_path="/app",
        state=state,
    )
    assert scope["http_version"] == "2" and scope["scheme"] == "http"
    assert (scope["path"], scope["raw_path"]) == ("/app/a b", b"/app/a%20b")
    assert scope["query_string"] == b"q=1" and scope["root_path"] == "/app"
    assert scope["state"] == state and scope["state"] is not state

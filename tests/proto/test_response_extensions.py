"""The ASGI response extensions in the sans-IO HTTP/1.1 response: trailers (after the
last chunk) and early hints (103), and their shared checks."""

from __future__ import annotations

from typing import Any

import h11
import pytest

from trioserve._proto.http import (
    ASGIProtocolError,
    PathSend,
    Response,
    ResponsePhase,
    accepts_trailers,
    app_returned,
    early_hint_links,
    pathsend_path,
    trailer_fields,
)

TRAILER_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-length", b"5"), (b"trailer", b"x-checksum")],
    "trailers": True,
}


def body(data: bytes, *, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def trailers(*fields: tuple[bytes, bytes], more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.trailers", "headers": list(fields), "more_trailers": more}


def hint(*links: Any) -> dict[str, Any]:
    return {"type": "http.response.early_hint", "links": list(links)}


def parse(
    wire: bytes, method: bytes = b"GET"
) -> tuple[list[Any], bytes, list[tuple[bytes, bytes]]]:
    """What h11 as a client reads from ``wire``: the informational responses and the
    final one (in order), the body, and the trailer fields."""
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11.Request(method=method, target=b"/", headers=[(b"host", b"a"), (b"te", b"trailers")])
    )
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    heads: list[Any] = []
    data = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.InformationalResponse | h11.Response):
            heads.append(event)
        elif isinstance(event, h11.Data):
            data += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            return heads, data, list(event.headers)


def accepted(**kwargs: Any) -> Response:
    response = Response(**kwargs)
    response.trailers_accepted = True
    return response


def test_trailers_go_after_the_last_chunk_when_the_client_takes_them() -> None:
    """With trailers asked for and accepted, the body is chunked (the app's length is
    not sent) and the trailer section follows the last chunk; the connection lives on."""
    response = accepted()
    wire = response.on_send(TRAILER_START) + response.on_send(body(b"hello"))
    assert response.phase is ResponsePhase.TRAILERS
    assert not response.keep_alive
    assert wire.endswith(b"5\r\nhello\r\n")
    last = response.on_send(trailers((b"X-Checksum", b"abc")))
    assert last == b"0\r\nx-checksum: abc\r\n\r\n"
    assert response.phase is ResponsePhase.DONE and response.keep_alive  # type: ignore[comparison-overlap]
    heads, data, fields = parse(wire + last)
    assert heads[0].status_code == 200
    assert (b"transfer-encoding", b"chunked") in list(heads[0].headers)
    assert b"content-length" not in dict(heads[0].headers)
    assert data == b"hello"
    assert fields == [(b"x-checksum", b"abc")]


def test_trailer_messages_with_more_trailers_are_gathered_into_one_section() -> None:
    """Several http.response.trailers messages make one trailer section, written with
    the last (more_trailers false)."""
    response = accepted()
    response.on_send({**TRAILER_START, "headers": []})
    wire = response.on_send(body(b"ab", more=True)) + response.on_send(body(b"", more=False))
    assert not wire.endswith(b"0\r\n\r\n")
    assert response.on_send(trailers((b"a", b"1"), more=True)) == b""
    last = response.on_send(trailers((b"b", b"2")))
    assert last == b"0\r\na: 1\r\nb: 2\r\n\r\n"


def test_trailers_are_dropped_when_the_client_does_not_take_them() -> None:
    """Trailers asked for but not accepted (no TE: trailers): the usual framing (here
    the app's length), and the trailer messages are taken and write nothing."""
    response = Response()
    wire = response.on_send(TRAILER_START) + response.on_send(body(b"hello"))
    assert b"content-length: 5\r\n" in wire and wire.endswith(b"\r\n\r\nhello")
    assert response.phase is ResponsePhase.TRAILERS
    assert response.on_send(trailers((b"x-checksum", b"abc"))) == b""
    assert response.keep_alive


@pytest.mark.parametrize("kwargs", [{"http_10": True}, {"head": True}])
def test_trailers_are_not_sent_to_http_10_or_for_head(kwargs: dict[str, Any]) -> None:
    """No trailer section for an HTTP/1.0 client (no chunked framing) or a HEAD request
    (no body), even when accepted; the messages still complete the response."""
    response = accepted(**kwargs)
    wire = response.on_send(TRAILER_START) + response.on_send(body(b"hello"))
    assert b"0\r\n" not in wire
    assert response.on_send(trailers((b"x-checksum", b"abc"))) == b""
    assert response.phase is ResponsePhase.DONE


def test_app_that_stops_before_its_trailers_left_its_response_unfinished() -> None:
    """A response whose trailers never came is unfinished: the connection cannot carry on."""
    response = accepted()
    response.on_send(TRAILER_START)
    response.on_send(body(b"hello"))
    assert app_returned(response, disconnected=False).name == "UNFINISHED"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (body(b"more"), "expected 'http.response.trailers'"),
        (trailers((b"content-length", b"5")), "not allowed in trailers"),
        (trailers((b"x-a", b"1\r\nx-b: 2")), "illegal value"),
        (trailers((b"x a", b"1")), "illegal header name"),
        ({"type": "http.response.trailers", "headers": [("x-a", "1")]}, "pairs of bytes"),
    ],
)
def test_bad_trailers_message_cuts_the_response(message: dict[str, Any], error: str) -> None:
    """A wrong or malformed message after the body is refused, and with the body out the
    response can only be cut: it is done and the connection must close."""
    response = accepted()
    response.on_send(TRAILER_START)
    response.on_send(body(b"hello"))
    with pytest.raises(ASGIProtocolError, match=error):
        response.on_send(message)
    assert response.phase is ResponsePhase.DONE and response.must_close


def test_refused_start_forgets_that_it_asked_for_trailers() -> None:
    """A start refused for its body (longer than its length) leaves no trailers behind."""
    response = accepted()
    response.on_send({**TRAILER_START, "headers": [(b"content-length", b"1")]})
    response.trailers_accepted = False
    with pytest.raises(ASGIProtocolError):
        response.on_send(body(b"hello"))
    assert response.phase is ResponsePhase.START and not response.trailers


def test_early_hint_before_the_head_is_a_103_with_its_links() -> None:
    """An early hint before the final head goes out (before http.response.start, or
    after it while the head waits for the body) is a 103 with one Link field per link."""
    response = Response()
    first = response.on_send(
        hint(b"</style.css>; rel=preload; as=style", b" </a.js>; rel=preload ")
    )
    assert first == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n"
        b"link: </a.js>; rel=preload\r\n\r\n"
    )
    response.on_send({"type": "http.response.start", "status": 200, "headers": []})
    second = response.on_send(hint(bytearray(b"</b.js>; rel=preload")))
    wire = first + second + response.on_send(body(b"ok"))
    heads, data, _ = parse(wire)
    assert [h.status_code for h in heads] == [103, 103, 200]
    assert list(heads[0].headers) == [
        (b"link", b"</style.css>; rel=preload; as=style"),
        (b"link", b"</a.js>; rel=preload"),
    ]
    assert data == b"ok"


def test_early_hint_is_dropped_after_the_head_to_http_10_or_without_links() -> None:
    """No 103 once the final head went out, to an HTTP/1.0 client, or with no links."""
    response = Response()
    response.on_send({"type": "http.response.start", "status": 200, "headers": []})
    response.on_send(body(b"a", more=True))
    assert response.on_send(hint(b"</a.js>; rel=preload")) == b""
    assert Response(http_10=True).on_send(hint(b"</a.js>; rel=preload")) == b""
    assert Response().on_send(hint()) == b""


@pytest.mark.parametrize(
    "links", ["</a>; rel=preload", [b"</a>\r\nx: 1"], ["</a>"], [1], None, b"</a>"]
)
def test_bad_early_hint_links_are_refused(links: Any) -> None:
    """Links must be an iterable of byte strings without CR, LF or NUL."""
    with pytest.raises(ASGIProtocolError):
        early_hint_links({"type": "http.response.early_hint", "links": links})


def test_trailer_fields_are_lowercased_and_checked() -> None:
    """Trailer names come out lowercase; an empty message has no fields."""
    assert trailer_fields(trailers((b"X-Sum", b"1"))) == [(b"x-sum", b"1")]
    assert trailer_fields({"type": "http.response.trailers"}) == []


@pytest.mark.parametrize(
    ("values", "accepts"),
    [
        ([b"trailers"], True),
        ([b"gzip, Trailers"], True),
        ([b"deflate;q=0.5, trailers;q=1"], True),
        ([b"gzip"], False),
        ([b"gzip", b"trailers"], True),
        ([], False),
        ([b"trailersx"], False),
    ],
)
def test_accepts_trailers_reads_te(values: list[bytes], accepts: bool) -> None:
    """A request accepts trailers when a TE field lists the 'trailers' member."""
    headers = [(b"host", b"a"), *((b"te", value) for value in values)]
    assert accepts_trailers(headers) is accepts


# -- pathsend ---------------------------------------------------------------------------

FILE_START = {"type": "http.response.start", "status": 200, "headers": []}


def pathsend(path: Any = "/srv/file.bin") -> dict[str, Any]:
    return {"type": "http.response.pathsend", "path": path}


def test_pathsend_after_the_start_asks_the_edge_for_the_file() -> None:
    """http.response.pathsend in the body phase raises PathSend with the file's path;
    before http.response.start it is out of order."""
    response = Response()
    with pytest.raises(ASGIProtocolError, match=r"expected 'http\.response\.start' first"):
        response.on_send(pathsend())
    response.on_send(FILE_START)
    with pytest.raises(PathSend) as raised:
        response.on_send(pathsend())
    assert raised.value.path == "/srv/file.bin"
    assert response.phase is ResponsePhase.BODY


@pytest.mark.parametrize("path", ["relative/file", b"/srv/file", None, "/a\x00b"])
def test_pathsend_path_must_be_an_absolute_string(path: Any) -> None:
    """The path of http.response.pathsend is an absolute path as a str."""
    with pytest.raises(ASGIProtocolError, match="absolute path"):
        pathsend_path(pathsend(path))


def test_file_body_gives_the_head_with_the_files_length_and_completes() -> None:
    """Without a Content-Length from the app, the file's size is the length; the head
    comes before the file's bytes, and the response is complete and reusable."""
    response = Response()
    response.on_send(FILE_START)
    plan = response.file_body(1000)
    assert plan is not None
    head, count = plan
    assert count == 1000
    assert b"content-length: 1000\r\n" in head and head.endswith(b"\r\n\r\n")
    assert response.phase is ResponsePhase.DONE and response.keep_alive
    assert response.body_bytes == 1000


def test_file_body_keeps_the_apps_length_and_sends_nothing_for_head() -> None:
    """The app's Content-Length is sent as it set it; a HEAD response writes none of the
    file."""
    response = Response(head=True)
    response.on_send({**FILE_START, "headers": [(b"content-length", b"1000")]})
    plan = response.file_body(1000)
    assert plan is not None
    assert plan[1] == 0 and b"content-length: 1000\r\n" in plan[0]


@pytest.mark.parametrize(
    ("start", "kwargs"),
    [
        ({**FILE_START, "headers": [(b"content-length", b"999")]}, {}),
        ({**FILE_START, "headers": [(b"transfer-encoding", b"chunked")]}, {}),
        ({**FILE_START, "trailers": True}, {}),
    ],
)
def test_file_body_refuses_what_needs_the_bytes(start: dict[str, Any], kwargs: Any) -> None:
    """No raw file body when the length the app promised differs, the app asked for
    chunked framing, or trailers follow: the bytes then go through on_send."""
    response = Response(**kwargs)
    response.on_send(start)
    assert response.file_body(1000) is None
    assert response.phase is ResponsePhase.BODY and not response.head_sent


def test_file_body_after_part_of_the_body_needs_the_exact_rest() -> None:
    """After body messages, a file fits only as exactly the rest of the length."""
    response = Response()
    response.on_send({**FILE_START, "headers": [(b"content-length", b"10")]})
    response.on_send(body(b"abcd", more=True))
    assert response.file_body(5) is None
    assert response.file_body(6) == (b"", 6)
    assert response.phase is ResponsePhase.DONE

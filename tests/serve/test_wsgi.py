"""WSGI apps through wsgi_to_asgi, driven with hand-written receive and send: no sockets."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from trioserve import ClientDisconnected
from trioserve._types import Message
from trioserve._wsgi import Environ, StartResponse, WSGIApp, wsgi_to_asgi

Headers = Sequence[tuple[bytes, bytes]]


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    query: bytes = b"",
    headers: Headers = (),
    root_path: str = "",
    scheme: str = "http",
    server: tuple[str, int | None] | None = ("testserver", 8000),
    client: tuple[str, int] | None = ("10.1.2.3", 50000),
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": query,
        "root_path": root_path,
        "headers": list(headers),
        "client": client,
        "server": server,
        "extensions": {},
    }


def body_receive(chunks: Sequence[bytes] = (b"",)) -> Any:
    """A receive() handing out ``chunks`` as the request body, then failing if called again."""
    pending = list(chunks)

    async def receive() -> Message:
        await trio.lowlevel.checkpoint()
        if not pending:
            raise AssertionError("receive() was called after the body had ended")
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return receive


class Recorder:
    """A send() that records messages, and reads the response back from them."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(dict(message))

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.sent[0]["headers"])

    @property
    def chunks(self) -> list[bytes]:
        """The non-final body chunks, after checking the messages are well formed."""
        assert self.sent[0]["type"] == "http.response.start"
        bodies = self.sent[1:]
        assert all(m["type"] == "http.response.body" for m in bodies)
        assert [m["more_body"] for m in bodies] == [True] * (len(bodies) - 1) + [False]
        assert bodies[-1]["body"] == b""
        return [m["body"] for m in bodies[:-1]]


async def call(
    app: WSGIApp,
    scope: dict[str, Any] | None = None,
    body: Sequence[bytes] = (b"",),
    *,
    threads: int = 10,
) -> Recorder:
    send = Recorder()
    adapter = wsgi_to_asgi(app, threads=threads)
    with trio.fail_after(5):
        await adapter(scope or http_scope(), body_receive(body), send)
    return send


def environ_of(scope: dict[str, Any]) -> Any:
    """An app that stores the environ it was given, and answers 204."""
    seen: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ)
        start_response("204 No Content", [])
        return []

    async def run() -> Environ:
        await call(app, scope)
        return seen[0]

    return run()


# --- the environ ----------------------------------------------------------------------


async def test_environ_has_the_pep_3333_keys_and_nothing_else():
    """The environ has the CGI variables and wsgi.* keys of PEP 3333, and wsgi.input_terminated."""
    environ = await environ_of(http_scope("/items", method="POST", query=b"a=1&b=caf%C3%A9"))
    assert set(environ) == {
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "RAW_URI",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "wsgi.version",
        "wsgi.url_scheme",
        "wsgi.input",
        "wsgi.input_terminated",
        "wsgi.errors",
        "wsgi.multithread",
        "wsgi.multiprocess",
        "wsgi.run_once",
    }
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/items"
    assert environ["QUERY_STRING"] == "a=1&b=caf%C3%A9"
    assert environ["RAW_URI"] == "/items?a=1&b=caf%C3%A9"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("testserver", "8000")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.1.2.3", "50000")
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is False
    assert environ["wsgi.run_once"] is False
    # gunicorn's extension, which Werkzeug needs to read a chunked body (issue 12).
    assert environ["wsgi.input_terminated"] is True
    assert all(type(value) is str for key, value in environ.items() if key.isupper())


@pytest.mark.parametrize(
    ("path", "path_info"),
    [
        ("/", "/"),
        ("/plain/path", "/plain/path"),
        ("/caf\u00e9", "/caf\xc3\xa9"),  # from /caf%C3%A9: the UTF-8 bytes, one char each
        ("/\u20ac/\u65e5\u672c", "/\xe2\x82\xac/\xe6\x97\xa5\xe6\x9c\xac"),
        ("/a b/%2F", "/a b/%2F"),
    ],
)
async def test_path_info_is_utf8_bytes_as_latin1(path: str, path_info: str):
    """PATH_INFO is the decoded path's UTF-8 bytes as a latin-1 native string."""
    environ = await environ_of(http_scope(path))
    assert environ["PATH_INFO"] == path_info
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == path


@pytest.mark.parametrize(
    ("root_path", "script_name"),
    [("", ""), ("/mount", "/mount"), ("/caf\u00e9", "/caf\xc3\xa9")],
)
async def test_root_path_is_script_name(root_path: str, script_name: str):
    """The scope's root_path becomes SCRIPT_NAME and PATH_INFO the rest of the path,
    which begins with root_path (ASGI); RAW_URI is the target the client sent."""
    environ = await environ_of(http_scope(root_path + "/p%2Fage", root_path=root_path))
    assert environ["SCRIPT_NAME"] == script_name
    assert environ["PATH_INFO"] == "/p%2Fage"
    assert environ["RAW_URI"] == "/p%2Fage"


async def test_path_outside_root_path_is_path_info_whole():
    """A scope path that does not begin with root_path (an app called directly) is
    PATH_INFO as it is."""
    environ = await environ_of(http_scope("/elsewhere", root_path="/mount"))
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/mount", "/elsewhere")


async def test_query_string_is_latin1():
    """QUERY_STRING is the raw query bytes decoded as latin-1."""
    environ = await environ_of(http_scope(query=b"q=\xff\xfe&x=%20"))
    assert environ["QUERY_STRING"] == "q=\xff\xfe&x=%20"


async def test_headers_become_http_variables():
    """Headers become HTTP_* keys; content type and length lose the prefix and aren't doubled."""
    headers = [
        (b"host", b"example.com"),
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"accept", b"text/html"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"x-name", b"caf\xe9"),
    ]
    environ = await environ_of(http_scope(headers=headers))
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_HOST"] == "example.com"
    assert environ["HTTP_ACCEPT"] == "text/html"
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.1.1.1, 2.2.2.2"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_X_NAME"] == "caf\u00e9"


async def test_header_names_with_underscores_are_dropped():
    """A header spelled with '_' cannot pose as the dashed one a proxy set."""
    headers = [(b"x-user", b"alice"), (b"x_user", b"admin")]
    environ = await environ_of(http_scope(headers=headers))
    assert environ["HTTP_X_USER"] == "alice"


async def test_no_content_type_or_length_without_those_headers():
    """CONTENT_TYPE and CONTENT_LENGTH are absent when the request has no such headers."""
    environ = await environ_of(http_scope())
    assert "CONTENT_TYPE" not in environ
    assert "CONTENT_LENGTH" not in environ


@pytest.mark.parametrize(
    ("server", "host", "scheme", "expected"),
    [
        (("127.0.0.1", 9000), b"example.com:8080", "http", ("127.0.0.1", "9000")),
        (None, b"example.com:8080", "http", ("example.com", "8080")),
        (None, b"example.com", "http", ("example.com", "80")),
        (None, b"example.com", "https", ("example.com", "443")),
        (None, b"[::1]:9000", "http", ("[::1]", "9000")),
        (None, b"[::1]", "http", ("[::1]", "80")),
        (("/run/app.sock", None), b"example.com:81", "http", ("example.com", "81")),
        (None, None, "http", ("localhost", "80")),
    ],
)
async def test_server_name_and_port(
    server: tuple[str, int | None] | None,
    host: bytes | None,
    scheme: str,
    expected: tuple[str, str],
):
    """SERVER_NAME/PORT come from the scope's server, else the Host header, else defaults."""
    headers = [] if host is None else [(b"host", host)]
    environ = await environ_of(http_scope(server=server, headers=headers, scheme=scheme))
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == expected
    assert environ["wsgi.url_scheme"] == scheme


async def test_no_remote_address_when_the_client_is_unknown():
    """REMOTE_ADDR and REMOTE_PORT are left out when the scope has no client."""
    environ = await environ_of(http_scope(client=None))
    assert "REMOTE_ADDR" not in environ
    assert "REMOTE_PORT" not in environ


# --- wsgi.input -----------------------------------------------------------------------


async def test_input_is_streamed_as_the_app_reads():
    """The app gets the first chunk before the second exists: the body is not buffered."""
    first_read = trio.Event()
    second_ready = trio.Event()
    received = 0
    reads: list[bytes] = []

    async def receive() -> Message:
        nonlocal received
        received += 1
        if received == 1:
            return {"type": "http.request", "body": b"hello ", "more_body": True}
        await second_ready.wait()
        return {"type": "http.request", "body": b"world", "more_body": False}

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        reads.append(stream.read(6))
        trio.from_thread.run_sync(first_read.set)
        reads.append(stream.read())
        start_response("200 OK", [])
        return reads

    send = Recorder()
    adapter = wsgi_to_asgi(app, threads=1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(adapter, http_scope(method="POST"), receive, send)
            await first_read.wait()
            assert reads == [b"hello "]
            assert received == 1
            second_ready.set()
    assert send.chunks == [b"hello ", b"world"]


async def test_multiprocess_is_what_the_adapter_was_told():
    """wsgi.multiprocess is True when the adapter is told other processes serve the app."""
    seen: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ)
        start_response("204 No Content", [])
        return []

    adapter = wsgi_to_asgi(app, threads=1, multiprocess=True)
    with trio.fail_after(5):
        await adapter(http_scope(), body_receive(), Recorder())
    assert seen[0]["wsgi.multiprocess"] is True


async def test_input_can_be_read_from_a_thread_the_app_started():
    """A thread the app starts itself (Django's async views under WSGI) reads the whole body."""
    bodies: list[bytes] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        reader = threading.Thread(target=lambda: bodies.append(environ["wsgi.input"].read()))
        reader.start()
        reader.join(5)
        start_response("200 OK", [])
        return bodies

    send = await call(app, http_scope(method="POST"), [b"read ", b"from ", b"my thread"])
    assert send.status == 200
    assert send.chunks == [b"read from my thread"]


async def test_read_with_a_size_spans_chunks_and_stops_at_the_end():
    """read(n) returns n bytes across chunk boundaries, fewer at the end, then b''."""
    reads: list[bytes] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        reads.extend([stream.read(0), stream.read(4), stream.read(4), stream.read(100)])
        reads.extend([stream.read(), stream.read(1)])
        start_response("200 OK", [])
        return []

    await call(app, body=[b"ab", b"cdef", b"", b"ghi"])
    assert reads == [b"", b"abcd", b"efgh", b"i", b"", b""]


async def test_readline_readlines_and_iteration():
    """readline (with and without a size), readlines and iteration split lines across chunks."""
    results: dict[str, Any] = {}

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        results["line"] = stream.readline()
        results["sized"] = [stream.readline(3), stream.readline(-1)]
        results["hinted"] = stream.readlines(2)
        results["iterated"] = list(stream)
        results["after"] = [stream.readline(), stream.readlines()]
        start_response("200 OK", [])
        return []

    await call(app, body=[b"first li", b"ne\nsecond\nthi", b"rd\nfourth\n", b"last"])
    assert results == {
        "line": b"first line\n",
        "sized": [b"sec", b"ond\n"],
        "hinted": [b"third\n"],
        "iterated": [b"fourth\n", b"last"],
        "after": [b"", []],
    }


async def test_readlines_reads_everything_without_a_hint():
    """readlines() with no hint returns every remaining line."""
    lines: list[bytes] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        lines.extend(environ["wsgi.input"].readlines())
        start_response("200 OK", [])
        return []

    await call(app, body=[b"a\nb", b"\nc\n"])
    assert lines == [b"a\n", b"b\n", b"c\n"]


async def test_disconnect_ends_the_input():
    """An http.disconnect while reading is the end of the body, not an error."""
    messages: list[Message] = [
        {"type": "http.request", "body": b"partial", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        await trio.lowlevel.checkpoint()
        return messages.pop(0)

    bodies: list[bytes] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        bodies.extend([environ["wsgi.input"].read(), environ["wsgi.input"].read()])
        start_response("200 OK", [])
        return []

    with trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)(http_scope(), receive, Recorder())
    assert bodies == [b"partial", b""]


# --- the response ---------------------------------------------------------------------


async def test_response_is_sent_chunk_by_chunk():
    """Status and latin-1 headers go in the start message; each non-empty chunk is sent alone."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Name", "caf\u00e9")])
        return [b"one", b"", b"two"]

    send = await call(app)
    assert send.status == 201
    assert send.headers == [(b"Content-Type", b"text/plain"), (b"X-Name", b"caf\xe9")]
    assert send.chunks == [b"one", b"two"]


async def test_generator_may_call_start_response_while_iterated():
    """A generator app calls start_response on its first step; the start is sent after it."""

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"lazy"

    send = await call(app)
    assert send.status == 200
    assert send.chunks == [b"lazy"]


async def test_empty_response_still_sends_start_and_end():
    """An app returning no body sends the start, then one final empty body message."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("204 No Content", [])
        return []

    send = await call(app)
    assert send.status == 204
    assert send.chunks == []
    assert len(send.sent) == 2


async def test_write_callable_sends_at_once_before_the_iterable():
    """write() sends the start and its bytes immediately; the iterable's chunks follow."""
    sent_before_return: list[int] = []
    send = Recorder()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [])
        assert send.sent == []
        write(b"written ")
        write(b"")
        sent_before_return.append(len(send.sent))
        return [b"returned"]

    with trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)(http_scope(), body_receive(), send)
    assert sent_before_return == [2]
    assert send.chunks == [b"written ", b"returned"]


async def test_content_length_is_passed_through_and_limits_the_body():
    """The app's Content-Length is sent, and iteration stops once that many bytes went out."""
    steps: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        steps.append("hel")
        yield b"hel"
        steps.append("lo!")
        yield b"lo!"
        steps.append("more")
        yield b"more"

    send = await call(app)
    assert send.headers == [(b"Content-Length", b"5")]
    assert send.chunks == [b"hel", b"lo"]
    assert steps == ["hel", "lo!"]


async def test_write_past_content_length_raises():
    """write() refuses bytes beyond the app's Content-Length."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Length", "3")])
        write(b"four")
        return []

    with pytest.raises(RuntimeError, match="goes past the app's Content-Length"):
        await call(app)


class ClosingBody:
    """A response iterable with close(), which can fail after some chunks."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_after:
                raise ValueError("broken iterable")
            yield chunk

    def close(self) -> None:
        self.closed += 1


async def test_close_is_called_on_the_iterable():
    """The response iterable's close() is called once after it was sent."""
    body = ClosingBody([b"a", b"b"])

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    send = await call(app)
    assert send.chunks == [b"a", b"b"]
    assert body.closed == 1


async def test_close_is_called_when_iteration_raises():
    """An exception mid-iteration propagates, after close() was called on the iterable."""
    body = ClosingBody([b"a", b"b"], fail_after=1)
    send = Recorder()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return body

    with pytest.raises(ValueError, match="broken iterable"), trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)(http_scope(), body_receive(), send)
    assert body.closed == 1
    assert [m["type"] for m in send.sent] == ["http.response.start", "http.response.body"]


class LeavingClient(Recorder):
    """A send() whose client leaves after ``chunks`` body chunks: from then on it
    raises ClientDisconnected, as the HTTP edge's send() does."""

    def __init__(self, chunks: int) -> None:
        super().__init__()
        self.left_after = chunks

    async def __call__(self, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        if sum(m["type"] == "http.response.body" for m in self.sent) >= self.left_after:
            raise ClientDisconnected("the client has gone")
        self.sent.append(dict(message))


async def test_streaming_stops_and_close_is_called_once_the_client_has_gone(caplog):
    """When sending raises ClientDisconnected, the response iterable is not iterated
    further, its close() is called (PEP 3333), and the request ends without an error."""
    produced = 0
    closed = threading.Event()

    def endless() -> Iterator[bytes]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield b"event\n"
        finally:
            closed.set()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return endless()

    send = LeavingClient(chunks=3)
    with trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)(http_scope(), body_receive(), send)
    assert closed.is_set()
    assert produced == 4  # three sent, the fourth found the client gone
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_write_callable_raising_client_disconnected_ends_the_request_quietly(caplog):
    """An app streaming through write() that lets ClientDisconnected propagate ends
    the request without an error."""
    writes = 0

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        nonlocal writes
        write = start_response("200 OK", [])
        for _ in range(1000):
            write(b"x")
            writes += 1
        return []

    send = LeavingClient(chunks=2)
    with trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)(http_scope(), body_receive(), send)
    assert writes == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_close_is_called_when_start_response_was_never_called():
    """An app that returns without start_response is an error, and its iterable is closed."""
    body = ClosingBody([])

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return body

    with pytest.raises(RuntimeError, match=r"without calling start_response\(\)"):
        await call(app)
    assert body.closed == 1


async def test_exception_from_the_app_propagates():
    """An exception raised by the app comes out of the ASGI app unchanged; nothing was sent."""
    send = Recorder()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"), trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)(http_scope(), body_receive(), send)
    assert send.sent == []


async def test_exc_info_replaces_the_response_before_it_is_sent():
    """start_response with exc_info before any body replaces the status and headers."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("X-Stage", "first")])
        try:
            raise ValueError("failed while rendering")
        except ValueError:
            start_response("500 Internal Server Error", [("X-Stage", "error")], sys.exc_info())
        return [b"error page"]

    send = await call(app)
    assert send.status == 500
    assert send.headers == [(b"X-Stage", b"error")]
    assert send.chunks == [b"error page"]


async def test_exc_info_reraises_once_the_headers_were_sent():
    """start_response with exc_info after the headers went out re-raises that exception."""
    send = Recorder()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise ValueError("failed mid-response")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"never sent"]

    with pytest.raises(ValueError, match="failed mid-response"), trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)(http_scope(), body_receive(), send)
    assert send.sent[0]["status"] == 200
    assert [m.get("body") for m in send.sent[1:]] == [b"partial"]


async def test_second_start_response_without_exc_info_is_an_error():
    """Calling start_response twice without exc_info raises."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        start_response("404 Not Found", [])
        return []

    with pytest.raises(RuntimeError, match="a second time without exc_info"):
        await call(app)


@pytest.mark.parametrize(
    ("status", "headers", "error", "match"),
    [
        ("200 OK", [("X-Evil", "a\r\nSet-Cookie: x=1")], ValueError, "contains a CR or LF"),
        ("200 OK", [("X-Evil\n", "a")], ValueError, "contains a CR or LF"),
        ("200 OK", [("X-Num", 5)], TypeError, "must be a \\(name, value\\) tuple of str"),
        ("200 OK", [(b"X-Bytes", b"v")], TypeError, "must be a \\(name, value\\) tuple of str"),
        ("200 OK", [("X-Name", "\u20ac")], ValueError, "is not latin-1 text"),
        ("200 OK", {"X-Dict": "v"}, TypeError, "headers must be a list"),
        ("OK", [], ValueError, "three digits and a reason"),
        ("200OK", [], ValueError, "three digits and a reason"),
        ("200 OK\r\nX: y", [], ValueError, "three digits and a reason"),
        (200, [], TypeError, "status must be a str"),
    ],
)
async def test_bad_status_or_headers_are_refused(
    status: Any, headers: Any, error: type[Exception], match: str
):
    """A status or header that is not a clean str raises a clear error, and nothing is sent."""
    send = Recorder()

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response(status, headers)
        return [b"body"]

    with pytest.raises(error, match=match), trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)(http_scope(), body_receive(), send)
    assert send.sent == []


async def test_str_body_chunk_is_refused():
    """A str yielded instead of bytes is a TypeError."""

    def app(environ: Environ, start_response: StartResponse) -> Any:
        start_response("200 OK", [])
        return ["text"]

    with pytest.raises(TypeError, match="body must be bytes"):
        await call(app)


# --- wsgi.errors ----------------------------------------------------------------------


async def test_wsgi_errors_logs_each_line_at_error(caplog: pytest.LogCaptureFixture):
    """Lines written to wsgi.errors are logged one per record; a partial line at the end too."""
    caplog.set_level(logging.DEBUG, logger="trioserve.wsgi")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        errors = environ["wsgi.errors"]
        errors.write("first\nsec")
        errors.write("ond\n")
        errors.writelines(["flushed ", "early"])
        errors.flush()
        errors.write("no newline at the end")
        start_response("200 OK", [])
        return []

    await call(app)
    records = [r for r in caplog.records if r.name == "trioserve.wsgi"]
    assert [r.getMessage() for r in records] == [
        "first",
        "second",
        "flushed early",
        "no newline at the end",
    ]
    assert {r.levelno for r in records} == {logging.ERROR}


# --- threads --------------------------------------------------------------------------


def waits_for_a_thread(task: trio.lowlevel.Task) -> bool:
    """Whether ``task`` waits in a limiter's acquire_on_behalf_of, as to_thread.run_sync does."""
    return any(
        frame.f_code.co_name == "acquire_on_behalf_of" for frame, _ in task.iter_await_frames()
    )


async def test_thread_count_is_bounded():
    """With threads=2, a third concurrent request waits until one of the first two is done."""
    names = ("/a", "/b", "/c")
    started = {name: trio.Event() for name in names}
    release = {name: trio.Event() for name in names}
    log: list[str] = []
    lock = threading.Lock()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        name = environ["PATH_INFO"]
        with lock:
            log.append(f"start {name}")
        trio.from_thread.run_sync(started[name].set)
        trio.from_thread.run(release[name].wait)
        with lock:
            log.append(f"end {name}")
        start_response("200 OK", [])
        return [name.encode()]

    adapter = wsgi_to_asgi(app, threads=2)
    sends = {name: Recorder() for name in names}
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for name in names[:2]:
                nursery.start_soon(adapter, http_scope(name), body_receive(), sends[name])
                await started[name].wait()
            nursery.start_soon(adapter, http_scope("/c"), body_receive(), sends["/c"], name="/c")
            await trio.testing.wait_all_tasks_blocked()
            [waiting] = [task for task in nursery.child_tasks if task.name == "/c"]
            # Parked in trio on the adapter's limiter, not running in a thread of its own.
            assert waits_for_a_thread(waiting)
            assert not started["/c"].is_set()
            release["/a"].set()
            await started["/c"].wait()
            assert log == ["start /a", "start /b", "end /a", "start /c"]
            release["/b"].set()
            release["/c"].set()
    assert {name: send.chunks for name, send in sends.items()} == {
        name: [name.encode()] for name in names
    }


async def test_cancelled_request_abandons_its_thread():
    """Cancelling the ASGI call (a stop's deadline) returns at once, abandoning the thread
    (an app blocked there must not hold the stop); the thread, run on, sends nothing, and
    keeps its place in the limiter until it returns."""
    entered = trio.Event()
    proceed = threading.Event()
    finished: list[str] = []
    returned = trio.Event()
    send = Recorder()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        trio.from_thread.run_sync(entered.set)
        proceed.wait(5)
        finished.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"too late"]

    adapter = wsgi_to_asgi(app, threads=1)
    request_scope = trio.CancelScope()
    second = Recorder()

    async def request() -> None:
        with request_scope:
            await adapter(http_scope("/slow"), body_receive(), send)
        returned.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await entered.wait()
            request_scope.cancel()
            await returned.wait()
            assert finished == []
            # The one thread is still the abandoned request's: the next request waits.
            nursery.start_soon(adapter, http_scope("/next"), body_receive(), second)
            await trio.testing.wait_all_tasks_blocked()
            assert finished == []
            proceed.set()
    assert finished == ["/slow", "/next"]
    # Sending from the abandoned thread raised trio.Cancelled there: nothing went out.
    assert send.sent == []
    assert second.chunks == [b"too late"]
    assert request_scope.cancelled_caught


# --- other connection types -----------------------------------------------------------


async def test_lifespan_completes_startup_and_shutdown():
    """A lifespan connection completes startup and shutdown without calling the app."""
    messages: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> Message:
        await trio.lowlevel.checkpoint()
        return messages.pop(0)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise AssertionError("the WSGI app is not called for lifespan")

    send = Recorder()
    with trio.fail_after(5):
        await wsgi_to_asgi(app, threads=1)({"type": "lifespan", "state": {}}, receive, send)
    assert send.sent == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]


async def test_websocket_scope_is_refused():
    """A websocket connection raises: WSGI serves HTTP only."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise AssertionError("the WSGI app is not called for websockets")

    scope = {**http_scope(), "type": "websocket"}
    with pytest.raises(RuntimeError, match="WSGI apps serve HTTP only; got a 'websocket'"):
        await wsgi_to_asgi(app, threads=1)(scope, body_receive(), Recorder())


@pytest.mark.parametrize("threads", [0, -1, True, 2.5])
def test_threads_must_be_a_positive_integer(threads: Any):
    """threads below 1 or not an integer is refused when the adapter is built."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return []

    with pytest.raises(ValueError, match="threads: expected an integer of at least 1"):
        wsgi_to_asgi(app, threads=threads)

"""The corpus of raw requests in tests/data/requests, served over memory streams.

Each valid request must reach the app with the scope and body its ``.expect`` file
names; each invalid one must be answered with its ``.status`` and a closed connection,
without reaching the app (or, for a bad body, without the app getting it whole) and
without an error-level log. Hypothesis splits the bytes at
random points: what the app sees and the statuses the client gets must not change.
See tests/data/requests/README.md for the file formats.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import read_until_eof, serve_http_connection, tcp_connection
from trioserve import Config
from trioserve._state import ServerState
from trioserve._types import Receive, Scope, Send

# Every case runs on each HTTP/1.1 parser (--http): the rules are trioserve's, whatever
# parses the bytes.
pytestmark = pytest.mark.usefixtures("http_parser")

CORPUS = Path(__file__).resolve().parent.parent / "data" / "requests"
# Scope keys an .expect file may name; the rest of the scope is not the parser's business.
STR_KEYS = ("method", "path", "http_version")
BYTES_KEYS = ("raw_path", "query_string")
APP_BODY = b"ok"


@dataclass(frozen=True)
class ValidCase:
    name: str
    data: bytes
    expected: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InvalidCase:
    name: str
    data: bytes
    status: int
    config: dict[str, Any] = field(default_factory=dict)
    # A body error is found while the app reads the body: the app was called.
    app_may_run: bool = False


def _load_valid(path: Path) -> ValidCase:
    expect = json.loads(path.with_suffix(".expect").read_text())
    expected = expect if isinstance(expect, list) else [expect]
    config: dict[str, Any] = {}
    for item in expected:
        config.update(item.pop("config", {}))
    return ValidCase(path.stem, path.read_bytes(), expected, config)


def _load_invalid(path: Path) -> InvalidCase:
    spec = json.loads(path.with_suffix(".status").read_text())
    if isinstance(spec, int):
        return InvalidCase(path.stem, path.read_bytes(), spec)
    return InvalidCase(
        path.stem,
        path.read_bytes(),
        spec["status"],
        spec.get("config", {}),
        spec.get("app_may_run", False),
    )


VALID_FILES = [_load_valid(p) for p in sorted((CORPUS / "valid").glob("*.http"))]
INVALID_FILES = [_load_invalid(p) for p in sorted((CORPUS / "invalid").glob("*.http"))]

# ---------------------------------------------------------------- generated cases
# Too large to keep as files; built here from the same pieces a file would hold.

_BIG_BODY = bytes(range(256)) * 400  # 100 KiB, every byte value
_CHUNKS = [_BIG_BODY[i : i + 10240] for i in range(0, len(_BIG_BODY), 10240)]

VALID_GENERATED = [
    ValidCase(
        "generated_content_length_100k",
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n%s"
        % (len(_BIG_BODY), _BIG_BODY),
        [{"method": "POST", "path": "/upload", "body": _BIG_BODY.decode("latin-1")}],
    ),
    ValidCase(
        "generated_chunked_100k",
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in _CHUNKS)
        + b"0\r\n\r\n",
        [{"method": "POST", "path": "/upload", "body": _BIG_BODY.decode("latin-1")}],
    ),
    # 31 fields of 1 KiB: within the default head limit of 32 KiB.
    ValidCase(
        "generated_head_31k",
        b"GET /big-head HTTP/1.1\r\nHost: example.com\r\n"
        + b"".join(b"X-%02d: %s\r\n" % (i, b"v" * 1017) for i in range(31))
        + b"\r\n",
        [{"path": "/big-head"}],
    ),
]

INVALID_GENERATED = [
    # Fields each within their limits, adding up past the default head limit of 32 KiB:
    # refused while the head arrives.
    InvalidCase(
        "generated_head_over_32k_unterminated",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n"
        + b"".join(b"X-%02d: %s\r\n" % (i, b"v" * 8000) for i in range(5)),
        431,
    ),
    # Heads that never end: refused as soon as they break a limit, not at the blank line.
    InvalidCase("generated_request_line_64k_unterminated", b"GET /" + b"a" * 65536, 414),
    InvalidCase(
        "generated_header_fields_unterminated",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n" + b"X-A: b\r\n" * 200,
        431,
    ),
    InvalidCase(
        "generated_header_field_64k_unterminated",
        b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: " + b"v" * 65536,
        431,
    ),
]


def _params(cases: Sequence[ValidCase | InvalidCase]) -> list[Any]:
    return [pytest.param(case, id=case.name) for case in cases]


# ---------------------------------------------------------------- driving a connection


@dataclass
class Exchange:
    """What one connection saw: the bytes sent back, and each request the app finished."""

    response: bytes
    requests: list[tuple[dict[str, Any], bytes]]
    app_calls: int


async def exchange(
    pieces: Sequence[bytes], config: dict[str, Any], transport: str = "memory"
) -> Exchange:
    """Serve one connection: send ``pieces`` one by one, then EOF; read until the server
    closes. ``transport`` "socket" serves a real TCP connection over 127.0.0.1, whose
    socket the edge reads and writes directly, as it does behind the accept loop."""
    requests: list[tuple[dict[str, Any], bytes]] = []
    app_calls = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal app_calls
        app_calls += 1
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # The server refused the body and answers for us.
                return
            body += message["body"]
            if not message.get("more_body", False):
                break
        requests.append((dict(scope), bytes(body)))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(APP_BODY))],
            }
        )
        await send({"type": "http.response.body", "body": APP_BODY})

    state = ServerState(Config(**config))
    client: trio.abc.HalfCloseableStream
    if transport == "socket":
        client, socket_stream, sock = await tcp_connection()
        serve = functools.partial(serve_http_connection, socket_stream, app, state, sock=sock)
    else:
        client, server = trio.testing.memory_stream_pair()
        serve = functools.partial(serve_http_connection, server, app, state)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                for piece in pieces:
                    await client.send_all(piece)
                    await trio.testing.wait_all_tasks_blocked()
                await client.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server closed early; what it answered is still to be read
            response = await read_until_eof(client)
    return Exchange(response, requests, app_calls)


def split(data: bytes, points: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def final_statuses(data: bytes, methods: Sequence[str]) -> list[int]:
    """The statuses of the final responses in ``data``, in order; 1xx are skipped.

    ``methods`` are the requests' methods in order: a HEAD response has no body.
    """
    statuses: list[int] = []
    pending = list(methods)
    rest = data
    while rest:
        head, blank, rest = rest.partition(b"\r\n\r\n")
        assert blank, f"incomplete response head {head!r}"
        status_line, *lines = head.split(b"\r\n")
        version, status, _ = status_line.split(b" ", 2)
        assert version == b"HTTP/1.1", status_line
        code = int(status)
        if code < 200:
            continue
        statuses.append(code)
        fields = dict(line.lower().split(b": ", 1) for line in lines)
        length = int(fields[b"content-length"])
        if (pending.pop(0) if pending else "GET") != "HEAD":
            assert len(rest) >= length, f"response body cut short: {rest!r}"
            rest = rest[length:]
    return statuses


def seen(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The parts of a request the corpus pins, in the .expect file's terms."""
    result: dict[str, Any] = {key: scope[key] for key in STR_KEYS}
    result.update({key: scope[key].decode("latin-1") for key in BYTES_KEYS})
    result["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
    result["body"] = body.decode("latin-1")
    return result


def assert_matches(exchange: Exchange, case: ValidCase) -> None:
    methods = [item.get("method", "GET") for item in case.expected]
    assert final_statuses(exchange.response, methods) == [200] * len(case.expected)
    got = [seen(scope, body) for scope, body in exchange.requests]
    assert len(got) == len(case.expected)
    for actual, expected in zip(got, case.expected, strict=True):
        assert {key: actual[key] for key in expected} == expected


def assert_refused(exchange: Exchange, case: InvalidCase) -> None:
    assert exchange.response.startswith(b"HTTP/1.1 %d " % case.status), exchange.response[:200]
    assert b"\r\nconnection: close\r\n" in exchange.response.lower()
    if not case.app_may_run:
        assert exchange.app_calls == 0
    assert exchange.requests == []


def error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- tests


def test_corpus_is_big_enough() -> None:
    """The corpus holds at least 25 valid and 30 invalid requests, each with its expectation."""
    assert len(VALID_FILES) >= 25
    assert len(INVALID_FILES) >= 30


TRANSPORTS = pytest.mark.parametrize("transport", ["memory", "socket"])


@TRANSPORTS
@pytest.mark.parametrize("case", _params(VALID_FILES + VALID_GENERATED))
async def test_valid_request(
    case: ValidCase, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid request reaches the app with the scope and body of its .expect file, and
    200, over a memory stream and over a real socket."""
    result = await exchange([case.data], case.config, transport)
    assert_matches(result, case)
    assert error_logs(caplog) == []


@TRANSPORTS
@pytest.mark.parametrize("case", _params(INVALID_FILES + INVALID_GENERATED))
async def test_invalid_request(
    case: InvalidCase, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid request gets its status and Connection: close, never reaches the app whole,
    and logs nothing at error level, over a memory stream and over a real socket."""
    result = await exchange([case.data], case.config, transport)
    assert_refused(result, case)
    assert error_logs(caplog) == []


_SPLIT_VALID = list(VALID_FILES)
# Cases where a split can land on a limit's boundary or inside the chunked framing.
_SPLIT_INVALID = [
    case
    for case in INVALID_FILES
    if case.name
    in {
        "request_line_over_limit",
        "header_fields_over_limit",
        "header_field_over_size_limit",
        "content_length_and_transfer_encoding",
        "obs_fold_continuation_line",
        "bare_cr_as_line_end",
        "missing_host_http11",
        "version_2_0",
        "chunk_size_17_hex_digits",
        "chunk_size_line_bare_lf",
        "chunk_data_not_followed_by_crlf",
        "trailer_line_bare_lf",
        "body_over_limit_content_length",
        "body_over_limit_chunked",
        "header_bare_lf_hides_content_length",
        "lone_cr_before_request_line",
        "control_07_in_header_value",
        "chunk_extension_bare_cr",
        "chunk_size_trailing_space",
        "tls_client_hello",
        "garbage_binary_unterminated",
    }
]


@TRANSPORTS
@settings(max_examples=25, deadline=None)
@given(case=st.sampled_from(_SPLIT_VALID), data=st.data())
async def test_valid_request_split_anywhere(
    case: ValidCase, transport: str, data: st.DataObject
) -> None:
    """A valid request sent in pieces split anywhere gives the app what it gets unsplit."""
    points = data.draw(st.lists(st.integers(1, len(case.data) - 1), max_size=10), label="points")
    whole = await exchange([case.data], case.config, transport)
    pieces = await exchange(split(case.data, points), case.config, transport)
    assert_matches(pieces, case)
    assert [seen(*request) for request in pieces.requests] == [
        seen(*request) for request in whole.requests
    ]


@TRANSPORTS
@settings(max_examples=25, deadline=None)
@given(case=st.sampled_from(_SPLIT_INVALID), data=st.data())
async def test_invalid_request_split_anywhere(
    case: InvalidCase, transport: str, data: st.DataObject
) -> None:
    """An invalid request sent in pieces split anywhere is refused with the same status."""
    points = data.draw(st.lists(st.integers(1, len(case.data) - 1), max_size=10), label="points")
    result = await exchange(split(case.data, points), case.config, transport)
    assert_refused(result, case)

"""What the HTTP edges count for ``--metrics-bind``: each finished request by method
and status class, its duration in the histogram, its response body bytes.

The exchange counts inline as its response completes (``Exchange._complete``), or
after its app returned when it never completed; these tests hold it to
``ProcessCounts.request``'s rules, with the wall clock the exchange reads replaced
by one the test moves.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
import trio.testing

import trioserve._exchange as exchange_module
from tests.helpers import hello_app, http_options, serve_http_connection
from trioserve import Config
from trioserve._metrics import DURATION_BUCKETS, ProcessCounts
from trioserve._state import ServerState

pytestmark = pytest.mark.usefixtures("http_parser")


async def _serve(app: Any, requests: bytes, counts: ProcessCounts) -> bytes:
    """Serve ``requests`` (sent at once, the last one closing) and return the answer."""
    state = ServerState(Config())
    options = http_options(state.config, counts=counts)
    client, server = trio.testing.memory_stream_pair()
    received = b""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(serve_http_connection, server, app, state, options=options)
            )
            await client.send_all(requests)
            while chunk := await client.receive_some():
                received += chunk
    return received


async def test_requests_are_counted_by_method_status_duration_and_bytes(monkeypatch):
    """A GET that takes 1 ms, a HEAD that takes 0.3 s, and a method nobody lists (OTHER),
    answered 404: each in its row and status class, its duration bucket, its body."""
    # Each request reads the clock twice: as it starts (100 s after the last reading)
    # and as its response is complete (its duration later).
    durations = iter([0.001, 0.3, 0.001])
    now = [0.0]
    phase = [0]

    def wall_clock() -> float:
        if phase[0] % 2 == 0:
            now[0] += 100.0
        else:
            now[0] += next(durations)
        phase[0] += 1
        return now[0]

    monkeypatch.setattr(exchange_module, "_wall_clock", wall_clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "BREW":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})
        else:
            await hello_app(scope, receive, send)

    counts = ProcessCounts()
    answer = await _serve(
        app,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
        b"BREW / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        counts,
    )
    assert answer.count(b"HTTP/1.1 ") == 3
    assert counts.requests["GET"][2] == 1
    assert counts.requests["HEAD"][2] == 1
    assert counts.requests["OTHER"][4] == 1
    assert sum(map(sum, counts.requests.values())) == 3
    expected = [0] * (len(DURATION_BUCKETS) + 1)
    expected[0] += 2  # 1 ms twice: <= 5 ms
    expected[DURATION_BUCKETS.index(0.5)] += 1  # 0.3 s: <= 0.5 s (not <= 0.25 s)
    assert list(counts.counts(None).durations) == expected
    assert counts.duration_sum == pytest.approx(0.302)
    assert counts.body_bytes == len(b"Hello, world!") + len(b"no")  # (HEAD: no body)


async def test_each_exchange_is_counted_once_however_it_ends(monkeypatch):
    """A response completed while its app works on (the connection goes on without it),
    a 500 for an app that raised before answering, and one whose app raised after it
    answered: each counted once, in its status class, and once in the histogram."""
    # Each exchange reads the clock as it starts and as it ends (completes, or is
    # counted unfinished): every one takes 0.3 s by this clock.
    now = [0.0]
    phase = [0]

    def wall_clock() -> float:
        now[0] += 100.0 if phase[0] % 2 == 0 else 0.3
        phase[0] += 1
        return now[0]

    monkeypatch.setattr(exchange_module, "_wall_clock", wall_clock)
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("before the response")
        await hello_app(scope, receive, send)
        if path == "/later":
            await release.wait()
        elif path == "/release":
            release.set()
        elif path == "/after":
            raise RuntimeError("after the response")

    counts = ProcessCounts()
    first = await _serve(
        app,
        b"GET /later HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /release HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        counts,
    )
    second = await _serve(app, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n", counts)
    third = await _serve(app, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n", counts)
    assert first.count(b"HTTP/1.1 200 ") == 2
    assert second.startswith(b"HTTP/1.1 500 ")
    assert third.startswith(b"HTTP/1.1 200 ")
    assert counts.requests["GET"] == [0, 0, 3, 0, 0, 1]
    message = counts.counts(None)
    expected = [0] * (len(DURATION_BUCKETS) + 1)
    expected[DURATION_BUCKETS.index(0.5)] = 4  # (0.3 s each: <= 0.5 s)
    assert list(message.durations) == expected
    assert message.duration_sum == pytest.approx(1.2)
    # (The server's own 500 page is not an app's body: not counted, as before.)
    assert counts.body_bytes == 3 * len(b"Hello, world!")

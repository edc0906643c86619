"""The real ``trioserve`` command's logs under a flood of client mistakes: bounded lines."""

from __future__ import annotations

import signal

import pytest
import trio

from tests.helpers import read_until_eof
from tests.process.test_cli import TIMEOUT, serving

FLOOD = 50


@pytest.mark.parametrize("preload", [False, True])
async def test_a_flood_of_bad_requests_logs_ten_lines_and_a_count(preload: bool) -> None:
    """50 bad requests give 10 "bad request" lines, then one line counting the others."""
    # The count comes at the window's end or when the worker stops, whichever is first; a
    # preloaded worker ends in os._exit() (no atexit), so it must flush the count itself.
    args = ["examples.hello:app", "-b", "127.0.0.1:0", "--workers", "1"]
    async with serving(*args, *(["--preload"] if preload else [])) as server:
        with trio.fail_after(TIMEOUT):
            for _ in range(FLOOD):
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                async with stream:
                    await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400
                    assert (await read_until_eof(stream)).startswith(b"HTTP/1.1 400 ")
        assert await server.stop(signal.SIGTERM) == 0
    bad = [i for i, line in enumerate(server.lines) if "[worker 0] bad request: " in line]
    summaries = [line for line in server.lines if " more like this in the last second " in line]
    assert summaries, server.lines
    assert all("(the last: bad request: " in line for line in summaries)
    first = server.lines.index(summaries[0])
    assert len([i for i in bad if i < first]) == 10, server.lines
    # Should the flood outlast a window, the next one passes ten more: nothing is lost.
    counted = sum(int(line.split("… ")[1].split()[0]) for line in summaries)
    assert len(bad) + counted == FLOOD, server.lines

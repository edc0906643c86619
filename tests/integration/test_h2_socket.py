"""The HTTP/2 edge on real sockets (127.0.0.1, port 0): real clients (httpx, curl,
h2load) and hostile ones sending raw frames."""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("h2", reason="HTTP/2 needs the http2 extra: pip install 'trioserve[http2]'")

import h2.frame_buffer
import hpack
import httpx
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.helpers import echo_body_app, hello_app
from trioserve import Config, serve
from trioserve._peer import Peer
from trioserve._proto.http2 import PREFACE
from trioserve._serve_h2 import H2Options, serve_h2_connection
from trioserve._serve_http import HTTPOptions, watch_deadlines
from trioserve._state import ServerState

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"t"), (b":path", b"/")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"t"), (b":path", b"/")]


async def start_server(nursery: trio.Nursery, app: Any, **settings: Any) -> tuple[int, ServerState]:
    """An HTTP/2-only server (prior knowledge) on 127.0.0.1, as the pipeline would run
    the edge once the HTTP/1.1 edge handed a connection over; its port and state."""
    state = ServerState(Config(**settings))
    options = H2Options(HTTPOptions(state.config))
    nursery.start_soon(watch_deadlines, state, options.http)

    async def handler(stream: trio.SocketStream) -> None:
        sock = stream.socket
        peer = Peer(stream, None, sock.getpeername(), sock.getsockname())
        await serve_h2_connection(stream, peer=peer, app=app, state=state, options=options)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1], state


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def get_with_httpx(port: int, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


# -- real clients -------------------------------------------------------------------------


async def test_httpx_multiplexes_requests_over_one_connection(nursery, caplog):
    """httpx (HTTP/2 prior knowledge) sends 20 requests at once on one connection and
    gets each answer; a large POST is echoed."""
    port, state = await start_server(nursery, echo_body_app)
    responses: list[httpx.Response] = []
    body = b"z" * 300_000
    with trio.fail_after(30):
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            async with trio.open_nursery() as requests:
                for i in range(20):

                    async def one(i: int = i) -> None:
                        responses.append(
                            await client.post(f"http://127.0.0.1:{port}/{i}", content=b"%d" % i)
                        )

                    requests.start_soon(one)
            big = await client.post(f"http://127.0.0.1:{port}/big", content=body)
    assert sorted(r.content for r in responses) == sorted(b"%d" % i for i in range(20))
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert big.status_code == 200 and big.content == body
    assert state.requests_served == 21
    assert problems(caplog) == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
async def test_curl_with_prior_knowledge(nursery):
    """curl --http2-prior-knowledge gets the response over HTTP/2."""
    port, _ = await start_server(nursery, hello_app)
    with trio.fail_after(30):
        result = await trio.run_process(
            ["curl", "-sS", "--http2-prior-knowledge", "-w", " %{http_version}",
             f"http://127.0.0.1:{port}/"],
            capture_stdout=True,
        )  # fmt: skip
    assert result.stdout == b"Hello, world! 2"


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
async def test_h2load_runs_and_its_abrupt_end_logs_nothing(nursery, caplog):
    """h2load's requests are all answered; the connections it drops at its end cost no
    error log, and the server serves on."""
    port, state = await start_server(nursery, hello_app)
    with trio.fail_after(60):
        result = await trio.run_process(
            ["h2load", "-n", "400", "-c", "4", "-m", "20", f"http://127.0.0.1:{port}/"],
            capture_stdout=True,
        )
    out = result.stdout.decode()
    assert "400 succeeded, 0 failed, 0 errored" in out, out
    with trio.fail_after(10):
        assert (await get_with_httpx(port)).status_code == 200
    assert problems(caplog) == []
    assert state.requests_served == 401


@pytest.mark.parametrize("tls", [False, True], ids=["prior-knowledge", "tls-alpn"])
async def test_httpx_posts_a_body_the_app_does_not_read(nursery, caplog, pki, tls):
    """httpx POSTs 3 MB to an app that answers without reading the body (httpx sends the
    whole body before it reads the response), gets the answer, and uses the connection
    again: the server lets the rest of the body in rather than resetting the stream."""
    settings: dict[str, Any] = {}
    if tls:
        settings = {"certfile": str(pki.cert_file), "keyfile": str(pki.key_file)}
    config = Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, lifespan="off", **settings)
    [(host, port)] = await nursery.start(serve, config)
    url = f"{'https' if tls else 'http'}://{host}:{port}/"
    verify: Any = pki.client_context() if tls else True
    with trio.fail_after(30):
        async with httpx.AsyncClient(http1=False, http2=True, verify=verify) as client:
            for _ in range(2):
                response = await client.post(url, content=b"x" * 3_000_000)
                assert (response.http_version, response.content) == ("HTTP/2", b"Hello, world!")
            assert (await client.get(url)).status_code == 200
    assert problems(caplog) == []


async def test_a_draining_stream_that_stops_moving_is_reset(nursery, caplog):
    """A client that stops sending its body once it has the response (curl 7.88) is
    told to stop, RST_STREAM(NO_ERROR) about DRAIN_IDLE seconds after the answer, and
    the connection lives on until it idles out."""
    port, _ = await start_server(nursery, hello_app, keep_alive=3)
    request = headers(1, POST, flags=["END_HEADERS"]) + DataFrame(1, b"x" * 1000).serialize()
    frames = await send_raw(port, request)
    kinds = [
        type(f).__name__ for f in frames if not isinstance(f, SettingsFrame | WindowUpdateFrame)
    ]
    assert kinds == ["HeadersFrame", "DataFrame", "RstStreamFrame", "GoAwayFrame"], kinds
    [reset] = [f for f in frames if isinstance(f, RstStreamFrame)]
    assert (reset.stream_id, reset.error_code) == (1, 0)
    [goaway] = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaway.error_code == 0
    assert problems(caplog) == []


# -- hostile clients ------------------------------------------------------------------------


def frames_of(data: bytes) -> list[Frame]:
    buffer = h2.frame_buffer.FrameBuffer()
    buffer.max_frame_size = 2**24
    buffer.add_data(data)
    return list(buffer)


async def send_raw(port: int, payload: bytes) -> list[Frame]:
    """Send ``payload`` after the preface and our SETTINGS; every frame the server sent
    until it closed the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    with trio.fail_after(20):
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(PREFACE + SettingsFrame(0).serialize() + payload)
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += data
    await stream.aclose()
    return frames_of(bytes(received))


def headers(stream_id: int, fields: list[tuple[bytes, bytes]] = GET, **kwargs: Any) -> bytes:
    flags = kwargs.pop("flags", ["END_HEADERS", "END_STREAM"])
    return HeadersFrame(stream_id, hpack.Encoder().encode(fields), flags=flags).serialize()


def rapid_reset() -> bytes:
    return b"".join(
        headers(i) + RstStreamFrame(i, error_code=8).serialize() for i in range(1, 1000, 2)
    )


def continuation_flood() -> bytes:
    return HeadersFrame(1, b"\x00" * 100).serialize() + b"".join(
        ContinuationFrame(1, b"\x00" * 16384).serialize() for _ in range(300)
    )


def hpack_bomb() -> bytes:
    encoder = hpack.Encoder()
    first = HeadersFrame(
        1, encoder.encode([*GET, (b"bomb", b"x" * 4000)]), flags=["END_HEADERS", "END_STREAM"]
    )
    block = encoder.encode(GET) + b"\xbe" * 1000  # 4 MB from 1 KB
    return first.serialize() + HeadersFrame(3, block, flags=["END_HEADERS"]).serialize()


GUARDS: dict[str, tuple[Callable[[], bytes], int]] = {
    "rapid-reset": (rapid_reset, 11),
    "continuation-flood": (continuation_flood, 11),
    "hpack-bomb": (hpack_bomb, 11),
    "settings-flood": (lambda: SettingsFrame(0).serialize() * 500, 11),
    "ping-flood": (lambda: PingFrame(0, b"12345678").serialize() * 500, 11),
    "empty-data-flood": (
        lambda: headers(1, POST, flags=["END_HEADERS"]) + DataFrame(1, b"").serialize() * 500,
        11,
    ),
    "window-update-0": (lambda: b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00", 1),
    "oversized-frame": (lambda: b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 1000, 6),
    "stream-ids-backwards": (lambda: headers(5) + headers(3), 1),
    "even-stream-id": (lambda: headers(2), 1),
}


@pytest.mark.parametrize("attack", sorted(GUARDS))
async def test_hostile_clients_are_cut_off(nursery, caplog, attack):
    """Each attack ends its connection with GOAWAY and the code it calls for
    (ENHANCE_YOUR_CALM for floods, PROTOCOL_ERROR or FRAME_SIZE_ERROR for protocol
    errors); nothing is logged above info; the server serves the next client."""
    make, code = GUARDS[attack]
    port, _ = await start_server(nursery, hello_app)
    frames = await send_raw(port, make())
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways and goaways[-1].error_code == code
    assert problems(caplog) == []
    with trio.fail_after(10):
        assert (await get_with_httpx(port)).status_code == 200


async def test_streams_past_the_limit_are_refused_on_a_socket(nursery, caplog):
    """101 streams held open at once: the 101st is refused (REFUSED_STREAM), the
    connection lives, the 100 are answered once the app lets them."""
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await hello_app(scope, receive, send)

    port, _ = await start_server(nursery, app)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    encoder = hpack.Encoder()
    payload = b"".join(
        HeadersFrame(i, encoder.encode(GET), flags=["END_HEADERS", "END_STREAM"]).serialize()
        for i in range(1, 204, 2)
    )
    received = bytearray()
    with trio.fail_after(20):
        await stream.send_all(PREFACE + SettingsFrame(0).serialize() + payload)
        while not any(isinstance(f, RstStreamFrame) for f in frames_of(bytes(received))):
            received += await stream.receive_some(65536)
        resets = [f for f in frames_of(bytes(received)) if isinstance(f, RstStreamFrame)]
        assert [(f.stream_id, f.error_code) for f in resets] == [(201, 7), (203, 7)]
        release.set()
        while sum(isinstance(f, DataFrame) for f in frames_of(bytes(received))) < 100:
            received += await stream.receive_some(65536)
    await stream.aclose()
    assert not any(isinstance(f, GoAwayFrame) for f in frames_of(bytes(received)))
    assert problems(caplog) == []

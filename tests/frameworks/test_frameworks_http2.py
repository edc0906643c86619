"""Starlette, FastAPI and Quart-Trio apps over HTTP/2, served by the real ``trioserve``
CLI: a plain GET, a streamed response and a 3 MB POST echo, with httpx speaking HTTP/2
by prior knowledge (cleartext) and by ALPN over TLS."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("h2", reason="HTTP/2 needs the http2 extra: pip install 'trioserve[http2]'")

import httpx

from tests.frameworks.test_differential import APPS, Process
from tests.pki import Pki
from tests.process.test_cli import TRIOSERVE

# The ready line, over TLS too.
READY = re.compile(r"trioserve: listening on (?P<scheme>https?)://127\.0\.0\.1:(?P<port>\d+)$")
FRAMEWORKS = {
    "starlette": ("starlette", f"{APPS}.diff_starlette:app"),
    "fastapi": ("fastapi", f"{APPS}.diff_fastapi:app"),
    "quart-trio": ("quart_trio", f"{APPS}.diff_quart_trio:app"),
}
STREAMED = b"".join(f"chunk {number}\n".encode() for number in range(5))
# (No gzip: the streamed chunks are compared as the app sent them.)
IDENTITY = {"accept-encoding": "identity"}


@pytest.fixture(params=list(FRAMEWORKS), scope="module")
def framework(request: pytest.FixtureRequest) -> str:
    module, _ = FRAMEWORKS[request.param]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
    return str(request.param)


@pytest.fixture(params=["prior-knowledge", "tls-alpn"])
def client(
    request: pytest.FixtureRequest, framework: str, pki: Pki
) -> Iterator[tuple[httpx.Client, str]]:
    """An HTTP/2-only httpx client and the base URL of the framework's app, served by the
    CLI on cleartext (prior knowledge) or TLS (ALPN h2)."""
    tls = request.param == "tls-alpn"
    flags = ["--certfile", str(pki.cert_file), "--keyfile", str(pki.key_file)] if tls else []
    server = Process(
        "trioserve", [str(TRIOSERVE), FRAMEWORKS[framework][1], "-b", "127.0.0.1:0", *flags], READY
    )
    try:
        assert server.wait_ready_or_exit() is None, server.lines
        verify: Any = pki.client_context() if tls else True
        with httpx.Client(http1=False, http2=True, verify=verify, timeout=15) as http:
            yield http, f"{'https' if tls else 'http'}://127.0.0.1:{server.port}"
    finally:
        assert server.stop() == 0, server.lines
    problems = [line for line in server.lines if "[ERROR]" in line or "Traceback" in line]
    assert problems == []


def test_a_get_is_served_over_http2(client: tuple[httpx.Client, str], framework: str) -> None:
    """GET / answers with the framework's JSON, over HTTP/2."""
    http, base = client
    response = http.get(f"{base}/", headers=IDENTITY)
    assert response.http_version == "HTTP/2"
    assert (response.status_code, response.json()) == (200, {"framework": framework})


def test_a_streamed_response_arrives_whole_and_in_order(client: tuple[httpx.Client, str]) -> None:
    """The app's five chunks arrive, in order, as one body without a content-length."""
    http, base = client
    with http.stream("GET", f"{base}/stream", headers=IDENTITY) as response:
        assert response.http_version == "HTTP/2"
        assert "content-length" not in response.headers
        body = b"".join(response.iter_raw())
    assert (response.status_code, body) == (200, STREAMED)


def test_a_3_mb_post_is_echoed(client: tuple[httpx.Client, str]) -> None:
    """A 3 MB body (past every flow-control window) comes back byte for byte, twice on
    the same connection."""
    http, base = client
    body = bytes(range(256)) * (3_000_000 // 256)
    for _ in range(2):
        response = http.post(
            f"{base}/echo",
            content=body,
            headers={**IDENTITY, "content-type": "application/octet-stream"},
        )
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200
        assert response.content == body

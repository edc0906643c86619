"""curl over HTTP/2 against the hello example served by the real ``trioserve`` CLI:
``--http2-prior-knowledge`` on cleartext, ``--http2`` over TLS (ALPN)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytest.importorskip("h2", reason="HTTP/2 needs the http2 extra: pip install 'trioserve[http2]'")

import trio

from tests.pki import Pki
from tests.process.test_cli import ROOT, TIMEOUT
from trioserve.testing import running_process


def _curl_has_http2() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    version = subprocess.run([curl, "-V"], capture_output=True, text=True, timeout=10).stdout
    return "HTTP2" in version.split()


pytestmark = pytest.mark.skipif(
    not _curl_has_http2(), reason="needs curl built with HTTP/2 support (nghttp2)"
)


@pytest.mark.parametrize("tls", [False, True], ids=["prior-knowledge", "tls-alpn"])
async def test_curl_gets_the_hello_example_over_http2(pki: Pki, tls: bool) -> None:
    """curl asks for HTTP/2 and gets it: the hello example's body, HTTP version 2.
    (One URL per curl: curl 7.88 fails on its own when it reuses a prior-knowledge
    connection, curl issue 10634.)"""
    args = ["examples.hello:app", "-b", "127.0.0.1:0", "--workers", "0"]
    if tls:
        args += ["--certfile", str(pki.cert_file), "--keyfile", str(pki.key_file)]
    async with running_process(*args, cwd=ROOT, timeout=TIMEOUT) as server:
        url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/"
        mode = ["--http2", "--cacert", str(pki.ca_file)] if tls else ["--http2-prior-knowledge"]
        with trio.fail_after(TIMEOUT):
            result = await trio.run_process(
                ["curl", "-sS", *mode, "-w", "%{http_version}\n", url],
                capture_stdout=True,
                capture_stderr=True,
            )
            assert result.stdout == b"Hello, world!\n2\n", result.stderr
        assert await server.stop() == 0
    problems = [line for line in server.lines if "[ERROR]" in line or "Traceback" in line]
    assert problems == []

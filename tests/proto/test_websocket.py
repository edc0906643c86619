"""Tests for trioserve._proto.websocket: the opening handshake's fields (RFC 6455
section 4.2.1) and the status line of a refusal."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from trioserve._proto import websocket
from trioserve._proto.websocket import Refusal, closing_refusal, handshake_refusal, valid_key

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example: base64 of 16 bytes


def fields(key: bytes | None = KEY, version: bytes | None = b"13") -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"example.com"), (b"upgrade", b"websocket")]
    if key is not None:
        headers.append((b"sec-websocket-key", key))
    if version is not None:
        headers.append((b"sec-websocket-version", version))
    return headers


def test_valid_handshake_is_not_refused() -> None:
    """A key that is the base64 of 16 bytes and version 13 pass."""
    assert handshake_refusal(fields()) is None


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"abc",
        b"dGhlIHNhbXBsZSBub25jZQ",  # padding missing
        b"dGhlIHNhbXBsZSBub25jZQ=",
        b"dGhlIHNhbXBsZSBub25jZQ===",
        b"dGhlIHNhbXBsZSBub25j ZQ==",
        b"dGhlIHNhbXBsZSBub25jZQ==dGhl",
        base64.b64encode(b"x" * 15),
        base64.b64encode(b"x" * 17),
        b"dGhlIHNhbXBs-SBub25jZQ==",  # base64url is not base64
    ],
    ids=repr,
)
def test_key_that_is_not_base64_of_16_bytes_is_400(key: bytes) -> None:
    """RFC 6455 4.2.1 item 5: anything but the base64 of 16 bytes is a bad request."""
    refusal = handshake_refusal(fields(key=key))
    assert refusal is not None
    assert refusal.status == 400
    assert refusal.headers == ()
    assert "Sec-WebSocket-Key" in refusal.reason


@pytest.mark.parametrize("raw", [bytes(16), b"\xff" * 16, bytes(range(16))])
def test_any_16_bytes_make_a_valid_key(raw: bytes) -> None:
    """Every 16-byte value, base64-encoded, is accepted."""
    assert valid_key(base64.b64encode(raw))


def test_missing_or_repeated_key_is_400() -> None:
    """The key must appear exactly once (RFC 6455 11.3.1)."""
    missing = handshake_refusal(fields(key=None))
    repeated = handshake_refusal([*fields(), (b"sec-websocket-key", KEY)])
    assert missing == Refusal(400, "expected one Sec-WebSocket-Key field, got 0")
    assert repeated == Refusal(400, "expected one Sec-WebSocket-Key field, got 2")


def test_other_version_is_426_naming_ours() -> None:
    """A version other than 13 is 426 with Sec-WebSocket-Version: 13 (4.2.2)."""
    refusal = handshake_refusal(fields(version=b"8"))
    assert refusal is not None
    assert refusal.status == 426
    assert refusal.headers == ((b"sec-websocket-version", b"13"),)


def test_missing_or_repeated_version_is_400() -> None:
    """Without a version, or with two, the request is bad rather than of another version."""
    assert handshake_refusal(fields(version=None)) == Refusal(
        400, "expected one Sec-WebSocket-Version field, got 0"
    )
    twice = [*fields(version=b"8"), (b"sec-websocket-version", b"13")]
    assert handshake_refusal(twice) == Refusal(
        400, "expected one Sec-WebSocket-Version field, got 2"
    )


def test_version_is_checked_before_the_key() -> None:
    """A client of another version hears which version to use, whatever its key."""
    refusal = handshake_refusal(fields(key=b"", version=b"8"))
    assert refusal is not None
    assert refusal.status == 426


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            b"HTTP/1.1 426 \r\nx: y\r\n\r\n",
            b"HTTP/1.1 426 Upgrade Required\r\nconnection: close\r\nx: y\r\n\r\n",
        ),
        (b"HTTP/1.1 400 \r\n\r\n", b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n"),
        (
            b"HTTP/1.1 403 \r\ncontent-length: 4\r\n\r\nbody",
            b"HTTP/1.1 403 Forbidden\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbody",
        ),
        # A phrase already there, or no standard one: left alone.
        (b"HTTP/1.1 400 Nope\r\n\r\n", b"HTTP/1.1 400 Nope\r\nconnection: close\r\n\r\n"),
        (b"HTTP/1.1 599 \r\n\r\n", b"HTTP/1.1 599 \r\nconnection: close\r\n\r\n"),
        # A Connection field of the app's own is kept, and not doubled.
        (
            b"HTTP/1.1 500 \r\nConnection : close\r\n\r\n",
            b"HTTP/1.1 500 Internal Server Error\r\nConnection : close\r\n\r\n",
        ),
        # A body that looks like a field does not count.
        (
            b"HTTP/1.1 400 \r\ncontent-length: 19\r\n\r\n\r\nconnection: close",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 19\r\n\r\n"
            b"\r\nconnection: close",
        ),
    ],
)
def test_refusal_gets_its_reason_phrase_and_connection_close(
    response: bytes, expected: bytes
) -> None:
    """A bare status line gets the standard reason phrase, and the head a Connection:
    close unless it has a Connection field; nothing else changes."""
    assert closing_refusal(response) == expected


def test_proto_websocket_does_not_import_trio() -> None:
    """The sans-IO module loads with only the stdlib: trio is never imported."""
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("isolated_proto_ws", {websocket.__file__!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert module.handshake_refusal([]) is not None
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("trio", "trioserve"))
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr

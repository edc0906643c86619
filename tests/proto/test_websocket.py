"""Tests for trioserve._proto.websocket: the opening handshake's fields (RFC 6455
section 4.2.1) and the status line of a refusal."""

from __future__ import annotations

import base64
import subprocess
import sys
from typing import Any

import pytest

from trioserve._proto import websocket
from trioserve._proto.http import ASGIProtocolError
from trioserve._proto.websocket import (
    Action,
    ASGIWebSocket,
    Refusal,
    WebSocketPhase,
    asks_websocket,
    closing_refusal,
    handshake_refusal,
    valid_key,
    websocket_scope,
)

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
    """The sans-IO module loads with only the stdlib, h11 and the rest of _proto: trio is
    never imported."""
    code = f"""
import importlib, os, sys, types
# The package without its __init__ (which imports trio), so that _proto's modules
# import each other as they do in the package.
package = types.ModuleType("trioserve")
package.__path__ = [os.path.dirname(os.path.dirname({websocket.__file__!r}))]
sys.modules["trioserve"] = package
module = importlib.import_module("trioserve._proto.websocket")
assert module.handshake_refusal([]) is not None
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


# -- the ASGI websocket exchange -------------------------------------------------------


def test_asks_websocket_needs_get_http11_upgrade_and_connection() -> None:
    """Only a GET over HTTP/1.1 with Upgrade: websocket and Connection: upgrade asks."""
    headers = [(b"upgrade", b"WebSocket"), (b"connection", b"keep-alive, Upgrade")]
    assert asks_websocket(b"GET", b"1.1", headers)
    assert not asks_websocket(b"POST", b"1.1", headers)
    assert not asks_websocket(b"GET", b"1.0", headers)
    assert not asks_websocket(b"GET", b"1.1", headers[:1])
    assert not asks_websocket(b"GET", b"1.1", [(b"upgrade", b"h2c"), headers[1]])


def test_websocket_scope_from_target_headers_and_subprotocols() -> None:
    """The scope splits the target, decodes the path (root_path in front, as ASGI says),
    and copies the lifespan state."""
    state = {"db": 1}
    scope = websocket_scope(
        b"/chat%20room?x=1",
        [(b"host", b"example.com")],
        ("one", "two"),
        scheme="wss",
        client=("1.2.3.4", 5),
        server=("127.0.0.1", 443),
        root_path="/app",
        state=state,
        extensions={"tls": {}},
    )
    assert scope["type"] == "websocket"
    assert (scope["path"], scope["raw_path"], scope["query_string"]) == (
        "/app/chat room",
        b"/app/chat%20room",
        b"x=1",
    )
    assert scope["subprotocols"] == ["one", "two"]
    assert scope["extensions"] == {"websocket.http.response": {}, "tls": {}}
    assert scope["state"] == state and scope["state"] is not state


def test_accept_then_send_then_close() -> None:
    """Accept opens the websocket; send gives its payload; close moves to CLOSED."""
    exchange = ASGIWebSocket(["chat"])
    assert exchange.on_send({"type": "websocket.accept", "subprotocol": "chat"}) == (
        Action.ACCEPT,
        ("chat", []),
    )
    assert exchange.phase is WebSocketPhase.OPEN
    assert exchange.on_send({"type": "websocket.send", "bytes": bytearray(b"hi")}) == (
        Action.SEND,
        b"hi",
    )
    assert exchange.on_send({"type": "websocket.send", "text": "hi"}) == (Action.SEND, "hi")
    assert exchange.on_send({"type": "websocket.close", "code": 4000}) == (
        Action.CLOSE,
        (4000, ""),
    )
    assert exchange.receiving_ended
    assert exchange.on_send({"type": "websocket.close"})[0] is Action.NOTHING
    assert exchange.on_send({"type": "websocket.send", "text": "late"})[0] is Action.GONE


def test_close_before_accept_is_a_403() -> None:
    """Closing before the handshake is answered refuses it with 403."""
    exchange = ASGIWebSocket()
    action, (status, _, body) = exchange.on_send({"type": "websocket.close"})
    assert (action, status, body) == (Action.REJECT, 403, b"")
    assert exchange.phase is WebSocketPhase.CLOSED


def test_denial_response_is_gathered_until_its_last_body() -> None:
    """A denial response's body parts are joined; its framing headers are dropped."""
    exchange = ASGIWebSocket()
    start = {
        "type": "websocket.http.response.start",
        "status": 401,
        "headers": [(b"content-length", b"9"), (b"x-why", b"no")],
    }
    assert exchange.on_send(start)[0] is Action.NOTHING
    assert exchange.receiving_ended
    more = {"type": "websocket.http.response.body", "body": b"not ", "more_body": True}
    assert exchange.on_send(more)[0] is Action.NOTHING
    last = {"type": "websocket.http.response.body", "body": b"you"}
    assert exchange.on_send(last) == (Action.REJECT, (401, [(b"x-why", b"no")], b"not you"))
    error = exchange.denial_refused("bad header")
    assert "bad header" in str(error) and exchange.phase is WebSocketPhase.DENYING


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.send", "text": "too early"},
        {"type": "websocket.accept", "subprotocol": "not offered"},
        {"type": "websocket.accept", "headers": [(b"bad name", b"x")]},
        {"type": "websocket.accept", "headers": [(b"x", b"a\r\nb")]},
        {"type": "websocket.accept", "headers": [("x", b"1")]},
        {"type": "websocket.http.response.start", "status": 1000},
        "not a message",
    ],
)
def test_bad_message_before_accept_is_a_protocol_error(message: Any) -> None:
    """Messages of the wrong shape or phase raise ASGIProtocolError."""
    with pytest.raises(ASGIProtocolError):
        ASGIWebSocket(["chat"]).on_send(message)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.send", "text": "a", "bytes": b"b"},
        {"type": "websocket.send"},
        {"type": "websocket.close", "code": 999},
        {"type": "websocket.close", "code": True},
        {"type": "websocket.close", "reason": b"bytes"},
        {"type": "websocket.accept"},
    ],
)
def test_bad_message_when_open_is_a_protocol_error(message: Any) -> None:
    """An open websocket refuses malformed sends and closes, and a second accept."""
    exchange = ASGIWebSocket()
    exchange.on_send({"type": "websocket.accept"})
    with pytest.raises(ASGIProtocolError):
        exchange.on_send(message)


def test_app_end_before_and_after_accept() -> None:
    """Returning before accepting is an error answered 500; after, a 1000 close; a
    failure after accepting closes with 1011."""
    exchange = ASGIWebSocket()
    action, (status, _, _), error = exchange.on_app_returned()
    assert (action, status) == (Action.REJECT, 500) and error is not None
    exchange = ASGIWebSocket()
    exchange.on_send({"type": "websocket.accept"})
    assert exchange.on_app_returned() == (Action.CLOSE, (1000, ""), None)
    exchange = ASGIWebSocket()
    exchange.on_send({"type": "websocket.accept"})
    assert exchange.on_app_failed() == (Action.CLOSE, (1011, ""))
    assert exchange.on_app_failed()[0] is Action.NOTHING


def test_app_end_after_the_peer_left_the_handshake_does_nothing() -> None:
    """A peer gone before the answer gets no refusal."""
    exchange = ASGIWebSocket()
    exchange.peer_gone = True
    assert exchange.on_app_returned()[0] is Action.NOTHING
    assert exchange.on_app_failed()[0] is Action.NOTHING

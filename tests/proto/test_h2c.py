"""Reaching HTTP/2 from a plain connection, sans-IO: the preface as the HTTP/1.1 parser
meets it, and which ``Upgrade: h2c`` requests may be granted (trioserve._proto.h2c)."""

from __future__ import annotations

import h11
import pytest

from trioserve._proto.h2c import PREFACE, h2c_settings, starts_as_preface
from trioserve._proto.http1 import ServerConnection
from trioserve._proto.validate import HTTP2Preface, Limits, RequestRejected, check_head

# A SETTINGS frame (empty payload), as h2 clients send it right after the preface.
SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
# base64url of SETTINGS_MAX_CONCURRENT_STREAMS=100 and SETTINGS_INITIAL_WINDOW_SIZE=65535.
HTTP2_SETTINGS = b"AAMAAABkAAQAAP__"


@pytest.mark.parametrize(
    "received",
    [PREFACE, PREFACE + SETTINGS_FRAME, PREFACE[:18], PREFACE[:20], PREFACE[:23]],
    ids=["whole", "with-frames", "head-only", "part-of-SM", "one-byte-short"],
)
def test_preface_and_its_beginnings_start_as_preface(received: bytes) -> None:
    """The preface's head, then as much of the rest as arrived, starts as the preface."""
    assert starts_as_preface(received)


@pytest.mark.parametrize(
    "received",
    [PREFACE[:17], b"PRI * HTTP/2.0\r\n\r\nXM\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\n", b""],
    ids=["head-incomplete", "wrong-SM", "bare-LF", "empty"],
)
def test_other_bytes_do_not_start_as_preface(received: bytes) -> None:
    """Bytes that differ from the preface anywhere, or end before its head, do not."""
    assert not starts_as_preface(received)


def test_check_head_names_the_preface_head() -> None:
    """The preface's head (no fields) is refused as HTTP2Preface, a 400 like any other
    HTTP/2.0 request line, which stays 'unsupported HTTP version'."""
    with pytest.raises(HTTP2Preface) as preface:
        check_head(b"PRI * HTTP/2.0\r\n\r\n", Limits())
    assert preface.value.status == 400
    assert preface.value.received is None
    with pytest.raises(RequestRejected) as other:
        check_head(b"PRI * HTTP/2.0\r\nHost: a\r\n\r\n", Limits())
    assert type(other.value) is RequestRejected
    assert other.value.reason == "unsupported HTTP version HTTP/2.0"


def test_first_head_that_is_the_preface_carries_every_byte_received() -> None:
    """At a connection's start, the refusal carries all the bytes read (preface and
    frames), given in pieces, for the HTTP/2 side to read again."""
    connection = ServerConnection(h11, Limits())
    assert connection.request_head(PREFACE[:10], 0) is None
    with pytest.raises(HTTP2Preface) as preface:
        connection.more_head(PREFACE[10:] + SETTINGS_FRAME)
    assert preface.value.received == PREFACE + SETTINGS_FRAME


def test_preface_after_a_request_carries_nothing() -> None:
    """After a request on the connection, or after empty lines, the preface is no
    preface: the refusal carries no bytes (the edge answers 400)."""
    connection = ServerConnection(h11, Limits())
    assert connection.request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0) is not None
    assert connection.parsed_a_request
    with pytest.raises(HTTP2Preface) as later:
        ServerConnection.more_head(connection, PREFACE)
    assert later.value.received is None

    fresh = ServerConnection(h11, Limits())
    assert not fresh.parsed_a_request
    with pytest.raises(HTTP2Preface) as stripped:
        fresh.request_head(b"\r\n" + PREFACE, 0)
    assert stripped.value.received is None


def _upgrade(
    *extra: tuple[bytes, bytes],
    settings: tuple[bytes, ...] = (HTTP2_SETTINGS,),
    connection: bytes = b"Upgrade, HTTP2-Settings",
    upgrade: bytes = b"h2c",
) -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"a"), (b"connection", connection), (b"upgrade", upgrade)]
    headers += [(b"http2-settings", value) for value in settings]
    return [*headers, *extra]


def test_h2c_upgrade_gives_the_settings_header() -> None:
    """A proper upgrade request gives its HTTP2-Settings value, as sent."""
    assert h2c_settings(b"GET", b"1.1", _upgrade(), body=False) == HTTP2_SETTINGS
    assert h2c_settings(b"OPTIONS", b"1.1", _upgrade(upgrade=b"foo, H2C"), body=False) == (
        HTTP2_SETTINGS
    )
    # No settings at all is a valid (empty) payload.
    assert h2c_settings(b"GET", b"1.1", _upgrade(settings=(b"",)), body=False) == b""


@pytest.mark.parametrize(
    ("method", "version", "headers", "body"),
    [
        (b"POST", b"1.1", _upgrade(), True),
        (b"GET", b"1.0", _upgrade(), False),
        (b"CONNECT", b"1.1", _upgrade(), False),
        (b"GET", b"1.1", _upgrade(upgrade=b"websocket"), False),
        (b"GET", b"1.1", _upgrade(connection=b"Upgrade"), False),
        (b"GET", b"1.1", _upgrade(connection=b"HTTP2-Settings"), False),
        (b"GET", b"1.1", _upgrade(settings=()), False),
        (b"GET", b"1.1", _upgrade(settings=(HTTP2_SETTINGS, HTTP2_SETTINGS)), False),
        (b"GET", b"1.1", _upgrade(settings=(b"AAMAAA",)), False),
        (b"GET", b"1.1", _upgrade(settings=(b"AAMAAABk+AQAAP//",)), False),
        (b"GET", b"1.1", _upgrade(settings=(b"AAMA AABk",)), False),
    ],
    ids=[
        "with-body",
        "http-1.0",
        "connect",
        "not-h2c",
        "no-settings-option",
        "no-upgrade-option",
        "no-settings-header",
        "two-settings-headers",
        "partial-setting",
        "not-base64url",
        "space",
    ],
)
def test_h2c_upgrade_that_may_not_be_granted(
    method: bytes, version: bytes, headers: list[tuple[bytes, bytes]], body: bool
) -> None:
    """Requests that do not ask properly, or cannot switch, are served as HTTP/1.1."""
    assert h2c_settings(method, version, headers, body=body) is None

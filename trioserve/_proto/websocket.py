"""WebSocket rules, without I/O: what a server must refuse in an opening handshake
(RFC 6455 section 4.2.1), and the status line of a refusal.

wsproto (through trio-websocket) parses the handshake and checks that it asks for an
upgrade; the trio edge in ``_serve_ws`` asks this module about the fields wsproto lets
through. Standard library only (a test asserts trio is never imported from here).
"""

from __future__ import annotations

import binascii
import http
import re
from collections.abc import Iterable
from dataclasses import dataclass

# The one version of the protocol there is (RFC 6455 section 4.2.1, item 6).
VERSION = b"13"
# The status line h11 writes when it is given no reason phrase.
_BARE_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) \r\n")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A handshake the server must refuse: the status to answer, the headers the
    answer needs, and why (for the log)."""

    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def handshake_refusal(headers: Iterable[tuple[bytes, bytes]]) -> Refusal | None:
    """The refusal a handshake request with these (lowercase-named) headers gets, or
    None when its ``Sec-WebSocket-Version`` and ``Sec-WebSocket-Key`` are valid.

    A version other than 13 is answered 426 with the version we speak; a missing or
    repeated version, and a key that is missing, repeated or not the base64 of 16
    bytes, are answered 400.
    """
    versions = []
    keys = []
    for name, value in headers:
        if name == b"sec-websocket-version":
            versions.append(value)
        elif name == b"sec-websocket-key":
            keys.append(value)
    if len(versions) != 1:
        return Refusal(400, f"expected one Sec-WebSocket-Version field, got {len(versions)}")
    if versions[0] != VERSION:
        return Refusal(
            426,
            f"unsupported Sec-WebSocket-Version {versions[0]!r}",
            ((b"sec-websocket-version", VERSION),),
        )
    if len(keys) != 1:
        return Refusal(400, f"expected one Sec-WebSocket-Key field, got {len(keys)}")
    if not valid_key(keys[0]):
        return Refusal(400, f"Sec-WebSocket-Key is not the base64 of 16 bytes: {keys[0]!r}")
    return None


def valid_key(key: bytes) -> bool:
    """True when ``key`` is the base64 of 16 bytes, as a client's key must be
    (section 4.2.1, item 5): padded, no other characters."""
    try:
        return len(binascii.a2b_base64(key, strict_mode=True)) == 16
    except binascii.Error:
        return False


def with_reason_phrase(response: bytes) -> bytes:
    """``response`` with the standard reason phrase in a status line that has none
    (``HTTP/1.1 426 `` becomes ``HTTP/1.1 426 Upgrade Required``)."""
    match = _BARE_STATUS.match(response)
    if match is None:
        return response
    status = int(match[1])
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        return response
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii")) + response[match.end() :]

"""WebSocket rules, without I/O: what a server must refuse in an opening handshake
(RFC 6455 section 4.2.1), and how a refusal's head is finished.

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
# A status line; h11 writes an empty reason phrase when wsproto gives it none.
_STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ([^\r\n]*)\r\n")
_CONNECTION_FIELD = re.compile(rb"\r\nconnection[ \t]*:", re.IGNORECASE)


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


def closing_refusal(response: bytes) -> bytes:
    """``response``, a refusal of a handshake as h11 wrote it, as the server sends it
    before closing the connection: the standard reason phrase in a status line that
    has none (``HTTP/1.1 426 `` becomes ``HTTP/1.1 426 Upgrade Required``), and
    ``connection: close`` unless the head has a Connection field already."""
    match = _STATUS_LINE.match(response)
    if match is None:
        return response
    status_line = match[0]
    if not match[2]:
        try:
            phrase = http.HTTPStatus(int(match[1])).phrase
        except ValueError:
            pass
        else:
            status_line = b"HTTP/1.1 %s %s\r\n" % (match[1], phrase.encode("ascii"))
    rest = response[match.end() :]
    fields = b"" if rest.startswith(b"\r\n") else b"\r\n" + rest.partition(b"\r\n\r\n")[0]
    if _CONNECTION_FIELD.search(fields) is None:
        status_line += b"connection: close\r\n"
    return status_line + rest

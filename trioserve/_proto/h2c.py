"""Reaching HTTP/2 from a plain HTTP/1.1 connection, without I/O: the prior-knowledge
preface (RFC 9113 section 3.3) and the ``Upgrade: h2c`` request (RFC 7540 section 3.2;
RFC 9113 deprecates it).

The HTTP/1.1 edge reads the first bytes of a connection as a request head; the preface
starts as one (``PRI * HTTP/2.0``, no fields), which
:func:`~trioserve._proto.validate.check_head` reports as
:class:`~trioserve._proto.validate.HTTP2Preface` (nothing on the path of a valid
HTTP/1.1 request looks for it). :func:`starts_as_preface` then checks what else
arrived. :func:`h2c_settings` decides whether a parsed request asks for an upgrade the
server may grant, and :data:`SWITCHING_TO_H2C` is the answer that grants it. The
HTTP/2 protocol itself (h2's connection) lives with the HTTP/2 edge.

Standard library only, like the rest of ``_proto``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The HTTP/2 client connection preface's fixed bytes (a SETTINGS frame follows)."""

SWITCHING_TO_H2C = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
)
"""The answer to a granted ``Upgrade: h2c``; HTTP/2 frames follow it."""

# Where the preface's HTTP/1.1-looking head ends (its "PRI * HTTP/2.0\r\n\r\n").
_HEAD_LENGTH = PREFACE.index(b"SM")


def starts_as_preface(received: bytes) -> bool:
    """Whether ``received``, the first bytes of a connection, begin as the preface does:
    all of it, or its head and as much of the rest as arrived (the HTTP/2 side reads and
    checks the rest and the frames after it)."""
    length = min(len(received), len(PREFACE))
    return length >= _HEAD_LENGTH and received[:length] == PREFACE[:length]


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")}


def h2c_settings(
    method: bytes, http_version: bytes, headers: Iterable[tuple[bytes, bytes]], *, body: bool
) -> bytes | None:
    """The ``HTTP2-Settings`` value of a request that asks to upgrade to h2c in a way
    the server may grant, else None (the request is then served as HTTP/1.1: a server
    may always ignore ``Upgrade``).

    Granted only to an HTTP/1.1 request without a body (``body`` False: a body would
    have to be read whole before the switch, and carried over into the HTTP/2 stream),
    other than CONNECT, with ``h2c`` among its ``Upgrade`` tokens,
    ``Upgrade`` and ``HTTP2-Settings`` among its ``Connection`` options (the header is
    for this hop only), and exactly one ``HTTP2-Settings`` header holding a base64url
    SETTINGS payload (a whole number of 6-byte settings). ``headers``: lowercase names,
    as h11 gives them.
    """
    if http_version != b"1.1" or body or method == b"CONNECT":
        return None
    upgrade: set[bytes] = set()
    connection: set[bytes] = set()
    settings: list[bytes] = []
    for name, value in headers:
        if name == b"upgrade":
            upgrade |= _tokens(value)
        elif name == b"connection":
            connection |= _tokens(value)
        elif name == b"http2-settings":
            settings.append(value.strip())
    if b"h2c" not in upgrade or not {b"upgrade", b"http2-settings"} <= connection:
        return None
    if len(settings) != 1 or not _settings_payload(settings[0]):
        return None
    return settings[0]


# RFC 7540 section 3.2.1: token68 of the base64url alphabet; padding may be left out.
_BASE64URL = re.compile(rb"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?={0,2}")


def _settings_payload(value: bytes) -> bool:
    """Whether ``value`` is base64url of whole 6-byte settings (maybe none)."""
    if _BASE64URL.fullmatch(value) is None:
        return False
    bare = value.rstrip(b"=")
    try:
        payload = base64.urlsafe_b64decode(bare + b"=" * (-len(bare) % 4))
    except binascii.Error:
        return False
    return len(payload) % 6 == 0

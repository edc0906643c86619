"""The PROXY protocol header (HAProxy's spec, version 1 text and version 2 binary), without I/O.

A load balancer that speaks the PROXY protocol sends one header at the very start of
each connection, saying which client and server addresses it connected on behalf of.
:func:`parse_proxy_header` decides whether the bytes read so far hold a complete, valid
header; the trio edge (``trioserve._proxy``) reads until it does.

This module uses only the standard library (a test loads it on its own and asserts trio
is never imported).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from typing import Final

__all__ = [
    "MAX_V2_LENGTH",
    "NEED_MORE",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "NeedMore",
    "ProxyInfo",
    "ProxyProtocolError",
    "parse_proxy_header",
]

V1_MAX_LENGTH = 107
"""The longest a version 1 line may be, CRLF included (the spec's worst case, TCP6)."""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
"""The 12 bytes every version 2 header starts with."""

MAX_V2_LENGTH = 4096
"""The longest version 2 header accepted, the 16 fixed bytes included.

The spec allows up to 16 + 65535 bytes; this leaves room for the largest address block
(unix sockets, 216 bytes) and a generous amount of TLVs, and no more.
"""

_V1_PREFIX = b"PROXY "
_V2_FIXED = 16  # signature, version/command, family/transport, length

# (family nibble, address block size) by the family/transport byte, for the values the
# spec defines. Datagram transports are refused: this header arrived on a stream.
_V2_UNSPEC, _V2_TCP4, _V2_TCP6, _V2_UNIX_STREAM = 0x00, 0x11, 0x21, 0x31
_V2_DGRAM = {0x12: "UDP over IPv4", 0x22: "UDP over IPv6", 0x32: "unix datagram"}
_V2_ADDRESS_SIZE = {_V2_UNSPEC: 0, _V2_TCP4: 12, _V2_TCP6: 36, _V2_UNIX_STREAM: 216}
_V2_LOCAL, _V2_PROXY = 0x0, 0x1


@dataclasses.dataclass(frozen=True)
class ProxyInfo:
    """What a PROXY header says about the connection it precedes.

    Attributes:
        client: The original client's (host, port): the connection's source.
        server: The (host, port) the client connected to: the connection's destination.

    Both are None when the header carries no usable addresses (version 1 ``UNKNOWN``,
    version 2 ``LOCAL`` such as a load balancer's health check, or an unspecified or unix
    socket family); the server then uses the real connection's addresses.
    """

    client: tuple[str, int] | None
    server: tuple[str, int] | None


_NO_ADDRESSES = ProxyInfo(client=None, server=None)


class ProxyProtocolError(Exception):
    """The connection did not start with a valid PROXY header; the message says why."""


class NeedMore(enum.Enum):
    """The type of :data:`NEED_MORE`."""

    NEED_MORE = "NEED_MORE"

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = NeedMore.NEED_MORE
"""Returned by :func:`parse_proxy_header` while the header is valid so far but incomplete."""


def parse_proxy_header(data: bytes, mode: str) -> tuple[ProxyInfo, int] | NeedMore:
    """Parse the PROXY header at the start of ``data``.

    Args:
        data: Everything received on the connection so far.
        mode: "v1", "v2", or "auto" to accept either, told apart by the first byte.

    Returns:
        ``(info, consumed)`` once the header is complete, where ``data[consumed:]`` is
        the start of the proxied stream; or :data:`NEED_MORE` while ``data`` is a valid
        but incomplete beginning of a header.

    Raises:
        ProxyProtocolError: ``data`` cannot be the beginning of a valid header.
        ValueError: ``mode`` is not one of the three above.
    """
    data = bytes(data)
    if mode == "v1":
        return _parse_v1(data)
    if mode == "v2":
        return _parse_v2(data)
    if mode == "auto":
        if not data:
            return NEED_MORE
        if data[:1] == _V1_PREFIX[:1]:
            return _parse_v1(data)
        if data[:1] == V2_SIGNATURE[:1]:
            return _parse_v2(data)
        raise ProxyProtocolError(
            f"expected a PROXY protocol header (v1 'PROXY ' or the v2 signature), got {data[:12]!r}"
        )
    raise ValueError(f"mode: expected 'v1', 'v2' or 'auto', got {mode!r}")


# -- version 1 -----------------------------------------------------------------------------


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | NeedMore:
    start = data[: len(_V1_PREFIX)]
    if not _V1_PREFIX.startswith(start):
        raise ProxyProtocolError(f"v1 header must start with 'PROXY ', got {start!r}")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"v1 header has no CRLF within {V1_MAX_LENGTH} bytes")
        if b"\n" in data:
            raise ProxyProtocolError("v1 header has a line feed without a carriage return")
        if 0 <= data.find(b"\r") < len(data) - 1:
            raise ProxyProtocolError("v1 header has a carriage return without a line feed")
        return NEED_MORE
    line = data[:end]
    consumed = end + 2
    words = line.split(b" ")
    protocol = words[1]
    if protocol == b"UNKNOWN":
        # The spec says to ignore whatever follows UNKNOWN up to the CRLF.
        return _NO_ADDRESSES, consumed
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(
            f"v1 protocol must be TCP4, TCP6 or UNKNOWN, got {protocol[:16]!r}"
        )
    if len(words) != 6 or not all(words):
        raise ProxyProtocolError(
            "v1 header must be 'PROXY TCP4|TCP6 SRC DST SRCPORT DSTPORT' separated by "
            f"single spaces, got {line!r}"
        )
    version = 4 if protocol == b"TCP4" else 6
    client_host = _v1_address(words[2], version)
    server_host = _v1_address(words[3], version)
    client_port = _v1_port(words[4])
    server_port = _v1_port(words[5])
    return ProxyInfo((client_host, client_port), (server_host, server_port)), consumed


def _v1_address(word: bytes, version: int) -> str:
    allowed = b"0123456789." if version == 4 else b"0123456789abcdefABCDEF:."
    if word.strip(allowed):
        raise ProxyProtocolError(f"v1 address is not a valid IPv{version} address: {word!r}")
    text = word.decode("ascii")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(
            f"v1 address is not a valid IPv{version} address: {word!r}"
        ) from None
    if address.version != version:
        raise ProxyProtocolError(
            f"v1 address {word!r} is IPv{address.version} but the header says TCP{version}"
        )
    return str(address)


def _v1_port(word: bytes) -> int:
    # The spec forbids leading zeroes so that nobody reads a port as octal.
    if (
        len(word) > 5
        or word.strip(b"0123456789")
        or (word.startswith(b"0") and word != b"0")
        or int(word) > 65535
    ):
        raise ProxyProtocolError(
            f"v1 port must be a decimal number 0-65535 without leading zeroes, got {word!r}"
        )
    return int(word)


# -- version 2 -----------------------------------------------------------------------------


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | NeedMore:
    signature = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyProtocolError(f"v2 header must start with the v2 signature, got {signature!r}")
    if len(data) <= 12:
        return NEED_MORE
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"v2 header has version {version}, expected 2")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError(f"v2 command must be LOCAL (0) or PROXY (1), got {command}")
    if len(data) < _V2_FIXED:
        # Fail early on a bad family byte rather than wait for the length.
        if len(data) > 13 and command == _V2_PROXY:
            _v2_address_size(data[13])
        return NEED_MORE
    family = data[13]
    (length,) = struct.unpack_from("!H", data, 14)
    total = _V2_FIXED + length
    if total > MAX_V2_LENGTH:
        raise ProxyProtocolError(
            f"v2 header is {total} bytes long, more than the {MAX_V2_LENGTH} accepted"
        )
    if command == _V2_LOCAL:
        # A LOCAL connection (a health check from the proxy itself) carries no client:
        # the spec says to skip the whole block whatever family it claims.
        return NEED_MORE if len(data) < total else (_NO_ADDRESSES, total)
    size = _v2_address_size(family)
    if length < size:
        raise ProxyProtocolError(
            f"v2 length {length} is too short for the {size}-byte address block of "
            f"family 0x{family:02x}"
        )
    if len(data) < total:
        return NEED_MORE
    block = data[_V2_FIXED:total]
    _check_tlvs(block, size)
    if family == _V2_TCP4:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
    elif family == _V2_TCP6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
    else:
        # UNSPEC and unix sockets: no (host, port) to report, use the real connection's.
        return _NO_ADDRESSES, total
    client = (str(ipaddress.ip_address(src)), sport)
    server = (str(ipaddress.ip_address(dst)), dport)
    return ProxyInfo(client, server), total


def _v2_address_size(family: int) -> int:
    if family in _V2_DGRAM:
        raise ProxyProtocolError(
            f"v2 family 0x{family:02x} is {_V2_DGRAM[family]}, not a stream connection"
        )
    try:
        return _V2_ADDRESS_SIZE[family]
    except KeyError:
        raise ProxyProtocolError(
            f"v2 family/transport byte 0x{family:02x} is not one the spec defines"
        ) from None


def _check_tlvs(block: bytes, offset: int) -> None:
    """Walk the TLVs after the address block (their contents are ignored); each must fit."""
    while offset < len(block):
        if offset + 3 > len(block):
            raise ProxyProtocolError("v2 header ends inside a TLV's type and length")
        (tlv_length,) = struct.unpack_from("!H", block, offset + 1)
        offset += 3 + tlv_length
        if offset > len(block):
            raise ProxyProtocolError("v2 TLV is longer than the rest of the header")

"""Tests for trioserve._proto.proxy_protocol: PROXY protocol v1 and v2 headers."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

import pytest

from trioserve._proto import proxy_protocol
from trioserve._proto.proxy_protocol import (
    MAX_V2_LENGTH,
    NEED_MORE,
    V1_MAX_LENGTH,
    ProxyInfo,
    ProxyProtocolError,
    parse_proxy_header,
)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LOCAL, PROXY = 0x20, 0x21
UNSPEC, TCP4, UDP4, TCP6, UDP6, UNIX_STREAM, UNIX_DGRAM = 0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32
NO_ADDRESSES = ProxyInfo(client=None, server=None)


def v2(
    command: int = PROXY, family: int = TCP4, block: bytes = b"", length: int | None = None
) -> bytes:
    """A v2 header with the given version/command byte, family byte and address block."""
    size = len(block) if length is None else length
    return SIGNATURE + struct.pack("!BBH", command, family, size) + block


def tcp4_block(src: str = "192.0.2.1", dst: str = "198.51.100.2", sport=56324, dport=443):
    return struct.pack(
        "!4s4sHH", socket.inet_pton(socket.AF_INET, src), socket.inet_pton(socket.AF_INET, dst),
        sport, dport,
    )  # fmt: skip


def tcp6_block(src: str = "2001:db8::1", dst: str = "2001:db8::2", sport=40000, dport=8443):
    return struct.pack(
        "!16s16sHH", socket.inet_pton(socket.AF_INET6, src),
        socket.inet_pton(socket.AF_INET6, dst), sport, dport,
    )  # fmt: skip


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


V1_TCP4 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 8443\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V2_TCP4 = v2(block=tcp4_block())
V2_TCP6 = v2(family=TCP6, block=tcp6_block())
V2_LOCAL = v2(command=LOCAL, family=UNSPEC)

TCP4_INFO = ProxyInfo(client=("192.0.2.1", 56324), server=("198.51.100.2", 443))
TCP6_INFO = ProxyInfo(client=("2001:db8::1", 40000), server=("2001:db8::2", 8443))


# -- version 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "info"),
    [
        (V1_TCP4, TCP4_INFO),
        (V1_TCP6, TCP6_INFO),
        (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
         ProxyInfo(("0.0.0.0", 0), ("255.255.255.255", 65535))),
        (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 1 2\r\n",
         ProxyInfo(("2001:db8::1", 1), ("::1", 2))),
        (V1_UNKNOWN, NO_ADDRESSES),
        (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", NO_ADDRESSES),
    ],
)  # fmt: skip
def test_v1_valid_headers(header: bytes, info: ProxyInfo) -> None:
    """Valid v1 lines give their addresses (UNKNOWN none) and consume exactly the line."""
    assert parse_proxy_header(header + b"GET / HTTP/1.1\r\n", "v1") == (info, len(header))


def test_v1_longest_header_is_accepted() -> None:
    """A v1 line of exactly 107 bytes, CRLF included, is within the limit."""
    header = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(header) == V1_MAX_LENGTH
    assert parse_proxy_header(header, "v1") == (NO_ADDRESSES, V1_MAX_LENGTH)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "must start with 'PROXY '"),
        (b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n", "protocol must be"),
        (b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n", "protocol must be"),
        (b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n", "protocol must be"),
        (b"PROXY \r\n", "protocol must be"),
        (b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n", "single spaces"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n", "single spaces"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n", "single spaces"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n", "single spaces"),
        (b"PROXY TCP4 192.0.2.1\t198.51.100.2 1 2\r\n", "single spaces"),
        (b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n", "not a valid IPv4"),
        (b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n", "not a valid IPv4"),
        (b"PROXY TCP4 example.com 198.51.100.2 1 2\r\n", "not a valid IPv4"),
        (b"PROXY TCP4 192.0.2.1 2001:db8::2 1 2\r\n", "not a valid IPv4"),
        (b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n", "is IPv4 but the header says TCP6"),
        (b"PROXY TCP6 2001:db8::1 2001:db8::g 1 2\r\n", "not a valid IPv6"),
        (b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n", "not a valid IPv6"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n", "port must be"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 080\r\n", "port must be"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n", "port must be"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n", "port must be"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 123456\r\n", "port must be"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 \xd9\xa1 2\r\n", "port must be"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n", "line feed without a carriage return"),
        (b"PROXY TCP4 192.0.2.1\r198.51.100.2 1 2", "carriage return without a line feed"),
        (b"PROXY UNKNOWN " + b"x" * 200, "no CRLF within 107 bytes"),
        (b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15) + b"\r\n", "no CRLF within 107"),
    ],
)
def test_v1_invalid_headers(header: bytes, message: str) -> None:
    """Each malformed v1 line is refused with a message naming what is wrong."""
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(header, "v1")


@pytest.mark.parametrize("header", [V1_TCP4, V1_TCP6, V1_UNKNOWN])
def test_v1_every_prefix_needs_more(header: bytes) -> None:
    """Every proper prefix of a valid v1 line asks for more bytes rather than failing."""
    for split in range(len(header)):
        assert parse_proxy_header(header[:split], "v1") is NEED_MORE, split


# -- version 2 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "info"),
    [
        (V2_TCP4, TCP4_INFO),
        (V2_TCP6, TCP6_INFO),
        (V2_LOCAL, NO_ADDRESSES),
        # LOCAL ignores the family and skips whatever block there is.
        (v2(command=LOCAL, family=TCP4, block=tcp4_block()), NO_ADDRESSES),
        (v2(command=LOCAL, family=0xFF, block=b"\x01\x02"), NO_ADDRESSES),
        (v2(family=UNSPEC), NO_ADDRESSES),
        (v2(family=UNIX_STREAM, block=b"/run/client.sock".ljust(108, b"\0") * 2), NO_ADDRESSES),
        (v2(block=tcp4_block("0.0.0.0", "255.255.255.255", 0, 65535)),
         ProxyInfo(("0.0.0.0", 0), ("255.255.255.255", 65535))),
    ],
)  # fmt: skip
def test_v2_valid_headers(header: bytes, info: ProxyInfo) -> None:
    """Valid v2 headers give their addresses (none for LOCAL, UNSPEC, unix) and length."""
    assert parse_proxy_header(header + b"GET / HTTP/1.1\r\n", "v2") == (info, len(header))


def test_v2_tlvs_are_skipped() -> None:
    """TLVs after the address block are skipped and counted in the consumed length."""
    tlvs = tlv(0x01, b"h2") + tlv(0x04, b"") + tlv(0x05, b"\x00" * 16) + tlv(0xE0, b"x" * 300)
    header = v2(block=tcp4_block() + tlvs)
    assert parse_proxy_header(header + b"rest", "v2") == (TCP4_INFO, len(header))


def test_v2_longest_header_is_accepted() -> None:
    """A v2 header of exactly MAX_V2_LENGTH bytes, mostly TLVs, is accepted."""
    padding = MAX_V2_LENGTH - 16 - 12 - 3
    header = v2(block=tcp4_block() + tlv(0x04, b"\0" * padding))
    assert len(header) == MAX_V2_LENGTH
    assert parse_proxy_header(header, "v2") == (TCP4_INFO, MAX_V2_LENGTH)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\r\n\r\n\x00\r\nQUIT\r" + V2_TCP4[12:], "must start with the v2 signature"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n", "must start with the v2 signature"),
        (v2(command=0x11, block=tcp4_block()), "version 1, expected 2"),
        (v2(command=0x31, block=tcp4_block()), "version 3, expected 2"),
        (v2(command=0x22, block=tcp4_block()), "command must be LOCAL"),
        (v2(family=UDP4, block=tcp4_block()), "UDP over IPv4, not a stream"),
        (v2(family=UDP6, block=tcp6_block()), "UDP over IPv6, not a stream"),
        (v2(family=UNIX_DGRAM, block=b"\0" * 216), "unix datagram, not a stream"),
        (v2(family=0x41, block=tcp4_block()), "0x41 is not one the spec defines"),
        (v2(family=0x13, block=tcp4_block()), "0x13 is not one the spec defines"),
        (v2(family=0x01), "0x01 is not one the spec defines"),
        (v2(family=TCP4, block=tcp4_block()[:11]), "length 11 is too short"),
        (v2(family=TCP6, block=tcp4_block()), "length 12 is too short"),
        (v2(family=UNIX_STREAM, block=b"\0" * 215), "length 215 is too short"),
        (v2(block=b"\0" * 12, length=MAX_V2_LENGTH - 15), "more than the 4096 accepted"),
        (v2(block=b"", length=0xFFFF), "more than the 4096 accepted"),
        (v2(command=LOCAL, family=UNSPEC, length=MAX_V2_LENGTH), "more than the 4096"),
        (v2(block=tcp4_block() + b"\x01\x00"), "ends inside a TLV"),
        (v2(block=tcp4_block() + tlv(0x01, b"h2")[:-1]), "TLV is longer than the rest"),
    ],
)
def test_v2_invalid_headers(header: bytes, message: str) -> None:
    """Each malformed v2 header is refused with a message naming what is wrong."""
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(header, "v2")


def test_v2_bad_family_fails_before_the_length_arrives() -> None:
    """A bad family byte is refused as soon as it is read, not after more bytes."""
    with pytest.raises(ProxyProtocolError, match="not a stream"):
        parse_proxy_header(SIGNATURE + bytes([PROXY, UDP4]), "v2")


def test_v2_oversized_length_fails_before_the_body_arrives() -> None:
    """An over-long length is refused once the 16 fixed bytes are in, without the rest."""
    with pytest.raises(ProxyProtocolError, match="4096"):
        parse_proxy_header(v2(length=5000), "v2")


@pytest.mark.parametrize(
    "header",
    [V2_TCP4, V2_TCP6, V2_LOCAL, v2(block=tcp4_block() + tlv(0x01, b"http/1.1"))],
)
def test_v2_every_prefix_needs_more(header: bytes) -> None:
    """Every proper prefix of a valid v2 header asks for more bytes rather than failing."""
    for split in range(len(header)):
        assert parse_proxy_header(header[:split], "v2") is NEED_MORE, split


# -- auto and modes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "info"),
    [(V1_TCP4, TCP4_INFO), (V1_UNKNOWN, NO_ADDRESSES), (V2_TCP6, TCP6_INFO),
     (V2_LOCAL, NO_ADDRESSES)],
)  # fmt: skip
def test_auto_detects_either_version(header: bytes, info: ProxyInfo) -> None:
    """ "auto" accepts a v1 or a v2 header, and every prefix of one needs more."""
    assert parse_proxy_header(header + b"data", "auto") == (info, len(header))
    for split in range(len(header)):
        assert parse_proxy_header(header[:split], "auto") is NEED_MORE, split


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00", b"\x00"])
def test_auto_refuses_anything_else(data: bytes) -> None:
    """ "auto" refuses a stream that starts like neither version (HTTP, TLS) at once."""
    with pytest.raises(ProxyProtocolError, match="expected a PROXY protocol header"):
        parse_proxy_header(data, "auto")


@pytest.mark.parametrize(("header", "mode"), [(V2_TCP4, "v1"), (V1_TCP4, "v2")])
def test_fixed_mode_refuses_the_other_version(header: bytes, mode: str) -> None:
    """A fixed mode refuses the other version's header."""
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(header, mode)


def test_unknown_mode_is_a_value_error() -> None:
    """A mode other than v1, v2 or auto is a programming error, not a protocol error."""
    with pytest.raises(ValueError, match="expected 'v1', 'v2' or 'auto', got 'off'"):
        parse_proxy_header(V1_TCP4, "off")


def test_proxy_protocol_does_not_import_trio() -> None:
    """The sans-IO module loads with only the stdlib: trio is never imported."""
    # Load the file on its own, under a name outside the package, as
    # test_proto_http_does_not_import_trio does for http.py.
    path = proxy_protocol.__file__
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("isolated_proxy_protocol", {path!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert module.parse_proxy_header(b"PROXY UNKNOWN\\r\\n", "auto")[1] == 15
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("trio", "trioserve"))
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr

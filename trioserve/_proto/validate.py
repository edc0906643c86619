"""Request checks that h11 does not make, applied to the raw bytes before h11 sees them.

h11 is lenient where a server facing the internet must not be: it has no limit on the
request line, the number of fields, a field's size or the whole head; it accepts HTTP
versions other than 1.0 and 1.1, lines ending in a bare LF, control characters in
field values and whitespace or stray bytes in chunk-size lines; it processes a request
with both Content-Length and Transfer-Encoding; and a chunk-size line ending in a bare
LF makes it wait forever. Each of those shapes is refused here with the status a
client should see, as early as the bytes show it: bytes that cannot start a request
(a TLS handshake on a plain port, binary noise) are refused at once, not after the
header timeout. Standard library only, like the rest of ``_proto``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class RequestRejected(Exception):
    """The request is refused with ``status``; ``reason`` is one line for the client and log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class TLSOnPlainPort(RequestRejected):
    """The first bytes are a TLS handshake: the client speaks https:// to a plain port."""

    def __init__(self) -> None:
        super().__init__(400, "TLS on a plain HTTP port")


class HTTP2Preface(RequestRejected):
    """The head is the HTTP/2 connection preface's (``PRI * HTTP/2.0``, no fields): a
    client speaking HTTP/2 with prior knowledge. ``received`` is set by whoever knows
    what was read before it (see :meth:`~trioserve._proto.http1.ServerConnection.request_head`)."""

    received: bytes | None

    def __init__(self) -> None:
        super().__init__(400, "HTTP/2 connection preface where an HTTP/1.1 request was expected")
        # (Set here, not as a class default: mypyc does not apply one to an exception.)
        self.received = None


# The head of the HTTP/2 connection preface (RFC 9113 section 3.4), as an HTTP/1.1
# parser sees it: a request line and no fields.
PREFACE_HEAD = b"PRI * HTTP/2.0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits; 0 means no limit."""

    request_line: int = 4094
    fields: int = 100
    field_size: int = 8190
    body: int = 0
    # The whole head, request line and blank line included.
    head: int = 32768
    # Heads no longer than this break none of the request-line, field-size and head limits.
    plain_size: int = field(init=False, repr=False, compare=False)
    # The most a head may take: ``head``, or without it what the other limits allow.
    head_size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = [size for size in (self.request_line, self.field_size, self.head) if size]
        object.__setattr__(self, "plain_size", min(sizes, default=1 << 62))
        line = self.request_line or 65536
        fields = self.fields or 1000
        size = self.field_size or 65536
        head = self.head or min(line + 2 + fields * (size + 2) + 2, 1024 * 1024)
        object.__setattr__(self, "head_size", head)


@dataclass(frozen=True, slots=True)
class Framing:
    """How the request body is delimited, as the checked head says."""

    chunked: bool
    content_length: int | None


_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
# RFC 9110 section 5.6.2: a token (a method, a field name); the one rule of _proto.
TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_TOKEN = TOKEN
# What no field value may hold: CR or LF would split the head, NUL no peer accepts.
FORBIDDEN_IN_VALUE = re.compile(rb"[\r\n\x00]")
_DIGITS = re.compile(rb"[0-9]{1,18}")


_EMPTY_LINES = re.compile(rb"(?:\r\n)*")


def empty_lines_end(buffer: bytes | bytearray) -> int:
    """Where the empty lines (CRLF) at the start of ``buffer`` end: a server ignores them
    before a request line (RFC 9112 section 2.2). A lone CR or LF is no empty line."""
    match = _EMPTY_LINES.match(buffer)
    return match.end() if match is not None else 0


def head_end(buffer: bytes | bytearray, checked: int = 0) -> int:
    """The index just past the blank line ending the head, or -1 if it is not complete.

    Lines end in CRLF: a bare LF is refused (see :func:`check_head`), since a proxy in
    front that reads it otherwise would see other fields than we do. ``checked``: the
    first bytes of ``buffer`` hold no end (an earlier call said so).
    """
    found = buffer.find(b"\r\n\r\n", max(checked - 3, 0))
    return found + 4 if found >= 0 else -1


_TOKEN_CHARS = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
# A field value's bytes (RFC 9110 section 5.5): VCHAR, obs-text, SP and HTAB.
_VALUE_CHARS = rb"[\t\x20-\x7e\x80-\xff]"
_OTHER_FIELD = (
    rb"(?:(?!(?i:content-length|transfer-encoding|host):)"
    + _TOKEN_CHARS
    + rb"+:"
    + _VALUE_CHARS
    + rb"*\r\n)*"
)
# A request head in its plainest form: a request line with a token method other than
# CONNECT, a target without controls or spaces and HTTP/1.0 or 1.1; CRLF line ends;
# fields with token names, values without control characters; at most one Host; and
# no Content-Length or Transfer-Encoding, so no body.
_PLAIN_HEAD = re.compile(
    rb"(?!CONNECT )"
    + _TOKEN_CHARS
    + rb"+ [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n"
    + _OTHER_FIELD
    + rb"(?:(?i:host):"
    + _VALUE_CHARS
    + rb"*\r\n"
    + _OTHER_FIELD
    + rb")?\r\n"
)


def plain_head_end(buffer: bytes | bytearray, limits: Limits) -> int:
    """Where a request head at the start of ``buffer`` ends if it is complete, in its
    plainest form (see ``_PLAIN_HEAD``) and within the limits; -1 otherwise.

    The fast path for most requests: one regex scan stands for :func:`head_end` and
    :func:`check_head`, whose answer for such a head is always "no body". -1 only
    means "take the full path", not that the head is bad or incomplete.
    """
    match = _PLAIN_HEAD.match(buffer)
    if match is None:
        return -1
    end = match.end()
    if end > limits.plain_size or (
        limits.fields and buffer.count(b"\n", 0, end) - 2 > limits.fields
    ):
        return -1
    return end


# The start of a request line, as much of it as has arrived: a token method, a target
# without controls or spaces, and the beginning of "HTTP/d.d".
_LINE_START = re.compile(
    _TOKEN_CHARS
    + rb"*(?: [\x21-\x7e\x80-\xff]*(?: (?:H(?:T(?:T(?:P(?:/(?:\d(?:\.\d?)?)?)?)?)?)?)?)?)?"
)
# Bytes no request head holds: controls other than HTAB, CR and LF (RFC 9110 section
# 5.5 for field values; the request line allows none).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def looks_like_tls(buffer: bytes | bytearray) -> bool:
    """Whether ``buffer`` starts as a TLS record does: a handshake (22), version 3.x."""
    return buffer[:1] == b"\x16" and buffer[1:2] in (b"", b"\x03")


def check_partial_head(buffer: bytes | bytearray, limits: Limits, checked: int = 0) -> None:
    """Refuse an incomplete head that already breaks a rule or a limit, instead of
    waiting for more: bytes that cannot start a request are refused at once.

    ``buffer`` starts where the request line does (stray CRLFs before it removed).
    ``checked``: how much of ``buffer`` an earlier call found good; only what follows is
    scanned again, so a head arriving in many pieces costs no more than one.
    """
    if looks_like_tls(buffer):
        raise TLSOnPlainPort()
    # Where the new bytes begin, or their CR if it ended the earlier ones.
    start = checked - 1 if checked and buffer[checked - 1 : checked] == b"\r" else checked
    newline = buffer.find(b"\n")
    if newline < 0 or newline >= start:
        # The request line was not complete at the last check: check it again.
        line_length = len(buffer) if newline < 0 else newline
        if limits.request_line and line_length > limits.request_line + 1:
            raise RequestRejected(414, f"request line longer than {limits.request_line} bytes")
        line_end = line_length - (buffer[line_length - 1 : line_length] == b"\r")
        if _LINE_START.fullmatch(buffer, 0, line_end) is None:
            raise RequestRejected(400, "malformed request line")
    _check_line_ends(buffer, start, partial=True)
    if newline >= 0:
        fields = buffer.count(b"\n") - 1
        if limits.fields and fields > limits.fields:
            raise RequestRejected(431, f"more than {limits.fields} header fields")
        if limits.field_size:
            # The field lines the new bytes reach into, the last one maybe incomplete.
            begin = max(buffer.rfind(b"\n", 0, start) + 1, newline + 1)
            while True:
                end = buffer.find(b"\n", begin)
                if (len(buffer) if end < 0 else end) - begin > limits.field_size + 1:
                    raise RequestRejected(
                        431, f"a header field is longer than {limits.field_size} bytes"
                    )
                if end < 0:
                    break
                begin = end + 1
    if len(buffer) > limits.head_size:
        raise RequestRejected(431, f"request head larger than {limits.head_size} bytes")


def _check_line_ends(head: bytes | bytearray, start: int = 0, *, partial: bool = False) -> None:
    """Refuse a head with a NUL or another control byte, or a CR or LF not in a CRLF (a
    CR at the very end of a ``partial`` head may still get its LF); from ``start`` on."""
    crlfs = head.count(b"\r\n", start)
    if head.count(b"\n", start) != crlfs:
        raise RequestRejected(400, "bare LF in the request head")
    if head.count(b"\r", start) - crlfs > (partial and head[-1:] == b"\r"):
        raise RequestRejected(400, "bare CR in the request head")
    control = _CONTROL.search(head, start)
    if control is not None:
        if control.group() == b"\0":
            raise RequestRejected(400, "NUL byte in the request head")
        raise RequestRejected(
            400, f"control character 0x{control.group()[0]:02x} in the request head"
        )


_FIELD_LINES = re.compile(rb"(?:" + _TOKEN_CHARS + rb"+:" + _VALUE_CHARS + rb"*\r\n)*")
_FRAMING_FIELDS = re.compile(
    rb"^(content-length|transfer-encoding|host):([^\r\n]*)", re.IGNORECASE | re.MULTILINE
)
# The framing of a request without a body.
NO_BODY = Framing(chunked=False, content_length=None)


def check_head(head: bytes | bytearray, limits: Limits) -> Framing:
    """Check a complete request head (up to and including its blank line).

    Written for the common case: a few C-level scans of the whole head, and Python
    work only for the framing fields and for finding the reason of a refusal.

    Returns:
        How the body is framed.

    Raises:
        RequestRejected: with 400, 413, 414, 431 or 501.
    """
    head = bytes(head)
    if looks_like_tls(head):
        raise TLSOnPlainPort()
    if len(head) > limits.head_size:
        raise RequestRejected(431, f"request head larger than {limits.head_size} bytes")
    _check_line_ends(head)
    line_end = head.index(b"\r\n")
    request_line = head[:line_end]
    if limits.request_line and len(request_line) > limits.request_line:
        raise RequestRejected(414, f"request line longer than {limits.request_line} bytes")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise RequestRejected(400, "malformed request line")
    if parts[0] == b"CONNECT":
        # No tunnels here; h11 would turn a 2xx answer into a tunnel and refuse its body.
        raise RequestRejected(501, "CONNECT is not supported")
    version = parts[2]
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        if head == PREFACE_HEAD:
            raise HTTP2Preface()
        if _VERSION.fullmatch(version) is None:
            raise RequestRejected(400, "malformed HTTP version")
        raise RequestRejected(400, f"unsupported HTTP version {version.decode('ascii')}")
    # The header fields, without the blank line that ends the head.
    block = head[line_end + 2 : -2]
    if not _FIELD_LINES.fullmatch(block):
        raise _field_error(block)
    if limits.fields and block.count(b"\n") > limits.fields:
        raise RequestRejected(431, f"more than {limits.fields} header fields")
    if limits.field_size and len(block) > limits.field_size:
        longest = max(len(line.rstrip(b"\r")) for line in block.split(b"\n"))
        if longest > limits.field_size:
            raise RequestRejected(431, f"a header field is longer than {limits.field_size} bytes")
    content_lengths: list[bytes] = []
    transfer_codings: list[bytes] = []
    hosts = 0
    for name, value in _FRAMING_FIELDS.findall(block):
        lowered = name.lower()
        if lowered == b"host":
            hosts += 1
        elif lowered == b"content-length":
            content_lengths.extend(v.strip() for v in value.split(b","))
        else:
            transfer_codings.extend(v.strip().lower() for v in value.split(b","))
    if hosts > 1:
        raise RequestRejected(400, "more than one Host header")
    if transfer_codings:
        if content_lengths:
            raise RequestRejected(400, "both Content-Length and Transfer-Encoding")
        if version == b"HTTP/1.0":
            raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")
        if transfer_codings != [b"chunked"]:
            raise RequestRejected(400, "Transfer-Encoding other than a single final chunked")
        return Framing(chunked=True, content_length=None)
    if content_lengths:
        if any(not _DIGITS.fullmatch(v) for v in content_lengths):
            raise RequestRejected(400, "invalid Content-Length")
        if len(set(content_lengths)) > 1:
            raise RequestRejected(400, "conflicting Content-Length values")
        length = int(content_lengths[0])
        if limits.body and length > limits.body:
            raise RequestRejected(413, f"request body larger than {limits.body} bytes")
        return Framing(chunked=False, content_length=length)
    return NO_BODY


def _field_error(block: bytes) -> RequestRejected:
    """Why the header fields failed the fast check (only on the error path)."""
    for line in block.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            return RequestRejected(400, "obsolete line folding in the request head")
        name, colon, _ = line.rstrip(b"\r").partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            break
    return RequestRejected(400, "malformed header field")


_MAX_CHUNK_LINE = 4096
_MAX_TRAILERS = 65536


class ChunkedChecker:
    """Follows the framing of a chunked body through the raw bytes, refusing what h11
    would tolerate: non-hex or overlong chunk sizes, whitespace in chunk-size lines,
    extensions that are not tokens or quoted strings (a CR, NUL or other control in
    them), lines ending in a bare LF, a missing CRLF after chunk data, oversized
    extensions and trailers, control characters in trailers, and a body over the
    limit."""

    __slots__ = ("_body_limit", "_line", "_remaining", "_state", "_total", "_trailer_bytes")

    def __init__(self, body_limit: int = 0) -> None:
        self._body_limit = body_limit
        self._state = "size"  # size | data | data-cr | data-lf | trailer | done
        self._line = bytearray()
        self._remaining = 0
        self._total = 0
        self._trailer_bytes = 0

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailers were seen."""
        return self._state == "done"

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Check the next raw bytes of the body.

        Returns:
            How many of ``data`` belong to the body: fewer than ``len(data)`` once the
            body ended within it (the rest is the next request).

        Raises:
            RequestRejected: 400 for bad framing, 413 past the body limit.
        """
        view = memoryview(data)
        i = 0
        n = len(view)
        while i < n and self._state != "done":
            state = self._state
            if state == "data":
                take = min(self._remaining, n - i)
                self._remaining -= take
                i += take
                if self._remaining == 0:
                    self._state = "data-cr"
            elif state in ("data-cr", "data-lf"):
                expected = 13 if state == "data-cr" else 10
                if view[i] != expected:
                    raise RequestRejected(400, "chunk data not followed by CRLF")
                i += 1
                self._state = "data-lf" if state == "data-cr" else "size"
            else:
                newline = bytes(view[i:]).find(b"\n")
                end = n if newline < 0 else i + newline
                self._line += view[i:end]
                limit = _MAX_CHUNK_LINE if state == "size" else _MAX_TRAILERS
                if len(self._line) > limit:
                    raise RequestRejected(400, "chunk size line or trailers too long")
                if newline < 0:
                    return n
                i = end + 1
                line = bytes(self._line)
                self._line.clear()
                if not line.endswith(b"\r"):
                    raise RequestRejected(400, "chunked line ending in a bare LF")
                line = line[:-1]
                if state == "size":
                    self._start_chunk(line)
                else:
                    self._trailer_bytes += len(line) + 2
                    if self._trailer_bytes > _MAX_TRAILERS:
                        raise RequestRejected(400, "trailers too large")
                    if not line:
                        self._state = "done"
                    else:
                        _check_trailer(line)
        return i

    def _start_chunk(self, line: bytes) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            size_text, semicolon, _ = line.partition(b";")
            if semicolon and _CHUNK_SIZE.fullmatch(size_text.rstrip(b" \t")):
                raise RequestRejected(400, "malformed chunk extension")
            raise RequestRejected(400, "invalid chunk size")
        size = int(match.group(1), 16)
        self._total += size
        if self._body_limit and self._total > self._body_limit:
            raise RequestRejected(413, f"request body larger than {self._body_limit} bytes")
        if size == 0:
            self._state = "trailer"
        else:
            self._remaining = size
            self._state = "data"


_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# RFC 9112 section 7.1: chunk-size *( ";" name [ "=" value ] ), the value a token or a
# quoted string. Nothing else: no whitespace (h11 refuses it before ";" and takes it
# after the size or the extensions), no CR, NUL or other controls in the extensions.
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;"
    + _TOKEN_CHARS
    + rb"+(?:=(?:"
    + _TOKEN_CHARS
    + rb"+|"
    + _QUOTED
    + rb"))?)*"
)
_TRAILER = re.compile(_TOKEN_CHARS + rb"+:" + _VALUE_CHARS + rb"*")


def _check_trailer(line: bytes) -> None:
    if line[:1] in (b" ", b"\t"):
        raise RequestRejected(400, "obsolete line folding in the trailers")
    if _TRAILER.fullmatch(line) is None:
        raise RequestRejected(400, "malformed trailer field")

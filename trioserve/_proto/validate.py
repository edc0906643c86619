"""Request checks that h11 does not make, applied to the raw bytes before h11 sees them.

h11 is lenient where a server facing the internet must not be: it has no limit on the
request line, the number of fields or a field's size; it accepts HTTP versions other
than 1.0 and 1.1; it processes a request with both Content-Length and
Transfer-Encoding; and a chunk-size line ending in a bare LF makes it wait forever.
Each of those shapes is refused here with the status a client should see. Standard
library only, like the rest of ``_proto``.
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


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits; 0 means no limit."""

    request_line: int = 4094
    fields: int = 100
    field_size: int = 8190
    body: int = 0
    # Heads no longer than this break neither the request-line nor the field-size limit.
    plain_size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = [size for size in (self.request_line, self.field_size) if size]
        object.__setattr__(self, "plain_size", min(sizes, default=1 << 62))

    @property
    def head_size(self) -> int:
        """The most a head may take before it is refused without waiting for its end."""
        line = self.request_line or 65536
        fields = self.fields or 1000
        size = self.field_size or 65536
        return min(line + 2 + fields * (size + 2) + 2, 1024 * 1024)


@dataclass(frozen=True, slots=True)
class Framing:
    """How the request body is delimited, as the checked head says."""

    chunked: bool
    content_length: int | None


_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(rb"[0-9]{1,18}")


def head_end(buffer: bytes | bytearray) -> int:
    """The index just past the blank line ending the head, or -1 if it is not complete.

    Lines may end in CRLF or a bare LF (RFC 9112 lets recipients accept it), so the head
    ends at the earliest LF followed by an empty line of either form ("\n\r\n" also
    covers the usual CRLF CRLF).
    """
    ends = [
        found + length
        for found, length in ((buffer.find(b"\n\n"), 2), (buffer.find(b"\n\r\n"), 3))
        if found >= 0
    ]
    return min(ends) if ends else -1


_TOKEN_CHARS = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_OTHER_FIELD = (
    rb"(?:(?!(?i:content-length|transfer-encoding|host):)" + _TOKEN_CHARS + rb"+:[^\x00\r\n]*\r\n)*"
)
# A request head in its plainest form: a request line with a token method other than
# CONNECT, a target without controls or spaces and HTTP/1.0 or 1.1; CRLF line ends;
# fields with token names, values without NUL or CR; at most one Host; and no
# Content-Length or Transfer-Encoding, so no body.
_PLAIN_HEAD = re.compile(
    rb"(?!CONNECT )"
    + _TOKEN_CHARS
    + rb"+ [^\x00-\x20\x7f]+ HTTP/1\.[01]\r\n"
    + _OTHER_FIELD
    + rb"(?:(?i:host):[^\x00\r\n]*\r\n"
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


def check_partial_head(buffer: bytes | bytearray, limits: Limits) -> None:
    """Refuse an incomplete head that already breaks a limit, instead of waiting for more."""
    newline = buffer.find(b"\n")
    line_length = len(buffer) if newline < 0 else newline
    if limits.request_line and line_length > limits.request_line + 1:
        raise RequestRejected(414, f"request line longer than {limits.request_line} bytes")
    if newline >= 0:
        fields = buffer.count(b"\n") - 1
        if limits.fields and fields > limits.fields:
            raise RequestRejected(431, f"more than {limits.fields} header fields")
        if limits.field_size:
            last = buffer.rfind(b"\n")
            for line in (buffer[newline + 1 : last], buffer[last + 1 :]):
                longest = max((len(part) for part in line.split(b"\n")), default=0)
                if longest > limits.field_size + 1:
                    raise RequestRejected(
                        431, f"a header field is longer than {limits.field_size} bytes"
                    )
    if len(buffer) > limits.head_size:
        raise RequestRejected(431, "request head too large")


_FIELD_LINES = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n]*\r?\n)*")
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
    if b"\0" in head:
        raise RequestRejected(400, "NUL byte in the request head")
    if head.count(b"\r") != head.count(b"\r\n"):
        raise RequestRejected(400, "bare CR in the request head")
    line_end = head.index(b"\n")
    request_line = head[:line_end]
    if request_line.endswith(b"\r"):
        request_line = request_line[:-1]
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
        if _VERSION.fullmatch(version) is None:
            raise RequestRejected(400, "malformed HTTP version")
        raise RequestRejected(400, f"unsupported HTTP version {version.decode('ascii')}")
    # The header fields, without the blank line that ends the head.
    block = head[line_end + 1 :]
    block = block[:-2] if block.endswith(b"\r\n") else block[:-1]
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
    would tolerate: non-hex or overlong chunk sizes, lines ending in a bare LF, a
    missing CRLF after chunk data, oversized extensions and trailers, and a body over
    the limit."""

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
        size_text, _, _extensions = line.partition(b";")
        size_text = size_text.rstrip(b" \t")
        if not size_text or len(size_text) > 16 or not _is_hex(size_text):
            raise RequestRejected(400, "invalid chunk size")
        size = int(size_text, 16)
        self._total += size
        if self._body_limit and self._total > self._body_limit:
            raise RequestRejected(413, f"request body larger than {self._body_limit} bytes")
        if size == 0:
            self._state = "trailer"
        else:
            self._remaining = size
            self._state = "data"


def _check_trailer(line: bytes) -> None:
    if line[:1] in (b" ", b"\t"):
        raise RequestRejected(400, "obsolete line folding in the trailers")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name) or b"\0" in value or b"\r" in value:
        raise RequestRejected(400, "malformed trailer field")


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _is_hex(text: bytes) -> bool:
    return all(c in _HEX for c in text)

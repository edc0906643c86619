"""The request checks made before h11: limits, smuggling shapes, chunked framing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserve._proto.validate import (
    NO_BODY,
    ChunkedChecker,
    Limits,
    RequestRejected,
    TLSOnPlainPort,
    check_head,
    check_partial_head,
    head_end,
    plain_head_end,
)

LIMITS = Limits()
CORPUS = Path(__file__).resolve().parent.parent / "data" / "requests"


def head(*lines: str, version: str = "HTTP/1.1") -> bytes:
    return f"GET / {version}\r\n".encode() + b"".join(f"{x}\r\n".encode() for x in lines) + b"\r\n"


def rejected(data: bytes, limits: Limits = LIMITS) -> tuple[int, str]:
    with pytest.raises(RequestRejected) as info:
        check_head(data, limits)
    return info.value.status, info.value.reason


def test_plain_head_has_no_body_framing():
    """A GET without framing headers has neither chunked nor a length."""
    framing = check_head(head("Host: a"), LIMITS)
    assert (framing.chunked, framing.content_length) == (False, None)


def test_content_length_and_chunked_framing():
    """Content-Length and a single chunked coding are reported as the body framing."""
    assert check_head(head("Host: a", "Content-Length: 12"), LIMITS).content_length == 12
    assert check_head(head("Host: a", "Transfer-Encoding: chunked"), LIMITS).chunked
    same_twice = head("Host: a", "Content-Length: 5", "Content-Length: 5")
    assert check_head(same_twice, LIMITS).content_length == 5


@pytest.mark.parametrize(
    ("lines", "version", "status", "reason"),
    [
        (("Host: a", "Content-Length: 3", "Transfer-Encoding: chunked"), "HTTP/1.1", 400, "both"),
        (("Host: a", "Content-Length: 3", "Content-Length: 4"), "HTTP/1.1", 400, "conflicting"),
        (("Host: a", "Content-Length: 3, 4"), "HTTP/1.1", 400, "conflicting"),
        (("Host: a", "Content-Length: +3"), "HTTP/1.1", 400, "invalid Content-Length"),
        (("Host: a", "Content-Length: 0x10"), "HTTP/1.1", 400, "invalid Content-Length"),
        (("Host: a", "Content-Length: 1234567890123456789"), "HTTP/1.1", 400, "invalid"),
        (("Host: a", "Transfer-Encoding: gzip, chunked"), "HTTP/1.1", 400, "final chunked"),
        (("Host: a", "Transfer-Encoding: chunked, gzip"), "HTTP/1.1", 400, "final chunked"),
        (
            ("Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
            "HTTP/1.1",
            400,
            "final",
        ),
        (("Host: a", "Transfer-Encoding: identity"), "HTTP/1.1", 400, "final chunked"),
        (("Host: a", "Transfer-Encoding: chunked"), "HTTP/1.0", 400, "HTTP/1.0"),
        (("Host: a",), "HTTP/9.9", 400, "unsupported HTTP version"),
        (("Host: a",), "HTTP/2.0", 400, "unsupported HTTP version"),
        (("Host: a",), "http/1.1", 400, "malformed HTTP version"),
        (("Host: a", " folded"), "HTTP/1.1", 400, "folding"),
        (("Host: a", "\tfolded"), "HTTP/1.1", 400, "folding"),
        (("Host: a", "Bad Name: x"), "HTTP/1.1", 400, "malformed header"),
        (("Host: a", "Name : x"), "HTTP/1.1", 400, "malformed header"),
        (("Host: a", "no colon"), "HTTP/1.1", 400, "malformed header"),
        (("Host: a", "Host: b"), "HTTP/1.1", 400, "more than one Host"),
    ],
)
def test_smuggling_shapes_are_refused(lines, version, status, reason):
    """Each shape h11 would tolerate or mis-frame is refused with its status."""
    got_status, got_reason = rejected(head(*lines, version=version))
    assert got_status == status
    assert reason in got_reason


def test_nul_and_bare_cr_are_refused():
    """A NUL byte or a CR not followed by LF anywhere in the head is a 400."""
    assert rejected(head("Host: a", "X: a\0b"))[0] == 400
    assert "bare CR" in rejected(head("Host: a", "X: a\rb"))[1]


def test_request_line_limit_is_414():
    """A request line one byte over the limit gets 414; at the limit it passes."""
    limits = Limits(request_line=50)
    target = "/" + "a" * (50 - len("GET  HTTP/1.1") - 1)
    at_limit = f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
    assert len(at_limit.split(b"\r\n")[0]) == 50
    check_head(at_limit, limits)
    over = at_limit.replace(b"GET /", b"GET /a", 1)
    assert rejected(over, limits)[0] == 414


def test_field_count_and_size_limits_are_431():
    """More fields than allowed, or one field too long, gets 431."""
    limits = Limits(fields=3, field_size=20)
    check_head(head("Host: a", "A: 1", "B: 2"), limits)
    assert rejected(head("Host: a", "A: 1", "B: 2", "C: 3"), limits)[0] == 431
    assert rejected(head("Host: a", "X: " + "v" * 18), limits)[0] == 431


def test_body_limit_on_content_length_is_413():
    """A declared Content-Length over limit_request_body gets 413 before any body is read."""
    status, _ = rejected(head("Host: a", "Content-Length: 11"), Limits(body=10))
    assert status == 413


def test_zero_limits_mean_no_limit():
    """With every limit at 0, long lines and many fields pass (up to the 1 MiB backstop)."""
    limits = Limits(request_line=0, fields=0, field_size=0, body=0, head=0)
    lines = [f"X-{i}: " + "v" * 9000 for i in range(110)]
    check_head(head("Host: a", *lines), limits)


def test_partial_head_over_limits_is_refused_early():
    """An incomplete head that already breaks a limit is refused without waiting for the end."""
    with pytest.raises(RequestRejected) as info:
        check_partial_head(b"GET /" + b"a" * 5000, LIMITS)
    assert info.value.status == 414
    many = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101
    with pytest.raises(RequestRejected) as info:
        check_partial_head(many, LIMITS)
    assert info.value.status == 431
    with pytest.raises(RequestRejected) as info:
        check_partial_head(b"GET / HTTP/1.1\r\nX: " + b"v" * 9000, LIMITS)
    assert info.value.status == 431
    check_partial_head(b"GET / HTTP/1.1\r\nHost: a\r\n", LIMITS)


def test_head_end_finds_crlf_crlf_only():
    """The end of a head is found after CRLFCRLF, and -1 while incomplete: a bare LF ends
    no line (the checks refuse it)."""
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY") == len(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert head_end(b"GET / HTTP/1.1\nHost: a\n\nBODY") == -1
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1


def feed_all(checker: ChunkedChecker, data: bytes) -> int:
    return checker.feed(data)


def test_chunked_body_is_followed_to_its_end():
    """The checker consumes exactly the chunked body and reports where the next request starts."""
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    checker = ChunkedChecker()
    assert checker.feed(body + b"GET / HTTP/1.1") == len(body)
    assert checker.done


@given(st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_chunked_checker_gives_the_same_result_for_any_split(cuts):
    """Feeding a chunked body in pieces ends at the same place as feeding it whole."""
    body = b"5\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n"
    checker = ChunkedChecker()
    points = sorted({min(c, len(body)) for c in cuts})
    consumed = 0
    for start, end in zip([0, *points], [*points, len(body)], strict=True):
        consumed += checker.feed(body[start:end])
    assert checker.done
    assert consumed == len(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"zz\r\nhello\r\n", "invalid chunk size"),
        (b"-5\r\nhello\r\n", "invalid chunk size"),
        (b"1" * 17 + b"\r\n", "invalid chunk size"),
        (b"5\nhello\r\n", "bare LF"),
        (b"5\r\nhelloXX", "not followed by CRLF"),
        (b"5\r\nhello\r\n0\r\nT: x\n\r\n", "bare LF"),
        (b"\r\n", "invalid chunk size"),
    ],
)
def test_bad_chunked_framing_is_refused(body, reason):
    """Chunk framing h11 tolerates or waits on forever is refused with 400."""
    with pytest.raises(RequestRejected) as info:
        ChunkedChecker().feed(body)
    assert info.value.status == 400
    assert reason in info.value.reason


def test_overlong_chunk_line_is_refused_without_its_end():
    """A chunk-size line that never ends is refused once it is too long."""
    with pytest.raises(RequestRejected):
        ChunkedChecker().feed(b"5;" + b"e" * 5000)


def test_chunked_body_over_limit_is_413():
    """Chunk sizes adding up past limit_request_body get 413 as soon as the size is seen."""
    checker = ChunkedChecker(body_limit=8)
    checker.feed(b"5\r\nhello\r\n")
    with pytest.raises(RequestRejected) as info:
        checker.feed(b"4\r\n")
    assert info.value.status == 413


def test_bare_lf_heads_are_refused_complete_or_not():
    """A bare LF anywhere in a head is a 400, whether the head is complete or not: a
    proxy in front that reads "X: a<LF>Content-Length: 5" as one field would see another
    request than we do."""
    smuggled = b"POST / HTTP/1.1\r\nHost: a\r\nX: a\nContent-Length: 5\r\n\r\n"
    assert rejected(smuggled) == (400, "bare LF in the request head")
    with pytest.raises(RequestRejected) as info:
        check_partial_head(smuggled[:-4], LIMITS)
    assert info.value.reason == "bare LF in the request head"
    assert rejected(b"GET / HTTP/1.1\nHost: a\n\r\n")[0] == 400


def test_connect_is_refused_with_501():
    """CONNECT (a tunnel request) is refused with 501 before any app sees it."""
    status, reason = rejected(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert (status, reason) == (501, "CONNECT is not supported")


@pytest.mark.parametrize("trailer", [b"not a header", b" folded: x", b"Bad Name: x"])
def test_malformed_trailers_are_refused(trailer):
    """A trailer line that is not a well-formed header field is a 400."""
    with pytest.raises(RequestRejected) as info:
        ChunkedChecker().feed(b"0\r\n" + trailer + b"\r\n\r\n")
    assert info.value.status == 400


# -- the one-regex path for plain heads ---------------------------------------------------

SMALL_LIMITS = Limits(request_line=20, fields=2, field_size=12, head=30)


def agrees_with_full_checks(data: bytes, limits: Limits) -> int:
    """plain_head_end(data); when it takes a head, the full path takes it the same way."""
    end = plain_head_end(data, limits)
    if end >= 0:
        assert head_end(data) == end
        assert check_head(data[:end], limits) is NO_BODY
    return end


@pytest.mark.parametrize(
    "path", sorted(CORPUS.glob("*/*.http")), ids=lambda path: f"{path.parent.name}/{path.stem}"
)
def test_plain_path_agrees_with_full_checks_on_the_corpus(path):
    """Every head of the request corpus the plain path takes, head_end and check_head
    take too, ending at the same byte and with no body."""
    data = path.read_bytes()
    for limits in (LIMITS, SMALL_LIMITS):
        agrees_with_full_checks(data, limits)


HEAD_PIECES = st.sampled_from(
    [b"GET", b"CONNECT", b" ", b"/", b"?a", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n",
     b"\n", b"\r", b"\0", b"\t", b"Host:", b"HOST: x", b"Content-Length: 3",
     b"transfer-encoding:", b"X-A:", b"b", b"x" * 9, b":", b"\x7f", b"\x01", b"\x0b",
     b"\x80", b"\x16\x03"]
)  # fmt: skip


@given(st.lists(HEAD_PIECES, max_size=14), st.sampled_from([LIMITS, SMALL_LIMITS]))
def test_plain_path_never_takes_what_the_full_checks_refuse(pieces, limits):
    """Over heads built from tricky pieces, the plain path only takes heads the full
    checks take as bodiless, and ends them at the same byte."""
    agrees_with_full_checks(b"".join(pieces) + b"\r\n\r\n", limits)
    agrees_with_full_checks(b"GET / HTTP/1.1\r\n" + b"".join(pieces) + b"\r\n\r\n", limits)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HEAD /x?y=1 HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nUser-Agent: curl/8\r\nHost: a:80\r\nAccept: */*\r\n\r\nGET /next",
    ],
)
def test_plain_heads_take_the_plain_path(data):
    """Ordinary bodiless requests are ended by the one regex (the fast path is alive)."""
    assert agrees_with_full_checks(data, LIMITS) == data.index(b"\r\n\r\n") + 4


@pytest.mark.parametrize(
    ("data", "limits"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", LIMITS),
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", LIMITS),
        (b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", SMALL_LIMITS),
        (b"GET /" + b"a" * 30 + b" HTTP/1.1\r\n\r\n", SMALL_LIMITS),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", LIMITS),
    ],
    ids=["two-hosts", "content-length", "too-many-fields", "long-line", "incomplete"],
)
def test_heads_needing_the_full_checks_leave_the_plain_path(data, limits):
    """Two Hosts, a body, a limit reached or an incomplete head: -1, the full path decides."""
    assert plain_head_end(data, limits) == -1


# -- no lenient corners (issue 13) ---------------------------------------------------------

LENIENT_HEADS = {
    "bare-lf-line-end": b"POST / HTTP/1.1\r\nHost: a\r\nX: a\nContent-Length: 5\r\n\r\n",
    "lone-cr-first": b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "lone-lf-first": b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "control-01": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    "control-07": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x07b\r\n\r\n",
    "control-7f": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
    "control-1b-in-host": b"GET / HTTP/1.1\r\nHost: a\x1b\r\n\r\n",
}


@pytest.mark.parametrize("data", LENIENT_HEADS.values(), ids=LENIENT_HEADS.keys())
def test_lenient_heads_are_refused_by_every_check(data):
    """Bare LF line ends, a lone CR or LF before the request line and control characters
    in field values: the plain path does not take them, and the full checks refuse them
    with 400, complete or not."""
    assert plain_head_end(data, LIMITS) == -1
    assert rejected(data)[0] == 400
    with pytest.raises(RequestRejected) as info:
        check_partial_head(data[:-2], LIMITS)
    assert info.value.status == 400


def test_obs_text_and_tabs_in_values_stay_valid():
    """Field values may hold HTAB, SP and obs-text (bytes 0x80-0xFF), on both paths."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb \xe9\xff\r\n\r\n"
    assert agrees_with_full_checks(data, LIMITS) == len(data)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"5;a=\rb\r\n", "malformed chunk extension"),
        (b"5;a=\x00b\r\n", "malformed chunk extension"),
        (b"5;a=\x01\r\n", "malformed chunk extension"),
        (b"5;\r\n", "malformed chunk extension"),
        (b"5 ;a=b\r\n", "malformed chunk extension"),
        (b"5;a=b \r\n", "malformed chunk extension"),
        (b"5;a = b\r\n", "malformed chunk extension"),
        (b"5;a=\xe9\r\n", "malformed chunk extension"),
        (b"5 \r\n", "invalid chunk size"),
        (b"5\t\r\n", "invalid chunk size"),
        (b" 5\r\n", "invalid chunk size"),
    ],
)
def test_loose_chunk_lines_are_refused(line, reason):
    """A chunk-size line with a bare CR, NUL or control in its extensions, or whitespace
    around the size or the extensions, is a 400 (h11 accepts most of them)."""
    with pytest.raises(RequestRejected) as info:
        ChunkedChecker().feed(line + b"hello\r\n0\r\n\r\n")
    assert (info.value.status, info.value.reason) == (400, reason)


@pytest.mark.parametrize(
    "line", [b"5;a=b", b'5;a="x;\\"y\\""', b"5;a;b=c", b"0005", b'5;a="\xe9 \t"']
)
def test_chunk_extensions_of_rfc_9112_stay_valid(line):
    """Extensions as RFC 9112 writes them (tokens, quoted strings with escapes) are
    accepted."""
    checker = ChunkedChecker()
    body = line + b"\r\nhello\r\n0\r\n\r\n"
    assert checker.feed(body) == len(body)
    assert checker.done


def test_tls_handshake_and_binary_are_refused_from_their_first_bytes():
    """A TLS record start, or a byte no method begins with, is refused before more comes."""
    for data in (b"\x16", b"\x16\x03\x01", b"\x00", b"\xff", b"G\x00"):
        with pytest.raises(RequestRejected) as info:
            check_partial_head(data, LIMITS)
        assert info.value.status == 400
    with pytest.raises(TLSOnPlainPort):
        check_partial_head(b"\x16\x03\x01\x02\x00", LIMITS)
    for start in (b"G", b"GET", b"GET ", b"GET /x", b"GET /x HTT", b"GET /x HTTP/1.", b"\r"):
        check_partial_head(start, LIMITS)


def test_head_limit_is_431_complete_or_not():
    """A head over Limits.head is refused with 431, whole or while it arrives; at the
    limit it passes, and the plain path leaves longer heads to the full checks."""
    limits = Limits(head=100)
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 68 + b"\r\n\r\n"
    assert len(head) == 100
    check_head(head, limits)
    longer = head.replace(b"X: ", b"X: v")
    assert rejected(longer, limits) == (431, "request head larger than 100 bytes")
    assert plain_head_end(longer, limits) == -1
    with pytest.raises(RequestRejected) as info:
        check_partial_head(longer[:-4] + b"v" * 10, limits)
    assert info.value.status == 431


@given(st.lists(HEAD_PIECES, max_size=14), st.lists(st.integers(1, 60), max_size=6))
def test_partial_checks_in_pieces_agree_with_one_check(pieces, cuts):
    """check_partial_head fed a head in pieces (told how much it checked before) refuses
    exactly when checking every prefix whole would."""
    data = b"".join(pieces)
    points = sorted({min(cut, len(data)) for cut in cuts} | {len(data)})
    checked = 0
    for point in points:
        prefix = data[:point]
        try:
            check_partial_head(prefix, SMALL_LIMITS)
        except RequestRejected as whole:
            with pytest.raises(RequestRejected) as info:
                check_partial_head(prefix, SMALL_LIMITS, checked)
            assert info.value.status == whole.status
            return
        check_partial_head(prefix, SMALL_LIMITS, checked)
        checked = point

"""Tests for trioserve._accesslog: gunicorn atoms, the compiled format and its errors."""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioserve import Config, ConfigError
from trioserve._accesslog import (
    _ATOMS,
    AccessLog,
    access_log_for,
    check_access_log_format,
    escape,
)

DEFAULT_FORMAT = Config().access_log_format
REQUEST_TIME = 1795428000.0  # 2026-11-23 10:00:00 UTC
DURATION = 1.2345678
RESPONSE_HEADERS = [(b"Content-Type", b"text/plain"), (b"content-length", b"5")]


def http_scope(**overrides: Any) -> dict[str, Any]:
    """An ASGI http scope for ``GET /café bar?q=1&r=%20`` from 127.0.0.1:5000."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/café bar",
        "raw_path": b"/caf%C3%A9%20bar",
        "query_string": b"q=1&r=%20",
        "root_path": "",
        "headers": [
            (b"host", b"example.com"),
            (b"referer", b"http://ref.example/"),
            (b"user-agent", b"curl/8.0"),
            (b"authorization", b"Basic YWxpY2U6c2VjcmV0"),
            (b"x-multi", b"a"),
            (b"x-multi", b"b"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(overrides)
    return scope


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Iterator[list[str]]:
    """The messages logged to a private INFO logger that ``access`` writes to."""
    handler = _Lines()
    logger = logging.getLogger("tests.unit.test_accesslog")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def access(fmt: str) -> AccessLog:
    return AccessLog(fmt, logging.getLogger("tests.unit.test_accesslog"))


def set_timezone(tz: str | None) -> None:
    if tz is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = tz
    time.tzset()


@pytest.fixture
def timezone() -> Iterator[Any]:
    """A setter for the local timezone (POSIX TZ strings); the original is restored."""
    saved = os.environ.get("TZ")
    set_timezone("UTC")
    yield set_timezone
    set_timezone(saved)


def log_one(
    fmt: str,
    lines: list[str],
    scope: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    body_bytes: int = 5,
) -> str:
    access(fmt).log(
        http_scope() if scope is None else scope,
        status,
        RESPONSE_HEADERS,
        body_bytes,
        REQUEST_TIME,
        DURATION,
    )
    assert len(lines) == 1
    return lines[0]


SIMPLE_ATOMS = [
    ("h", "127.0.0.1"),
    ("l", "-"),
    ("u", "alice"),
    ("t", "[23/Nov/2026:10:00:00 +0000]"),
    ("r", "GET /caf%C3%A9%20bar?q=1&r=%20 HTTP/1.1"),
    ("m", "GET"),
    ("U", r"/caf\xC3\xA9 bar"),
    ("q", "q=1&r=%20"),
    ("H", "HTTP/1.1"),
    ("s", "200"),
    ("B", "5"),
    ("b", "5"),
    ("f", "http://ref.example/"),
    ("a", "curl/8.0"),
    ("T", "1"),
    ("M", "1234"),
    ("D", "1234567"),
    ("L", "1.234568"),
    ("p", f"<{os.getpid()}>"),
]


def test_every_simple_atom_is_covered() -> None:
    """The parametrized atom table below lists every one-letter atom the module knows."""
    assert {atom for atom, _ in SIMPLE_ATOMS} == set(_ATOMS)


@pytest.mark.parametrize(
    ("atom", "expected"),
    [
        *SIMPLE_ATOMS,
        ("{Host}i", "example.com"),
        ("{USER-AGENT}i", "curl/8.0"),
        ("{x-multi}i", "a, b"),
        ("{content-type}o", "text/plain"),
        ("{Content-Length}o", "5"),
        ("{TRIOSERVE_TEST_ACCESS_VAR}e", "from-env"),
    ],
)
def test_atom(
    atom: str,
    expected: str,
    lines: list[str],
    timezone: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each atom renders as gunicorn renders it for the sample request."""
    monkeypatch.setenv("TRIOSERVE_TEST_ACCESS_VAR", "from-env")
    assert log_one(f"%({atom})s", lines) == expected


def test_default_format_line(lines: list[str], timezone: Any) -> None:
    """The default format gives the combined log format line."""
    assert log_one(DEFAULT_FORMAT, lines) == (
        '127.0.0.1 - alice [23/Nov/2026:10:00:00 +0000] "GET /caf%C3%A9%20bar?q=1&r=%20 '
        'HTTP/1.1" 200 5 "http://ref.example/" "curl/8.0"'
    )


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("IST-5:30", "[23/Nov/2026:15:30:00 +0530]"),
        ("XYZ+3", "[23/Nov/2026:07:00:00 -0300]"),
    ],
)
def test_time_uses_local_timezone(tz: str, expected: str, lines: list[str], timezone: Any) -> None:
    """%(t)s is the request's start in the local timezone, with its UTC offset."""
    timezone(tz)
    assert log_one("%(t)s", lines) == expected


def test_missing_values_are_dashes(lines: list[str], timezone: Any) -> None:
    """No client, no headers and an empty body give '-' where gunicorn gives '-'."""
    scope = http_scope(client=None, headers=[], query_string=b"", raw_path=b"/")
    line = log_one(DEFAULT_FORMAT, lines, scope, status=404, body_bytes=0)
    assert line == '- - - [23/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 404 - "-" "-"'


def test_missing_header_and_environment_atoms_are_dashes(
    lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Absent request headers, response headers and environment variables give '-'."""
    monkeypatch.delenv("TRIOSERVE_TEST_NO_SUCH_VAR", raising=False)
    line = log_one("%({x-nope}i)s %({x-nope}o)s %({TRIOSERVE_TEST_NO_SUCH_VAR}e)s", lines)
    assert line == "- - -"


def test_request_line_without_raw_path_or_method(lines: list[str]) -> None:
    """Without raw_path the decoded path is used; a websocket scope has no method: GET."""
    scope = http_scope(type="websocket", path="/ws", query_string=b"")
    del scope["raw_path"], scope["method"]
    assert log_one("%(r)s", lines, scope) == "GET /ws HTTP/1.1"


@pytest.mark.parametrize(
    ("authorization", "user"),
    [
        (b"Basic YWxpY2U6c2VjcmV0", "alice"),
        (b"basic YWxpY2U6c2VjcmV0", "alice"),
        (b"Basic em/Dqzpwdw==", r"zo\xC3\xAB"),
        (b"Basic bm9jb2xvbg==", "-"),
        (b"Basic !!not-base64!!", "-"),
        (b"Bearer YWxpY2U6c2VjcmV0", "-"),
    ],
)
def test_basic_auth_user(authorization: bytes, user: str, lines: list[str]) -> None:
    """%(u)s is the user of a well-formed Basic Authorization header, '-' otherwise."""
    scope = http_scope(headers=[(b"authorization", authorization)])
    assert log_one("%(u)s", lines, scope) == user


def test_percent_escapes_and_padding(lines: list[str]) -> None:
    """'%%' is a literal percent sign and atoms take %-format flags like padding."""
    assert log_one("%%(zz)s 100%% [%(s)-5s]", lines) == "%(zz)s 100% [200  ]"


def test_unknown_atom_is_a_config_error() -> None:
    """An unknown atom is a one-line ConfigError naming the setting and the atom."""
    with pytest.raises(ConfigError) as info:
        check_access_log_format("%(h)s %(zz)s")
    message = str(info.value)
    assert message.startswith("--access-log-format: unknown atom '%(zz)s'; known atoms are h, ")
    assert "{name}i" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("fmt", "detail"),
    [
        ("%(s)d", "cannot format"),
        ("%s", "stray '%' at position 0"),
        ("100% done", "stray '%' at position 3"),
        ("%(h", "stray '%' at position 0"),
        ("%()s", "unknown atom '%()s'"),
        ("%({}i)s", "unknown atom '%({}i)s'"),
    ],
)
def test_invalid_formats_are_config_errors(fmt: str, detail: str) -> None:
    """Formats that would fail or mislead per request are rejected up front."""
    with pytest.raises(ConfigError, match=r"^--access-log-format: ") as info:
        AccessLog(fmt)
    assert detail in str(info.value)


class _Untouchable(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise AssertionError(f"the scope was read ({key!r}) while the logger is disabled")

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the scope was read while the logger is disabled")

    def __len__(self) -> int:
        raise AssertionError("the scope was read while the logger is disabled")


def test_disabled_logger_skips_all_work(lines: list[str]) -> None:
    """Below INFO nothing is computed: the scope is never read and no record is made."""
    log = access(DEFAULT_FORMAT)
    log.logger.setLevel(logging.WARNING)
    log.log(_Untouchable(), 200, RESPONSE_HEADERS, 5, REQUEST_TIME, DURATION)
    assert lines == []


def test_default_logger_is_trioserve_access() -> None:
    """Without a logger argument lines go to the 'trioserve.access' logger."""
    assert AccessLog(DEFAULT_FORMAT).logger is logging.getLogger("trioserve.access")


def test_access_log_for_is_none_when_off() -> None:
    """With access_log unset (the default) there is no access log."""
    assert access_log_for(Config()) is None


def test_access_log_for_uses_the_configured_format() -> None:
    """With access_log set, the access log uses access_log_format."""
    log = access_log_for(Config(access_log="-", access_log_format="%(h)s %(s)s"))
    assert log is not None
    assert log.fmt == "%(h)s %(s)s"


def test_access_log_for_checks_the_format() -> None:
    """access_log_for rejects an unknown atom with a ConfigError."""
    with pytest.raises(ConfigError, match=r"unknown atom '%\(zz\)s'"):
        access_log_for(Config(access_log="-", access_log_format="%(zz)s"))


# -- escaping: what a client sends cannot forge fields or reach a terminal ------------------

# The combined log format, one field per group: a quoted field holds no bare quote.
COMBINED = re.compile(r'(\S+) (\S+) (\S+) (\[[^]]+\]) "([^"]*)" (\d+) (\S+) "([^"]*)" "([^"]*)"')


@pytest.mark.parametrize(
    ("atom", "overrides", "expected"),
    [
        ("h", {"client": ('a"b\x1b', 1)}, r"a\x22b\x1B"),
        (
            "u",
            {"headers": [(b"authorization", b"Basic " + base64.b64encode(b'a"\x1b\xff:pw'))]},
            r"a\x22\x1B\xFF",
        ),
        (
            "r",
            {"raw_path": b'/a"b\\c', "query_string": b"x=\x7f"},
            r"GET /a\x22b\x5Cc?x=\x7F HTTP/1.1",
        ),
        (
            "r",
            {"raw_path": b"", "path": "/é\n", "query_string": b""},
            r"GET /\xC3\xA9\x0A HTTP/1.1",
        ),
        ("m", {"method": 'G"T'}, r"G\x22T"),
        ("U", {"path": '/é\n"'}, r"/\xC3\xA9\x0A\x22"),
        ("q", {"query_string": b'a="\xff'}, r"a=\x22\xFF"),
        ("H", {"http_version": '1.1"'}, r"HTTP/1.1\x22"),
        ("f", {"headers": [(b"referer", b'a" "b')]}, r"a\x22 \x22b"),
        (
            "a",
            {"headers": [(b"user-agent", b"\x1b]0;pwned\x07\x1b[2J")]},
            r"\x1B]0;pwned\x07\x1B[2J",
        ),
        ("{X-Custom}i", {"headers": [(b"x-custom", b"caf\xe9\tok\\")]}, r"caf\xE9\x09ok\x5C"),
    ],
)
def test_atoms_carrying_client_data_are_escaped(
    atom: str, overrides: dict[str, Any], expected: str, lines: list[str]
) -> None:
    """Quotes, backslashes, control and non-ASCII bytes become \\xHH, as nginx writes them."""
    assert log_one(f"%({atom})s", lines, http_scope(**overrides)) == expected


def test_response_header_and_environment_atoms_are_escaped(
    lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A response header echoing client data and an environment variable are escaped too."""
    monkeypatch.setenv("TRIOSERVE_TEST_ACCESS_VAR", 'two\nlines "quoted"')
    access("%({location}o)s %({TRIOSERVE_TEST_ACCESS_VAR}e)s").log(
        http_scope(), 302, [(b"Location", b'/next"\x1b')], 0, REQUEST_TIME, DURATION
    )
    assert lines == [r"/next\x22\x1B two\x0Alines \x22quoted\x22"]


def test_hostile_referer_and_user_agent_keep_the_combined_fields(
    lines: list[str], timezone: Any
) -> None:
    """A Referer of a" "b stays one field, and ESC/BEL from the User-Agent are escaped."""
    headers = [(b"referer", b'a" "b'), (b"user-agent", b"\x1b[31mred\x07")]
    line = log_one(DEFAULT_FORMAT, lines, http_scope(headers=headers))
    match = COMBINED.fullmatch(line)
    assert match is not None, line
    assert match.group(8, 9) == (r"a\x22 \x22b", r"\x1B[31mred\x07")
    assert line.isascii() and line.isprintable()


def test_escape_leaves_printable_ascii_alone() -> None:
    """Printable ASCII other than the quote and the backslash is kept as it is."""
    printable = bytes(range(0x20, 0x7F)).replace(b'"', b"").replace(b"\\", b"")
    assert escape(printable) == printable.decode("ascii")
    assert escape(bytes([0, 0x1F, 0x22, 0x5C, 0x7F, 0x80, 0xFF])) == (
        r"\x00\x1F\x22\x5C\x7F\x80\xFF"
    )


@given(st.binary())
def test_escape_is_printable_ascii_and_can_be_read_back(data: bytes) -> None:
    """Any bytes escape to printable ASCII without a quote, and \\xHH read back restores them."""
    text = escape(data)
    assert text.isascii() and text.isprintable() and '"' not in text
    restored = re.sub(r"\\x([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), text)
    assert restored.encode("latin-1") == data

"""The access log: one line per request, in gunicorn's ``%(atom)s`` format language.

The format is compiled once: only the atoms it names are computed for each request,
and nothing at all is computed while the ``trioserve.access`` logger is disabled.

Atoms (as in gunicorn):

====================  ===============================================================
``h``                 remote address (the scope's client host), ``-`` when unknown
``l``                 ``-``
``u``                 user name from a Basic ``Authorization`` header, or ``-``
``t``                 time the request started, ``[23/Nov/2026:10:00:00 +0000]``
``r``                 request line, ``GET /path?query HTTP/1.1``
``m``                 method
``U``                 path without the query string
``q``                 query string
``H``                 protocol, ``HTTP/1.1``
``s``                 status code
``B``                 response body bytes
``b``                 response body bytes, ``-`` when none
``f``                 ``Referer`` header, or ``-``
``a``                 ``User-Agent`` header, or ``-``
``T``                 duration in whole seconds
``M``                 duration in whole milliseconds
``D``                 duration in whole microseconds
``L``                 duration in seconds, with six decimals
``p``                 ``<pid>``
``{name}i``           request header ``name`` (any case), ``-`` when absent
``{name}o``           response header ``name`` (any case), ``-`` when absent
``{name}e``           environment variable ``name``, ``-`` when unset
====================  ===============================================================

Repeated headers are joined with ``", "``.

Every atom that can carry what a client sent (everything but the numbers, the time and
the pid) is escaped as nginx escapes its access log: ``"`` and ``\\`` and every byte
outside printable ASCII (control bytes, DEL, and each byte of a non-ASCII character)
become ``\\xHH``. A Referer of ``a" "b`` cannot add fields to the line, and the ESC of a
terminal escape sequence arrives in the file as the four characters ``\\x1B``. Header
values, the query string and the raw path are escaped byte by byte as received; the
decoded path (``U``) and the Basic user (``u``) as their UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._config import Config

LOGGER = logging.getLogger("trioserve.access")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# "%%" is a literal percent sign, "%(name)" starts an atom, any other "%" is a mistake:
# "%s" would print the whole atom dict and "100%" fails only when the line is formatted.
_DIRECTIVE = re.compile(r"%(%|\(([^)]*)\))?")
_HEADER_OR_ENV = re.compile(r"\{([^{}]+)\}([ioe])")
# What nginx leaves as it is in a log line: printable ASCII but the quote and the backslash.
_UNSAFE = re.compile(rb"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _escape_byte(match: re.Match[bytes]) -> bytes:
    return b"\\x%02X" % match[0][0]


def escape(data: bytes) -> str:
    """``data`` as it may appear in a log line: ``"``, ``\\`` and every byte outside
    printable ASCII as ``\\xHH`` (uppercase hex), as nginx writes them."""
    if _UNSAFE.search(data) is None:
        return data.decode("ascii")
    return _UNSAFE.sub(_escape_byte, data).decode("ascii")


def _escape_text(text: str) -> str:
    """A decoded string (a path, an address), escaped as its UTF-8 bytes."""
    return escape(text.encode("utf-8", errors="surrogatepass"))


class _Exchange:
    """One finished request, as the atom functions see it."""

    __slots__ = ("body_bytes", "duration", "request_time", "response_headers", "scope", "status")

    def __init__(
        self,
        scope: Mapping[str, Any],
        status: int,
        response_headers: Sequence[tuple[bytes, bytes]],
        body_bytes: int,
        request_time: float,
        duration: float,
    ) -> None:
        self.scope = scope
        self.status = status
        self.response_headers = response_headers
        self.body_bytes = body_bytes
        self.request_time = request_time
        self.duration = duration


_Atom = Callable[[_Exchange], str]


def _find_header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    # ASGI request header names are lowercase, but an app's response headers may not be.
    values = [value for key, value in headers if key.lower() == name]
    return b", ".join(values) if values else None


def _header_atom(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    value = _find_header(headers, name)
    return "-" if value is None else escape(value)


def _request_header(x: _Exchange, name: bytes) -> str:
    return _header_atom(x.scope.get("headers", ()), name)


def _remote_addr(x: _Exchange) -> str:
    client = x.scope.get("client")
    return _escape_text(str(client[0])) if client else "-"


def _user(x: _Exchange) -> str:
    auth = _find_header(x.scope.get("headers", ()), b"authorization") or b""
    scheme, _, credentials = auth.partition(b" ")
    if scheme.lower() != b"basic":
        return "-"
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "-"
    user, sep, _ = decoded.partition(b":")
    return escape(user) if sep and user else "-"


def _clf_time(timestamp: float) -> str:
    # Month names are spelled out here because strftime's %b follows the locale.
    lt = time.localtime(timestamp)
    offset = lt.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (
        f"[{lt.tm_mday:02d}/{_MONTHS[lt.tm_mon - 1]}/{lt.tm_year:04d}:"
        f"{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d} {sign}{hours:02d}{minutes:02d}]"
    )


def _method(x: _Exchange) -> str:
    return _escape_text(str(x.scope.get("method", "GET")))


def _protocol(x: _Exchange) -> str:
    return _escape_text(f"HTTP/{x.scope.get('http_version', '1.1')}")


def _query(x: _Exchange) -> str:
    return escape(bytes(x.scope.get("query_string", b"")))


def _request_line(x: _Exchange) -> str:
    raw_path = x.scope.get("raw_path")
    if raw_path:
        target = bytes(raw_path)
    else:
        target = str(x.scope.get("path", "/")).encode("utf-8", errors="surrogatepass")
    query = bytes(x.scope.get("query_string", b""))
    if query:
        target = b"%s?%s" % (target, query)
    return f"{_method(x)} {escape(target)} {_protocol(x)}"


_ATOMS: dict[str, _Atom] = {
    "h": _remote_addr,
    "l": lambda x: "-",
    "u": _user,
    "t": lambda x: _clf_time(x.request_time),
    "r": _request_line,
    "m": _method,
    "U": lambda x: _escape_text(str(x.scope.get("path", ""))),
    "q": _query,
    "H": _protocol,
    "s": lambda x: str(x.status),
    "B": lambda x: str(x.body_bytes),
    "b": lambda x: str(x.body_bytes) if x.body_bytes else "-",
    "f": lambda x: _request_header(x, b"referer"),
    "a": lambda x: _request_header(x, b"user-agent"),
    "T": lambda x: str(int(x.duration)),
    "M": lambda x: str(int(x.duration * 1_000)),
    "D": lambda x: str(int(x.duration * 1_000_000)),
    "L": lambda x: f"{x.duration:.6f}",
    "p": lambda x: f"<{os.getpid()}>",
}


def _parametrized_atom(key: str) -> _Atom | None:
    match = _HEADER_OR_ENV.fullmatch(key)
    if match is None:
        return None
    name, where = match.groups()
    if where == "e":
        return lambda x: _escape_text(os.environ.get(name, "-"))
    header = name.strip().lower().encode("latin-1", errors="replace")
    if where == "i":
        return lambda x: _request_header(x, header)
    return lambda x: _header_atom(x.response_headers, header)


def _compile(fmt: str) -> dict[str, _Atom]:
    """The atoms ``fmt`` uses, keyed as written in it; ConfigError if it is not valid."""
    atoms: dict[str, _Atom] = {}
    for match in _DIRECTIVE.finditer(fmt):
        if match.group(1) is None:
            raise ConfigError(
                f"--access-log-format: stray '%' at position {match.start()} of {fmt!r}; "
                "write atoms as %(name)s and a literal percent sign as %%"
            )
        key = match.group(2)
        if key is None or key in atoms:
            continue
        atom = _ATOMS.get(key) or _parametrized_atom(key)
        if atom is None:
            known = ", ".join([*_ATOMS, "{name}i", "{name}o", "{name}e"])
            raise ConfigError(
                f"--access-log-format: unknown atom {f'%({key})s'!r}; known atoms are {known}"
            )
        atoms[key] = atom
    try:
        # Every atom is a string, so "%(s)d" and friends fail here rather than per request.
        fmt % dict.fromkeys(atoms, "-")
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"--access-log-format: cannot format {fmt!r}: {exc}; write atoms as %(name)s"
        ) from None
    return atoms


def check_access_log_format(fmt: str) -> None:
    """Raise ConfigError if ``fmt`` uses an unknown atom or is not a valid %-format."""
    _compile(fmt)


class AccessLog:
    """Formats and emits one access log line per request.

    Args:
        fmt: The line format in gunicorn's atoms, e.g. ``'%(h)s "%(r)s" %(s)s'``.
        logger: Where lines go, at INFO; defaults to the ``trioserve.access`` logger.

    Raises:
        ConfigError: ``fmt`` uses an unknown atom or is not a valid %-format.
    """

    def __init__(self, fmt: str, logger: logging.Logger | None = None) -> None:
        self.fmt = fmt
        self.logger = LOGGER if logger is None else logger
        self._atoms = tuple(_compile(fmt).items())

    def log(
        self,
        scope: Mapping[str, Any],
        status: int,
        response_headers: Sequence[tuple[bytes, bytes]],
        body_bytes: int,
        request_time: float,
        duration: float,
    ) -> None:
        """Log one finished request.

        Args:
            scope: The ASGI connection scope.
            status: The response status code.
            response_headers: The response headers as sent, ``(name, value)`` bytes pairs.
            body_bytes: How many bytes of response body were sent.
            request_time: When the request started, as ``time.time()``.
            duration: How long the request took, in seconds.
        """
        if not self.logger.isEnabledFor(logging.INFO):
            return
        exchange = _Exchange(scope, status, response_headers, body_bytes, request_time, duration)
        line = self.fmt % {key: atom(exchange) for key, atom in self._atoms}
        self.logger.info("%s", line)


def access_log_for(config: Config) -> AccessLog | None:
    """The access log ``config`` asks for, or None when ``access_log`` is not set.

    Raises:
        ConfigError: ``access_log_format`` is not valid.
    """
    if config.access_log is None:
        return None
    check_access_log_format(config.access_log_format)
    return AccessLog(config.access_log_format)

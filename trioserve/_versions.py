"""Which HTTP versions a server speaks, and how a client reaches HTTP/2.

HTTP/2 needs the optional ``h2`` package (``pip install 'trioserve[http2]'``). The
settings (``--http-protocols`` and ``--http2-*``, gunicorn's names) say what is wanted;
:func:`http_versions` says what is served, once, for the TLS context (ALPN), the
pipeline (whether the HTTP/1.1 edge hands connections to the HTTP/2 edge) and the
startup checks, so that the three never disagree:

- the default, ``h1,h2``, serves HTTP/2 when ``h2`` is installed and HTTP/1.1 alone
  without it, quietly: a server that worked before the extra existed works the same;
- asking for HTTP/2 explicitly (``--http-protocols h2``, ``--http2-cleartext upgrade``,
  an ``--http2-*`` value other than the default) without ``h2`` installed is a one-line
  :class:`~trioserve.ConfigError` saying how to install it.

How HTTP/2 is reached: over TLS by ALPN only (``h2`` offered before ``http/1.1``); on
a plain port by prior knowledge (a connection that opens with the HTTP/2 preface) and,
only when ``--http2-cleartext`` asks for it, by ``Upgrade: h2c``. Prior knowledge is
on by default because only a client that knows the server speaks HTTP/2 sends the
preface, and an HTTP/1.1 proxy in between refuses it rather than passing it on. The
upgrade is off by default: RFC 9113 deprecates it, and a proxy that forwards
``Upgrade: h2c`` hands the client a tunnel past its own routing and access rules
("h2c smuggling").
"""

from __future__ import annotations

import importlib

import attrs

from ._config import Config, SettingInfo, settings
from ._errors import ConfigError
from ._proto.validate import Limits

INSTALL_HINT = "pip install 'trioserve[http2]'"
"""How to get HTTP/2 support, for every message that says it is missing."""

# The ALPN names of the two versions (RFC 7301's registry).
_ALPN = {"h1": "http/1.1", "h2": "h2"}
# The settings whose non-default value asks for HTTP/2 by itself.
_HTTP2_NUMBERS = (
    "http2_max_concurrent_streams",
    "http2_initial_window_size",
    "http2_max_frame_size",
    "http2_max_header_list_size",
)


def h2_installed() -> bool:
    """Whether the ``h2`` package can be imported (the import is what counts: a broken
    or blocked install is as good as none)."""
    try:
        importlib.import_module("h2.connection")
    except ImportError:
        return False
    return True


@attrs.frozen
class HTTPVersions:
    """What a server with some settings serves.

    Attributes:
        http2: Whether HTTP/2 is served at all.
        prior_knowledge: Whether a plain connection opening with the HTTP/2 preface is
            served as HTTP/2.
        upgrade: Whether an HTTP/1.1 ``Upgrade: h2c`` request switches a plain
            connection to HTTP/2.
        alpn: The protocols a TLS handshake offers, preferred first.
    """

    http2: bool
    prior_knowledge: bool = False
    upgrade: bool = False
    alpn: tuple[str, ...] = ("http/1.1",)


def _info(name: str) -> SettingInfo:
    return next(info for info in settings() if info.name == name)


def _explicit_ask(config: Config) -> str | None:
    """The first setting that asks for HTTP/2 by its value, as a flag and value."""
    if config.http_protocols == ("h2",):
        return "--http-protocols h2"
    if config.http2_cleartext in ("upgrade", "both"):
        return f"--http2-cleartext {config.http2_cleartext}"
    for name in _HTTP2_NUMBERS:
        info = _info(name)
        value = getattr(config, name)
        if value != info.default:
            return f"{info.flag} {value}"
    return None


def http_versions(config: Config) -> HTTPVersions:
    """What ``config`` serves (see the module's docstring).

    Raises:
        ConfigError: HTTP/2 is asked for explicitly and ``h2`` is not installed.
    """
    if "h2" not in config.http_protocols:
        return HTTPVersions(http2=False)
    if not h2_installed():
        ask = _explicit_ask(config)
        if ask is not None:
            raise ConfigError(f"{ask}: HTTP/2 needs the h2 package; install it with {INSTALL_HINT}")
        return HTTPVersions(http2=False)
    cleartext = config.http2_cleartext
    return HTTPVersions(
        http2=True,
        prior_knowledge=cleartext in ("prior-knowledge", "both"),
        upgrade=cleartext in ("upgrade", "both"),
        alpn=tuple(_ALPN[name] for name in ("h2", "h1") if name in config.http_protocols),
    )


def max_header_list_size(config: Config) -> int:
    """The HTTP/2 header list limit ``config`` sets: ``http2_max_header_list_size``, or,
    when that is 0, the most an HTTP/1.1 request head may take (see
    :class:`~trioserve._proto.validate.Limits`), so both versions bound a request's
    headers alike."""
    if config.http2_max_header_list_size:
        return config.http2_max_header_list_size
    return Limits(
        request_line=config.limit_request_line,
        fields=config.limit_request_fields,
        field_size=config.limit_request_field_size,
        head=config.limit_request_head,
    ).head_size

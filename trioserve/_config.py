"""The settings registry: every setting declared once, as an attrs field.

Each field of :class:`Config` carries a :class:`Setting` in its metadata (under
the :data:`SETTING` key). From that one declaration come the command-line
parser (``_cli``), the ``TRIOSERVE_<NAME>`` environment variables, the config
file keys, ``--print-config`` and the settings reference in docs/.

Sources, lowest first: defaults, parameters passed in code, the config file
(``-c FILE``, or ``[tool.trioserve]`` in ./pyproject.toml), the environment,
the command line. :func:`load_config` resolves them and remembers where each
value came from.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import ipaddress
import logging
import math
import os
import sys
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ._bind import parse_bind
from ._errors import ConfigError
from ._gunicorn import BY_NAME as GUNICORN_BY_NAME
from ._gunicorn import read as read_gunicorn
from ._hooktable import HOOK_NAMES, hook_info, signature_problem, signature_text
from ._statsd import parse_statsd_host

LOGGER = logging.getLogger("trioserve.config")

SETTING = "trioserve.setting"
"""The attrs metadata key under which each Config field keeps its :class:`Setting`."""

ENV_PREFIX = "TRIOSERVE_"


class _BadValue(ValueError):
    """Raised by a kind's parser: ``got`` is the offending piece, ``detail`` why.

    ``message``, when given, replaces the usual "expected ..., got ..." wording: for a
    value of the right type whose problem is something else (a hook's signature).
    """

    def __init__(self, got: object, detail: str = "", *, message: str = "") -> None:
        super().__init__(detail)
        self.got = got
        self.detail = detail
        self.message = message


@attrs.frozen
class Kind:
    """How a setting's value is read from text (CLI, environment) and from Python values.

    Attributes:
        expected: The accepted form, worded to follow "expected", e.g. "an integer >= 0".
        from_text: Parses a string from the command line or the environment.
        from_value: Checks and normalises a value from code or a config file; strings are
            passed through ``from_text``.
    """

    expected: str
    from_text: Callable[[str], Any]
    from_value: Callable[[Any], Any]
    choices: tuple[str, ...] = ()
    cli: Literal["value", "flag", "append", "none"] = "value"


@attrs.frozen
class Setting:
    """What the registry knows about one setting besides its name, type and default.

    Attributes:
        kind: How values are parsed and checked.
        section: The heading it is listed under in ``--help`` and the docs.
        help: One or two sentences for ``--help`` and docs/settings.md.
        flags: Command-line flags; empty for a positional argument (the app).
        scope: "server" for settings global to the whole server, "app" for those that
            each application of a MultiApp may set on its own.
        metavar: Placeholder shown in ``--help``.
        env: Whether ``TRIOSERVE_<NAME>`` is read.
        in_file: Whether a config file may set it (``config`` itself may not).
    """

    kind: Kind
    section: str
    help: str
    flags: tuple[str, ...] = ()
    scope: Literal["server", "app"] = "app"
    metavar: str | None = None
    env: bool = True
    in_file: bool = True


# -- kinds ---------------------------------------------------------------------------------


def _int_kind(minimum: int, maximum: int | None = None) -> Kind:
    def from_text(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise _BadValue(text) from None
        return from_value(value)

    def from_value(value: Any) -> int:
        if isinstance(value, str):
            return from_text(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _BadValue(value)
        if maximum is not None and value > maximum:
            raise _BadValue(value)
        return value

    expected = (
        f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    )
    return Kind(expected, from_text, from_value)


def _seconds_kind(*, zero: str = "") -> Kind:
    """Seconds >= 0, or > 0 when ``zero`` says why 0 (no limit) is refused.

    The rule for every timeout: 0 means no limit, as for the WebSocket and --limit-*
    settings, except where waiting for ever would be dangerous: there 0 is refused.
    """

    def from_text(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise _BadValue(text) from None
        return from_value(value)

    def from_value(value: Any) -> float:
        if isinstance(value, str):
            return from_text(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _BadValue(value)
        if not value >= 0 or value == float("inf"):  # also rejects NaN
            raise _BadValue(value)
        if zero and value == 0:
            raise _BadValue(value, zero)
        return float(value)

    return Kind(
        "a number of seconds > 0" if zero else "a number of seconds >= 0", from_text, from_value
    )


def timeout_seconds(value: float) -> float:
    """A timeout setting as a duration to wait: its 0 (no limit) becomes infinity."""
    return value if value > 0 else math.inf


def _str_kind(*, optional: bool = False) -> Kind:
    def from_value(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise _BadValue(value)
        return value

    return Kind("a path" if optional else "a string", from_value, from_value)


def _choice_kind(*choices: str) -> Kind:
    def from_value(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise _BadValue(value)
        return value.strip().lower()

    words = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
    return Kind(f"one of {words}", from_value, from_value, choices)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool_word(text: str) -> bool | None:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


def _optional_bool_kind() -> Kind:
    def from_text(text: str) -> bool | None:
        value = _bool_word(text)
        if value is None and text.strip().lower() not in {"", "auto", "none"}:
            raise _BadValue(text)
        return value

    def from_value(value: Any) -> bool | None:
        if isinstance(value, str):
            return from_text(value)
        if value is None or isinstance(value, bool):
            return value
        raise _BadValue(value)

    return Kind("true, false or auto", from_text, from_value, cli="flag")


def _bool_kind() -> Kind:
    def from_text(text: str) -> bool:
        value = _bool_word(text)
        if value is None:
            raise _BadValue(text)
        return value

    def from_value(value: Any) -> bool:
        if isinstance(value, str):
            return from_text(value)
        if not isinstance(value, bool):
            raise _BadValue(value)
        return value

    return Kind("true or false", from_text, from_value, cli="flag")


def _list_kind(
    expected: str,
    check: Callable[[str], str],
    split: Callable[[str], list[str]],
    *,
    allow_empty: bool,
) -> Kind:
    """A list of strings: one flag occurrence or list item each; text is ``split``."""

    def from_text(text: str) -> tuple[str, ...]:
        items = split(text)
        if not items and not allow_empty:
            raise _BadValue(text)
        return tuple(check(item) for item in items)

    def from_value(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            return from_text(value)
        if not isinstance(value, list | tuple) or (not value and not allow_empty):
            raise _BadValue(value)
        for item in value:
            if not isinstance(item, str):
                raise _BadValue(item)
        return tuple(check(item) for item in value)

    return Kind(expected, from_text, from_value, cli="append")


def _check_nonempty(item: str) -> str:
    if not item.strip():
        raise _BadValue(item)
    return item.strip()


def _split_words(text: str) -> list[str]:
    return text.replace(",", " ").split()


# --reload-include and --reload-exclude: file name patterns.
_GLOB_LIST = _list_kind("a list of glob patterns", _check_nonempty, _split_words, allow_empty=True)


def _split_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_bind(item: str) -> str:
    try:
        parse_bind(item)
    except ValueError as exc:
        _, _, detail = str(exc).partition(f"got {item!r}; ")
        raise _BadValue(item, detail) from None
    return item


def _optional_bind_kind() -> Kind:
    def from_value(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _BadValue(value)
        return _check_bind(value.strip())

    return Kind("HOST:PORT, [IPV6]:PORT or unix:PATH", from_value, from_value)


def _bind_list_kind() -> Kind:
    return _list_kind(
        "HOST:PORT, [IPV6]:PORT, unix:PATH[(MODE)] or fd://N",
        _check_bind,
        _split_words,
        allow_empty=False,
    )


def _check_header(item: str) -> str:
    name, sep, value = item.partition(":")
    name = name.strip()
    if (
        not sep
        or not name
        or any(c in name for c in " \t\r\n\0")
        or any(c in value for c in "\r\n\0")
    ):
        raise _BadValue(item)
    return f"{name}:{value.strip()}"


def _header_list_kind() -> Kind:
    # Header values may hold spaces and commas, so text holds one header per line.
    return _list_kind("NAME:VALUE", _check_header, _split_lines, allow_empty=True)


def _check_network(item: str) -> str:
    if item == "*":
        return item
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise _BadValue(item) from None
    return item


def _network_list_kind() -> Kind:
    return _list_kind(
        "IP addresses or networks (CIDR), or '*'", _check_network, _split_words, allow_empty=True
    )


def _int_range_kind(minimum: int, maximum: int) -> Kind:
    """An integer from ``minimum`` to ``maximum``, both included."""
    inner = _int_kind(minimum)

    def from_value(value: Any) -> int:
        number: int = inner.from_value(value)
        if number > maximum:
            raise _BadValue(number)
        return number

    return Kind(f"an integer from {minimum} to {maximum}", from_value, from_value)


HTTP_PROTOCOLS = ("h1", "h2")
"""The names --http-protocols takes: HTTP/1.1 and HTTP/2 (gunicorn's names)."""


def _check_protocol(item: str) -> str:
    word = item.strip().lower()
    if word not in HTTP_PROTOCOLS:
        raise _BadValue(item)
    return word


def _protocols_kind() -> Kind:
    """A list of 'h1' and 'h2', each at most once; kept in that order (the order of the
    list says nothing: when HTTP/2 is served, TLS clients are offered it first)."""
    listed = _list_kind("'h1', 'h2' or 'h1,h2'", _check_protocol, _split_words, allow_empty=False)

    def from_value(value: Any) -> tuple[str, ...]:
        names: tuple[str, ...] = listed.from_value(value)
        for name in names:
            if names.count(name) > 1:
                raise _BadValue(value, f"{name!r} is listed twice")
        return tuple(name for name in HTTP_PROTOCOLS if name in names)

    def from_text(text: str) -> tuple[str, ...]:
        return from_value(text)

    return Kind(listed.expected, from_text, from_value)


def _app_kind() -> Kind:
    def from_value(value: Any) -> object:
        if isinstance(value, str):
            if not value.strip():
                raise _BadValue(value)
            return value.strip()
        if value is None:  # no app yet: serve() and the CLI report it when they need one
            return None
        # Application and MultiApp objects mark themselves (they are not callables).
        if not callable(value) and not getattr(value, "trioserve_composite", False):
            raise _BadValue(value)
        return value

    return Kind("'module:attribute' or an app object", from_value, from_value)


def _hook_kind(name: str) -> Kind:
    def from_value(value: Any) -> object:
        if value is None:
            return None
        given = value
        if isinstance(value, str):
            value = _import_hook(value.strip())
        if not callable(value):
            # A 'module:attribute' string is named as written, not as the object's repr.
            raise _BadValue(given, f"it must accept {signature_text(name)}: not callable")
        problem = signature_problem(name, value)
        if problem is not None:
            raise _BadValue(
                given, message=f"{given!r}: {problem}" if given is not value else problem
            )
        return value

    return Kind(
        "a function or async function, or 'module:attribute' naming one",
        from_value,
        from_value,
        cli="none",
    )


def _import_hook(text: str) -> object:
    module, sep, attribute = text.partition(":")
    if not sep or not module or not attribute:
        raise _BadValue(text, "name it as 'module:attribute'")
    try:
        value: object = importlib.import_module(module)
    except ImportError as exc:
        raise _BadValue(text, f"cannot import {module!r}: {exc}") from None
    except Exception as exc:  # the module's own code failed while it was imported
        raise _BadValue(text, f"importing {module!r} raised {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise _BadValue(text, f"{module!r} has no attribute {attribute!r}") from None
    return value


def _umask_kind() -> Kind:
    def from_value(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value <= 0o777:
                return f"0o{value:03o}"
            raise _BadValue(value)
        if not isinstance(value, str):
            raise _BadValue(value)
        text = value.strip().lower()
        if text == "inherit":
            return text
        digits = text.removeprefix("0o")
        if not digits or len(digits) > 4 or any(c not in "01234567" for c in digits):
            raise _BadValue(value)
        if int(digits, 8) > 0o777:
            raise _BadValue(value)
        return f"0o{int(digits, 8):03o}"

    return Kind("an octal umask such as 022 or 0o027, or 'inherit'", from_value, from_value)


def _account_kind(what: str) -> Kind:
    def from_value(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        if not isinstance(value, str) or not value.strip() or ":" in value:
            raise _BadValue(value)
        return value.strip()

    return Kind(f"a {what} name or number", from_value, from_value)


def _hostport_kind() -> Kind:
    def from_value(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise _BadValue(value)
        try:
            parse_statsd_host(value)
        except ConfigError:
            raise _BadValue(value) from None
        return value.strip()

    return Kind("HOST:PORT, or HOST for port 8125", from_value, from_value)


# -- the registry --------------------------------------------------------------------------


def _setting(default: Any, setting: Setting) -> Any:
    return attrs.field(default=default, metadata={SETTING: setting})


def _make_converter(name: str, kind: Kind) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        return _checked(kind, value, name, text=False)

    return convert


def _add_converters(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    # Direct construction (Config(workers=-1)) is validated by the same kinds as every
    # other source, with the setting's name in the message.
    return [
        f.evolve(converter=_make_converter(f.name, f.metadata[SETTING].kind))
        if SETTING in f.metadata
        else f
        for f in fields
    ]


_APP = "Application"
_SERVER = "Server socket"
_WORKER = "Worker processes"
_TIMEOUTS = "Timeouts"
_LOG = "Logging"
_HTTP = "HTTP"
_LIMITS = "Limits"
_PROXY = "Proxies"
_TLS = "TLS"
_WS = "WebSocket"
_HTTP2 = "HTTP/2"
_CONFIG = "Config file"
_DEV = "Development"
_SERVICE = "Running as a service"
_HOOKS = "Server hooks"


def _hook(name: str, scope: Literal["server", "app"] = "app") -> Setting:
    hook = hook_info(name)
    where = {
        "master": "the master",
        "worker": "each worker",
        "both": "each worker (or the in-process server)",
    }[hook.where]
    return Setting(
        _hook_kind(name),
        _HOOKS,
        f"Hook called as {signature_text(name)} in {where}: {hook.when} See docs/hooks.md.",
        scope=scope,
        metavar="FUNCTION",
    )


@attrs.frozen(kw_only=True, field_transformer=_add_converters)
class Config:
    """Every trioserve setting, resolved and validated. Frozen: change it with ``attrs.evolve``.

    Construct it in code with keyword arguments (``Config(app=app, bind=["127.0.0.1:0"])``)
    or resolve it from every source with :meth:`Config.load`. A bad value raises
    :class:`trioserve.ConfigError` naming the setting and the accepted form.
    """

    # Application
    app: object = _setting(
        None,
        Setting(
            _app_kind(),
            _APP,
            "The application: 'module:attribute', 'module:factory()' or "
            "'module:factory(arg=1)'. An ASGI 3 or 2 app, or a raw stream handler "
            "'async def handler(stream)'. Given as the APP argument on the command line.",
            metavar="APP",
        ),
    )
    factory: bool | None = _setting(
        None,
        Setting(
            _optional_bool_kind(),
            _APP,
            "Call the target as a factory that returns the app. By default a callable that "
            "is not an app and takes no required arguments is called; --no-factory forbids it.",
            flags=("--factory",),
        ),
    )
    interface: str = _setting(
        "auto",
        Setting(
            _choice_kind("auto", "asgi3", "asgi2", "wsgi", "stream", "websocket"),
            _APP,
            "What kind of app the target is; 'auto' detects ASGI 3, ASGI 2, WSGI and raw "
            "stream handlers from the callable's signature. 'websocket' serves a native "
            "trio-websocket handler, async def handler(request: WebSocketRequest) (detected "
            "when the parameter is annotated so).",
            flags=("--interface",),
        ),
    )
    app_dir: str = _setting(
        ".",
        Setting(
            _str_kind(),
            _APP,
            "Directory put first on sys.path before the app is imported.",
            flags=("--app-dir",),
            metavar="DIR",
        ),
    )
    root_path: str = _setting(
        "",
        Setting(
            _str_kind(),
            _APP,
            "The ASGI root_path: the URL prefix the app is mounted under behind a proxy that "
            "strips it. The scope's path begins with it, as ASGI says and uvicorn does (a "
            "WSGI app gets it as SCRIPT_NAME, the rest as PATH_INFO).",
            flags=("--root-path",),
            metavar="PATH",
        ),
    )
    lifespan: str = _setting(
        "auto",
        Setting(
            _choice_kind("auto", "on", "off"),
            _APP,
            "ASGI lifespan events: 'auto' runs them if the app supports them, 'on' fails "
            "startup when the app does not, 'off' never sends them.",
            flags=("--lifespan",),
        ),
    )

    app_loop: str = _setting(
        "trio",
        Setting(
            _choice_kind("trio", "asyncio"),
            _APP,
            "The event loop the app's code expects. 'asyncio' runs apps written for asyncio "
            "(Django's ASGI handler, asyncio libraries) inside the trio worker through "
            "trio-asyncio (pip install 'trioserve[asyncio]'); trio and anyio apps need 'trio'.",
            flags=("--app-loop",),
        ),
    )
    threads: int = _setting(
        10,
        Setting(
            _int_kind(1),
            _APP,
            "Threads that run a WSGI app's requests (per worker process); requests beyond "
            "them wait for a free thread.",
            flags=("--threads",),
            metavar="INT",
        ),
    )

    # Server socket
    bind: Sequence[str] = _setting(
        ("127.0.0.1:8000",),
        Setting(
            _bind_list_kind(),
            _SERVER,
            "Address to listen on: HOST:PORT, HOST (port 8000), :PORT (all interfaces), "
            "[IPV6]:PORT, unix:PATH, unix:PATH(0660) for a socket file mode, or fd://N for "
            "an inherited socket. Repeat to listen on several.",
            flags=("-b", "--bind"),
            metavar="ADDRESS",
        ),
    )
    backlog: int = _setting(
        2048,
        Setting(
            _int_kind(1),
            _SERVER,
            "Maximum number of pending connections queued by the kernel on each socket.",
            flags=("--backlog",),
            metavar="INT",
        ),
    )

    # HTTP
    http: str = _setting(
        "auto",
        Setting(
            _choice_kind("auto", "h11", "h11-compiled", "httptools"),
            _HTTP,
            "The HTTP/1.1 parser: 'h11', 'h11-compiled' (the mypyc build of h11) or "
            "'httptools' (llhttp, Node's C parser), the last two from pip install "
            "'trioserve[speed]'; 'auto' uses the compiled h11 when installed. trioserve "
            "checks every request head itself before any of them parses it.",
            flags=("--http",),
        ),
    )
    server_header: bool = _setting(
        True,
        Setting(
            _bool_kind(),
            _HTTP,
            "Send a 'Server: trioserve' header on responses that do not set one.",
            flags=("--server-header",),
        ),
    )
    pathsend: bool = _setting(
        False,
        Setting(
            _bool_kind(),
            _HTTP,
            "Offer apps the ASGI http.response.pathsend extension: Starlette's and "
            "FastAPI's FileResponse then send the file's path, and the file goes out with "
            "os.sendfile (3-17x faster for large files). Off by default: Starlette's "
            "GZipMiddleware compresses no pathsend response, so turning it on stops "
            "gzip of file responses behind that middleware (uvicorn and hypercorn do not "
            "offer it either).",
            flags=("--pathsend",),
        ),
    )
    header: Sequence[str] = _setting(
        (),
        Setting(
            _header_list_kind(),
            _HTTP,
            "A default response header, as NAME:VALUE, added unless the app sets it. Repeat "
            "for several; in the environment, one per line.",
            flags=("--header",),
            metavar="NAME:VALUE",
        ),
    )
    ws: str = _setting(
        "on",
        Setting(
            _choice_kind("on", "off"),
            _WS,
            "Accept WebSocket upgrades on the HTTP listeners; 'off' refuses them with a "
            "plain HTTP response.",
            flags=("--ws",),
        ),
    )
    ws_max_message_size: int = _setting(
        16 * 1024 * 1024,
        Setting(
            _int_kind(1),
            _WS,
            "Largest WebSocket message accepted, in bytes (after decompression); a larger "
            "one closes the connection with 1009 (message too big). A websocket holds up to "
            "ws_max_queue + 1 messages of this size; with compression a peer can send one "
            "for about a thousandth of its size in traffic.",
            flags=("--ws-max-message-size",),
            metavar="BYTES",
        ),
    )
    ws_max_queue: int = _setting(
        4,
        Setting(
            _int_kind(1),
            _WS,
            "Received WebSocket messages held for the app before reading from the peer pauses.",
            flags=("--ws-max-queue",),
            metavar="INT",
        ),
    )
    ws_per_message_deflate: bool = _setting(
        True,
        Setting(
            _bool_kind(),
            _WS,
            "Accept the permessage-deflate extension (RFC 7692) when a WebSocket client "
            "offers it, compressing messages both ways.",
            flags=("--ws-per-message-deflate",),
        ),
    )
    ws_deflate_context_takeover: bool = _setting(
        False,
        Setting(
            _bool_kind(),
            _WS,
            "Keep each side's compression context from one WebSocket message to the next "
            "(better compression of many small similar messages, about 300 KiB per "
            "compressed websocket for its whole life). Off, the server answers "
            "server_no_context_takeover and client_no_context_takeover and a compressed "
            "websocket holds no compression state between messages.",
            flags=("--ws-deflate-context-takeover",),
        ),
    )
    ws_deflate_window_bits: int = _setting(
        15,
        Setting(
            _int_kind(9, 15),
            _WS,
            "The largest LZ77 window (a power of two) the server compresses WebSocket "
            "messages with, and asks for as client_max_window_bits of clients that let it "
            "choose; smaller saves memory per message being compressed, at some ratio.",
            flags=("--ws-deflate-window-bits",),
            metavar="BITS",
        ),
    )
    ws_ping_interval: float = _setting(
        20.0,
        Setting(
            _seconds_kind(),
            _WS,
            "Seconds between pings sent to each WebSocket peer; 0 sends none.",
            flags=("--ws-ping-interval",),
            metavar="SECONDS",
        ),
    )
    ws_ping_timeout: float = _setting(
        20.0,
        Setting(
            _seconds_kind(),
            _WS,
            "Seconds a WebSocket peer has to answer a ping before it is disconnected "
            "(1011), counted from the ping or from the last bytes the peer sent, whichever "
            "is later (a peer cannot answer in the middle of a frame, and one sending a "
            "long frame on a slow link is alive); 0 keeps pinging but never disconnects "
            "for it.",
            flags=("--ws-ping-timeout",),
            metavar="SECONDS",
        ),
    )

    # HTTP/2
    http_protocols: Sequence[str] = _setting(
        HTTP_PROTOCOLS,
        Setting(
            _protocols_kind(),
            _HTTP2,
            "The HTTP versions served: 'h1' (HTTP/1.1), 'h2' (HTTP/2), comma separated "
            "(gunicorn's names). The default 'h1,h2' serves HTTP/2 when the h2 package is "
            "installed (pip install 'trioserve[http2]') and HTTP/1.1 only without it; asking "
            "for 'h2' alone, or setting an --http2-* value, without h2 installed is an "
            "error. HTTP/2 is reached by TLS ALPN (offered before http/1.1) and, on a plain "
            "port, as --http2-cleartext says. HTTP/1.1 requests are served either way "
            "(with 'h2' alone too, as in gunicorn: only ALPN offers h2 alone).",
            flags=("--http-protocols",),
            metavar="PROTOCOLS",
        ),
    )
    http2_cleartext: str = _setting(
        "prior-knowledge",
        Setting(
            _choice_kind("prior-knowledge", "upgrade", "both", "off"),
            _HTTP2,
            "How HTTP/2 is reached without TLS (h2c), when it is served: 'prior-knowledge' "
            "(the default) serves a plain connection that opens with the HTTP/2 preface; "
            "'upgrade' honours an HTTP/1.1 'Upgrade: h2c' request (RFC 9113 deprecates it, "
            "and a proxy that passes it on lets clients tunnel past its rules: 'h2c "
            "smuggling'); 'both'; 'off'. TLS connections use ALPN only.",
            flags=("--http2-cleartext",),
        ),
    )
    http2_max_concurrent_streams: int = _setting(
        100,
        Setting(
            _int_range_kind(1, 2**31 - 1),
            _HTTP2,
            "Most HTTP/2 streams (requests) one connection may have open at once "
            "(SETTINGS_MAX_CONCURRENT_STREAMS).",
            flags=("--http2-max-concurrent-streams",),
            metavar="INT",
        ),
    )
    http2_initial_window_size: int = _setting(
        65535,
        Setting(
            _int_range_kind(1, 2**31 - 1),
            _HTTP2,
            "Bytes of a request body an HTTP/2 client may send on a stream ahead of the "
            "app reading them (SETTINGS_INITIAL_WINDOW_SIZE): at most this much is held per "
            "stream. The default is HTTP/2's own, 65535; larger speeds up large uploads "
            "over long round trips at the cost of memory.",
            flags=("--http2-initial-window-size",),
            metavar="BYTES",
        ),
    )
    http2_max_frame_size: int = _setting(
        16384,
        Setting(
            _int_range_kind(16384, 16777215),
            _HTTP2,
            "Largest HTTP/2 frame payload accepted, in bytes (SETTINGS_MAX_FRAME_SIZE), "
            "from 16384 (HTTP/2's default) to 16777215.",
            flags=("--http2-max-frame-size",),
            metavar="BYTES",
        ),
    )
    http2_max_header_list_size: int = _setting(
        0,
        Setting(
            _int_kind(0),
            _HTTP2,
            "Largest HTTP/2 request header list accepted, in bytes as HTTP/2 counts them "
            "(names and values after HPACK decoding, plus 32 per field: "
            "SETTINGS_MAX_HEADER_LIST_SIZE); it bounds the memory an HPACK bomb can take. "
            "0, the default, means the same bound as HTTP/1.1 heads: --limit-request-head "
            "(or, when that is 0, what the line and field limits allow, up to 1 MiB); "
            "there is no unbounded setting (gunicorn's 0, no limit, reads as this).",
            flags=("--http2-max-header-list-size",),
            metavar="BYTES",
        ),
    )
    limit_request_line: int = _setting(
        4094,
        Setting(
            _int_kind(0),
            _LIMITS,
            "Maximum size in bytes of the request line; longer gets 414. 0 means no limit.",
            flags=("--limit-request-line",),
            metavar="BYTES",
        ),
    )
    limit_request_fields: int = _setting(
        100,
        Setting(
            _int_kind(0),
            _LIMITS,
            "Maximum number of header fields in a request; more gets 431. 0 means no limit.",
            flags=("--limit-request-fields",),
            metavar="INT",
        ),
    )
    limit_request_field_size: int = _setting(
        8190,
        Setting(
            _int_kind(0),
            _LIMITS,
            "Maximum size in bytes of one request header field; larger gets 431. 0 means no limit.",
            flags=("--limit-request-field-size", "--limit-request-field_size"),
            metavar="BYTES",
        ),
    )
    limit_request_head: int = _setting(
        32768,
        Setting(
            _int_kind(0),
            _LIMITS,
            "Maximum size in bytes of a whole request head (request line, header fields and "
            "the blank line), checked as it arrives: larger gets 431, so a worker holds at "
            "most this much per connection for heads. 0 means no limit of its own (the line "
            "and field limits still bound it, up to 1 MiB).",
            flags=("--limit-request-head",),
            metavar="BYTES",
        ),
    )
    limit_request_body: int = _setting(
        0,
        Setting(
            _int_kind(0),
            _LIMITS,
            "Maximum size in bytes of a request body; larger gets 413. 0 means no limit.",
            flags=("--limit-request-body",),
            metavar="BYTES",
        ),
    )
    body_min_rate: int = _setting(
        500,
        Setting(
            _int_kind(0),
            _LIMITS,
            "Minimum rate in bytes per second at which a request body must arrive, after a "
            "grace of 10 seconds and counting only the time spent waiting for the client "
            "(as Apache's mod_reqtimeout MinRate): a slower client gets 408 and is "
            "disconnected. 0 means no limit.",
            flags=("--body-min-rate",),
            metavar="BYTES_PER_SECOND",
        ),
    )
    limit_concurrency: int = _setting(
        0,
        Setting(
            _int_kind(0),
            _LIMITS,
            "Maximum number of requests served at once per worker; past it new requests get "
            "503 at once. 0 means no limit.",
            flags=("--limit-concurrency",),
            metavar="INT",
        ),
    )

    # Proxies
    proxy_headers: bool = _setting(
        False,
        Setting(
            _bool_kind(),
            _PROXY,
            "Trust X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and Forwarded (RFC "
            "7239) from peers in --forwarded-allow-ips to set the client address and scheme.",
            flags=("--proxy-headers",),
        ),
    )
    forwarded_allow_ips: Sequence[str] = _setting(
        ("127.0.0.1", "::1"),
        Setting(
            _network_list_kind(),
            _PROXY,
            "Peers whose proxy headers and PROXY protocol headers are trusted: IP addresses "
            "or networks, comma separated; '*' trusts every peer.",
            flags=("--forwarded-allow-ips",),
            metavar="IPS",
        ),
    )
    proxy_protocol: str = _setting(
        "off",
        Setting(
            _choice_kind("off", "v1", "v2", "auto"),
            _PROXY,
            "Expect a PROXY protocol header (from HAProxy, AWS NLB and other load balancers) "
            "at the start of each connection from a trusted peer.",
            flags=("--proxy-protocol",),
        ),
    )

    # TLS
    certfile: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _TLS,
            "TLS certificate file (PEM); with --keyfile, the server speaks HTTPS.",
            flags=("--certfile",),
            metavar="FILE",
        ),
    )
    keyfile: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _TLS,
            "TLS private key file (PEM).",
            flags=("--keyfile",),
            metavar="FILE",
        ),
    )
    keyfile_password: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _TLS,
            "Password of an encrypted --keyfile.",
            flags=("--keyfile-password",),
            metavar="PASSWORD",
        ),
    )
    ca_certs: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _TLS,
            "CA certificates file (PEM) used to verify client certificates.",
            flags=("--ca-certs",),
            metavar="FILE",
        ),
    )
    cert_reqs: str = _setting(
        "none",
        Setting(
            _choice_kind("none", "optional", "required"),
            _TLS,
            "Whether clients must present a certificate (verified against --ca-certs).",
            flags=("--cert-reqs",),
        ),
    )
    ciphers: str = _setting(
        "",
        Setting(
            _str_kind(),
            _TLS,
            "OpenSSL cipher list for TLS 1.2; empty keeps Python's defaults.",
            flags=("--ciphers",),
            metavar="CIPHERS",
        ),
    )
    tls_min_version: str = _setting(
        "1.2",
        Setting(
            _choice_kind("1.2", "1.3"),
            _TLS,
            "Oldest TLS version accepted.",
            flags=("--tls-min-version",),
        ),
    )
    reload_certs_watch: bool = _setting(
        False,
        Setting(
            _bool_kind(),
            _TLS,
            "Reload the TLS certificate, key and --ca-certs when their files change on disk "
            "(checked every second; renames and symlink swaps included): new connections "
            "use them, open ones and the workers carry on. A certificate that does not load "
            "is logged and the current one stays.",
            flags=("--reload-certs-watch",),
        ),
    )

    # Worker processes
    workers: int = _setting(
        1,
        Setting(
            _int_kind(0),
            _WORKER,
            "Number of worker processes, each serving the shared sockets under its own "
            "trio loop; 0 serves in the master process itself. Without this setting, "
            "WEB_CONCURRENCY in the environment gives the default, as in gunicorn.",
            flags=("-w", "--workers"),
            metavar="INT",
        ),
    )
    timeout: float = _setting(
        30.0,
        Setting(
            _seconds_kind(),
            _WORKER,
            "A worker whose event loop sent no heartbeat for this many seconds is "
            "taken to be stuck: its stack is dumped to the error log, then it is sent "
            "SIGABRT, then SIGKILL, and replaced. 0 disables the check.",
            flags=("-t", "--timeout"),
            metavar="SECONDS",
        ),
    )
    max_requests: int = _setting(
        0,
        Setting(
            _int_kind(0),
            _WORKER,
            "Replace a worker after it served this many requests (a fresh worker takes "
            "its place first, so no request fails); 0 never.",
            flags=("--max-requests",),
            metavar="INT",
        ),
    )
    max_requests_jitter: int = _setting(
        0,
        Setting(
            _int_kind(0),
            _WORKER,
            "Each worker adds a random number between 0 and this to --max-requests, so "
            "that workers are not all replaced at once.",
            flags=("--max-requests-jitter",),
            metavar="INT",
        ),
    )
    max_worker_memory: int = _setting(
        0,
        Setting(
            _int_kind(0),
            _WORKER,
            "Replace a worker whose resident memory (RSS) stays above this many MiB for 3 "
            "samples in a row (the master samples every second; Linux only): a fresh "
            "worker takes its place first, so no request fails. 0 disables it.",
            flags=("--max-worker-memory",),
            metavar="MIB",
        ),
    )
    max_worker_lifetime: float = _setting(
        0.0,
        Setting(
            _seconds_kind(),
            _WORKER,
            "Replace a worker once it has run this many seconds (a fresh worker takes its "
            "place first, so no request fails). 0 disables it.",
            flags=("--max-worker-lifetime",),
            metavar="SECONDS",
        ),
    )
    max_worker_lifetime_jitter: float = _setting(
        0.0,
        Setting(
            _seconds_kind(),
            _WORKER,
            "Each worker adds a random number of seconds between 0 and this to "
            "--max-worker-lifetime, so that workers are not all replaced at once. 0 "
            "disables it.",
            flags=("--max-worker-lifetime-jitter",),
            metavar="SECONDS",
        ),
    )
    reuse_port: bool = _setting(
        False,
        Setting(
            _bool_kind(),
            _WORKER,
            "Each worker listens on its own SO_REUSEPORT socket and the kernel spreads "
            "connections between them, instead of all workers sharing the master's socket.",
            flags=("--reuse-port",),
        ),
    )
    preload: bool = _setting(
        False,
        Setting(
            _bool_kind(),
            _WORKER,
            "Import the app once, in a preloader process that never runs trio, and fork "
            "the workers from it, so they share its memory copy-on-write. Code changes "
            "then need a SIGHUP (which restarts the preloader) to take effect.",
            flags=("--preload",),
        ),
    )
    name: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _WORKER,
            "A name shown in process titles ('trioserve: master [NAME]', "
            "'trioserve: worker 2 [NAME]'); titles are set when setproctitle is installed.",
            flags=("-n", "--name"),
            scope="server",
            metavar="NAME",
        ),
    )

    # Running as a service
    daemon: bool = _setting(
        False,
        Setting(
            _bool_kind(),
            _SERVICE,
            "Detach from the terminal and run in the background (double fork, new session, "
            "standard streams on /dev/null, stderr to --error-log when it is a file). The "
            "command returns once the sockets are bound and the pid file is locked.",
            flags=("-D", "--daemon"),
            scope="server",
        ),
    )
    pid: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _SERVICE,
            "A pid file: written by the master and held under an advisory lock for its "
            "whole life, so a second server with the same file refuses to start; removed "
            "on exit. A file left by a dead process is taken over.",
            flags=("-p", "--pid"),
            scope="server",
            metavar="FILE",
        ),
    )
    chdir: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _SERVICE,
            "Change to this directory before loading the app; a daemon changes to / when "
            "it is not given (after resolving the app directory and the config file).",
            flags=("--chdir",),
            scope="server",
            metavar="DIR",
        ),
    )
    umask: str = _setting(
        "0o022",
        Setting(
            _umask_kind(),
            _SERVICE,
            "The file mode creation mask of a daemon (octal), or 'inherit' to keep the "
            "caller's. Only applied with --daemon. In TOML write it as a string ('027'): "
            "a TOML integer is decimal.",
            flags=("--umask",),
            scope="server",
            metavar="MASK",
        ),
    )
    user: str | None = _setting(
        None,
        Setting(
            _account_kind("user"),
            _SERVICE,
            "Run the workers as this user (name or uid) once the sockets are bound; unix "
            "socket files are given to it. Needs root; ignored with a warning otherwise.",
            flags=("-u", "--user"),
            scope="server",
            metavar="USER",
        ),
    )
    group: str | None = _setting(
        None,
        Setting(
            _account_kind("group"),
            _SERVICE,
            "Run the workers with this group (name or gid); the user's primary group when "
            "only --user is given. Needs root; ignored with a warning otherwise.",
            flags=("-g", "--group"),
            scope="server",
            metavar="GROUP",
        ),
    )
    statsd_host: str | None = _setting(
        None,
        Setting(
            _hostport_kind(),
            _SERVICE,
            "Send gunicorn-compatible metrics (requests, status codes, request duration, "
            "workers, log levels) as statsd datagrams over UDP to HOST:PORT.",
            flags=("--statsd-host",),
            scope="server",
            metavar="HOST:PORT",
        ),
    )
    statsd_prefix: str = _setting(
        "",
        Setting(
            _str_kind(),
            _SERVICE,
            "A prefix for every statsd metric name, joined with a dot.",
            flags=("--statsd-prefix",),
            scope="server",
            metavar="PREFIX",
        ),
    )

    metrics_bind: str | None = _setting(
        None,
        Setting(
            _optional_bind_kind(),
            _SERVICE,
            "Serve Prometheus metrics (GET /metrics) of every worker of every application "
            "from the master, on this address of its own (see docs/metrics.md). Needs "
            "prometheus_client: pip install 'trioserve[metrics]'.",
            flags=("--metrics-bind",),
            scope="server",
            metavar="HOST:PORT",
        ),
    )

    # Development
    reload: bool = _setting(
        False,
        Setting(
            _bool_kind(),
            _DEV,
            "Watch source files and restart the workers (a rolling restart) when they "
            "change. Uses watchfiles when installed (pip install 'trioserve[reload]'), "
            "otherwise polls.",
            flags=("--reload",),
            scope="server",
        ),
    )
    reload_dir: Sequence[str] = _setting(
        (),
        Setting(
            _list_kind("a list of directories", _check_nonempty, _split_words, allow_empty=True),
            _DEV,
            "A directory to watch with --reload (repeat the flag for several); the "
            "current directory when none is given.",
            flags=("--reload-dir",),
            scope="server",
            metavar="DIR",
        ),
    )
    reload_include: Sequence[str] = _setting(
        (),
        Setting(
            _GLOB_LIST,
            _DEV,
            "A glob pattern of file names that trigger a reload (repeatable); '*.py' when "
            "none is given.",
            flags=("--reload-include",),
            scope="server",
            metavar="GLOB",
        ),
    )
    reload_exclude: Sequence[str] = _setting(
        (),
        Setting(
            _GLOB_LIST,
            _DEV,
            "A glob pattern of file or directory names to ignore (repeatable); hidden "
            "files, compiled files, editor swap files and __pycache__ are always ignored.",
            flags=("--reload-exclude",),
            scope="server",
            metavar="GLOB",
        ),
    )

    # Timeouts
    keep_alive: float = _setting(
        5.0,
        Setting(
            _seconds_kind(),
            _TIMEOUTS,
            "Seconds an idle keep-alive connection is kept open waiting for the next request. "
            "0 disables keep-alive: every response carries Connection: close (as gunicorn's "
            "keepalive = 0 and nginx's keepalive_timeout 0; no limit would let idle "
            "connections pile up).",
            flags=("--keep-alive",),
            metavar="SECONDS",
        ),
    )
    graceful_timeout: float = _setting(
        30.0,
        Setting(
            _seconds_kind(
                zero="no limit would let a stop wait for ever; use SIGQUIT for a fast stop"
            ),
            _TIMEOUTS,
            "On a graceful stop, seconds in-flight requests get to finish before they are "
            "cancelled. Must be more than 0: no limit would let a stop wait for ever (for a "
            "fast stop, send SIGINT or SIGQUIT).",
            flags=("--graceful-timeout",),
            metavar="SECONDS",
        ),
    )
    header_timeout: float = _setting(
        10.0,
        Setting(
            _seconds_kind(),
            _TIMEOUTS,
            "Seconds a request head may take to arrive once it has begun; slower clients "
            "get 408 and are disconnected. 0 means no limit.",
            flags=("--header-timeout",),
            metavar="SECONDS",
        ),
    )
    read_timeout: float = _setting(
        60.0,
        Setting(
            _seconds_kind(),
            _TIMEOUTS,
            "Seconds a request body may stall (no bytes arriving) before the connection is "
            "cut. 0 means no limit (--body-min-rate still applies).",
            flags=("--read-timeout",),
            metavar="SECONDS",
        ),
    )
    write_timeout: float = _setting(
        60.0,
        Setting(
            _seconds_kind(),
            _TIMEOUTS,
            "Seconds one write to a client may block (a client that stopped reading) before "
            "the connection is cut. 0 means no limit.",
            flags=("--write-timeout",),
            metavar="SECONDS",
        ),
    )
    tls_handshake_timeout: float = _setting(
        10.0,
        Setting(
            _seconds_kind(),
            _TIMEOUTS,
            "Seconds a TLS handshake may take before the connection is dropped. 0 means no limit.",
            flags=("--tls-handshake-timeout",),
            metavar="SECONDS",
        ),
    )
    lifespan_startup_timeout: float = _setting(
        60.0,
        Setting(
            _seconds_kind(),
            _TIMEOUTS,
            "Seconds the app's lifespan startup may take before the server gives up. 0 means "
            "no limit.",
            flags=("--lifespan-startup-timeout",),
            metavar="SECONDS",
        ),
    )
    lifespan_shutdown_timeout: float = _setting(
        30.0,
        Setting(
            _seconds_kind(zero="no limit would let a stop wait for ever"),
            _TIMEOUTS,
            "Seconds the app's lifespan shutdown may take before it is cancelled. Must be more "
            "than 0: no limit would let a stop wait for ever.",
            flags=("--lifespan-shutdown-timeout",),
            metavar="SECONDS",
        ),
    )

    # Logging
    log_level: str = _setting(
        "info",
        Setting(
            _choice_kind("debug", "info", "warning", "error", "critical"),
            _LOG,
            "Level of trioserve's own log; 'debug' also prints tracebacks of startup errors.",
            flags=("--log-level",),
            scope="server",
            metavar="LEVEL",
        ),
    )

    access_log: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _LOG,
            "Where to write the access log: a file, or '-' for stdout. Off when not set.",
            flags=("--access-log", "--access-logfile"),
            scope="server",
            metavar="FILE",
        ),
    )
    access_log_format: str = _setting(
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
        Setting(
            _str_kind(),
            _LOG,
            "Access log line format, in gunicorn's atoms: h client, t time, r request line, "
            "s status, b body bytes, f referer, a user agent, M duration ms, D microseconds, "
            "{name}i request header, {name}o response header, and more (see docs).",
            flags=("--access-log-format", "--access-logformat"),
            scope="server",
            metavar="FORMAT",
        ),
    )
    error_log: str = _setting(
        "-",
        Setting(
            _str_kind(),
            _LOG,
            "Where trioserve's own log goes: a file, or '-' for stderr.",
            flags=("--error-log", "--error-logfile"),
            scope="server",
            metavar="FILE",
        ),
    )
    log_format: str = _setting(
        "text",
        Setting(
            _choice_kind("text", "json"),
            _LOG,
            "The format of trioserve's own log lines: 'text', or 'json' for one JSON object "
            "per line (time, level, pid, worker, logger, message, exception) for log "
            "shippers.",
            flags=("--log-format",),
            scope="server",
        ),
    )
    log_config: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _LOG,
            "A logging.config.dictConfig file (JSON or TOML) applied after trioserve's own "
            "logging setup.",
            flags=("--log-config",),
            scope="server",
            metavar="FILE",
        ),
    )

    # Server hooks
    on_starting: Callable[..., Any] | str | None = _setting(
        None, _hook("on_starting", scope="server")
    )
    on_reload: Callable[..., Any] | str | None = _setting(None, _hook("on_reload", scope="server"))
    when_ready: Callable[..., Any] | str | None = _setting(None, _hook("when_ready"))
    pre_fork: Callable[..., Any] | str | None = _setting(None, _hook("pre_fork"))
    post_fork: Callable[..., Any] | str | None = _setting(None, _hook("post_fork"))
    post_worker_init: Callable[..., Any] | str | None = _setting(None, _hook("post_worker_init"))
    worker_int: Callable[..., Any] | str | None = _setting(None, _hook("worker_int"))
    worker_abort: Callable[..., Any] | str | None = _setting(None, _hook("worker_abort"))
    pre_request: Callable[..., Any] | str | None = _setting(None, _hook("pre_request"))
    post_request: Callable[..., Any] | str | None = _setting(None, _hook("post_request"))
    child_exit: Callable[..., Any] | str | None = _setting(None, _hook("child_exit"))
    worker_exit: Callable[..., Any] | str | None = _setting(None, _hook("worker_exit"))
    nworkers_changed: Callable[..., Any] | str | None = _setting(None, _hook("nworkers_changed"))
    pre_exec: Callable[..., Any] | str | None = _setting(None, _hook("pre_exec", scope="server"))
    on_exit: Callable[..., Any] | str | None = _setting(None, _hook("on_exit", scope="server"))
    connection_made: Callable[..., Any] | str | None = _setting(None, _hook("connection_made"))
    connection_lost: Callable[..., Any] | str | None = _setting(None, _hook("connection_lost"))

    # Config file
    config: str | None = _setting(
        None,
        Setting(
            _str_kind(optional=True),
            _CONFIG,
            "A config file: Python (module-level names are settings, as in gunicorn) or "
            "TOML. Without it, ./trioserve.conf.py is read if it exists (as gunicorn reads "
            "./gunicorn.conf.py), or else a [tool.trioserve] table in ./pyproject.toml.",
            flags=("-c", "--config"),
            scope="server",
            metavar="FILE",
            in_file=False,
        ),
    )

    @classmethod
    def load(
        cls,
        *,
        params: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        cli: Mapping[str, Any] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Config:
        """Resolve a Config from every source, lowest first: defaults, ``params`` (code),
        the config file, the environment (``os.environ`` unless given), ``cli``.

        What a config file holds and trioserve ignores (a Python file's helpers, gunicorn
        settings with no use here) is logged as a warning on ``trioserve.config``.

        Raises:
            ConfigError: a value is invalid, a key is unknown, or a file cannot be read;
                every problem found, one per line.
        """
        loaded = load_config(params=params, environ=environ, cli=cli, cwd=cwd)
        for warning in loaded.warnings:
            LOGGER.warning("%s", warning)
        return loaded.config


# -- introspection -------------------------------------------------------------------------


@attrs.frozen
class SettingInfo:
    """A Config field together with its :class:`Setting`, as the registry lists it."""

    name: str
    default: Any
    setting: Setting

    @property
    def env_var(self) -> str | None:
        """``TRIOSERVE_<NAME>``, or None when the environment is not read for it."""
        return ENV_PREFIX + self.name.upper() if self.setting.env else None

    @property
    def flag(self) -> str:
        """The flag to name in messages: the long one, or the metavar for positionals."""
        flags = self.setting.flags
        if not flags:
            return self.setting.metavar or self.name.upper()
        return next((f for f in flags if f.startswith("--")), flags[0])


def settings() -> tuple[SettingInfo, ...]:
    """Every setting of :class:`Config`, in declaration order."""
    return tuple(
        SettingInfo(f.name, f.default, f.metadata[SETTING])
        for f in attrs.fields(Config)
        if SETTING in f.metadata
    )


def setting_names() -> tuple[str, ...]:
    return tuple(info.name for info in settings())


def _checked(kind: Kind, value: Any, where: str, *, text: bool) -> Any:
    try:
        if text and isinstance(value, list | tuple):
            # Repeated flags: each occurrence is parsed on its own.
            return tuple(item for part in value for item in kind.from_text(part))
        return kind.from_text(value) if text else kind.from_value(value)
    except _BadValue as exc:
        if exc.message:
            raise ConfigError(f"{where}: {exc.message}") from None
        detail = f"; {exc.detail}" if exc.detail else ""
        raise ConfigError(f"{where}: expected {kind.expected}, got {exc.got!r}{detail}") from None


def unknown_key_message(key: str, where: str) -> str:
    """``where: unknown setting 'key'; did you mean 'x'?`` with the closest known names."""
    names = setting_names()
    close = difflib.get_close_matches(key.replace("-", "_").lower(), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see docs/settings.md for the list"
    return f"{where}: unknown setting {key!r}{hint}"


# -- sources -------------------------------------------------------------------------------


@attrs.frozen
class Layer:
    """Values from one source: ``values`` maps setting names to raw values.

    ``text`` says whether raw values are strings to parse (environment, command line) or
    Python values to check (code, files). ``where`` names each value's origin in messages;
    ``label`` is how ``--print-config`` names the source.
    """

    label: str
    values: Mapping[str, Any]
    text: bool
    where: Callable[[str], str]
    warnings: tuple[str, ...] = ()
    """What the source holds that is ignored: names of a Python config file that are not
    settings, gunicorn settings trioserve has no use for. One line each."""
    problems: tuple[str, ...] = ()
    """What the source holds that cannot be used, found while reading it (an unknown key of
    a TOML file, gunicorn's worker_class); reported by :func:`resolve` with the bad values."""


@attrs.frozen
class LoadedConfig:
    """A resolved Config and, for every setting, the label of the source that set it.

    ``warnings`` lists what the sources hold that was ignored, one line each; the command
    line logs them once logging is set up, :meth:`Config.load` logs them at once.
    """

    config: Config
    sources: Mapping[str, str]
    warnings: tuple[str, ...] = ()


def env_layer(environ: Mapping[str, str]) -> Layer:
    """The ``TRIOSERVE_<NAME>`` variables present in ``environ``."""
    values = {}
    for info in settings():
        var = info.env_var
        if var is not None and var in environ:
            values[info.name] = environ[var]
    return Layer("environment", values, text=True, where=lambda name: ENV_PREFIX + name.upper())


def code_layer(params: Mapping[str, Any]) -> Layer:
    """Parameters passed in code; unknown names are errors."""
    known = set(setting_names())
    for key in params:
        if key not in known:
            raise ConfigError(unknown_key_message(key, "parameters"))
    return Layer("code", dict(params), text=False, where=lambda name: name)


def _names_bound_by_imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
    return names


def _is_constant(name: str) -> bool:
    return name.upper() == name  # BASE_DIR, MAX_BODY: a constant, not a misspelt setting


def _did_you_mean(key: str, value: object) -> str | None:
    """The setting (or, for a function, the hook) ``key`` is closest to, if one is close."""
    if _is_constant(key):
        return None
    candidates = HOOK_NAMES if callable(value) else (*setting_names(), *GUNICORN_BY_NAME)
    # Closer than unknown_key_message asks: these names are mostly the file's own code
    # (def workers_for(cpus) is no misspelt worker_abort), a misspelling is a letter off.
    close = difflib.get_close_matches(key.lower(), candidates, n=1, cutoff=0.8)
    return close[0] if close else None


def _not_settings_warning(path: Path, raw: Mapping[str, Any], names: Sequence[str]) -> str:
    parts = []
    for key in names:
        hint = _did_you_mean(key, raw[key])
        parts.append(f"{key} (did you mean {hint!r}?)" if hint else key)
    return f"{path}: names that are not settings are ignored: {', '.join(parts)}"


def _file_layer(path: Path, raw: Mapping[str, Any], label: str, *, python: bool = False) -> Layer:
    """The settings of a config file, with everything wrong in it at once.

    gunicorn's names are read through :data:`~trioserve._gunicorn.GUNICORN_NAMES`. A name
    that is no setting is a problem in a TOML file; in a ``python`` file it is the file's
    own code (a helper function, a constant), ignored with one warning naming them all.
    """
    known = {info.name: info for info in settings()}
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # setting -> the key the file spells it with
    problems: list[str] = []
    ignored: list[str] = []
    not_settings: list[str] = []
    for key, value in raw.items():
        name = key.replace("-", "_")
        row = GUNICORN_BY_NAME.get(name)
        if row is not None:
            reading = read_gunicorn(row, value)
            if reading.problem is not None:
                problems.append(f"{key} (in {path}): {reading.problem}")
            elif reading.ignored:
                ignored.append(f"{key} ({row.note})")
            if reading.setting is None:
                continue
            name, value = reading.setting, reading.value
        info = known.get(name)
        if info is None:
            if python:
                not_settings.append(key)
            else:
                problems.append(unknown_key_message(key, str(path)))
            continue
        if not info.setting.in_file:
            problems.append(f"{path}: {key!r} cannot be set in a config file")
            continue
        if name in spelled:
            problems.append(f"{path}: {spelled[name]!r} and {key!r} both set {name}; keep one")
            continue
        values[name] = value
        spelled[name] = key
    warnings = []
    if ignored:
        warnings.append(
            f"{path}: gunicorn settings trioserve has no use for are ignored: " + "; ".join(ignored)
        )
    if not_settings:
        warnings.append(_not_settings_warning(path, raw, not_settings))
    return Layer(
        label,
        values,
        text=False,
        where=lambda name: f"{spelled.get(name, name)} (in {path})",
        warnings=tuple(warnings),
        problems=tuple(problems),
    )


DEFAULT_CONFIG_FILE = "trioserve.conf.py"
"""The config file read from the working directory when none is given."""

CONFIG_MODULE = "__trioserve_config__"
"""The module name a Python config file runs under, registered in ``sys.modules`` so
that functions it defines (hooks) can be sent to worker processes by reference."""


def load_python_config(file: Path, source: str | None = None) -> types.ModuleType:
    """Run a Python config file as the module :data:`CONFIG_MODULE` and register it.

    Workers call this with the master's config file before they unpickle their Config,
    so the hooks it defines resolve to the same functions there.
    """
    if source is None:
        source = file.read_text(encoding="utf-8")
    module = types.ModuleType(CONFIG_MODULE)
    module.__file__ = str(file)
    code = compile(source, str(file), "exec")
    sys.modules[CONFIG_MODULE] = module
    exec(code, module.__dict__)
    return module


def file_layer(path: str | os.PathLike[str]) -> Layer:
    """Settings from a config file: TOML when it ends in ``.toml``, otherwise Python.

    In a Python file the module-level names are settings, except names starting with an
    underscore, modules, and names bound by import statements; a name that is no setting
    (a helper, a constant) is left alone with a warning, as gunicorn leaves it.
    """
    file = Path(path)
    try:
        source = file.read_text(encoding="utf-8")
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"--config: cannot read {str(path)!r}: {reason}") from None
    if file.suffix == ".toml":
        try:
            data = tomllib.loads(source)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        table: Any = data
        if "tool" in data:
            # A pyproject-style file: only [tool.trioserve] is ours.
            tool = data["tool"]
            table = tool.get("trioserve", {}) if isinstance(tool, dict) else None
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [tool.trioserve] must be a table")
        return _file_layer(file, table, f"config file {path}")
    try:
        imported = _names_bound_by_imports(source)
        namespace = load_python_config(file, source).__dict__
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid Python: {exc.msg}") from None
    except Exception as exc:
        raise ConfigError(
            f"{path}: running the config file raised {type(exc).__name__}: {exc}"
        ) from exc
    raw = {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_")
        and key not in imported
        and not isinstance(value, types.ModuleType)
    }
    return _file_layer(file, raw, f"config file {path}", python=True)


def pyproject_layer(cwd: Path) -> Layer | None:
    """The ``[tool.trioserve]`` table of ``cwd/pyproject.toml``, if there is one."""
    path = cwd / "pyproject.toml"
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read [tool.trioserve]: {exc}") from None
    table = data.get("tool", {}).get("trioserve")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.trioserve] must be a table")
    return _file_layer(path, table, "pyproject.toml [tool.trioserve]")


def resolve(layers: Iterable[Layer]) -> LoadedConfig:
    """Apply layers in order (later wins) over the defaults.

    Raises:
        ConfigError: naming every problem of every layer, one per line.
    """
    kinds = {info.name: info.setting.kind for info in settings()}
    values: dict[str, Any] = {}
    sources = {name: "default" for name in kinds}
    problems: list[str] = []
    warnings: list[str] = []
    for layer in layers:
        problems += layer.problems
        warnings += layer.warnings
        for name, raw in layer.values.items():
            try:
                values[name] = _checked(kinds[name], raw, layer.where(name), text=layer.text)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            # Text sources name the exact variable or flag: "environment TRIOSERVE_BIND".
            sources[name] = f"{layer.label} {layer.where(name)}" if layer.text else layer.label
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    return LoadedConfig(Config(**values), sources, tuple(dict.fromkeys(warnings)))


def _config_path(layers: Sequence[Layer]) -> str | None:
    """The ``config`` setting as the layers give it (the last one wins), checked."""
    kind = next(info.setting.kind for info in settings() if info.name == "config")
    for layer in reversed(layers):
        if "config" in layer.values:
            path: str | None = _checked(
                kind, layer.values["config"], layer.where("config"), text=layer.text
            )
            return path
    return None


def load_config(
    *,
    params: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Layer | Mapping[str, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> LoadedConfig:
    """Resolve every source, lowest first: defaults, code, config file, environment, CLI.

    ``cli`` is a :class:`Layer` from the command-line parser, or a mapping of text values.
    The config file is the ``config`` setting as given by the code, environment or command
    line; without one, ``cwd/trioserve.conf.py`` if it exists (the ``config`` setting then
    names it), or else ``[tool.trioserve]`` in ``cwd/pyproject.toml`` if present.
    """
    code = code_layer(params or {})
    environ = os.environ if environ is None else environ
    env = env_layer(environ)
    defaults = []
    if "WEB_CONCURRENCY" in environ:
        # As in gunicorn: the platform's hint replaces the default, below every source.
        defaults.append(
            Layer(
                "environment",
                {"workers": environ["WEB_CONCURRENCY"]},
                text=True,
                where=lambda name: "WEB_CONCURRENCY",
            )
        )
    if cli is None:
        cli = {}
    if not isinstance(cli, Layer):
        flags = {info.name: info.flag for info in settings()}
        cli = Layer("command line", dict(cli), text=True, where=lambda name: flags[name])
    # The file is found first; then every source is checked at once, so that one run
    # reports every problem, in the file and elsewhere.
    config_path = _config_path([*defaults, code, env, cli])
    base = Path(cwd) if cwd is not None else Path.cwd()
    if config_path is None and (base / DEFAULT_CONFIG_FILE).is_file():
        # As gunicorn reads ./gunicorn.conf.py. Named as if given with -c, so that workers
        # run the same file (hooks defined in it are sent to them by reference).
        config_path = DEFAULT_CONFIG_FILE
        defaults.append(
            Layer(
                "default",
                {"config": DEFAULT_CONFIG_FILE},
                text=True,
                where=lambda name: f"./{DEFAULT_CONFIG_FILE}",
            )
        )
    file = file_layer(base / config_path) if config_path is not None else pyproject_layer(base)
    if config_path is None and (base / "gunicorn.conf.py").is_file():
        hint = (
            "./gunicorn.conf.py is not read: pass -c gunicorn.conf.py, or rename it "
            f"{DEFAULT_CONFIG_FILE}"
        )
        defaults.append(Layer("default", {}, text=True, where=str, warnings=(hint,)))
    return resolve([*defaults, code, *([file] if file else []), env, cli])


def _is_literal(value: object) -> bool:
    try:
        return bool(ast.literal_eval(repr(value)) == value)
    except (ValueError, SyntaxError):
        return False


def render_config(loaded: LoadedConfig) -> str:
    """The ``--print-config`` text: every setting as a Python assignment with its source.

    The output is itself a valid Python config file: settings a file may not set
    (``config``) and values with no literal form (an app object) are commented out.
    """
    lines = ["# trioserve settings as resolved; the comment says where each value came from"]
    rows = []
    for info in settings():
        value = getattr(loaded.config, info.name)
        if isinstance(value, tuple):
            value = list(value)
        left = f"{info.name} = {value!r}"
        if not info.setting.in_file or not _is_literal(value):
            left = "# " + left
        rows.append((left, loaded.sources[info.name]))
    width = max(len(left) for left, _ in rows)
    lines += [f"{left.ljust(width)}  # {source}" for left, source in rows]
    return "\n".join(lines) + "\n"

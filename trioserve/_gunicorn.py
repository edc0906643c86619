"""gunicorn's setting names and flags, as trioserve reads them: one table.

A ``gunicorn.conf.py`` should start under trioserve as it is. Each of gunicorn's
settings whose name or flag trioserve does not spell the same has one row here:

- an alias names trioserve's setting, and converts gunicorn's forms of the value
  (``cert_reqs = ssl.CERT_REQUIRED``, ``proxy_protocol = True``) where they differ;
- a setting trioserve has no use for is ignored with a warning saying why;
- a setting whose absence would change what the server does (another worker kind,
  environment variables to set, a PasteDeploy app) is an error saying what to do.

gunicorn's settings spelt as trioserve's (``bind``, ``workers``, ``timeout``, the hooks)
need no row. Config files (``_config``) and the command line (``_cli``) read this table;
docs/settings.md lists it (``_docs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs


class GunicornValueError(ValueError):
    """A gunicorn form of a value that trioserve cannot take; the message says why."""


@attrs.frozen
class GunicornName:
    """One of gunicorn's settings, and what trioserve does with it.

    Attributes:
        name: gunicorn's setting name, as a config file spells it.
        action: "alias" (read as ``setting``), "ignore" (warned about, then ignored) or
            "error" (refused with ``note``).
        note: For "error", the whole message; for "ignore", why it is not needed; for
            "alias", how trioserve's setting differs, if it does.
        setting: trioserve's setting, for an alias.
        flags: gunicorn's command-line flags that trioserve does not have itself.
        takes_value: Whether those flags take a value (False: a switch).
        convert: gunicorn's forms of the value to trioserve's; other values pass through.
        refuse: For an "ignore" row, a value that cannot be ignored: returns the message.
    """

    name: str
    action: Literal["alias", "ignore", "error"]
    note: str = ""
    setting: str | None = None
    flags: tuple[str, ...] = ()
    takes_value: bool = True
    convert: Callable[[Any], Any] | None = None
    refuse: Callable[[Any], str | None] | None = None


_VERIFY_MODES = {0: "none", 1: "optional", 2: "required"}


def _cert_reqs(value: Any) -> Any:
    # ssl.CERT_NONE/OPTIONAL/REQUIRED are ints (an IntEnum) in gunicorn's files and flags.
    if isinstance(value, int) and not isinstance(value, bool):
        return _VERIFY_MODES.get(value, value)
    if isinstance(value, str) and value.strip() in {"0", "1", "2"}:
        return _VERIFY_MODES[int(value.strip())]
    return value


def _proxy_protocol(value: Any) -> Any:
    if value is None or value is False:
        return "off"
    if value is True:
        return "auto"
    if isinstance(value, str):
        word = value.strip().lower()
        return {"false": "off", "0": "off", "none": "off", "true": "auto", "1": "auto"}.get(
            word, value
        )
    return value


def _http2_cleartext(value: Any) -> Any:
    # gunicorn takes a boolean too: True for prior knowledge, as its validator reads it.
    if value is True:
        return "prior-knowledge"
    if value is False or value is None:
        return "off"
    return value


def _ciphers(value: Any) -> Any:
    return "" if value is None else value  # gunicorn's default: the ssl module's choice


def _pythonpath(value: Any) -> Any:
    if isinstance(value, str) and "," in value:
        raise GunicornValueError(
            f"trioserve adds one directory to the import path (app_dir), got {value!r}"
        )
    return value


def _logconfig_dict(value: Any) -> str | None:
    if not value:
        return None  # gunicorn's default, {}: nothing to configure
    return "put the dictConfig dict in a JSON or TOML file and set log_config to it"


def _protocol(value: Any) -> str | None:
    if isinstance(value, str) and value.strip().lower() == "http":
        return None
    return f"trioserve speaks HTTP only, got {value!r}; remove protocol"


_LOGGING = "trioserve logs through the stdlib logging module: use log_config"
_HTTP = "h11 parses requests strictly; it has no such switch"
_CONTROL = "trioserve is controlled by signals and 'trioserve ctl'"
_DIRTY = "trioserve has no dirty arbiters; remove the dirty_* settings and hooks"

GUNICORN_NAMES: tuple[GunicornName, ...] = (
    # -- aliases ---------------------------------------------------------------------------
    GunicornName("wsgi_app", "alias", setting="app"),
    GunicornName("accesslog", "alias", setting="access_log"),
    GunicornName("errorlog", "alias", setting="error_log", flags=("--log-file",)),
    GunicornName("loglevel", "alias", setting="log_level"),
    GunicornName(
        "logconfig",
        "alias",
        "trioserve reads dictConfig files (JSON or TOML), not fileConfig ini files",
        setting="log_config",
    ),
    GunicornName("logconfig_json", "alias", setting="log_config", flags=("--log-config-json",)),
    GunicornName("proc_name", "alias", setting="name"),
    GunicornName("pidfile", "alias", setting="pid"),
    GunicornName("preload_app", "alias", setting="preload"),
    GunicornName("keepalive", "alias", setting="keep_alive"),
    GunicornName(
        "worker_connections",
        "alias",
        "requests past the limit get 503 at once instead of waiting",
        setting="limit_concurrency",
        flags=("--worker-connections",),
    ),
    GunicornName(
        "websocket_max_message_size",
        "alias",
        setting="ws_max_message_size",
        flags=("--websocket-max-message-size",),
    ),
    GunicornName("asgi_lifespan", "alias", setting="lifespan", flags=("--asgi-lifespan",)),
    GunicornName(
        "pythonpath",
        "alias",
        "one directory, not a comma-separated list",
        setting="app_dir",
        flags=("--pythonpath",),
        convert=_pythonpath,
    ),
    GunicornName("umask", "alias", setting="umask", flags=("-m",)),
    GunicornName(
        "cert_reqs",
        "alias",
        "ssl.CERT_NONE, CERT_OPTIONAL and CERT_REQUIRED (0, 1, 2) read as 'none', "
        "'optional' and 'required'",
        setting="cert_reqs",
        convert=_cert_reqs,
    ),
    GunicornName(
        "proxy_protocol",
        "alias",
        "True and False read as 'auto' and 'off'",
        setting="proxy_protocol",
        convert=_proxy_protocol,
    ),
    GunicornName("ciphers", "alias", "None reads as ''", setting="ciphers", convert=_ciphers),
    GunicornName(
        "http2_cleartext",
        "alias",
        "True and False read as 'prior-knowledge' and 'off'; trioserve's default is "
        "'prior-knowledge' (gunicorn's: 'off') and it serves every peer, not only "
        "forwarded_allow_ips",
        setting="http2_cleartext",
        convert=_http2_cleartext,
    ),
    # -- errors: what the server does would change -----------------------------------------
    GunicornName(
        "worker_class",
        "error",
        "trioserve has one worker kind (trio); remove worker_class",
        flags=("-k", "--worker-class"),
    ),
    GunicornName(
        "raw_env",
        "error",
        "trioserve does not set environment variables: set them before starting it "
        "(or with os.environ in the config file); remove raw_env",
        flags=("-e", "--env"),
    ),
    GunicornName(
        "paste",
        "error",
        "trioserve does not load PasteDeploy apps: give APP as 'module:attribute'",
        flags=("--paste", "--paster"),
    ),
    GunicornName(
        "raw_paste_global_conf",
        "error",
        "trioserve does not load PasteDeploy apps: give APP as 'module:attribute'",
        flags=("--paste-global",),
    ),
    GunicornName(
        "proxy_allow_ips",
        "error",
        "trioserve trusts one list of proxies, for PROXY headers and X-Forwarded-* "
        "alike: set forwarded_allow_ips instead of proxy_allow_ips",
        flags=("--proxy-allow-from",),
    ),
    GunicornName(
        "ssl_context",
        "error",
        "trioserve builds the TLS context from certfile, keyfile, ca_certs, cert_reqs, "
        "ciphers and tls_min_version; remove the ssl_context hook",
    ),
    GunicornName("dirty_apps", "error", _DIRTY, flags=("--dirty-app",)),
    GunicornName("dirty_workers", "error", _DIRTY, flags=("--dirty-workers",)),
    GunicornName("dirty_threads", "error", _DIRTY, flags=("--dirty-threads",)),
    GunicornName("dirty_timeout", "error", _DIRTY, flags=("--dirty-timeout",)),
    GunicornName("dirty_graceful_timeout", "error", _DIRTY, flags=("--dirty-graceful-timeout",)),
    GunicornName("on_dirty_starting", "error", _DIRTY),
    GunicornName("dirty_post_fork", "error", _DIRTY),
    GunicornName("dirty_worker_init", "error", _DIRTY),
    GunicornName("dirty_worker_exit", "error", _DIRTY),
    # -- ignored, with a warning: nothing the app sees changes -----------------------------
    GunicornName(
        "logconfig_dict", "ignore", "when empty (gunicorn's default)", refuse=_logconfig_dict
    ),
    GunicornName("protocol", "ignore", "when 'http'", flags=("--protocol",), refuse=_protocol),
    GunicornName("logger_class", "ignore", _LOGGING, flags=("--logger-class",)),
    GunicornName(
        "capture_output",
        "ignore",
        "the app's stdout and stderr are the server's",
        flags=("--capture-output",),
        takes_value=False,
    ),
    GunicornName(
        "enable_stdio_inheritance",
        "ignore",
        "the app's stdout and stderr are the server's",
        flags=("-R", "--enable-stdio-inheritance"),
        takes_value=False,
    ),
    GunicornName("syslog", "ignore", _LOGGING, flags=("--log-syslog",), takes_value=False),
    GunicornName("syslog_addr", "ignore", _LOGGING, flags=("--log-syslog-to",)),
    GunicornName("syslog_facility", "ignore", _LOGGING, flags=("--log-syslog-facility",)),
    GunicornName("syslog_prefix", "ignore", _LOGGING, flags=("--log-syslog-prefix",)),
    GunicornName(
        "disable_redirect_access_to_syslog",
        "ignore",
        _LOGGING,
        flags=("--disable-redirect-access-to-syslog",),
        takes_value=False,
    ),
    GunicornName(
        "dogstatsd_tags", "ignore", "trioserve sends plain statsd", flags=("--dogstatsd-tags",)
    ),
    GunicornName(
        "enable_backlog_metric",
        "ignore",
        "trioserve does not send a backlog metric",
        flags=("--enable-backlog-metric",),
        takes_value=False,
    ),
    GunicornName("default_proc_name", "ignore", "the process title is 'trioserve'"),
    GunicornName(
        "reload_engine",
        "ignore",
        "trioserve's reloader has one engine",
        flags=("--reload-engine",),
    ),
    GunicornName(
        "reload_extra_files",
        "ignore",
        "use reload_dir and reload_include",
        flags=("--reload-extra-file",),
    ),
    GunicornName(
        "spew", "ignore", "trioserve has no tracing switch", flags=("--spew",), takes_value=False
    ),
    GunicornName(
        "sendfile",
        "ignore",
        "trioserve does not use sendfile",
        flags=("--no-sendfile",),
        takes_value=False,
    ),
    GunicornName(
        "worker_tmp_dir",
        "ignore",
        "workers report their heartbeat over a pipe, not a file",
        flags=("--worker-tmp-dir",),
    ),
    GunicornName("tmp_upload_dir", "ignore", "gunicorn does not use it either"),
    GunicornName(
        "initgroups",
        "ignore",
        "trioserve sets the --user's supplementary groups itself (initgroups)",
        flags=("--initgroups",),
        takes_value=False,
    ),
    GunicornName(
        "secure_scheme_headers",
        "ignore",
        "with proxy_headers on, trioserve reads X-Forwarded-Proto from forwarded_allow_ips",
    ),
    GunicornName("forwarder_headers", "ignore", _HTTP, flags=("--forwarder-headers",)),
    GunicornName("header_map", "ignore", _HTTP, flags=("--header-map",)),
    GunicornName(
        "strip_header_spaces",
        "ignore",
        _HTTP,
        flags=("--strip-header-spaces",),
        takes_value=False,
    ),
    GunicornName(
        "permit_obsolete_folding",
        "ignore",
        _HTTP,
        flags=("--permit-obsolete-folding",),
        takes_value=False,
    ),
    GunicornName(
        "permit_unconventional_http_method",
        "ignore",
        _HTTP,
        flags=("--permit-unconventional-http-method",),
        takes_value=False,
    ),
    GunicornName(
        "permit_unconventional_http_version",
        "ignore",
        _HTTP,
        flags=("--permit-unconventional-http-version",),
        takes_value=False,
    ),
    GunicornName(
        "casefold_http_method",
        "ignore",
        _HTTP,
        flags=("--casefold-http-method",),
        takes_value=False,
    ),
    GunicornName(
        "http_parser", "ignore", "trioserve's parser is h11 (see --http)", flags=("--http-parser",)
    ),
    GunicornName(
        "asgi_loop",
        "ignore",
        "trioserve runs apps on trio; set app_loop = 'asyncio' for an app that needs asyncio",
        flags=("--asgi-loop",),
    ),
    GunicornName(
        "asgi_disconnect_grace_period",
        "ignore",
        "an app's send() raises ClientDisconnected once the client has gone",
        flags=("--asgi-disconnect-grace-period",),
    ),
    GunicornName("ssl_version", "ignore", "use tls_min_version", flags=("--ssl-version",)),
    GunicornName(
        "do_handshake_on_connect",
        "ignore",
        "the TLS handshake always runs on accept, bounded by tls_handshake_timeout",
        flags=("--do-handshake-on-connect",),
        takes_value=False,
    ),
    GunicornName(
        "suppress_ragged_eofs",
        "ignore",
        "a TLS peer's missing close_notify is taken as the end of the stream (https_compatible)",
        flags=("--suppress-ragged-eofs",),
        takes_value=False,
    ),
    GunicornName(
        "uwsgi_allow_ips", "ignore", "trioserve speaks HTTP only", flags=("--uwsgi-allow-from",)
    ),
    GunicornName("control_socket", "ignore", _CONTROL, flags=("--control-socket",)),
    GunicornName("control_socket_mode", "ignore", _CONTROL, flags=("--control-socket-mode",)),
    GunicornName(
        "control_socket_disable",
        "ignore",
        _CONTROL,
        flags=("--no-control-socket",),
        takes_value=False,
    ),
    GunicornName("check_config", "ignore", "use --check-config on the command line"),
    GunicornName("print_config", "ignore", "use --print-config on the command line"),
)
"""gunicorn's settings that trioserve does not spell as gunicorn does, by gunicorn's name."""

SAME_NAMES: tuple[str, ...] = (
    "bind",
    "backlog",
    "workers",
    "threads",
    "max_requests",
    "max_requests_jitter",
    "timeout",
    "graceful_timeout",
    "limit_request_line",
    "limit_request_fields",
    "limit_request_field_size",
    "reload",
    "reuse_port",
    "chdir",
    "daemon",
    "user",
    "group",
    "forwarded_allow_ips",
    "access_log_format",
    "statsd_host",
    "statsd_prefix",
    "keyfile",
    "certfile",
    "ca_certs",
    "root_path",
    "http_protocols",
    "http2_max_concurrent_streams",
    "http2_initial_window_size",
    "http2_max_frame_size",
    "http2_max_header_list_size",
)
"""gunicorn's settings (besides the hooks) that trioserve spells the same, flags included."""

BY_NAME: Mapping[str, GunicornName] = {row.name: row for row in GUNICORN_NAMES}
"""The rows of :data:`GUNICORN_NAMES` by gunicorn's setting name."""

BY_FLAG: Mapping[str, GunicornName] = {flag: row for row in GUNICORN_NAMES for flag in row.flags}
"""The rows of :data:`GUNICORN_NAMES` by each of gunicorn's flags trioserve lacks."""


@attrs.frozen
class Reading:
    """What one of gunicorn's names, with the value given to it, comes to.

    Exactly one of: ``setting`` and ``value`` (an alias, value converted); ``problem``
    (what to do instead); ``ignored`` (warn, naming ``GunicornName.note``); none of them
    for an ignored name whose value is a no-op anyway (``protocol = 'http'``).
    """

    setting: str | None = None
    value: Any = None
    problem: str | None = None
    ignored: bool = False


def read(row: GunicornName, value: Any) -> Reading:
    """Read ``value`` given to gunicorn's setting ``row``, the same for files and flags."""
    if row.action == "error":
        return Reading(problem=row.note)
    if row.action == "ignore":
        refusal = row.refuse(value) if row.refuse is not None else None
        if refusal is not None:
            return Reading(problem=refusal)
        return Reading(ignored=row.refuse is None)
    try:
        converted = row.convert(value) if row.convert is not None else value
    except GunicornValueError as exc:
        return Reading(problem=str(exc))
    return Reading(setting=row.setting, value=converted)


def cli_dest(row: GunicornName) -> str:
    """The argparse destination of a gunicorn flag: not a setting name, so never mixed up."""
    return f"gunicorn:{row.name}"

"""trioserve's own log and the access log: where they go, and the user's dictConfig."""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import logging.config
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _lograte
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._config import Config

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] trioserve: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
ACCESS_FORMAT = "%(message)s"
_ERROR_HANDLER = "trioserve.error_log"
_ACCESS_HANDLER = "trioserve.access_log"
# Control characters: a newline would start a forged line, an ESC a terminal sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_ESCAPES = {c: f"\\x{c:02X}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _open_handler(target: str, *, default: Any, flag: str, name: str) -> logging.Handler:
    """A handler on ``default`` (stdout or stderr) for "-", else appending to the file."""
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(default)
    else:
        # A plain FileHandler (not Watched: no stat per line); USR1 is meant to reopen it.
        try:
            handler = logging.FileHandler(target, mode="a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot open {target!r}: {_reason(exc)}") from None
    handler.set_name(name)
    return handler


class TextFormatter(logging.Formatter):
    """The text format, safe from forged lines and terminal escapes.

    What a client sent reaches messages through their arguments (the path in "exception in
    ASGI app while serving GET %s"): every control character of a string argument is
    written as ``\\xHH``, newlines included, so it stays on its record's line. The
    message's own newlines (a multi-line report the server or the app wrote) are kept,
    each continuation line indented so that it cannot pass for a record of its own; its
    other control characters are written as ``\\xHH`` too. A traceback keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if _CONTROL.search(message) is not None:
            record.message = _safe_message(record)
        return super().formatMessage(record)


def _escape(value: object) -> object:
    if value is None or isinstance(value, int | float):
        return value  # (for %d and %g)
    return str(value).translate(_CONTROL_ESCAPES)


def _safe_message(record: logging.LogRecord) -> str:
    """``record``'s message with its arguments' control characters escaped, and its own
    newlines kept as indented continuation lines."""
    args = record.args
    message = record.message
    if args:
        try:
            if isinstance(args, Mapping):
                message = str(record.msg) % {key: _escape(v) for key, v in args.items()}
            else:
                message = str(record.msg) % tuple(_escape(v) for v in args)
        except (TypeError, ValueError, KeyError):
            return message.translate(_CONTROL_ESCAPES)
    lines = [line.translate(_CONTROL_ESCAPES) for line in message.split("\n")]
    return "\n    ".join(lines)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, pid, worker (in worker
    processes), logger, message, and exception (the formatted traceback) when there is one.
    """

    def __init__(self, role: str | None = None) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        data: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "pid": record.process,
        }
        if self.role is not None:
            data["worker"] = self.role
        data["logger"] = record.name
        data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def _install(logger: logging.Logger, handler: logging.Handler | None, name: str) -> None:
    """Replace the handler named ``name`` that an earlier call installed on ``logger``."""
    for old in [h for h in logger.handlers if h.get_name() == name]:
        logger.removeHandler(old)
        old.close()
    if handler is not None:
        logger.addHandler(handler)


def _load_log_config(path: str) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = _reason(exc) if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"--log-config: cannot read {path!r}: {reason}") from None
    data: Any
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        elif file.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"--log-config: cannot read {path!r}: expected a .json or .toml file")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--log-config: cannot read {path!r}: invalid JSON: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--log-config: cannot read {path!r}: invalid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"--log-config: cannot read {path!r}: expected a dictConfig object at the top level"
        )
    return data


def configure_logging(config: Config, *, role: str | None = None) -> None:
    """Set up trioserve's loggers from ``config``; calling it again replaces, never adds.

    - ``trioserve`` logs at ``log_level`` to stderr, or to the ``error_log`` file.
    - ``trioserve.access`` logs at INFO to stdout, or to the ``access_log`` file, one
      line per request; with no ``access_log`` it has no handler and is disabled.
    - ``log_config`` (JSON or TOML) is then passed to :func:`logging.config.dictConfig`,
      so it can override both. As in gunicorn, ``disable_existing_loggers`` defaults to
      false there. A logger the file names loses the handlers set up here.

    ``role`` ("worker 2", "web worker 0") tags every line of a worker process.

    Below debug level, the loggers of the connection edges are rate-limited
    (:mod:`trioserve._lograte`): of each kind of line, ten a second per process, then one
    line that counts the rest. Control characters in messages are written as ``\\xHH``.

    Neither logger propagates: the app's own logging stays as the app configures it.
    Files are opened in append mode.

    Raises:
        ConfigError: A log file cannot be opened, or ``log_config`` cannot be read or
            applied; the message names the setting.
    """
    # Open everything before touching the loggers, so an error leaves them as they were.
    error_handler = _open_handler(
        config.error_log, default=sys.stderr, flag="--error-log", name=_ERROR_HANDLER
    )
    if config.log_format == "json":
        error_handler.setFormatter(JsonFormatter(role))
    else:
        # A worker names itself after the pid: "[1234] [INFO] trioserve: [worker 2] ...".
        text_format = LOG_FORMAT
        if role is not None:
            text_format = LOG_FORMAT.replace("trioserve: ", f"trioserve: [{role}] ")
        error_handler.setFormatter(TextFormatter(text_format, DATE_FORMAT))
    access_handler = None
    if config.access_log is not None:
        try:
            access_handler = _open_handler(
                config.access_log, default=sys.stdout, flag="--access-log", name=_ACCESS_HANDLER
            )
        except ConfigError:
            error_handler.close()
            raise
        access_handler.setFormatter(
            JsonFormatter(role) if config.log_format == "json" else logging.Formatter(ACCESS_FORMAT)
        )

    logger = logging.getLogger("trioserve")
    logger.setLevel(config.log_level.upper())
    logger.propagate = False
    _install(logger, error_handler, _ERROR_HANDLER)

    # A client can cause the edges' lines once per request: a few a second of each kind,
    # then one line that counts the rest. At debug level every line is written.
    _lograte.install(None if config.log_level == "debug" else _lograte.RateLimit())
    atexit.unregister(_lograte.flush_all)
    atexit.register(_lograte.flush_all)

    access = logging.getLogger("trioserve.access")
    # Above INFO when off, so AccessLog.log returns before formatting anything.
    access.setLevel(logging.INFO if access_handler is not None else logging.WARNING)
    access.propagate = False
    _install(access, access_handler, _ACCESS_HANDLER)

    if config.log_config is not None:
        dict_config = _load_log_config(config.log_config)
        dict_config.setdefault("disable_existing_loggers", False)
        try:
            logging.config.dictConfig(dict_config)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            # dictConfig says which entry failed and chains the reason it failed.
            reason = str(exc) if exc.__cause__ is None else f"{exc}: {exc.__cause__}"
            raise ConfigError(
                f"--log-config: cannot apply {config.log_config!r}: {_one_line(reason)}"
            ) from None

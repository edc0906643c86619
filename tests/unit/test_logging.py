"""Tests for trioserve._logging: where trioserve's log and the access log go, log_config."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trioserve import Config, ConfigError
from trioserve._accesslog import AccessLog
from trioserve._logging import configure_logging
from trioserve._lograte import LIMITED_LOGGERS, flush_all, install, installed

LOGGERS = ("trioserve", "trioserve.access")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put back the handlers, level, propagate and disabled flag of trioserve's loggers."""
    saved = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    yield
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled
    install(None)


def configure(**settings: Any) -> None:
    configure_logging(Config(**settings))


def log_request(status: int = 200) -> None:
    """One request through the default access logger, as the HTTP edge logs it."""
    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "headers": []}
    AccessLog("%(m)s %(U)s %(s)s").log(scope, status, [], 0, 0.0, 0.001)


def config_error(**settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        configure(**settings)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- trioserve's own log -------------------------------------------------------------------


def test_error_log_file(tmp_path: Path) -> None:
    """With error_log a file, trioserve's records are appended there in the usual format."""
    path = tmp_path / "error.log"
    path.write_text("earlier line\n", encoding="utf-8")
    configure(error_log=str(path))
    logging.getLogger("trioserve.test").info("hello %s", "world")
    logging.getLogger("trioserve.test").debug("not at info")
    earlier, line = path.read_text(encoding="utf-8").splitlines()
    assert earlier == "earlier line"
    assert re.fullmatch(
        rf"\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}}\] \[{os.getpid()}\] \[INFO\] "
        r"trioserve: hello world",
        line,
    )


def test_error_log_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """By default trioserve's records go to stderr at log_level, nothing to stdout."""
    configure(log_level="warning")
    logging.getLogger("trioserve.test").info("quiet")
    logging.getLogger("trioserve.test").warning("loud")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("[WARNING] trioserve: loud\n")
    assert "quiet" not in err


def test_trioserve_logger_does_not_propagate(caplog: pytest.LogCaptureFixture) -> None:
    """trioserve's records stay out of the root logger and so out of the app's logging."""
    configure()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("trioserve.test").warning("only ours")
    assert caplog.records == []


def test_control_characters_in_messages_are_escaped(tmp_path: Path) -> None:
    """A newline or ESC in a message is written as \\xHH; a traceback keeps its lines."""
    path = tmp_path / "error.log"
    configure(error_log=str(path))
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("trioserve.http").exception(
            "exception in ASGI app while serving %s %s", "GET", "/a\n[x] [ERROR] forged\x1b[2J"
        )
    first, *traceback = path.read_text(encoding="utf-8").splitlines()
    assert first.endswith(r"serving GET /a\x0A[x] [ERROR] forged\x1B[2J")
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: boom"


def test_a_message_keeps_its_own_lines_indented(tmp_path: Path) -> None:
    """A multi-line message (a report the app wrote) keeps its lines, each continuation
    indented so that none passes for a record; arguments' newlines are still escaped."""
    path = tmp_path / "error.log"
    configure(error_log=str(path))
    logging.getLogger("trioserve.lifespan").error(
        "the app reported:\nTraceback (most recent call last):\nValueError: x\x1b[2J"
    )
    logging.getLogger("trioserve.http").info("report:\n%s", "a\n[x] [ERROR] forged")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].endswith("the app reported:")
    assert lines[1:3] == [
        "    Traceback (most recent call last):",
        r"    ValueError: x\x1B[2J",
    ]
    assert lines[3].endswith("report:")
    assert lines[4] == r"    a\x0A[x] [ERROR] forged"


def test_edge_loggers_are_rate_limited(tmp_path: Path) -> None:
    """Each edge logger gets the rate limit: ten lines of a kind, then one that counts the rest."""
    path = tmp_path / "error.log"
    configure(error_log=str(path))
    assert all(len(installed(logging.getLogger(name))) == 1 for name in LIMITED_LOGGERS)
    for n in range(25):
        logging.getLogger("trioserve.http").info("bad request: %s", n)
    logging.getLogger("trioserve.test").info("not limited")
    flush_all()
    lines = [line.split("trioserve: ", 1)[1] for line in path.read_text().splitlines()]
    assert lines[:10] == [f"bad request: {n}" for n in range(10)]
    # The summary comes from the timer or from flush_all(), whichever is first.
    assert sorted(lines[10:]) == [
        "not limited",
        "… 15 more like this in the last second (the last: bad request: 24)",
    ]


def test_debug_level_is_not_rate_limited(tmp_path: Path) -> None:
    """With log_level debug every line is written; configuring again takes the limit off."""
    path = tmp_path / "error.log"
    configure(error_log=str(path))
    configure(error_log=str(path), log_level="debug")
    assert not any(installed(logging.getLogger(name)) for name in LIMITED_LOGGERS)
    for n in range(25):
        logging.getLogger("trioserve.ws").info("bad websocket handshake: %s", n)
    assert len(path.read_text().splitlines()) == 25


# -- the access log ------------------------------------------------------------------------


def test_access_log_file(tmp_path: Path) -> None:
    """With access_log a file, each request is one bare line there and not in the error log."""
    access_path, error_path = tmp_path / "access.log", tmp_path / "error.log"
    configure(access_log=str(access_path), error_log=str(error_path))
    log_request()
    log_request(404)
    assert access_path.read_text(encoding="utf-8") == "GET / 200\nGET / 404\n"
    assert error_path.read_text(encoding="utf-8") == ""


def test_access_log_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """access_log '-' writes the bare lines to stdout, even with log_level error."""
    configure(access_log="-", log_level="error")
    log_request()
    assert capsys.readouterr() == ("GET / 200\n", "")


def test_access_log_off_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """Without access_log the access logger is below INFO: nothing is written anywhere."""
    configure()
    access = logging.getLogger("trioserve.access")
    assert not access.isEnabledFor(logging.INFO)
    assert not access.propagate
    log_request()
    assert capsys.readouterr() == ("", "")


def test_configure_is_idempotent(tmp_path: Path) -> None:
    """Configuring again replaces trioserve's handlers instead of adding more."""
    access_path, error_path = tmp_path / "access.log", tmp_path / "error.log"
    settings = {"access_log": str(access_path), "error_log": str(error_path)}
    configure(**settings)
    counts = [len(logging.getLogger(name).handlers) for name in LOGGERS]
    configure(**settings)
    assert [len(logging.getLogger(name).handlers) for name in LOGGERS] == counts
    log_request()
    logging.getLogger("trioserve.test").warning("once")
    assert access_path.read_text(encoding="utf-8") == "GET / 200\n"
    assert error_path.read_text(encoding="utf-8").count("once") == 1


def test_reconfigure_moves_and_turns_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A later call with other targets moves the logs there; access_log None turns it off."""
    configure(access_log=str(tmp_path / "access.log"), error_log=str(tmp_path / "error.log"))
    configure(access_log="-")
    log_request()
    logging.getLogger("trioserve.test").warning("moved")
    out, err = capsys.readouterr()
    assert out == "GET / 200\n"
    assert "moved" in err
    configure()
    log_request()
    assert capsys.readouterr().out == ""
    assert (tmp_path / "access.log").read_text(encoding="utf-8") == ""


# -- errors opening files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "flag"), [("error_log", "--error-log"), ("access_log", "--access-log")]
)
def test_unopenable_log_file(tmp_path: Path, setting: str, flag: str) -> None:
    """A log file that cannot be opened is a ConfigError naming the setting; nothing changes."""
    path = str(tmp_path / "missing-dir" / "x.log")
    before = [list(logging.getLogger(name).handlers) for name in LOGGERS]
    message = config_error(**{setting: path})
    assert message == f"{flag}: cannot open {path!r}: no such file or directory"
    assert [list(logging.getLogger(name).handlers) for name in LOGGERS] == before


# -- log_config ----------------------------------------------------------------------------


def test_log_config_json(tmp_path: Path) -> None:
    """A JSON log_config is applied after trioserve's own setup, and overrides it."""
    path = tmp_path / "logging.json"
    path.write_text(
        json.dumps({"version": 1, "loggers": {"trioserve": {"level": "WARNING"}}}),
        encoding="utf-8",
    )
    configure(log_level="debug", log_config=str(path))
    assert logging.getLogger("trioserve").level == logging.WARNING


def test_log_config_toml(tmp_path: Path) -> None:
    """A TOML log_config is applied too; incremental configs keep trioserve's handlers."""
    error_path = tmp_path / "error.log"
    path = tmp_path / "logging.toml"
    path.write_text(
        'version = 1\nincremental = true\n[loggers.trioserve]\nlevel = "WARNING"\n',
        encoding="utf-8",
    )
    configure(error_log=str(error_path), log_config=str(path))
    assert logging.getLogger("trioserve").level == logging.WARNING
    logging.getLogger("trioserve.test").info("filtered")
    logging.getLogger("trioserve.test").warning("kept")
    text = error_path.read_text(encoding="utf-8")
    assert "kept" in text
    assert "filtered" not in text


def test_log_config_keeps_existing_loggers(tmp_path: Path) -> None:
    """disable_existing_loggers defaults to false, so loggers the file omits keep working."""
    bystander = logging.getLogger("tests.unit.test_logging.bystander")
    path = tmp_path / "logging.json"
    path.write_text(json.dumps({"version": 1, "root": {"level": "INFO"}}), encoding="utf-8")
    configure(log_config=str(path))
    assert not bystander.disabled
    assert not logging.getLogger("trioserve").disabled


@pytest.mark.parametrize(
    ("name", "content", "detail"),
    [
        ("missing.json", None, "cannot read {path!r}: no such file or directory"),
        ("bad.json", "{not json", "cannot read {path!r}: invalid JSON: "),
        ("bad.toml", "version = = 1", "cannot read {path!r}: invalid TOML: "),
        ("list.json", "[1, 2]", "cannot read {path!r}: expected a dictConfig object"),
        ("logging.yaml", "version: 1", "cannot read {path!r}: expected a .json or .toml file"),
        ("noversion.json", "{}", "cannot apply {path!r}: dictionary doesn't specify a version"),
        (
            "badhandler.json",
            '{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}',
            "cannot apply {path!r}: Unable to configure handler 'h': ",
        ),
    ],
)
def test_bad_log_config(tmp_path: Path, name: str, content: str | None, detail: str) -> None:
    """An unreadable, unparsable or rejected log_config is a one-line ConfigError."""
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    message = config_error(log_config=str(path))
    assert message.startswith("--log-config: " + detail.format(path=str(path)))

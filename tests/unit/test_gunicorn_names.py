"""gunicorn's setting names and flags (trioserve._gunicorn), as config files and the
command line read them; every problem of a file reported at once."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from trioserve import Config, ConfigError, ServerInfo, WorkerInfo
from trioserve._cli import build_parser, cli_layer, main
from trioserve._config import CONFIG_MODULE, ENV_PREFIX, LoadedConfig, load_config, setting_names
from trioserve._gunicorn import BY_FLAG, BY_NAME, GUNICORN_NAMES, SAME_NAMES
from trioserve._hooks import HOOK_NAMES, LOGGER, run_hook
from trioserve._logging import configure_logging


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty working directory, no TRIOSERVE_* variables, no config module left over."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "WEB_CONCURRENCY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, CONFIG_MODULE, None)


def load_file(tmp_path: Path, name: str, text: str) -> LoadedConfig:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_config(environ={}, cli={"config": str(path)}, cwd=tmp_path)


def problems_of(tmp_path: Path, name: str, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_file(tmp_path, name, text)
    return str(info.value).splitlines()


# -- the table -------------------------------------------------------------------------------


def test_the_table_covers_every_gunicorn_setting() -> None:
    """Each of the installed gunicorn's settings is spelt as ours, or has a row, and each
    of its flags is one of ours or a row's; every alias names one of our settings."""
    gunicorn_config = pytest.importorskip("gunicorn.config")
    ours = set(setting_names())
    flags = set(build_parser()._option_string_actions)
    for setting in gunicorn_config.KNOWN_SETTINGS:
        if setting.name == "config":
            continue
        assert (
            setting.name in SAME_NAMES or setting.name in HOOK_NAMES or setting.name in BY_NAME
        ), setting.name
        for flag in setting.cli or ():
            assert flag in flags, (setting.name, flag)
    assert set(SAME_NAMES) <= ours
    for row in GUNICORN_NAMES:
        assert (row.setting in ours) == (row.action == "alias"), row.name
        assert row.name not in ours or row.convert is not None or row.flags, row.name


# -- aliases in a Python config file ---------------------------------------------------------


def test_gunicorn_names_in_a_python_file_set_our_settings(tmp_path: Path) -> None:
    """gunicorn's names (accesslog, errorlog, loglevel, proc_name, ...) set the trioserve
    settings they stand for, from the file."""
    loaded = load_file(
        tmp_path,
        "gunicorn.conf.py",
        "wsgi_app = 'examples.hello:app'\n"
        "accesslog = 'access.log'\n"
        "errorlog = 'error.log'\n"
        "loglevel = 'WARNING'\n"
        "access_log_format = '%(h)s %(s)s'\n"
        "worker_connections = 500\n"
        "proc_name = 'web'\n"
        "pidfile = 'app.pid'\n"
        "preload_app = True\n"
        "keepalive = 2\n"
        "websocket_max_message_size = 4096\n"
        "asgi_lifespan = 'off'\n"
        "pythonpath = 'src'\n"
        "logconfig_json = 'logging.json'\n",
    )
    config = loaded.config
    assert config.app == "examples.hello:app"
    assert (config.access_log, config.error_log, config.log_level) == (
        "access.log",
        "error.log",
        "warning",
    )
    assert config.access_log_format == "%(h)s %(s)s"
    assert (config.limit_concurrency, config.name, config.pid) == (500, "web", "app.pid")
    assert (config.preload, config.keep_alive, config.ws_max_message_size) == (True, 2.0, 4096)
    assert (config.lifespan, config.app_dir, config.log_config) == ("off", "src", "logging.json")
    assert loaded.sources["access_log"] == f"config file {tmp_path / 'gunicorn.conf.py'}"
    assert loaded.warnings == ()


def test_gunicorn_value_forms_are_converted(tmp_path: Path) -> None:
    """ssl.CERT_REQUIRED, proxy_protocol = True and ciphers = None read as trioserve's forms."""
    loaded = load_file(
        tmp_path,
        "conf.py",
        "import ssl\ncert_reqs = ssl.CERT_REQUIRED\nproxy_protocol = True\nciphers = None\n",
    )
    assert (loaded.config.cert_reqs, loaded.config.proxy_protocol) == ("required", "auto")
    assert loaded.config.ciphers == ""
    assert load_file(tmp_path, "conf.py", "cert_reqs = 1\n").config.cert_reqs == "optional"


def test_a_bad_value_under_a_gunicorn_name_is_named_as_the_file_spells_it(
    tmp_path: Path,
) -> None:
    """The message names the gunicorn spelling the file used, not trioserve's name."""
    conf = tmp_path / "conf.py"
    assert problems_of(tmp_path, "conf.py", "worker_connections = -1\n") == [
        f"worker_connections (in {conf}): expected an integer >= 0, got -1"
    ]


def test_a_gunicorn_name_and_ours_for_the_same_setting_is_a_problem(tmp_path: Path) -> None:
    """accesslog and access_log in one file: which one wins would be a guess."""
    conf = tmp_path / "conf.py"
    assert problems_of(tmp_path, "conf.py", "accesslog = 'a'\naccess_log = 'b'\n") == [
        f"{conf}: 'accesslog' and 'access_log' both set access_log; keep one"
    ]


def test_gunicorn_names_work_in_toml_too(tmp_path: Path) -> None:
    """A TOML file may use gunicorn's names as well; its unknown keys stay errors."""
    loaded = load_file(tmp_path, "conf.toml", "loglevel = 'debug'\nproc_name = 'x'\n")
    assert (loaded.config.log_level, loaded.config.name) == ("debug", "x")
    conf = tmp_path / "conf.toml"
    assert problems_of(tmp_path, "conf.toml", "worker = 2\nfrobnicate = 1\n") == [
        f"{conf}: unknown setting 'worker'; did you mean 'workers'?",
        f"{conf}: unknown setting 'frobnicate'; see docs/settings.md for the list",
    ]


# -- what trioserve does not have --------------------------------------------------------------


def test_worker_class_is_an_error_saying_what_to_do(tmp_path: Path) -> None:
    """worker_class is refused in one line: trioserve has one worker kind."""
    conf = tmp_path / "conf.py"
    assert problems_of(tmp_path, "conf.py", "worker_class = 'uvicorn.workers.UvicornWorker'\n") == [
        f"worker_class (in {conf}): trioserve has one worker kind (trio); remove worker_class"
    ]


def test_harmless_gunicorn_settings_are_ignored_with_one_warning(tmp_path: Path) -> None:
    """Settings trioserve has no use for are named in one warning, each with why."""
    loaded = load_file(
        tmp_path,
        "conf.py",
        "sendfile = False\ncapture_output = True\nworkers = 2\nlogconfig_dict = {}\n"
        "protocol = 'http'\n",
    )
    assert loaded.config.workers == 2
    assert loaded.warnings == (
        f"{tmp_path / 'conf.py'}: gunicorn settings trioserve has no use for are ignored: "
        "sendfile (trioserve does not use sendfile); "
        "capture_output (the app's stdout and stderr are the server's)",
    )


def test_an_ignored_setting_with_a_value_that_matters_is_an_error(tmp_path: Path) -> None:
    """logconfig_dict with a dict, protocol = 'uwsgi': ignoring them would change things."""
    conf = tmp_path / "conf.py"
    assert problems_of(
        tmp_path, "conf.py", "logconfig_dict = {'version': 1}\nprotocol = 'uwsgi'\n"
    ) == [
        f"logconfig_dict (in {conf}): put the dictConfig dict in a JSON or TOML file and set "
        "log_config to it",
        f"protocol (in {conf}): trioserve speaks HTTP only, got 'uwsgi'; remove protocol",
    ]


def test_pythonpath_with_several_directories_is_an_error(tmp_path: Path) -> None:
    """pythonpath is one directory here (app_dir): a comma-separated list is refused."""
    conf = tmp_path / "conf.py"
    assert problems_of(tmp_path, "conf.py", "pythonpath = 'a,b'\n") == [
        f"pythonpath (in {conf}): trioserve adds one directory to the import path "
        "(app_dir), got 'a,b'"
    ]


# -- a Python file's own code ------------------------------------------------------------------


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """Errors of every kind in one file come out together, in one ConfigError."""
    conf = tmp_path / "conf.py"
    assert problems_of(
        tmp_path,
        "conf.py",
        "worker_class = 'sync'\nworkers = 'four'\ntimeout = -1\n"
        "def post_fork(server):\n    pass\n\nhelper = 1\n",
    ) == [
        f"worker_class (in {conf}): trioserve has one worker kind (trio); remove worker_class",
        f"workers (in {conf}): expected an integer >= 0, got 'four'",
        f"timeout (in {conf}): expected a number of seconds >= 0, got -1",
        f"post_fork (in {conf}): post_fork(server) cannot be called as "
        "post_fork(server, worker) nor as post_fork(server, worker, *, exc=None): "
        "too many positional arguments",
    ]


def test_problems_of_the_file_and_the_command_line_come_together(tmp_path: Path) -> None:
    """A bad flag value does not hide the file's problems, nor the other way round."""
    conf = tmp_path / "conf.toml"
    conf.write_text("workers = 'four'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, cli={"config": str(conf), "timeout": "soon"}, cwd=tmp_path)
    assert str(info.value).splitlines() == [
        f"workers (in {conf}): expected an integer >= 0, got 'four'",
        "--timeout: expected a number of seconds >= 0, got 'soon'",
    ]


def test_config_load_logs_the_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Config.load logs a config file's ignored names once, on trioserve.config."""
    (tmp_path / "conf.py").write_text("BASE_DIR = '/srv'\nworkers = 2\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="trioserve.config"):
        config = Config.load(environ={}, cli={"config": "conf.py"}, cwd=tmp_path)
    assert config.workers == 2
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        (
            "trioserve.config",
            f"{tmp_path / 'conf.py'}: names that are not settings are ignored: BASE_DIR",
        )
    ]


# -- the command line ------------------------------------------------------------------------


def test_worker_class_flag_keeps_its_value_from_becoming_the_app() -> None:
    """-k X APP: X is the flag's value, APP stays the app; the flag is a problem."""
    namespace = build_parser().parse_args(["-k", "gevent", "examples.hello:app"])
    layer = cli_layer(namespace)
    assert layer.values["app"] == "examples.hello:app"
    assert layer.problems == (
        "-k/--worker-class: trioserve has one worker kind (trio); remove worker_class",
    )


def test_gunicorn_flags_set_our_settings() -> None:
    """gunicorn's flags that trioserve does not spell the same set the same settings."""
    namespace = build_parser().parse_args(
        [
            "--log-file",
            "err.log",
            "--worker-connections",
            "50",
            "-m",
            "027",
            "--cert-reqs",
            "2",
            "--asgi-lifespan",
            "on",
            "app:app",
        ]
    )
    config = load_config(environ={}, cli=cli_layer(namespace)).config
    assert (config.error_log, config.limit_concurrency, config.umask) == ("err.log", 50, "0o027")
    assert (config.cert_reqs, config.lifespan) == ("required", "on")


def test_an_ignored_gunicorn_flag_is_a_warning_and_its_value_not_the_app() -> None:
    """--reload-engine X APP: X is the flag's value; the flag is warned about and ignored."""
    namespace = build_parser().parse_args(["--reload-engine", "poll", "--no-sendfile", "app:app"])
    loaded = load_config(environ={}, cli=cli_layer(namespace))
    assert loaded.config.app == "app:app"
    assert loaded.warnings == (
        "gunicorn flags trioserve has no use for are ignored: "
        "--reload-engine (trioserve's reloader has one engine); "
        "--no-sendfile (trioserve does not use sendfile)",
    )


def test_a_bad_value_of_a_gunicorn_flag_names_the_flag() -> None:
    """A bad value given with gunicorn's flag is reported under that flag."""
    namespace = build_parser().parse_args(["--worker-connections", "many", "app:app"])
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, cli=cli_layer(namespace))
    assert str(info.value) == "--worker-connections: expected an integer >= 0, got 'many'"


def test_gunicorn_flags_are_not_in_help_but_are_all_known() -> None:
    """The table's flags are accepted by the parser and kept out of --help."""
    parser = build_parser()
    help_text = parser.format_help()
    for flag in BY_FLAG:
        assert flag in parser._option_string_actions, flag
    assert "--worker-class" not in help_text and "--log-file" not in help_text


def test_main_prints_each_problem_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line prints every problem as its own 'trioserve: error:' line; exit 2."""
    (tmp_path / "conf.py").write_text("workers = -1\nworker_class = 'gevent'\n", encoding="utf-8")
    assert main(["-c", "conf.py", "--threads", "0", "app:app"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"trioserve: error: worker_class (in {tmp_path / 'conf.py'}): trioserve has one "
        "worker kind (trio); remove worker_class",
        f"trioserve: error: workers (in {tmp_path / 'conf.py'}): expected an integer >= 0, got -1",
        "trioserve: error: --threads: expected an integer >= 1, got 0",
    ]


# -- hooks with gunicorn's signatures, and server.log ------------------------------------------


async def test_run_hook_leaves_exc_out_for_a_hook_that_does_not_take_it() -> None:
    """A gunicorn-signature hook, sync or async, is called without exc; one that takes exc
    gets it."""
    calls: list[tuple[str, Any]] = []

    def on_exit(server: Any) -> None:
        calls.append(("sync", server))

    async def child_exit(server: Any, worker: Any) -> None:
        calls.append(("async", worker))

    def worker_exit(server: Any, worker: Any, *, exc: Any = None) -> None:
        calls.append(("exc", exc))

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, server: Any) -> None:
            calls.append(("object", server))

    error = RuntimeError("boom")
    config = Config(on_exit=on_exit, child_exit=child_exit, worker_exit=worker_exit)
    await run_hook(config, "on_exit", "S", exc=error)
    await run_hook(config, "child_exit", "S", "W", exc=error)
    await run_hook(config, "worker_exit", "S", "W", exc=error)
    await run_hook(Config(on_reload=Unhashable()), "on_reload", "S")
    assert calls == [("sync", "S"), ("async", "W"), ("exc", error), ("object", "S")]


def test_server_log_and_worker_log_write_through_trioserve_log(tmp_path: Path) -> None:
    """server.log.info(...) in a hook lands in trioserve's error log, time, pid and level."""
    error_log = tmp_path / "error.log"
    config = Config(error_log=str(error_log))
    server = ServerInfo(config)
    worker = WorkerInfo(0, config)
    assert server.log is LOGGER and worker.log is LOGGER
    loggers = [logging.getLogger(name) for name in ("trioserve", "trioserve.access")]
    saved = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    try:
        configure_logging(config)
        server.log.info("hello from %s", "a hook")
        worker.log.warning("and from a worker")
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
    lines = error_log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"] [{os.getpid()}] [INFO] trioserve: hello from a hook")
    assert lines[1].endswith(f"] [{os.getpid()}] [WARNING] trioserve: and from a worker")


# -- ./trioserve.conf.py, as gunicorn reads ./gunicorn.conf.py ---------------------------------


def test_trioserve_conf_py_in_the_working_directory_is_read(tmp_path: Path) -> None:
    """Without -c, ./trioserve.conf.py is the config file, named by the config setting,
    and [tool.trioserve] of pyproject.toml is not read."""
    (tmp_path / "trioserve.conf.py").write_text("workers = 3\n", encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text("[tool.trioserve]\nthreads = 2\n", encoding="utf-8")
    loaded = load_config(environ={}, cwd=tmp_path)
    assert (loaded.config.workers, loaded.config.threads) == (3, 10)
    assert loaded.config.config == "trioserve.conf.py"
    assert loaded.sources["workers"] == f"config file {tmp_path / 'trioserve.conf.py'}"
    assert loaded.sources["config"] == "default ./trioserve.conf.py"


def test_a_config_file_given_wins_over_trioserve_conf_py(tmp_path: Path) -> None:
    """-c FILE is read instead of ./trioserve.conf.py."""
    (tmp_path / "trioserve.conf.py").write_text("workers = 3\n", encoding="utf-8")
    (tmp_path / "other.py").write_text("workers = 5\n", encoding="utf-8")
    loaded = load_config(environ={}, cli={"config": "other.py"}, cwd=tmp_path)
    assert (loaded.config.workers, loaded.config.config) == (5, "other.py")


def test_gunicorn_conf_py_alone_is_not_read_but_pointed_to(tmp_path: Path) -> None:
    """A ./gunicorn.conf.py is not run without -c: a warning says how to use it."""
    (tmp_path / "gunicorn.conf.py").write_text("workers = 3\n", encoding="utf-8")
    loaded = load_config(environ={}, cwd=tmp_path)
    assert (loaded.config.workers, loaded.config.config) == (1, None)
    assert loaded.warnings == (
        "./gunicorn.conf.py is not read: pass -c gunicorn.conf.py, or rename it trioserve.conf.py",
    )

"""Tests for trioserve._config: the settings registry, every source, precedence and errors."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.helpers import config_from_argv
from trioserve import Config, ConfigError
from trioserve._cli import build_parser, cli_layer, main
from trioserve._config import (
    ENV_PREFIX,
    SETTING,
    LoadedConfig,
    Setting,
    load_config,
    render_config,
    settings,
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each test in an empty directory with no TRIOSERVE_* or WEB_CONCURRENCY set."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "WEB_CONCURRENCY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, **kwargs: Any) -> LoadedConfig:
    """load_config with an empty environment and tmp_path as the working directory."""
    kwargs.setdefault("environ", {})
    return load_config(cwd=tmp_path, **kwargs)


def config_error(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the registry --------------------------------------------------------------------------


def test_every_config_field_is_a_setting() -> None:
    """Each field of Config carries a Setting under the SETTING metadata key."""
    fields = attrs.fields(Config)
    assert fields
    for field in fields:
        assert isinstance(field.metadata.get(SETTING), Setting), field.name
    assert [info.name for info in settings()] == [field.name for field in fields]


def test_every_flagged_setting_has_a_long_flag() -> None:
    """A setting given by flags always has a --long spelling besides any short one."""
    for info in settings():
        if info.setting.flags:
            assert any(flag.startswith("--") for flag in info.setting.flags), info.name


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("bind", ("-b", "--bind")),
        ("workers", ("-w", "--workers")),
        ("graceful_timeout", ("--graceful-timeout",)),
        ("keep_alive", ("--keep-alive",)),
        ("config", ("-c", "--config")),
        ("backlog", ("--backlog",)),
        ("log_level", ("--log-level",)),
    ],
)
def test_flags_shared_with_gunicorn_are_spelled_like_gunicorn(
    name: str, flags: tuple[str, ...]
) -> None:
    """Settings gunicorn also has use gunicorn's flag spellings."""
    infos = {info.name: info for info in settings()}
    assert infos[name].setting.flags == flags


def test_environment_variables_are_prefixed_upper_case_names() -> None:
    """Each setting read from the environment is TRIOSERVE_<NAME>."""
    for info in settings():
        if info.setting.env:
            assert info.env_var == "TRIOSERVE_" + info.name.upper()
    infos = {info.name: info for info in settings()}
    assert infos["keep_alive"].env_var == "TRIOSERVE_KEEP_ALIVE"


def test_config_is_frozen() -> None:
    """Assigning to a Config attribute raises FrozenInstanceError."""
    config = Config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.workers = 2  # type: ignore[misc]


def test_evolve_changes_a_copy_and_revalidates() -> None:
    """attrs.evolve returns a changed copy and checks the new value like construction."""
    config = Config()
    changed = attrs.evolve(config, workers=3, bind=["127.0.0.1:9000"])
    assert (changed.workers, changed.bind) == (3, ("127.0.0.1:9000",))
    assert config.workers == 1
    message = config_error(attrs.evolve, config, workers=-2)
    assert message == "workers: expected an integer >= 0, got -2"


def test_defaults() -> None:
    """A Config built without arguments has the documented defaults and no app."""
    config = Config()
    assert config.app is None
    assert config.bind == ("127.0.0.1:8000",)
    assert (config.workers, config.keep_alive, config.log_level) == (1, 5.0, "info")


# -- direct construction -------------------------------------------------------------------


def test_construction_rejects_a_negative_worker_count() -> None:
    """Config(workers=-1) raises ConfigError naming the setting and the accepted form."""
    assert config_error(Config, workers=-1) == "workers: expected an integer >= 0, got -1"


def test_bind_list_is_stored_as_a_tuple() -> None:
    """A bind list given in code is normalised to a tuple."""
    assert Config(bind=["127.0.0.1:1", "unix:/tmp/s"]).bind == ("127.0.0.1:1", "unix:/tmp/s")


def test_bad_bind_in_code_names_the_setting_and_item() -> None:
    """A bad bind address given in code names the setting and the bad item."""
    message = config_error(Config, bind=["127.0.0.1:1", "localhost:http"])
    assert message.startswith("bind: expected HOST:PORT")
    assert "got 'localhost:http'" in message


def test_construction_accepts_numbers_as_seconds() -> None:
    """Seconds given as an int are stored as a float."""
    config = Config(keep_alive=2)
    assert config.keep_alive == 2.0
    assert isinstance(config.keep_alive, float)


@pytest.mark.parametrize("value", [math.nan, -1, -0.5, math.inf, "inf", "nan"])
def test_seconds_reject_nan_negative_and_infinity(value: object) -> None:
    """NaN, negative and infinite seconds are refused."""
    message = config_error(Config, header_timeout=value)
    assert message.startswith("header_timeout: expected a number of seconds >= 0, got ")


# The timeouts where 0 (no limit) would be dangerous, refused with the reason.
_NO_ZERO = {
    "graceful_timeout": "a stop wait for ever",
    "lifespan_shutdown_timeout": "a stop wait for ever",
}


@pytest.mark.parametrize("name", sorted(_NO_ZERO))
def test_timeouts_where_no_limit_is_dangerous_refuse_0(name: str) -> None:
    """graceful_timeout and lifespan_shutdown_timeout refuse 0 with one line
    naming the setting (its flag on the command line) and why."""
    zero: dict[str, Any] = {name: 0}
    message = config_error(Config, **zero)
    assert message.startswith(f"{name}: expected a number of seconds > 0, got 0; no limit ")
    assert _NO_ZERO[name] in message
    flag = "--" + name.replace("_", "-")
    message = config_error(config_from_argv, ["mod:app", flag, "0"])
    assert message.startswith(f"{flag}: expected a number of seconds > 0, got 0.0; no limit ")


def test_every_timeout_says_what_0_means() -> None:
    """Every setting given in seconds says in its help (and so in docs/settings.md) that 0
    means no limit, or that it must be more than 0; the seconds settings that allow 0 are
    exactly those outside _NO_ZERO."""
    seconds = [info for info in settings() if "seconds" in info.setting.kind.expected]
    assert len(seconds) >= 11
    for info in seconds:
        text = info.setting.help
        if info.name in _NO_ZERO:
            assert info.setting.kind.expected == "a number of seconds > 0"
            assert "Must be more than 0" in text, info.name
        else:
            assert info.setting.kind.expected == "a number of seconds >= 0"
            assert re.search(r"0 (means no limit|disables|sends none|keeps pinging)", text), (
                info.name
            )
            zero: dict[str, Any] = {info.name: 0}
            Config(**zero)


def test_new_limits_default_on() -> None:
    """The request head limit is 32 KiB (nginx's 4 x 8 KiB) and the body rate 500 B/s
    (Apache's MinRate) unless set."""
    config = Config()
    assert (config.limit_request_head, config.body_min_rate) == (32768, 500)


@pytest.mark.parametrize("value", [True, False])
def test_integer_settings_reject_bools(value: bool) -> None:
    """True and False are not accepted as integers."""
    message = config_error(Config, workers=value)
    assert message == f"workers: expected an integer >= 0, got {value!r}"


def test_bad_choice_lists_the_choices() -> None:
    """A value outside a choice setting's choices lists every choice."""
    message = config_error(config_from_argv, ["--lifespan", "sometimes"])
    assert message == "--lifespan: expected one of 'auto', 'on' or 'off', got 'sometimes'"


def test_bad_bind_on_the_command_line_names_the_item() -> None:
    """A bad address among several --bind names the flag, the item and the reason."""
    message = config_error(config_from_argv, ["-b", "127.0.0.1:1", "-b", "host:port"])
    assert message.startswith("--bind: expected HOST:PORT")
    assert "got 'host:port'; " in message


# -- each source ---------------------------------------------------------------------------


def test_code_parameters(tmp_path: Path) -> None:
    """Parameters passed in code set settings and are labelled 'code'."""
    loaded = load(tmp_path, params={"workers": 2, "bind": ["127.0.0.1:1"]})
    assert (loaded.config.workers, loaded.config.bind) == (2, ("127.0.0.1:1",))
    assert loaded.sources["workers"] == "code"
    assert loaded.sources["keep_alive"] == "default"


def test_config_load_classmethod(tmp_path: Path) -> None:
    """Config.load resolves the same sources as load_config."""
    config = Config.load(params={"workers": 2}, environ={"TRIOSERVE_BACKLOG": "7"}, cwd=tmp_path)
    assert (config.workers, config.backlog) == (2, 7)


def test_python_config_file(tmp_path: Path) -> None:
    """A Python config file's module-level names are settings."""
    conf = write(
        tmp_path / "conf.py",
        "workers = 3\nbind = ['127.0.0.1:1', '[::1]:2']\nkeep_alive = 1.5\n",
    )
    loaded = load(tmp_path, cli={"config": str(conf)})
    assert loaded.config.workers == 3
    assert loaded.config.bind == ("127.0.0.1:1", "[::1]:2")
    assert loaded.config.keep_alive == 1.5
    assert loaded.sources["workers"] == f"config file {conf}"


def test_python_config_file_ignores_private_imported_and_module_names(tmp_path: Path) -> None:
    """Underscore names, imported names and modules in a Python config file are not settings."""
    conf = write(
        tmp_path / "conf.py",
        "import os\n"
        "import os.path as osp\n"
        "from os import environ\n"
        "from os.path import join as _join\n"
        "import importlib\n"
        "_private = 'x'\n"
        "_workers = _private * 2\n"
        "mod = importlib.import_module('json')\n"
        "workers = 2\n",
    )
    loaded = load(tmp_path, cli={"config": str(conf)})
    assert loaded.config.workers == 2


def test_python_config_file_helpers_and_constants_are_warned_about(tmp_path: Path) -> None:
    """A Python config file's own helper function and constants are left alone: one
    warning names them all, and the file's settings apply."""
    conf = write(
        tmp_path / "conf.py",
        "import os\n"
        "BASE_DIR = os.path.dirname(__file__)\n"
        "PORT = 8000\n"
        "def helper():\n    return 2\n\n"
        "workers = helper()\n"
        "bind = f'127.0.0.1:{PORT}'\n",
    )
    loaded = load(tmp_path, cli={"config": str(conf)})
    assert (loaded.config.workers, loaded.config.bind) == (2, ("127.0.0.1:8000",))
    assert loaded.warnings == (
        f"{conf}: names that are not settings are ignored: BASE_DIR, PORT, helper",
    )


def test_toml_config_file(tmp_path: Path) -> None:
    """A TOML config file's top-level keys are settings, dashed or underscored."""
    conf = write(tmp_path / "conf.toml", 'workers = 4\nkeep-alive = 2\nbind = ["127.0.0.1:1"]\n')
    loaded = load(tmp_path, cli={"config": str(conf)})
    assert (loaded.config.workers, loaded.config.keep_alive) == (4, 2.0)
    assert loaded.config.bind == ("127.0.0.1:1",)
    assert loaded.sources["keep_alive"] == f"config file {conf}"


def test_toml_config_file_with_a_tool_table(tmp_path: Path) -> None:
    """A .toml file given with -c may hold the settings in a [tool.trioserve] table."""
    conf = write(
        tmp_path / "other.toml",
        "[tool.other]\nworkers = 9\n\n[tool.trioserve]\nworkers = 5\nlog-level = 'debug'\n",
    )
    loaded = load(tmp_path, cli={"config": str(conf)})
    assert (loaded.config.workers, loaded.config.log_level) == (5, "debug")


def test_pyproject_table_in_cwd(tmp_path: Path) -> None:
    """Without -c, [tool.trioserve] of ./pyproject.toml is read, with dashed keys."""
    write(
        tmp_path / "pyproject.toml",
        "[project]\nname = 'x'\n\n[tool.trioserve]\nworkers = 6\ngraceful-timeout = 3\n",
    )
    loaded = load(tmp_path)
    assert (loaded.config.workers, loaded.config.graceful_timeout) == (6, 3.0)
    assert loaded.sources["workers"] == "pyproject.toml [tool.trioserve]"


def test_pyproject_without_a_table_is_ignored(tmp_path: Path) -> None:
    """A pyproject.toml without [tool.trioserve] leaves the defaults alone."""
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    assert load(tmp_path).config == Config()


def test_pyproject_is_not_read_when_a_config_file_is_given(tmp_path: Path) -> None:
    """Given -c, ./pyproject.toml is not read at all."""
    write(tmp_path / "pyproject.toml", "[tool.trioserve]\nworkers = 6\nbacklog = 10\n")
    conf = write(tmp_path / "conf.py", "workers = 2\n")
    loaded = load(tmp_path, cli={"config": str(conf)})
    assert (loaded.config.workers, loaded.config.backlog) == (2, 2048)
    assert loaded.sources["backlog"] == "default"


def test_environment(tmp_path: Path) -> None:
    """TRIOSERVE_<NAME> variables set settings, parsed from text."""
    loaded = load(
        tmp_path,
        environ={
            "TRIOSERVE_WORKERS": "3",
            "TRIOSERVE_BIND": "127.0.0.1:1, :2  [::1]:3",
            "TRIOSERVE_FACTORY": "false",
            "UNRELATED": "1",
        },
    )
    config = loaded.config
    assert config.workers == 3
    assert config.bind == ("127.0.0.1:1", ":2", "[::1]:3")
    assert config.factory is False
    assert loaded.sources["bind"] == "environment TRIOSERVE_BIND"


def test_command_line_via_config_from_argv() -> None:
    """config_from_argv parses flags and the positional app."""
    config = config_from_argv(
        ["mod:app", "-w", "2", "-b", "127.0.0.1:1", "--bind", "unix:/tmp/s", "--no-factory"]
    )
    assert config.app == "mod:app"
    assert config.workers == 2
    assert config.bind == ("127.0.0.1:1", "unix:/tmp/s")
    assert config.factory is False


def test_command_line_via_cli_layer(tmp_path: Path) -> None:
    """A parsed namespace becomes a 'command line' layer for load_config."""
    namespace = build_parser().parse_args(["--keep-alive", "7", "--factory", "m:a"])
    loaded = load(tmp_path, cli=cli_layer(namespace))
    assert (loaded.config.keep_alive, loaded.config.factory) == (7.0, True)
    assert loaded.sources["keep_alive"] == "command line --keep-alive"
    assert loaded.sources["app"] == "command line APP"
    assert loaded.sources["workers"] == "default"


# -- precedence ----------------------------------------------------------------------------


def test_precedence_defaults_code_file_environment_command_line(tmp_path: Path) -> None:
    """Each source overrides the ones before it: defaults < code < file < env < CLI."""
    conf = write(tmp_path / "conf.py", "workers = 2\n")
    params: dict[str, Any] = {"workers": 5, "config": str(conf)}
    environ = {"TRIOSERVE_WORKERS": "3"}
    cli = {"workers": "4"}

    def check(expected: int, source: str, **kwargs: Any) -> None:
        loaded = load_config(cwd=tmp_path, **kwargs)
        assert (loaded.config.workers, loaded.sources["workers"]) == (expected, source)

    check(4, "command line --workers", params=params, environ=environ, cli=cli)
    check(3, "environment TRIOSERVE_WORKERS", params=params, environ=environ)
    check(2, f"config file {conf}", params=params, environ={})
    check(5, "code", params={"workers": 5}, environ={})
    check(1, "default", environ={})


def test_web_concurrency_gives_the_default_worker_count(tmp_path: Path) -> None:
    """WEB_CONCURRENCY replaces the default of workers, as in gunicorn, and is named as source."""
    loaded = load(tmp_path, environ={"WEB_CONCURRENCY": "4"})
    assert (loaded.config.workers, loaded.sources["workers"]) == (
        4,
        "environment WEB_CONCURRENCY",
    )
    assert load(tmp_path, environ={"WEB_CONCURRENCY": "0"}).config.workers == 0


def test_web_concurrency_is_below_every_other_source(tmp_path: Path) -> None:
    """Code, the config file, TRIOSERVE_WORKERS and --workers all override WEB_CONCURRENCY."""
    conf = write(tmp_path / "conf.py", "workers = 2\n")
    web = {"WEB_CONCURRENCY": "7"}

    def check(expected: int, source: str, **kwargs: Any) -> None:
        loaded = load_config(cwd=tmp_path, **kwargs)
        assert (loaded.config.workers, loaded.sources["workers"]) == (expected, source)

    check(5, "code", params={"workers": 5}, environ=web)
    check(2, f"config file {conf}", params={"config": str(conf)}, environ=web)
    check(3, "environment TRIOSERVE_WORKERS", environ={**web, "TRIOSERVE_WORKERS": "3"})
    check(4, "command line --workers", environ=web, cli={"workers": "4"})


def test_bad_web_concurrency_names_the_variable(tmp_path: Path) -> None:
    """A WEB_CONCURRENCY that is not a worker count is a ConfigError naming it."""
    message = config_error(load, tmp_path, environ={"WEB_CONCURRENCY": "lots"})
    assert message == "WEB_CONCURRENCY: expected an integer >= 0, got 'lots'"


def test_config_file_from_environment_selects_the_file(tmp_path: Path) -> None:
    """TRIOSERVE_CONFIG names the config file."""
    conf = write(tmp_path / "conf.py", "workers = 2\n")
    loaded = load(tmp_path, environ={"TRIOSERVE_CONFIG": str(conf)})
    assert loaded.config.workers == 2
    assert loaded.sources["config"] == "environment TRIOSERVE_CONFIG"


def test_config_file_from_code_selects_the_file(tmp_path: Path) -> None:
    """A config parameter passed in code names the config file."""
    conf = write(tmp_path / "conf.toml", "workers = 2\n")
    loaded = load(tmp_path, params={"config": str(conf)})
    assert loaded.config.workers == 2
    assert loaded.sources["config"] == "code"


def test_relative_config_path_is_resolved_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative -c path is looked up in the cwd given to load_config."""
    write(tmp_path / "project" / "etc" / "conf.py", "workers = 2\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_config(cwd=tmp_path / "project", environ={}, cli={"config": "etc/conf.py"})
    assert loaded.config.workers == 2


def test_relative_config_path_defaults_to_the_process_cwd(tmp_path: Path) -> None:
    """Without cwd, a relative -c path is resolved against the process's cwd."""
    write(tmp_path / "conf.py", "workers = 2\n")
    assert config_from_argv(["-c", "conf.py"]).workers == 2


# -- errors --------------------------------------------------------------------------------


def test_unknown_key_in_python_file_suggests_a_name(tmp_path: Path) -> None:
    """A misspelt setting in a Python file is warned about with the closest setting (or
    hook, for a function), in one warning; no suggestion for a constant."""
    conf = write(
        tmp_path / "conf.py",
        "worker = 2\nWORKER = 3\ndef when_redy(server):\n    pass\n\nfrobnicate = 1\n",
    )
    loaded = load(tmp_path, cli={"config": str(conf)})
    assert loaded.config.workers == 1
    assert loaded.warnings == (
        f"{conf}: names that are not settings are ignored: worker (did you mean 'workers'?), "
        "WORKER, when_redy (did you mean 'when_ready'?), frobnicate",
    )


def test_unknown_key_in_toml_file_suggests_a_name(tmp_path: Path) -> None:
    """A misspelt setting in a TOML file names the file and the closest setting."""
    conf = write(tmp_path / "conf.toml", "worker = 2\n")
    message = config_error(load, tmp_path, cli={"config": str(conf)})
    assert message == f"{conf}: unknown setting 'worker'; did you mean 'workers'?"


def test_unknown_key_in_pyproject_names_the_file(tmp_path: Path) -> None:
    """A misspelt setting in [tool.trioserve] names pyproject.toml."""
    write(tmp_path / "pyproject.toml", "[tool.trioserve]\nkeep-alives = 2\n")
    message = config_error(load, tmp_path)
    expected = f"{tmp_path / 'pyproject.toml'}: unknown setting 'keep-alives'; did you mean"
    assert message.startswith(expected)


def test_unknown_code_parameter(tmp_path: Path) -> None:
    """An unknown parameter passed in code is an error with a suggestion."""
    message = config_error(load, tmp_path, params={"worker": 2})
    assert message == "parameters: unknown setting 'worker'; did you mean 'workers'?"


def test_unknown_setting_without_a_close_match_points_to_the_docs(tmp_path: Path) -> None:
    """An unknown name with no close match points to the settings reference."""
    message = config_error(load, tmp_path, params={"zzzzzz": 2})
    assert message == "parameters: unknown setting 'zzzzzz'; see docs/settings.md for the list"


@pytest.mark.parametrize("name", ["conf.py", "conf.toml"])
def test_config_key_inside_a_config_file_is_refused(tmp_path: Path, name: str) -> None:
    """A config file cannot name another config file."""
    conf = write(tmp_path / name, "config = 'other.py'\n")
    message = config_error(load, tmp_path, cli={"config": str(conf)})
    assert message == f"{conf}: 'config' cannot be set in a config file"


def test_missing_config_file(tmp_path: Path) -> None:
    """A -c file that does not exist is reported with the reason."""
    missing = tmp_path / "missing.py"
    message = config_error(load, tmp_path, cli={"config": str(missing)})
    assert message == f"--config: cannot read {str(missing)!r}: no such file or directory"


def test_invalid_toml(tmp_path: Path) -> None:
    """A TOML file that does not parse names the file."""
    conf = write(tmp_path / "conf.toml", "workers = [\n")
    message = config_error(load, tmp_path, cli={"config": str(conf)})
    assert message.startswith(f"{conf}: invalid TOML: ")


def test_python_file_with_a_syntax_error(tmp_path: Path) -> None:
    """A Python config file that does not compile names the file and the line."""
    conf = write(tmp_path / "conf.py", "workers = 2\nbind = (\n")
    message = config_error(load, tmp_path, cli={"config": str(conf)})
    assert message.startswith(f"{conf}:2: invalid Python: ")


def test_python_file_raising_at_import(tmp_path: Path) -> None:
    """An exception raised while running a config file is reported with its type."""
    conf = write(tmp_path / "conf.py", "workers = 2\nraise RuntimeError('no database')\n")
    message = config_error(load, tmp_path, cli={"config": str(conf)})
    assert message == f"{conf}: running the config file raised RuntimeError: no database"


def test_bad_value_on_the_command_line_names_the_flag() -> None:
    """A bad CLI value is reported under its long flag, with the text given."""
    message = config_error(config_from_argv, ["--workers", "four"])
    assert message == "--workers: expected an integer >= 0, got 'four'"
    message = config_error(config_from_argv, ["-w", "-3"])
    assert message == "--workers: expected an integer >= 0, got -3"


def test_bad_value_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    """A bad environment value is reported under its variable name."""
    message = config_error(load, tmp_path, environ={"TRIOSERVE_WORKERS": "four"})
    assert message == "TRIOSERVE_WORKERS: expected an integer >= 0, got 'four'"


def test_bad_value_in_a_file_names_the_setting_and_file(tmp_path: Path) -> None:
    """A bad value in a config file names the setting and the file."""
    conf = write(tmp_path / "conf.py", "workers = 'four'\n")
    message = config_error(load, tmp_path, cli={"config": str(conf)})
    assert message == f"workers (in {conf}): expected an integer >= 0, got 'four'"


def test_bool_in_a_file_is_not_an_integer(tmp_path: Path) -> None:
    """workers = True in a config file is refused."""
    conf = write(tmp_path / "conf.py", "workers = True\n")
    message = config_error(load, tmp_path, cli={"config": str(conf)})
    assert message == f"workers (in {conf}): expected an integer >= 0, got True"


def test_bad_value_in_code_parameters_names_the_setting(tmp_path: Path) -> None:
    """A bad value passed in code is reported under the setting's name."""
    message = config_error(load, tmp_path, params={"backlog": 0})
    assert message == "backlog: expected an integer >= 1, got 0"


def test_bad_environment_boolean(tmp_path: Path) -> None:
    """TRIOSERVE_FACTORY accepts only true/false/auto words."""
    message = config_error(load, tmp_path, environ={"TRIOSERVE_FACTORY": "maybe"})
    assert message == "TRIOSERVE_FACTORY: expected true, false or auto, got 'maybe'"


def test_unknown_flag_is_a_config_error() -> None:
    """An unknown command-line flag raises ConfigError pointing to --help."""
    message = config_error(config_from_argv, ["--wrokers", "2"])
    assert "--wrokers" in message
    assert message.endswith("(see 'trioserve --help')")


# -- render_config and --print-config ------------------------------------------------------


def test_render_config_lists_every_setting_with_its_source(tmp_path: Path) -> None:
    """--print-config text has one line per setting, commented with its source."""
    loaded = load(tmp_path, params={"workers": 2}, environ={"TRIOSERVE_BACKLOG": "9"})
    text = render_config(loaded)
    lines = [line for line in text.splitlines() if not line.startswith("# trioserve")]
    assert len(lines) == len(settings())
    for info, line in zip(settings(), lines, strict=True):
        assert re.search(rf"\b{info.name} = .*  # {re.escape(loaded.sources[info.name])}$", line)
    assert re.search(r"^workers = 2\s+# code$", text, re.MULTILINE)
    assert re.search(r"^backlog = 9\s+# environment TRIOSERVE_BACKLOG$", text, re.MULTILINE)
    assert re.search(r"^bind = \['127\.0\.0\.1:8000'\]\s+# default$", text, re.MULTILINE)


def test_render_config_is_a_loadable_config_file(tmp_path: Path) -> None:
    """Rendered settings, written to a file and loaded with -c, give an equal Config."""
    conf = write(tmp_path / "base.toml", "keep-alive = 2.5\n")
    loaded = load(
        tmp_path,
        params={"app": "pkg.mod:app", "bind": ["127.0.0.1:1", "unix:/tmp/s(0660)"]},
        environ={"TRIOSERVE_CONFIG": str(conf), "TRIOSERVE_FACTORY": "false"},
        cli={"workers": "3", "log_level": "debug"},
    )
    rendered = write(tmp_path / "rendered.py", render_config(loaded))
    again = load(tmp_path, cli={"config": str(rendered)})
    assert attrs.evolve(again.config, config=None) == attrs.evolve(loaded.config, config=None)
    assert again.sources["app"] == f"config file {rendered}"


def test_render_config_comments_out_an_app_object(tmp_path: Path) -> None:
    """An app object has no literal form, so its line is commented out and the rest loads."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError

    loaded = load(tmp_path, params={"app": app, "workers": 2})
    rendered = write(tmp_path / "rendered.py", render_config(loaded))
    assert re.search(r"^# app = <function", rendered.read_text(), re.MULTILINE)
    again = load(tmp_path, cli={"config": str(rendered)})
    assert (again.config.app, again.config.workers) == (None, 2)


def test_main_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    """main --print-config prints the resolved settings and their sources, exit 0."""
    assert main(["--print-config", "x:y", "-w", "2"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert re.search(r"^workers\s*=\s*2\s*#\s*command line --workers$", out, re.MULTILINE)
    assert re.search(r"^keep_alive\s*=\s*5\.0\s*#\s*default$", out, re.MULTILINE)
    assert re.search(r"^app\s*=\s*'x:y'\s*#\s*command line APP$", out, re.MULTILINE)


def test_main_bad_value_prints_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad flag value exits 2 with exactly one 'trioserve: error:' line on stderr."""
    assert main(["--workers", "four", "x:y"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["trioserve: error: --workers: expected an integer >= 0, got 'four'"]


def test_main_unknown_flag_prints_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown flag exits 2 with a one-line error naming it.

    The app is importable: which flags exist depends on it (a MultiApp adds prefixed
    ones), so with an app that cannot be imported, the import error is reported instead.
    """
    assert main(["--no-such-flag", "examples.hello:app"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("trioserve: error: ")
    assert "--no-such-flag" in lines[0]


def test_main_print_config_shows_web_concurrency(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--print-config names WEB_CONCURRENCY as the source, and -w or TRIOSERVE_WORKERS win."""
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert main(["--print-config", "x:y"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^workers = 3\s+# environment WEB_CONCURRENCY$", out, re.MULTILINE)
    assert main(["--print-config", "x:y", "-w", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^workers = 2\s+# command line --workers$", out, re.MULTILINE)
    monkeypatch.setenv("TRIOSERVE_WORKERS", "5")
    assert main(["--print-config", "x:y"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^workers = 5\s+# environment TRIOSERVE_WORKERS$", out, re.MULTILINE)


def test_main_print_config_default_workers(capsys: pytest.CaptureFixture[str]) -> None:
    """Without any source, --print-config shows one worker, from the default."""
    assert main(["--print-config", "x:y"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^workers = 1\s+# default$", out, re.MULTILINE)


def test_main_reads_the_environment_and_pyproject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main resolves os.environ and ./pyproject.toml like load_config does."""
    write(tmp_path / "pyproject.toml", "[tool.trioserve]\nbacklog = 10\n")
    monkeypatch.setenv("TRIOSERVE_WORKERS", "3")
    assert main(["--print-config", "x:y"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^workers = 3\s+# environment TRIOSERVE_WORKERS$", out, re.MULTILINE)
    assert re.search(r"^backlog = 10\s+# pyproject\.toml \[tool\.trioserve\]$", out, re.MULTILINE)


def test_toml_file_with_non_table_tool_is_a_config_error(tmp_path):
    """A -c TOML file whose 'tool' or 'tool.trioserve' is not a table is a ConfigError."""
    for text in ("tool = 3\n", "[tool]\ntrioserve = 3\n"):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"\[tool.trioserve\] must be a table"):
            load_config(cli={"config": str(path)}, environ={}, cwd=tmp_path)


def test_websocket_deflate_settings_from_the_command_line() -> None:
    """permessage-deflate is on by default; --no-ws-per-message-deflate turns it off and
    the window is 9 to 15 bits, refused with one line naming the flag otherwise."""
    config = config_from_argv(["mod:app"])
    assert config.ws_per_message_deflate is True
    assert config.ws_deflate_context_takeover is False
    assert config.ws_deflate_window_bits == 15
    assert config.ws_max_message_size == 16 * 1024 * 1024
    config = config_from_argv(
        [
            *("mod:app", "--no-ws-per-message-deflate", "--ws-deflate-context-takeover"),
            *("--ws-deflate-window-bits", "10"),
        ]
    )
    assert config.ws_per_message_deflate is False
    assert config.ws_deflate_context_takeover is True
    assert config.ws_deflate_window_bits == 10
    message = config_error(config_from_argv, ["mod:app", "--ws-deflate-window-bits", "16"])
    assert message == "--ws-deflate-window-bits: expected an integer from 9 to 15, got 16"

"""Tests for trioserve._hooks: signatures checked at load, run_hook, hooks in config files."""

from __future__ import annotations

import functools
import logging
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.unit import hook_targets
from trioserve import Config, ConfigError, HookError, ServerInfo, WorkerInfo
from trioserve._cli import build_parser
from trioserve._config import CONFIG_MODULE, load_config, load_python_config
from trioserve._hooks import HOOKS, arity_problem, run_hook, run_hook_logged, signature_text

EXPECTED = "expected a function or async function, or 'module:attribute' naming one"


@pytest.fixture(autouse=True)
def _config_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test registers as the config-file module is removed after it."""
    monkeypatch.setitem(sys.modules, CONFIG_MODULE, None)
    hook_targets.CALLS.clear()


def config_error(**settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Config(**settings)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the table -------------------------------------------------------------------------------


def test_every_hook_is_a_setting_without_a_flag() -> None:
    """Each row of HOOKS is a Config setting, default None, and not a command-line flag."""
    config = Config()
    help_text = build_parser().format_help()
    for hook in HOOKS:
        assert getattr(config, hook.name) is None
        assert f"--{hook.name.replace('_', '-')}" not in help_text
        assert hook.where in {"master", "worker", "both"}


def test_signature_text_always_ends_with_the_exc_keyword() -> None:
    """signature_text shows the positional arguments, then '*, exc=None'."""
    assert signature_text("on_starting") == "on_starting(server, *, exc=None)"
    assert signature_text("post_request") == "post_request(worker, req, resp, *, exc=None)"


# -- signatures, checked when the configuration is loaded ------------------------------------


def test_hooks_with_a_fitting_signature_are_accepted() -> None:
    """Sync and async functions, exc as keyword-only or positional-or-keyword, *args/**kwargs."""

    def keyword_only(server: Any, *, exc: Any = None) -> None: ...

    def positional_exc(server: Any, exc: Any = None) -> None: ...

    async def asynchronous(server: Any, *, exc: Any = None) -> None: ...

    def anything(*args: Any, **kwargs: Any) -> None: ...

    class Callable:
        def __call__(self, server: Any, *, exc: Any = None) -> None: ...

    for hook in (keyword_only, positional_exc, asynchronous, anything, Callable()):
        assert Config(on_starting=hook).on_starting is hook


def test_too_many_arguments_names_the_hook_and_its_signature() -> None:
    """A hook that needs more positional arguments than it gets is a ConfigError saying so."""

    def post_fork(server: Any, worker: Any, *, exc: Any = None) -> None: ...

    message = config_error(on_starting=post_fork)
    assert message == (
        "on_starting: post_fork(server, worker, *, exc=None) cannot be called as "
        "on_starting(server) nor as on_starting(server, *, exc=None): "
        "missing a required argument: 'worker'"
    )


def test_too_few_arguments_names_the_hook_and_its_signature() -> None:
    """A hook that takes fewer positional arguments than it is given is a ConfigError."""

    def on_starting(*, exc: Any = None) -> None: ...

    message = config_error(pre_fork=on_starting)
    assert message == (
        "pre_fork: on_starting(*, exc=None) cannot be called as pre_fork(server, worker) "
        "nor as pre_fork(server, worker, *, exc=None): too many positional arguments"
    )


def test_gunicorn_signatures_without_exc_are_accepted() -> None:
    """Hooks with gunicorn's signatures (no exc keyword), sync or async, are accepted."""

    def on_starting(server: Any) -> None: ...

    async def post_fork(server: Any, worker: Any) -> None: ...

    def worker_args(*args: Any) -> None: ...

    config = Config(on_starting=on_starting, post_fork=post_fork, child_exit=worker_args)
    assert (config.on_starting, config.post_fork) == (on_starting, post_fork)


def test_a_post_request_that_fits_no_form_names_gunicorns_forms() -> None:
    """A post_request that fits neither trioserve's nor gunicorn's forms is refused,
    naming gunicorn's forms as accepted too."""

    def post_request(worker: Any, req: Any, environ: Any, resp: Any, extra: Any) -> None: ...

    message = config_error(post_request=post_request)
    assert message == (
        "post_request: post_request(worker, req, environ, resp, extra) cannot be called as "
        "post_request(worker, req, resp) nor as post_request(worker, req, resp, *, exc=None): "
        "missing a required argument: 'resp'; gunicorn's forms post_request(worker, req, "
        "environ, resp), post_request(worker, req, environ) and post_request(worker, req) "
        "are accepted too"
    )


def test_a_wrong_signature_named_by_a_string_quotes_the_string() -> None:
    """A 'module:attribute' hook with a wrong signature quotes the string, then the
    signature it has and the two it may have."""
    message = config_error(on_starting="tests.unit.hook_targets:two_arguments")
    assert message == (
        "on_starting: 'tests.unit.hook_targets:two_arguments': two_arguments(server, worker) "
        "cannot be called as on_starting(server) nor as on_starting(server, *, exc=None): "
        "missing a required argument: 'worker'"
    )


def test_a_value_that_is_not_callable_is_refused() -> None:
    """A hook setting holding a non-callable is a ConfigError saying so."""
    message = config_error(on_exit=42)
    assert message == (
        f"on_exit: {EXPECTED}, got 42; it must accept on_exit(server, *, exc=None): not callable"
    )


def test_arity_problem_gives_builtins_without_a_signature_the_benefit_of_the_doubt() -> None:
    """A builtin inspect finds no signature for is accepted; a fitting one has no problem."""
    assert arity_problem("on_starting", min) is None
    assert arity_problem("on_starting", hook_targets.on_starting) is None
    assert arity_problem("on_starting", 3) == "not callable"


# -- 'module:attribute' strings ----------------------------------------------------------------


def test_module_attribute_strings_resolve_to_the_function() -> None:
    """'module:attribute' (also dotted attributes) is imported when the config is loaded."""
    # The fields are typed as callables: strings are converted when the Config is built.
    names: dict[str, Any] = {
        "on_starting": "tests.unit.hook_targets:on_starting",
        "post_request": " tests.unit.hook_targets:post_request ",
        "on_exit": "tests.unit.hook_targets:Namespace.hook",
    }
    config = Config(**names)
    assert config.on_starting is hook_targets.on_starting
    assert config.post_request is hook_targets.post_request
    assert config.on_exit is hook_targets.Namespace.hook


def test_module_attribute_strings_from_the_environment_and_toml(tmp_path: Path) -> None:
    """TRIOSERVE_<HOOK> and TOML config files name hooks as 'module:attribute'."""
    conf = tmp_path / "conf.toml"
    conf.write_text('post-request = "tests.unit.hook_targets:post_request"\n', encoding="utf-8")
    loaded = load_config(
        environ={"TRIOSERVE_ON_STARTING": "tests.unit.hook_targets:on_starting"},
        cli={"config": str(conf)},
        cwd=tmp_path,
    )
    assert loaded.config.on_starting is hook_targets.on_starting
    assert loaded.config.post_request is hook_targets.post_request
    assert loaded.sources["on_starting"] == "environment TRIOSERVE_ON_STARTING"


@pytest.mark.parametrize(
    ("target", "detail"),
    [
        ("hook_targets.on_starting", "name it as 'module:attribute'"),
        (":on_starting", "name it as 'module:attribute'"),
        ("tests.unit.hook_targets:", "name it as 'module:attribute'"),
        (
            "no_such_hook_module:on_starting",
            "cannot import 'no_such_hook_module': No module named 'no_such_hook_module'",
        ),
        (
            "tests.unit.hook_targets:on_startin",
            "'tests.unit.hook_targets' has no attribute 'on_startin'",
        ),
        (
            "tests.unit.importer_targets.imptgt_raises_on_import:hook",
            "importing 'tests.unit.importer_targets.imptgt_raises_on_import' raised "
            "ZeroDivisionError: division by zero",
        ),
        (
            "tests.unit.hook_targets:NOT_CALLABLE",
            "it must accept on_starting(server, *, exc=None): not callable",
        ),
    ],
)
def test_bad_module_attribute_strings_say_what_is_wrong(target: str, detail: str) -> None:
    """A bad hook string is a one-line ConfigError quoting the string as written, and why."""
    message = config_error(on_starting=target)
    assert message == f"on_starting: {EXPECTED}, got {target!r}; {detail}"


def test_bad_module_attribute_in_the_environment_names_the_variable() -> None:
    """A hook string from the environment that does not import names the variable."""
    with pytest.raises(ConfigError) as info:
        load_config(environ={"TRIOSERVE_ON_EXIT": "no_such_hook_module:f"})
    assert str(info.value).startswith(f"TRIOSERVE_ON_EXIT: {EXPECTED}, got 'no_such_hook_module:f'")


# -- run_hook ------------------------------------------------------------------------------------


def server_info() -> ServerInfo:
    return ServerInfo(Config())


async def test_run_hook_calls_a_sync_hook_with_its_arguments_and_exc() -> None:
    """A plain function is called with the positional arguments and exc=None."""
    server = server_info()
    config = Config(on_starting=hook_targets.on_starting)
    await run_hook(config, "on_starting", server)
    calls = hook_targets.CALLS
    assert calls == [("on_starting", (server,), None)]


async def test_run_hook_awaits_an_async_hook() -> None:
    """An async hook is awaited: its body runs to the end, checkpoints included."""
    calls: list[str] = []

    async def on_starting(server: Any, *, exc: Any = None) -> None:
        calls.append("started")
        await trio.lowlevel.checkpoint()
        calls.append("finished")

    await run_hook(Config(on_starting=on_starting), "on_starting", server_info())
    assert calls == ["started", "finished"]


async def test_run_hook_passes_exc() -> None:
    """exc= given to run_hook reaches the hook as the keyword exc."""
    error = RuntimeError("the app failed")
    worker = WorkerInfo(0, Config())
    response = object()
    config = Config(post_request=hook_targets.post_request)
    await run_hook(config, "post_request", worker, {"type": "http"}, response, exc=error)
    calls = hook_targets.CALLS
    assert calls == [("post_request", (worker, {"type": "http"}, response), error)]


async def test_run_hook_without_a_hook_does_nothing() -> None:
    """An unset hook (None) is skipped."""
    await run_hook(Config(), "on_starting", server_info())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_raising_hook_becomes_a_hook_error_naming_it(asynchronous: bool) -> None:
    """What a hook raises comes out as HookError naming the hook, the original chained."""
    original = ValueError("no database")

    def sync_hook(server: Any, *, exc: Any = None) -> None:
        raise original

    async def async_hook(server: Any, *, exc: Any = None) -> None:
        await trio.lowlevel.checkpoint()
        raise original

    config = Config(when_ready=async_hook if asynchronous else sync_hook)
    with pytest.raises(HookError) as info:
        await run_hook(config, "when_ready", server_info())
    assert info.value.hook == "when_ready"
    assert str(info.value) == "hook when_ready raised ValueError: no database"
    assert info.value.__cause__ is original


async def test_cancellation_of_an_async_hook_is_not_a_hook_error() -> None:
    """Cancelled passes through run_hook as itself: a stop is not a failing hook."""

    async def on_starting(server: Any, *, exc: Any = None) -> None:
        await trio.sleep_forever()

    with trio.CancelScope() as scope:
        scope.cancel()
        await run_hook(Config(on_starting=on_starting), "on_starting", server_info())
    assert scope.cancelled_caught


async def test_run_hook_logged_logs_the_error_and_returns_false(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """run_hook_logged logs a raising hook with its traceback and reports False."""
    caplog.set_level(logging.ERROR, "trioserve.hooks")

    def on_exit(server: Any, *, exc: Any = None) -> None:
        raise KeyError("gone")

    assert await run_hook_logged(Config(on_exit=on_exit), "on_exit", server_info()) is False
    [record] = caplog.records
    assert record.getMessage() == "hook on_exit raised KeyError: 'gone'"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)
    assert await run_hook_logged(Config(), "on_exit", server_info()) is True


# -- hooks in a Python config file ------------------------------------------------------------

CONFIG_FILE = """\
import logging

_log = logging.getLogger("test.hooks")
workers = 2


def on_starting(server, *, exc=None):
    _log.info("starting %s", server.pid)


async def post_worker_init(worker, *, exc=None):
    pass
"""


def test_hooks_in_a_python_config_file_are_loaded(tmp_path: Path) -> None:
    """Module-level functions of a -c file named like hooks become those hooks."""
    conf = tmp_path / "conf.py"
    conf.write_text(CONFIG_FILE, encoding="utf-8")
    loaded = load_config(environ={}, cli={"config": str(conf)}, cwd=tmp_path)
    config = loaded.config
    assert config.on_starting is not None
    assert config.on_starting.__module__ == CONFIG_MODULE
    assert config.post_worker_init is not None
    assert loaded.sources["on_starting"] == f"config file {conf}"


def test_a_wrong_hook_in_a_python_config_file_names_the_file(tmp_path: Path) -> None:
    """A config-file hook with a wrong signature is a ConfigError naming hook and file."""
    conf = tmp_path / "conf.py"
    conf.write_text("def on_starting(server, worker):\n    pass\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, cli={"config": str(conf)}, cwd=tmp_path)
    assert str(info.value) == (
        f"on_starting (in {conf}): on_starting(server, worker) cannot be called as "
        "on_starting(server) nor as on_starting(server, *, exc=None): "
        "missing a required argument: 'worker'"
    )


def test_config_with_config_file_hooks_pickles_by_reference(tmp_path: Path) -> None:
    """pickle.dumps(config) works for config-file hooks; a process that ran the file too
    (as a worker does, with load_python_config) unpickles them to its own functions."""
    conf = tmp_path / "conf.py"
    conf.write_text(CONFIG_FILE, encoding="utf-8")
    config = load_config(environ={}, cli={"config": str(conf)}, cwd=tmp_path).config
    data = pickle.dumps(config)
    assert pickle.loads(data) == config  # the same functions while the module is registered

    # What a worker does: run the master's config file again, then unpickle its Config.
    del sys.modules[CONFIG_MODULE]
    module = load_python_config(conf)
    again = pickle.loads(data)
    assert again.on_starting is module.on_starting
    assert again.post_worker_init is module.post_worker_init
    assert again.workers == 2


def test_config_with_a_local_hook_does_not_pickle() -> None:
    """A function defined inside another one cannot go to a worker by reference."""

    def on_starting(server: Any, *, exc: Any = None) -> None: ...

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(Config(on_starting=on_starting))


def test_importable_hooks_pickle_by_reference() -> None:
    """A 'module:attribute' hook pickles as a reference to the same function."""
    names: dict[str, Any] = {"on_starting": "tests.unit.hook_targets:on_starting"}
    config = Config(**names)
    assert pickle.loads(pickle.dumps(config)).on_starting is hook_targets.on_starting


def test_partial_hooks_are_checked_with_their_bound_arguments() -> None:
    """functools.partial hooks are checked on the arguments still to be given."""

    def hook(prefix: str, server: Any, *, exc: Any = None) -> None: ...

    assert Config(on_starting=functools.partial(hook, "p")).on_starting is not None
    message = config_error(on_starting=functools.partial(hook, "p", "s"))
    assert "too many positional arguments" in message

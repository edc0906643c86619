"""Application and MultiApp: building, prefixed command-line settings, precedence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trioserve import Application, Config, ConfigError, MultiApp, NewApp
from trioserve._apps import add_prefixed_arguments, as_composite, prefixes_of, resolve_plans
from trioserve._cli import build_parser, cli_layer, main


class Site(MultiApp):
    def build(self) -> Iterator[NewApp]:
        yield self.new_app("examples.hello:app", "web", bind=["127.0.0.1:8000"], workers=2)
        yield self.new_app("examples.echo:handler", "echo", bind=["127.0.0.1:9000"])


def plans_from_argv(site: MultiApp, argv: list[str]) -> dict[str | None, Config]:
    parser = build_parser()
    add_prefixed_arguments(parser, list(prefixes_of(site)))
    namespace = parser.parse_args(argv)
    plans = resolve_plans(site, cli=cli_layer(namespace), namespace=namespace, environ={})
    return {prefix: config for prefix, config in plans}


def test_each_application_gets_its_own_settings_and_app() -> None:
    """Each application of a MultiApp resolves to a Config with its own app and binds."""
    plans = plans_from_argv(Site(), ["examples.multi:site"])
    web, echo = plans["web"], plans["echo"]
    assert (web.app, web.bind, web.workers) == ("examples.hello:app", ("127.0.0.1:8000",), 2)
    assert (echo.app, echo.bind, echo.workers) == ("examples.echo:handler", ("127.0.0.1:9000",), 1)


def test_prefixed_flags_override_one_application() -> None:
    """--web-workers sets only web's workers; --echo-bind only echo's binds."""
    argv = ["examples.multi:site", "--web-workers", "4", "--echo-bind", "127.0.0.1:0"]
    plans = plans_from_argv(Site(), argv)
    assert plans["web"].workers == 4
    assert plans["echo"].workers == 1
    assert plans["echo"].bind == ("127.0.0.1:0",)
    assert plans["web"].bind == ("127.0.0.1:8000",)


def test_unprefixed_flag_applies_to_every_application_below_prefixed_ones() -> None:
    """An unprefixed per-app flag sets every application; a prefixed one wins over it."""
    argv = ["examples.multi:site", "--timeout", "7", "--workers", "3", "--echo-workers", "1"]
    plans = plans_from_argv(Site(), argv)
    assert plans["web"].timeout == plans["echo"].timeout == 7.0
    assert (plans["web"].workers, plans["echo"].workers) == (3, 1)


def test_server_settings_are_shared_and_have_no_prefixed_flag() -> None:
    """Server-wide settings (log level, name) are the same in every application."""
    plans = plans_from_argv(Site(), ["examples.multi:site", "--log-level", "debug", "-n", "s"])
    assert {(c.log_level, c.name) for c in plans.values()} == {("debug", "s")}
    parser = build_parser()
    add_prefixed_arguments(parser, ["web"])
    with pytest.raises(ConfigError, match="unrecognized arguments: --web-log-level"):
        parser.parse_args(["x:y", "--web-log-level", "debug"])


def test_multiapp_settings_sit_below_each_applications_own() -> None:
    """Settings given to the MultiApp are defaults that each new_app may override."""

    class Shared(MultiApp):
        def build(self) -> Iterator[NewApp]:
            yield self.new_app("examples.hello:app", "a")
            yield self.new_app("examples.hello:app", "b", keep_alive=9)

    plans = dict(resolve_plans(Shared(keep_alive=3, timeout=4), environ={}))
    assert (plans["a"].keep_alive, plans["b"].keep_alive) == (3.0, 9.0)
    assert plans["a"].timeout == plans["b"].timeout == 4.0


def test_application_bundles_an_app_with_settings() -> None:
    """A target naming an Application serves its app with its settings under the CLI's."""
    application = Application("examples.hello:app", workers=3, keep_alive=2)
    [(prefix, config)] = resolve_plans(application, environ={})
    assert (prefix, config.app, config.workers, config.keep_alive) == (
        None,
        "examples.hello:app",
        3,
        2.0,
    )


@pytest.mark.parametrize(
    ("prefix", "message"),
    [("Web", "lowercase"), ("", "lowercase"), ("web-1", "lowercase"), ("1web", "lowercase")],
)
def test_bad_prefix_is_refused(prefix: str, message: str) -> None:
    """A prefix must be lowercase letters and digits, starting with a letter."""
    with pytest.raises(ConfigError, match=message):
        MultiApp().new_app("examples.hello:app", prefix)


def test_duplicate_prefix_empty_build_and_stray_items_are_errors() -> None:
    """build() must yield new_app() results with distinct prefixes, at least one."""

    class Twice(MultiApp):
        def build(self) -> Iterator[NewApp]:
            yield self.new_app("examples.hello:app", "web")
            yield self.new_app("examples.hello:app", "web")

    class Empty(MultiApp):
        def build(self) -> Iterator[NewApp]:
            yield from ()

    class Stray(MultiApp):
        def build(self) -> Iterator[object]:  # type: ignore[override]
            yield "examples.hello:app"

    with pytest.raises(ConfigError, match="two applications have the prefix 'web'"):
        Twice().applications()
    with pytest.raises(ConfigError, match="yielded no application"):
        Empty().applications()
    with pytest.raises(ConfigError, match=r"must yield self.new_app\(...\)"):
        Stray().applications()


def test_zero_workers_in_a_multiapp_is_refused() -> None:
    """Each application of a MultiApp runs in worker processes: workers 0 is an error."""
    with pytest.raises(ConfigError, match="--web-workers: a MultiApp serves"):
        plans_from_argv(Site(), ["examples.multi:site", "--web-workers", "0"])


def test_multiapp_subclass_is_instantiated_as_a_target() -> None:
    """A target naming a MultiApp subclass (not an instance) is instantiated."""
    composite = as_composite(Site)
    assert isinstance(composite, Site)
    assert as_composite(print) is None


def test_prefixed_flag_for_a_plain_app_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--web-workers means nothing for a plain app: exit 2 naming the argument."""
    assert main(["examples.hello:app", "--web-workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trioserve: error: unrecognized arguments: --web-workers 2")


def test_multiapp_takes_its_applications_by_prefix_without_a_subclass() -> None:
    """MultiApp(apps={prefix: app}) builds one application per entry; an Application
    entry keeps its own settings."""
    site = MultiApp(
        apps={
            "web": Application("examples.hello:app", workers=2),
            "echo": "examples.echo:handler",
        },
        timeout=9,
    )
    plans = dict(resolve_plans(site, environ={}))
    assert (plans["web"].app, plans["web"].workers) == ("examples.hello:app", 2)
    assert (plans["echo"].app, plans["echo"].workers) == ("examples.echo:handler", 1)
    assert plans["web"].timeout == plans["echo"].timeout == 9.0


def test_multiapp_without_applications_is_an_error() -> None:
    """A MultiApp given no apps (and no build()) is a one-line ConfigError."""
    with pytest.raises(ConfigError, match="yielded no application"):
        MultiApp().applications()

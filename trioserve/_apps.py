"""Applications: an app bundled with its settings, and MultiApp, several under one master.

As in pulsar: a :class:`MultiApp` builds its applications with
``yield self.new_app(app, prefix, **settings)``; each runs its own worker pool with its
own binds and hooks. Settings of scope "app" get the application's prefix on the
command line (``--web-workers 4 --echo-bind 127.0.0.1:9000``); the unprefixed flag
sets the value for every application. Settings of scope "server" (log level, name,
reload) are shared.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from ._config import Config, Layer, SettingInfo, load_config, settings
from ._errors import ConfigError

_PREFIX = re.compile(r"^[a-z][a-z0-9]*$")


class Application:
    """An app bundled with its own settings.

    ``Application("pkg.web:app", bind=["127.0.0.1:8000"], workers=2)``. A target that
    names an Application is served with these settings under the ones given by the
    config file, the environment and the command line.

    Args:
        app: The app: a target string ('module:attribute') or the app object.
        **settings: Settings for it, as in :class:`~trioserve.Config`.
    """

    trioserve_composite = True

    def __init__(self, app: object, **settings: Any) -> None:
        self.app = app
        self.settings: dict[str, Any] = dict(settings)
        if "app" in self.settings:
            raise ConfigError("Application: pass the app as the first argument, not as app=")

    def __repr__(self) -> str:
        return f"Application({self.app!r})"


@attrs.frozen
class NewApp:
    """What :meth:`MultiApp.new_app` returns: one application of a MultiApp."""

    prefix: str
    application: Application


class MultiApp:
    """Several applications served by one master, each with its own prefix.

    Give the applications by prefix::

        site = MultiApp(
            apps={"web": "examples.hello:app", "echo": "examples.echo:handler"},
            log_level="info",
        )

    or subclass it and implement :meth:`build`, to give each its own settings::

        class Site(MultiApp):
            def build(self):
                yield self.new_app("examples.hello:app", "web", bind=[":8000"])
                yield self.new_app("examples.echo:handler", "echo", bind=[":9000"])

    Args:
        apps: Prefix → app (a target string, an app object or an :class:`Application`
            carrying its own settings); what the default :meth:`build` yields.
        **settings: Settings shared by every application (below each one's own).
    """

    trioserve_composite = True

    def __init__(self, *, apps: Mapping[str, object] | None = None, **settings: Any) -> None:
        self.apps: dict[str, object] = dict(apps or {})
        self.settings: dict[str, Any] = dict(settings)

    def build(self) -> Iterable[NewApp]:
        """Yield one :meth:`new_app` per application: by default those given as ``apps``."""
        for prefix, app in self.apps.items():
            yield self.new_app(app, prefix)

    def new_app(self, app: object, prefix: str, **settings: Any) -> NewApp:
        """An application of this MultiApp, with ``prefix`` for its command-line flags.

        Args:
            app: A target string, an app object, or an :class:`Application`.
            prefix: Lowercase letters and digits, starting with a letter; unique.
            **settings: This application's own settings.
        """
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ConfigError(
                f"MultiApp.new_app: expected a prefix of lowercase letters and digits, "
                f"got {prefix!r}"
            )
        if isinstance(app, Application):
            return NewApp(prefix, Application(app.app, **{**app.settings, **settings}))
        return NewApp(prefix, Application(app, **settings))

    def applications(self) -> list[NewApp]:
        """The built applications, checked: at least one, prefixes unique."""
        built = list(self.build())
        if not built:
            raise ConfigError(f"{type(self).__name__}.build() yielded no application")
        seen: set[str] = set()
        for item in built:
            if not isinstance(item, NewApp):
                raise ConfigError(
                    f"{type(self).__name__}.build() must yield self.new_app(...), got {item!r}"
                )
            if item.prefix in seen:
                raise ConfigError(f"MultiApp: two applications have the prefix {item.prefix!r}")
            seen.add(item.prefix)
        return built


def as_composite(obj: object) -> Application | MultiApp | None:
    """``obj`` as an Application or a MultiApp (a MultiApp subclass is instantiated)."""
    if isinstance(obj, Application | MultiApp):
        return obj
    if isinstance(obj, type) and issubclass(obj, MultiApp):
        return obj()
    return None


def _app_settings() -> list[SettingInfo]:
    return [
        info
        for info in settings()
        if info.setting.scope == "app"
        and info.setting.flags
        and info.setting.kind.cli != "none"
        and info.name != "app"
    ]


def _prefixed_flag(prefix: str, flag: str) -> str:
    return f"--{prefix}-{flag[2:]}"


def add_prefixed_arguments(parser: argparse.ArgumentParser, prefixes: Sequence[str]) -> None:
    """Add ``--PREFIX-FLAG`` for every per-application setting and every prefix."""
    for prefix in prefixes:
        group = parser.add_argument_group(f"Application {prefix!r}")
        for info in _app_settings():
            long_flags = [f for f in info.setting.flags if f.startswith("--")]
            if not long_flags:
                continue
            flags = [_prefixed_flag(prefix, f) for f in long_flags]
            dest = f"{prefix}:{info.name}"
            kind = info.setting.kind
            # argparse %-formats help texts.
            text = f"{info.flag} for the {prefix!r} application only.".replace("%", "%%")
            metavar = info.setting.metavar
            if metavar is None:
                choices = kind.choices
                metavar = "{" + ",".join(choices) + "}" if choices else info.name.upper()
            if kind.cli == "flag":
                group.add_argument(
                    *flags, dest=dest, action=argparse.BooleanOptionalAction, help=text
                )
            elif kind.cli == "append":
                group.add_argument(*flags, dest=dest, action="append", metavar=metavar, help=text)
            else:
                group.add_argument(*flags, dest=dest, metavar=metavar, help=text)


def prefixed_layer(namespace: argparse.Namespace, prefix: str) -> Layer:
    """The ``--PREFIX-...`` values of one application, as a command-line layer."""
    infos = {info.name: info for info in _app_settings()}
    values: dict[str, Any] = {}
    for name in infos:
        dest = f"{prefix}:{name}"
        if hasattr(namespace, dest):
            value = getattr(namespace, dest)
            if isinstance(value, bool):
                value = str(value).lower()
            values[name] = value
    flags = {name: _prefixed_flag(prefix, info.flag) for name, info in infos.items()}
    return Layer("command line", values, text=True, where=lambda name: flags[name])


def resolve_plans(
    composite: Application | MultiApp,
    *,
    cli: Layer | None = None,
    namespace: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[tuple[str | None, Config]]:
    """Resolve the Config of each application of ``composite``.

    Per application, lowest first: defaults, the MultiApp's settings, the
    application's own, ``params``, the config file, the environment, the unprefixed
    command line, then its ``--PREFIX-...`` flags. Server-wide settings come out the
    same for every application.
    """
    if isinstance(composite, Application):
        merged = {**composite.settings, **(params or {})}
        config = load_config(params=merged, environ=environ, cli=cli).config
        # The target named the composite; its application is what the workers load.
        return [(None, attrs.evolve(config, app=composite.app))]
    plans: list[tuple[str | None, Config]] = []
    for item in composite.applications():
        application = item.application
        merged = {
            **composite.settings,
            **application.settings,
            **(params or {}),
        }
        base = load_config(params=merged, environ=environ, cli=cli)
        config = base.config
        if namespace is not None:
            layer = prefixed_layer(namespace, item.prefix)
            if layer.values:
                layered = load_config(params=merged, environ=environ, cli=_merge(cli, layer))
                config = layered.config
        config = attrs.evolve(config, app=application.app)
        if config.workers < 1:
            raise ConfigError(
                f"--{item.prefix}-workers: a MultiApp serves each application in worker "
                f"processes; expected an integer >= 1, got {config.workers}"
            )
        plans.append((item.prefix, config))
    return plans


def _merge(base: Layer | None, extra: Layer) -> Layer:
    if base is None:
        return extra
    values = {**base.values, **extra.values}

    def where(name: str) -> str:
        return extra.where(name) if name in extra.values else base.where(name)

    return Layer(base.label, values, text=True, where=where)


def prefixes_of(composite: Application | MultiApp) -> Iterator[str]:
    if isinstance(composite, MultiApp):
        for item in composite.applications():
            yield item.prefix

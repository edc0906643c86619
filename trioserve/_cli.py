"""The ``trioserve`` command: an argparse parser generated from the settings registry."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import trio

from ._accesslog import access_log_for
from ._apps import MultiApp, add_prefixed_arguments, as_composite, prefixes_of, resolve_plans
from ._config import LOGGER as CONFIG_LOGGER
from ._config import Config, Layer, LoadedConfig, SettingInfo, load_config, render_config, settings
from ._ctl import main as ctl_main
from ._daemon import PidFile, Readiness, absolute_paths, daemonize
from ._errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError, TrioserveError
from ._gunicorn import BY_NAME as GUNICORN_BY_NAME
from ._gunicorn import GUNICORN_NAMES, cli_dest
from ._gunicorn import read as read_gunicorn
from ._importer import peek_target
from ._loader import load_config_app, require_app
from ._logging import configure_logging
from ._master import AppPlan
from ._mypyc import build_description
from ._server import run_cli
from ._tls import ssl_context
from ._version import __version__
from ._versions import http_versions

LOGGER = logging.getLogger("trioserve.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other trioserve error; --help has the details.
        raise ConfigError(f"{message} (see 'trioserve --help')")


def _default_text(info: SettingInfo) -> str:
    default = info.default
    if isinstance(default, tuple):
        default = " ".join(default)
    if default is None or default == "":
        return ""
    return f" (default: {default})"


def build_parser(*, add_help: bool = True) -> argparse.ArgumentParser:
    """The command-line parser, one argument per setting of the registry."""
    parser = _Parser(
        add_help=add_help,
        prog="trioserve",
        usage="trioserve [OPTIONS] APP",
        description="Serve an ASGI app or a raw trio stream handler. "
        "Every option can also be set as TRIOSERVE_<NAME> in the environment or in a "
        "config file.",
        argument_default=argparse.SUPPRESS,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for info in settings():
        setting = info.setting
        group = groups.get(setting.section)
        if group is None:
            group = groups[setting.section] = parser.add_argument_group(setting.section)
        # argparse %-formats help; the access log format is full of %(x)s atoms.
        help_text = (setting.help + _default_text(info)).replace("%", "%%")
        metavar = setting.metavar
        if metavar is None and setting.kind.choices:
            metavar = "{" + ",".join(setting.kind.choices) + "}"
        if setting.kind.cli == "none":
            continue  # hooks: set in code or a config file, not on the command line
        if not setting.flags:
            group.add_argument(info.name, nargs="?", metavar=setting.metavar, help=help_text)
        elif setting.kind.cli == "flag":
            group.add_argument(
                *setting.flags,
                dest=info.name,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        elif setting.kind.cli == "append":
            group.add_argument(
                *setting.flags,
                dest=info.name,
                action="append",
                metavar=setting.metavar,
                help=help_text,
            )
        else:
            group.add_argument(*setting.flags, dest=info.name, metavar=metavar, help=help_text)
    _add_gunicorn_flags(parser)
    actions = parser.add_argument_group("Actions")
    actions.add_argument(
        "--print-config",
        action="store_true",
        default=False,
        help="Print every resolved setting and where its value came from, then exit.",
    )
    actions.add_argument(
        "--check-config",
        action="store_true",
        default=False,
        help="Load the configuration and the app, then exit 0, or 1 with the reason.",
    )
    # "(compiled with mypyc)" after the version for the optional compiled build.
    build = build_description()
    version = f"trioserve {__version__}" + (f" ({build})" if build else "")
    actions.add_argument("--version", action="version", version=version)
    return parser


def _add_gunicorn_flags(parser: argparse.ArgumentParser) -> None:
    # gunicorn's flags that trioserve does not spell the same: taken (with their value, so
    # that "-k X APP" never takes X for the app), then read by cli_layer. Not in --help:
    # docs/settings.md lists them.
    for row in GUNICORN_NAMES:
        if not row.flags:
            continue
        if row.takes_value:
            parser.add_argument(
                *row.flags, dest=cli_dest(row), action="append", help=argparse.SUPPRESS
            )
        else:
            parser.add_argument(
                *row.flags, dest=cli_dest(row), action="store_true", help=argparse.SUPPRESS
            )


def cli_layer(namespace: argparse.Namespace) -> Layer:
    """The settings given on the command line, as a layer of text values.

    gunicorn's flags are read as their trioserve setting, or refused or ignored as
    :data:`~trioserve._gunicorn.GUNICORN_NAMES` says.
    """
    infos = {info.name: info for info in settings()}
    values: dict[str, Any] = {}
    for name in infos:
        if not hasattr(namespace, name):
            continue
        value = getattr(namespace, name)
        if isinstance(value, bool):
            value = str(value).lower()
        values[name] = value
    where = {name: info.flag for name, info in infos.items()}
    for name, value in values.items():
        row = GUNICORN_BY_NAME.get(name)
        if row is not None and row.convert is not None:
            # Our flag, given gunicorn's form of its value: --cert-reqs 2.
            values[name] = row.convert(value)
    problems, ignored = _read_gunicorn_flags(namespace, values, where)
    warnings: tuple[str, ...] = ()
    if ignored:
        warnings = ("gunicorn flags trioserve has no use for are ignored: " + "; ".join(ignored),)
    return Layer(
        "command line",
        values,
        text=True,
        where=lambda name: where[name],
        warnings=warnings,
        problems=tuple(problems),
    )


def _read_gunicorn_flags(
    namespace: argparse.Namespace, values: dict[str, Any], where: dict[str, str]
) -> tuple[list[str], list[str]]:
    """Add gunicorn's flags to ``values`` (and their spelling to ``where``); returns the
    problems and the ignored flags."""
    problems: list[str] = []
    ignored: list[str] = []
    for row in GUNICORN_NAMES:
        if not hasattr(namespace, cli_dest(row)):
            continue
        given = getattr(namespace, cli_dest(row))
        flags = "/".join(row.flags)
        reading = read_gunicorn(row, given[-1] if isinstance(given, list) else str(given).lower())
        if reading.problem is not None:
            problems.append(f"{flags}: {reading.problem}")
        elif reading.ignored:
            ignored.append(f"{flags} ({row.note})")
        elif reading.setting is not None:
            if reading.setting in values:
                problems.append(f"{flags}: {where[reading.setting]} is given too; keep one")
                continue
            values[reading.setting] = reading.value
            where[reading.setting] = flags
    return problems, ignored


def _print_error(exc: BaseException, *, debug: bool = False) -> None:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    # A ConfigError lists every problem found, one per line: each gets its own prefix.
    for line in str(exc).splitlines() or [""]:
        print(f"trioserve: error: {line}", file=sys.stderr)


def _check(loaded: LoadedConfig) -> int:
    config = loaded.config
    try:
        # Everything that can be checked without binding: TLS files, log format, HTTP/2
        # without h2, the app.
        ssl_context(config)
        http_versions(config)
        access_log_for(config)
        app = trio.run(load_config_app, config)
    except TrioserveError as exc:
        _print_error(exc, debug=config.log_level == "debug")
        return EXIT_FAILURE
    print(f"trioserve: configuration OK; {app.target} loads as interface {app.interface!r}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Exit codes: 0 success, 1 other failure, 2 usage or configuration error, 3 the app
    failed while booting (lifespan startup, a worker boot hook), 4 the app could not be
    loaded.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["ctl"]:
        return ctl_main(args[1:])
    debug = False
    try:
        # First without --help: a MultiApp target adds its prefixed flags to the help.
        namespace, unknown = build_parser(add_help=False).parse_known_args(args)
        loaded = load_config(cli=cli_layer(namespace))
    except ConfigError as exc:
        _print_error(exc)
        return EXIT_USAGE
    config = loaded.config
    debug = config.log_level == "debug"
    composite = None
    if config.app is not None and not namespace.print_config:
        try:
            composite = as_composite(peek_target(config.app, config.app_dir))
            parser = build_parser()
            if isinstance(composite, MultiApp):
                add_prefixed_arguments(parser, list(prefixes_of(composite)))
                namespace = parser.parse_args(args)
            elif unknown:
                parser.parse_args(args)  # reports the unknown arguments, or prints --help
        except TrioserveError as exc:
            _print_error(exc, debug=debug)
            # --check-config reports every problem it finds with its own status, 1.
            return EXIT_FAILURE if namespace.check_config else exc.exit_code
    elif unknown:
        try:
            build_parser().parse_args(args)
        except ConfigError as exc:
            print(f"trioserve: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if namespace.print_config:
        sys.stdout.write(render_config(loaded))
        return EXIT_OK
    if config.daemon and config.umask != "inherit" and not namespace.check_config:
        # Before any file is opened (the log files just below): they follow it too.
        os.umask(int(config.umask, 8))
    try:
        configure_logging(config)
    except ConfigError as exc:
        print(f"trioserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in loaded.warnings:
        CONFIG_LOGGER.warning("%s", warning)
    if namespace.check_config:
        return _check(loaded)
    try:
        require_app(config)  # at once: before daemonizing, binding or booting a worker
    except ConfigError as exc:
        print(f"trioserve: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    cwd = os.getcwd()

    def plans(*, warn: bool = True) -> list[AppPlan]:
        # Also SIGHUP's: every source again (the config file is re-read), same arguments,
        # relative paths still meaning what they meant where trioserve was started. A
        # re-read warns again about what the file holds that is not a setting (``warn``;
        # the first read's warnings were logged above).
        resolved: list[tuple[str | None, Config]]
        warnings: tuple[str, ...] = ()
        if composite is None:
            base = load_config(cli=cli_layer(namespace), cwd=cwd)
            resolved, warnings = [(None, base.config)], base.warnings
        else:
            if warn:  # the file's warnings; each application's Config is resolved below
                warnings = load_config(cli=cli_layer(namespace), cwd=cwd).warnings
            resolved = resolve_plans(composite, cli=cli_layer(namespace), namespace=namespace)
        if warn:
            for warning in warnings:
                CONFIG_LOGGER.warning("%s", warning)
        return [
            AppPlan(prefix, absolute_paths(app_config, cwd) if moves else app_config)
            for prefix, app_config in resolved
        ]

    moves = bool(config.daemon or config.chdir)
    readiness: Readiness | None = None
    pidfile: PidFile | None = None
    served = False
    stopped_by: str | None = None
    status = EXIT_OK
    error: BaseException | None = None

    def ready() -> None:
        nonlocal served
        served = True
        if readiness is not None:
            readiness.report(EXIT_OK)

    try:
        first = plans(warn=False)
        server = first[0].config
        if server.daemon:
            readiness = daemonize(
                chdir=server.chdir, umask=server.umask, error_log=server.error_log
            )
        elif server.chdir is not None:
            _chdir(server.chdir)
        if server.pid is not None:
            pidfile = PidFile.acquire(server.pid)
        stopped_by = run_cli(
            server,
            argv=args,
            reload_plans=plans,
            plans=first if composite is not None else None,
            on_ready=ready,
            pidfile=pidfile,
        )
    except TrioserveError as exc:
        if readiness is not None:
            readiness.report(exc.exit_code, str(exc))
        status, error = exc.exit_code, exc
    except KeyboardInterrupt:
        stopped_by = "KeyboardInterrupt"
    except Exception as exc:
        if readiness is not None:
            readiness.report(EXIT_FAILURE, f"{type(exc).__name__}: {exc}")
        status, error = EXIT_FAILURE, exc
    finally:
        if pidfile is not None:
            pidfile.release()
        if readiness is not None:
            readiness.report(EXIT_OK)  # stopped before it was ready: nothing failed
    if served:
        # The last line of a server that ran (gunicorn's "Shutting down: Master"): its
        # workers have exited and its pid file is gone. One that failed to start says
        # why in its one error line instead.
        why = stopped_by if error is None else f"{type(error).__name__}: {error}"
        LOGGER.info(
            "%s stopped: exit status %d%s",
            "master" if server.workers > 0 or composite is not None else "server",
            status,
            f" ({_one_line(why)})" if why else "",
        )
    if error is not None:
        _print_error(error, debug=debug or not isinstance(error, TrioserveError))
    return status


def _one_line(text: str) -> str:
    return " / ".join(text.splitlines())


def _chdir(path: str) -> None:
    try:
        os.chdir(path)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"--chdir: cannot change to {path!r}: {reason}") from None

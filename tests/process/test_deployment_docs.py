"""docs/deployment.md stays true: its unit files, manifest and command lines go through
trioserve's own parser, and its systemd units and daemon recipe are run for real.

Blocks meant to be copied carry a title, ```` ```ini title="/etc/systemd/system/myapp.service" ````;
the tests find them by the title's last path component.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import config_from_argv
from tests.process.test_cli import ROOT, TIMEOUT, TRIOSERVE, Server, environment, run_cli
from tests.process.test_master import alive, wait_until
from tests.process.test_service import daemon
from trioserve import _statsd
from trioserve._apps import add_prefixed_arguments, as_composite, prefixes_of
from trioserve._cli import build_parser
from trioserve._config import Config
from trioserve._ctl import ACTIONS
from trioserve._ctl import _parser as ctl_parser
from trioserve._importer import peek_target
from trioserve._logging import JsonFormatter
from trioserve._pipeline import stop_budget

GUIDE = ROOT / "docs" / "deployment.md"
# Where the guide installs trioserve, and the apps that stand in for the guide's here.
INSTALLED = "/srv/app/venv/bin/trioserve"
HELLO = "examples.hello:app"
SITE = "examples.multi:site"

_FENCE = re.compile(r"^```(?P<lang>\w*)(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)
_TITLE = re.compile(r'title="([^"]+)"')
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_:.]*$")  # FILE, ACTION, HOST:PORT in prose


# -- reading the guide ---------------------------------------------------------------------


def _guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def _blocks() -> list[tuple[str, str | None, str]]:
    """Every fenced block: (language, title's last path component or None, body)."""
    found = []
    for match in _FENCE.finditer(_guide()):
        title = _TITLE.search(match["info"])
        name = title[1].rsplit("/", 1)[-1] if title else None
        found.append((match["lang"], name, match["body"]))
    return found


def titled(name: str, lang: str | None = None) -> str:
    """The body of the one block titled ``.../name`` (in ``lang``, if given)."""
    bodies = [body for kind, title, body in _blocks() if title == name and lang in (None, kind)]
    assert len(bodies) == 1, f"expected one block titled {name!r} in {GUIDE.name}"
    return bodies[0]


def _logical_lines(text: str) -> Iterator[str]:
    """Lines with backslash continuations joined, as systemd and sh read them."""
    pending = ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        yield pending + raw
        pending = ""
    assert not pending, "a continuation at the end of a block"


Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """A systemd unit file: section -> key -> values in order."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for line in _logical_lines(text):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"not KEY=value in a section: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def value(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, got {values}"
    return values[0]


_SPAN_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    """A systemd time span (``90``, ``1min 30s``) in seconds."""
    parts = re.findall(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), text
    return sum(float(number) * _SPAN_UNITS[unit] for number, unit in parts)


def trioserve_args(tokens: list[str]) -> list[str] | None:
    """The arguments given to ``trioserve`` by a command (``sudo -u U``, ``VAR=x`` and
    ``ExecStart=`` prefixes allowed), or None when the command is something else."""
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "sudo":
            index += 3 if tokens[index + 1 : index + 2] == ["-u"] else 1
        elif token in ("exec", "env"):
            index += 1
        elif "=" in token and not token.startswith(("-", "/")):
            executable = token.partition("=")[2]  # ExecStart=/path/trioserve
            if os.path.basename(executable) == "trioserve":
                return tokens[index + 1 :]
            index += 1
        else:
            break
    if index < len(tokens) and os.path.basename(tokens[index]) == "trioserve":
        return tokens[index + 1 :]
    return None


def commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ; and |)."""
    tokens = shlex.split(line, comments=True)
    command: list[str] = []
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            yield command
            command = []
        else:
            command.append(token)
    yield command


def known_flags() -> set[str]:
    """Every flag of ``trioserve``, ``trioserve ctl`` and the example MultiApp's prefixes."""
    parser = build_parser()
    add_prefixed_arguments(parser, list(_site_prefixes()))
    flags = set(parser._option_string_actions)
    return flags | set(ctl_parser()._option_string_actions)


def _site_prefixes() -> list[str]:
    composite = as_composite(peek_target(SITE, str(ROOT)))
    assert composite is not None
    return list(prefixes_of(composite))


def check_command(args: list[str], *, app: str = HELLO) -> Config | None:
    """Parse ``trioserve *args`` as the command line would, the app replaced by ``app``;
    returns the Config (None for ``ctl`` and ``--version``). A bad flag fails the test."""
    if args[:1] == ["ctl"]:
        if len(args) > 1:  # `trioserve ctl` alone only names the command
            try:
                ctl_parser().parse_args(args[1:])
            except SystemExit:
                pytest.fail(f"not a valid ctl command: trioserve {shlex.join(args)}")
        return None
    if "--version" in args:
        assert args == ["--version"], args
        return None
    return config_from_argv(with_app(args, app))


def with_app(args: list[str], app: str) -> list[str]:
    """``args`` with its APP argument (if any) replaced by ``app``."""
    namespace, _ = build_parser(add_help=False).parse_known_args(args)
    target = getattr(namespace, "app", None)
    if target is None:
        return args
    index = args.index(target)
    return [*args[:index], app, *args[index + 1 :]]


def service_command(unit: Unit) -> list[str]:
    """ExecStart's arguments, after the executable."""
    tokens = shlex.split(value(unit, "Service", "ExecStart"))
    assert tokens[0] == INSTALLED, f"ExecStart runs {tokens[0]!r}, not what the guide installs"
    return tokens[1:]


def _named_values(text: str) -> dict[str, Any]:
    return dict(re.findall(r"^\s*([\w-]+)\s*=\s*(.*?)\s*$", text, re.M))


# -- what the guide says, checked against the code -------------------------------------


def test_the_guide_has_every_titled_block() -> None:
    """The blocks the other tests check are all there, each once."""
    for name, lang in [
        ("myapp.service", "ini"),
        ("myapp.socket", "ini"),
        ("site.service", "ini"),
        ("site-web.socket", "ini"),
        ("site-echo.socket", "ini"),
        ("myapp", "nginx"),  # /etc/nginx/sites-available/myapp
        ("myapp", "text"),  # /etc/logrotate.d/myapp
        ("deployment.yaml", "yaml"),
        ("error.log", "text"),
    ]:
        assert titled(name, lang)


def test_every_trioserve_command_in_the_guide_parses() -> None:
    """Each ``trioserve ...`` line in a block, ExecStart included, has real flags and
    values: a typo'd flag or a bad value fails here."""
    checked = 0
    for lang, _, body in _blocks():
        if lang in ("yaml", "json"):
            continue  # the manifest has its own test
        for line in _logical_lines(body):
            for command in commands(line):
                args = trioserve_args(command)
                if args is not None:
                    check_command(args)
                    checked += 1
    assert checked >= 10, checked


def test_every_flag_and_inline_command_in_the_prose_exists() -> None:
    """Inline `--flag` spans name real flags; inline `trioserve ...` commands parse."""
    prose = _FENCE.sub("", _guide())
    flags = known_flags()
    for span in re.findall(r"`([^`\n]+)`", prose):
        if span.startswith("-"):
            flag = span.split()[0].partition("=")[0]
            assert flag in flags, f"`{span}`: no such trioserve flag"
            continue
        try:
            tokens = shlex.split(span)
        except ValueError:
            continue
        for command in commands(shlex.join(tokens)):
            args = trioserve_args(command)
            if args is None:
                continue
            if args[:1] == ["ctl"]:
                # Prose may name an action without its --pid: `trioserve ctl reopen-logs`.
                assert args[1:2] in ([], ["ACTION"], *([action] for action in ACTIONS)), span
                assert {a.partition("=")[0] for a in args if a.startswith("-")} <= flags, span
            elif any(_PLACEHOLDER.match(arg) for arg in args):
                # A template such as `trioserve APP --bind HOST:PORT`: its flags must exist.
                assert {a.partition("=")[0] for a in args if a.startswith("-")} <= flags, span
            else:
                check_command(args)


def _check_service(unit: Unit) -> Config:
    service = unit["Service"]
    assert value(unit, "Service", "Type") == "notify"
    assert value(unit, "Service", "NotifyAccess") == "main"
    assert value(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert value(unit, "Service", "KillSignal") == "SIGTERM"
    # TERM to the master only; the guide recommends it (control-group works, see
    # test_sigterm_to_the_whole_process_group_still_drains).
    assert value(unit, "Service", "KillMode") == "mixed"
    assert value(unit, "Service", "Restart") == "on-failure"
    assert seconds(value(unit, "Service", "WatchdogSec")) >= 10
    assert "PIDFile" not in service
    args = service_command(unit)
    config = check_command(args)
    assert config is not None
    assert not config.daemon, "under systemd trioserve runs in the foreground"
    assert config.user is None and config.group is None, "use User=/Group= under systemd"
    # systemd must not kill the service in the middle of the drain it asked for.
    assert seconds(value(unit, "Service", "TimeoutStopSec")) > stop_budget(config)
    if "TimeoutStartSec" in service:
        assert seconds(value(unit, "Service", "TimeoutStartSec")) > config.lifespan_startup_timeout
    return config


def test_the_service_unit_has_what_notify_reload_and_stop_need() -> None:
    """Type=notify, NotifyAccess=main, HUP reload, TERM to the master only, and a stop
    timeout longer than the master's own drain budget."""
    unit = parse_unit(titled("myapp.service"))
    _check_service(unit)
    # Socket activated: the sockets come from myapp.socket, so no --bind.
    assert "myapp.socket" in value(unit, "Unit", "Requires").split()
    assert "myapp.socket" in value(unit, "Unit", "After").split()
    namespace, _ = build_parser().parse_known_args(service_command(unit))
    assert not hasattr(namespace, "bind")
    socket_unit = parse_unit(titled("myapp.socket"))
    assert value(socket_unit, "Socket", "ListenStream") == "127.0.0.1:8000"
    assert value(socket_unit, "Install", "WantedBy") == "sockets.target"


def test_the_multiapp_units_name_their_sockets_after_the_prefixes() -> None:
    """site.service takes both socket units, each named after one application's prefix."""
    unit = parse_unit(titled("site.service"))
    _check_service(unit)
    sockets = value(unit, "Service", "Sockets").split()
    assert sockets == ["site-web.socket", "site-echo.socket"]
    assert value(unit, "Unit", "Requires").split() == sockets
    names = [value(parse_unit(titled(name)), "Socket", "FileDescriptorName") for name in sockets]
    assert sorted(names) == sorted(_site_prefixes())
    for name in sockets:
        assert value(parse_unit(titled(name)), "Socket", "Service") == "site.service"
    assert not hasattr(build_parser().parse_known_args(service_command(unit))[0], "bind")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd itself finds no unknown key, section or bad value in the unit files."""
    names = ["myapp.service", "myapp.socket", "site.service", "site-web.socket", "site-echo.socket"]
    for name in names:
        # verify wants ExecStart's program to exist.
        (tmp_path / name).write_text(titled(name).replace(INSTALLED, str(TRIOSERVE)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if any(word in line for word in ("Unknown", "Failed to parse", "Invalid", "ignoring"))
    ]
    assert (result.returncode, problems) == (0, []), result.stderr


def _manifest_by_regex(text: str) -> dict[str, Any]:
    def one(pattern: str) -> str:
        found = re.findall(pattern, text, re.M)
        assert len(found) == 1, (pattern, found)
        return str(found[0])

    block = re.search(r"^(\s*)command:\n((?:\1\s+- .*\n)+)", text, re.M)
    assert block is not None, "no block list under command:"
    return {
        "command": [line.split("- ", 1)[1].strip() for line in block[2].splitlines()],
        "grace": int(one(r"^\s*terminationGracePeriodSeconds:\s*(\d+)\s*$")),
        "port": int(one(r"^\s*containerPort:\s*(\d+)\s*$")),
        "port_name": one(r"^\s*- name:\s*(\S+)\n\s*containerPort:"),
        "probe": one(r"^\s*readinessProbe:\n\s*httpGet:\n\s*path:\s*(\S+)\s*$"),
        "probe_port": one(r"^\s*readinessProbe:\n\s*httpGet:\n.*\n\s*port:\s*(\S+)\s*$"),
        "pre_stop": json.loads(one(r"^\s*preStop:\n\s*exec:\n\s*command:\s*(\[.*\])\s*$")),
        "target_port": one(r"^\s*targetPort:\s*(\S+)\s*$"),
    }


def _manifest_by_yaml(text: str) -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped, unused-ignore]

    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(text)}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [port] = container["ports"]
    probe = container["readinessProbe"]["httpGet"]
    [service_port] = documents["Service"]["spec"]["ports"]
    return {
        "command": container["command"],
        "grace": pod["terminationGracePeriodSeconds"],
        "port": port["containerPort"],
        "port_name": port["name"],
        "probe": probe["path"],
        "probe_port": probe["port"],
        "pre_stop": container["lifecycle"]["preStop"]["exec"]["command"],
        "target_port": service_port["targetPort"],
    }


def test_the_kubernetes_manifest_drains_within_its_grace_period() -> None:
    """The container command parses; it binds the container port on every address; the
    grace period covers the preStop sleep and the whole drain."""
    text = titled("deployment.yaml")
    facts = _manifest_by_regex(text)
    with contextlib.suppress(ImportError):  # PyYAML is optional: a cross-check when there
        assert _manifest_by_yaml(text) == facts
    command = facts["command"]
    assert command[0] == "trioserve"
    config = check_command(command[1:])
    assert config is not None and not config.daemon and config.pid is None
    assert list(config.bind) == [f"0.0.0.0:{facts['port']}"]
    assert config.workers >= 1
    assert facts["probe"].startswith("/")
    assert facts["probe_port"] == facts["target_port"] == facts["port_name"]
    assert facts["pre_stop"][0] == "sleep"
    sleep = float(facts["pre_stop"][1])
    assert facts["grace"] > sleep + stop_budget(config)


def test_nginx_talks_to_the_socket_the_units_and_the_daemon_listen_on() -> None:
    """The upstream is the socket unit's address; nginx closes idle upstream connections
    before trioserve does; the headers it sets are the ones --proxy-headers reads."""
    nginx = titled("myapp", "nginx")
    listen = value(parse_unit(titled("myapp.socket")), "Socket", "ListenStream")
    assert re.search(rf"^\s*server {re.escape(listen)};$", nginx, re.M)
    idle = re.search(r"^\s*keepalive_timeout (\d+)s;$", nginx, re.M)
    assert idle is not None and int(idle[1]) < Config().keep_alive
    for header in ("Host", "X-Forwarded-For", "X-Forwarded-Proto", "Upgrade", "Connection"):
        assert re.search(rf"^\s*proxy_set_header {header} \S+;$", nginx, re.M), header
    assert re.search(r"^\s*proxy_http_version 1\.1;$", nginx, re.M)
    config = check_command(service_command(parse_unit(titled("myapp.service"))))
    assert config is not None and config.proxy_headers
    assert "127.0.0.1" in config.forwarded_allow_ips  # nginx on the same machine


def _daemon_command() -> list[str]:
    found = []
    for lang, _, body in _blocks():
        for line in _logical_lines(body):
            for command in commands(line) if lang == "sh" else ():
                args = trioserve_args(command)
                if args is not None and "-D" in args:
                    found.append(args)
    assert len(found) == 1, found
    return found[0]


def _ctl_commands() -> dict[str, list[str]]:
    found = {}
    for lang, _, body in _blocks():
        if lang not in ("sh", "text"):
            continue
        for line in _logical_lines(body):
            for command in commands(line):
                args = trioserve_args(command)
                if args is not None and args[:1] == ["ctl"]:
                    found[args[1]] = args
    return found


def test_logrotate_reopens_the_daemons_logs_and_creates_files_for_its_user() -> None:
    """postrotate signals the daemon of the guide (same pid file); the new files belong to
    the workers' user, who reopens them."""
    config = check_command(_daemon_command())
    assert config is not None and config.daemon and config.pid and config.user
    assert config.access_log is not None
    rotate = titled("myapp", "text")
    create = re.search(r"^\s*create (\d+) (\S+) (\S+)$", rotate, re.M)
    assert create is not None and (create[2], create[3]) == (config.user, config.group)
    logs = re.match(r"(\S+)/\*\.log \{", rotate)
    assert logs is not None
    assert {os.path.dirname(p) for p in (config.error_log, config.access_log)} == {logs[1]}
    reopen = _ctl_commands()["reopen-logs"]
    assert reopen[reopen.index("--pid") + 1] == config.pid
    assert re.search(
        r"^\s*postrotate\n\s*/srv/app/venv/bin/trioserve ctl reopen-logs", rotate, re.M
    )


def test_the_metric_names_are_trioserves() -> None:
    """The metrics table lists exactly the names trioserve sends."""
    names = set(re.findall(r"`(gunicorn\.[\w.<>]+)`", _guide()))
    sent = {
        _statsd.REQUESTS,
        _statsd.REQUEST_STATUS.format("<code>"),
        _statsd.REQUEST_DURATION,
        _statsd.WORKERS,
        _statsd.LOG_CRITICAL,
        _statsd.LOG_ERROR,
        _statsd.LOG_WARNING,
        _statsd.LOG_EXCEPTION,
    }
    examples = {name for name in names if re.fullmatch(r"gunicorn\.request\.status\.\d+", name)}
    assert names - examples == sent


def test_the_json_log_example_has_the_fields_trioserve_writes() -> None:
    """The example lines parse as JSON and have the JSON formatter's fields."""
    record = logging.LogRecord("trioserve.server", logging.INFO, __file__, 1, "hi", None, None)
    fields = list(json.loads(JsonFormatter("worker 0").format(record)))
    lines = titled("error.log").splitlines()
    assert len(lines) == 2
    master, worker = (json.loads(line) for line in lines)
    assert list(worker) == fields
    assert list(master) == [field for field in fields if field != "worker"]


# -- running the units as systemd runs them --------------------------------------------

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid

# systemd starts the service with its sockets at fds 3, 4, ... and LISTEN_PID set to the
# service's own pid: this wrapper moves them there, then execs trioserve (same pid).
_WRAPPER = """\
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
pid = str(os.getpid())
if fds:
    os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=pid, LISTEN_FDNAMES=sys.argv[2])
if "WATCHDOG_USEC" in os.environ:
    os.environ["WATCHDOG_PID"] = pid
os.execv(sys.argv[3], sys.argv[3:])
"""


class Notifications:
    """systemd's end of NOTIFY_SOCKET: the datagrams, and the pid of each sender (which
    systemd checks against NotifyAccess=main)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.seen: list[tuple[int, list[str]]] = []

    async def until(self, field: str) -> list[str]:
        """The fields of the next datagram that has ``field`` (``READY=1``)."""
        with trio.fail_after(TIMEOUT):
            while True:
                data, ancillary, _, _ = await self.sock.recvmsg(
                    65536, socket.CMSG_SPACE(_UCRED.size)
                )
                sender = next(
                    _UCRED.unpack(cdata[: _UCRED.size])[0]
                    for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                )
                fields = data.decode().split("\n")
                self.seen.append((sender, fields))
                if field in fields:
                    return fields

    def senders(self) -> set[int]:
        return {sender for sender, _ in self.seen}

    def fields(self) -> list[str]:
        return [field for _, fields in self.seen for field in fields]


@contextlib.asynccontextmanager
async def notify_socket(tmp_path: Path) -> AsyncIterator[tuple[Notifications, str]]:
    path = str(tmp_path / "notify")
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        yield Notifications(sock), path


def listening_socket() -> socket.socket:
    """What a socket unit's ListenStream=127.0.0.1:PORT makes (on a free port here)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@contextlib.asynccontextmanager
async def run_service(
    unit: Unit,
    app: str,
    sockets: list[tuple[socket.socket, str]],
    env: dict[str, str],
) -> AsyncIterator[Server]:
    """Start ExecStart as systemd would (sockets at fd 3..., ``env`` added); always end it."""
    args = with_app(service_command(unit), app)
    extra = dict(env)
    for assignment in unit["Service"].get("Environment", []):
        for item in shlex.split(assignment):
            name, _, text = item.partition("=")
            extra[name] = text
    fds = [sock.fileno() for sock, _ in sockets]
    names = ":".join(name for _, name in sockets)
    command = [sys.executable, "-c", _WRAPPER, ",".join(map(str, fds)), names, str(TRIOSERVE)]
    process = await trio.lowlevel.open_process(
        [*command, *args],
        cwd=ROOT,  # WorkingDirectory=/srv/app: where the app is imported from
        env=environment(**extra),
        pass_fds=fds,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield Server(process)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()
            if process.stderr is not None:
                await process.stderr.aclose()


async def _get(port: int, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def test_the_service_runs_reloads_and_stops_as_systemd_drives_it(tmp_path: Path) -> None:
    """myapp.service with myapp.socket: READY=1 from the main pid once it serves on the
    passed socket, watchdog pings, ExecReload gives RELOADING=1 then READY=1, KillSignal
    gives STOPPING=1 and exit 0 (within TimeoutStopSec)."""
    unit = parse_unit(titled("myapp.service"))
    config = check_command(service_command(unit))
    assert config is not None
    socket_name = "myapp.socket"  # no FileDescriptorName=: systemd uses the unit's name
    assert "FileDescriptorName" not in parse_unit(titled(socket_name))["Socket"]
    with listening_socket() as listening:
        port = listening.getsockname()[1]
        async with notify_socket(tmp_path) as (notes, path):
            # WatchdogSec=30 would mean a ping every 15 s: a shorter one for the test.
            env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
            async with run_service(unit, HELLO, [(listening, socket_name)], env) as server:
                mainpid = server.process.pid
                ready = await notes.until("READY=1")
                assert f"STATUS={config.workers} worker(s) serving" in ready
                assert (await _get(port)).text == "Hello, world!\n"
                await notes.until("WATCHDOG=1")

                reload = shlex.split(value(unit, "Service", "ExecReload"))
                reload = [arg.replace("$MAINPID", str(mainpid)) for arg in reload]
                with trio.fail_after(TIMEOUT):
                    await trio.run_process(reload)
                await notes.until("RELOADING=1")
                await notes.until("READY=1")
                assert (await _get(port)).text == "Hello, world!\n"

                # KillMode=mixed: KillSignal to the main process only.
                server.process.send_signal(signal.Signals[value(unit, "Service", "KillSignal")])
                await notes.until("STOPPING=1")
                stop_timeout = seconds(value(unit, "Service", "TimeoutStopSec"))
                with trio.fail_after(min(stop_timeout, TIMEOUT)):
                    assert await server.wait_exit() == 0
    assert notes.senders() == {mainpid}, "NotifyAccess=main: only the master notifies"
    assert not any(field.startswith("MAINPID=") for field in notes.fields())
    assert any("socket activation: 1 socket(s) from systemd" in line for line in server.lines)
    assert not [line for line in server.lines if "[ERROR]" in line or "Traceback" in line]


async def test_the_multiapp_service_gives_each_socket_to_its_application(
    tmp_path: Path,
) -> None:
    """site.service: the socket named web serves HTTP, the one named echo echoes."""
    unit = parse_unit(titled("site.service"))
    units = value(unit, "Service", "Sockets").split()
    names = [value(parse_unit(titled(name)), "Socket", "FileDescriptorName") for name in units]
    with contextlib.ExitStack() as stack:
        sockets = [(stack.enter_context(listening_socket()), name) for name in names]
        port = {name: sock.getsockname()[1] for sock, name in sockets}
        async with (
            notify_socket(tmp_path) as (notes, path),
            run_service(unit, SITE, sockets, {"NOTIFY_SOCKET": path}) as server,
        ):
            await notes.until("READY=1")
            assert (await _get(port["web"])).text == "Hello, world!\n"
            with trio.fail_after(TIMEOUT):
                stream = await trio.open_tcp_stream("127.0.0.1", port["echo"])
                async with stream:
                    await stream.send_all(b"ping\n")
                    assert await stream.receive_some() == b"ping\n"
            server.process.send_signal(signal.SIGTERM)
            await notes.until("STOPPING=1")
            assert await server.wait_exit() == 0
    assert notes.senders() == {server.process.pid}


# -- the daemon recipe -------------------------------------------------------------------


def _relocate(args: list[str], tmp_path: Path) -> list[str]:
    """The guide's paths moved to where this test may write; /srv/app is this checkout."""
    places = {"/run/myapp": tmp_path / "run", "/var/log/myapp": tmp_path / "log"}
    moved = []
    for arg in args:
        for prefix, place in places.items():
            if arg.startswith(prefix + "/"):
                arg = str(place) + arg[len(prefix) :]
        moved.append(str(ROOT) if arg == "/srv/app" else arg)
    return moved


async def test_the_daemon_recipe_serves_rotates_its_logs_and_stops(tmp_path: Path) -> None:
    """The guide's -D command starts a daemon; after logrotate moved the logs, its
    postrotate command makes master and workers write new files; ctl status and stop work.
    (--user/--group are left out: they need root and an account.)"""
    args = _daemon_command()
    config = check_command(args)
    assert config is not None and config.error_log != "-" and config.access_log
    for flag in ("--user", "--group"):
        index = args.index(flag)
        args = args[:index] + args[index + 2 :]
    args = with_app(_relocate(args, tmp_path), HELLO)
    args[args.index("--bind") + 1] = "127.0.0.1:0"
    (tmp_path / "run").mkdir()
    (tmp_path / "log").mkdir()
    pid_file = Path(_relocate([config.pid or ""], tmp_path)[0])
    error_log = Path(_relocate([config.error_log], tmp_path)[0])
    access_log = Path(_relocate([config.access_log], tmp_path)[0])
    ctl = {action: _relocate(command, tmp_path) for action, command in _ctl_commands().items()}

    assert await run_cli(*args) == (0, "", "")
    pid = int(_text(pid_file))
    try:
        assert await run_cli(*ctl["status"]) == (0, f"trioserve: running as pid {pid}\n", "")
        port = _port_in(error_log)
        _rotate(error_log, access_log)
        status, out, _ = await run_cli(*ctl["reopen-logs"])
        assert (status, out) == (0, f"trioserve: sent SIGUSR1 to pid {pid}\n")

        reopened = "] SIGUSR1: log files reopened"
        await wait_until(
            lambda: _text(error_log).count(reopened) == config.workers, "every worker's new log"
        )
        assert (await _get(port)).status_code == 200
        await wait_until(lambda: "GET /" in _text(access_log), "the request in the new access log")
        status, out, _ = await run_cli(*ctl["stop"])
        assert (status, out) == (0, f"trioserve: stopped (pid {pid})\n")
        assert _text(pid_file) == ""
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _port_in(log: Path) -> int:
    return int(re.findall(r"listening on http://127\.0\.0\.1:(\d+)", _text(log))[0])


def _rotate(*logs: Path) -> None:
    """What logrotate does before postrotate: move each file away (FILE -> FILE.1)."""
    for log in logs:
        log.rename(log.with_name(log.name + ".1"))


# -- bugs the recipes run into -----------------------------------------------------------


async def test_a_log_file_that_cannot_be_reopened_does_not_stop_the_server(
    tmp_path: Path,
) -> None:
    """USR1 when --error-log cannot be opened any more: the error is logged, the old log
    kept, and the server goes on serving (as with an invalid configuration on HUP)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    args = ("examples.hello:app", "--graceful-timeout", "1", "--error-log", f"{logs}/error.log")
    async with daemon(tmp_path, *args) as (pid_file, _):
        _rotate(logs)  # the whole directory: the files stay open, their path is gone
        log = tmp_path / "logs.1" / "error.log"
        before = _text(log)
        port = _port_in(log)
        assert (await run_cli("ctl", "reopen-logs", "-p", str(pid_file)))[0] == 0
        # The failure is logged to the file still open: wait for it (or for the crash).
        await wait_until(lambda: _text(log) != before, "USR1 handled")
        assert "master is gone" not in _text(log)
        assert (await _get(port)).status_code == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to --user needs root")
async def test_workers_switched_to_user_can_write_the_log_files_the_master_created() -> None:
    """-D --user nobody with log files that do not exist yet starts and serves."""
    with _shared_directory() as place:
        pid_file = place / "app.pid"
        args = ["-D", "-p", str(pid_file), "-b", "127.0.0.1:0", "--graceful-timeout", "1"]
        args += ["--error-log", str(place / "error.log"), "--access-log", str(place / "access")]
        status, _, err = await run_cli(HELLO, *args, "--user", "nobody", "--group", "nogroup")
        if status == 0:
            assert (await run_cli("ctl", "stop", "-p", str(pid_file)))[0] == 0
        assert (status, err) == (0, "")


@contextlib.contextmanager
def _shared_directory() -> Iterator[Path]:
    """Not tmp_path: its parents are private to root, and the workers must reach the files."""
    place = Path(tempfile.mkdtemp(prefix="trioserve-user-"))
    try:
        place.chmod(0o755)
        yield place
    finally:
        shutil.rmtree(place, ignore_errors=True)

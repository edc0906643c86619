"""The HTTP/2 settings (gunicorn's names) and what a server serves with them
(trioserve._versions): ALPN, the cleartext routes, and the h2 package missing."""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import config_from_argv, hello_app
from trioserve import Config, ConfigError, serve
from trioserve._config import CONFIG_MODULE, ENV_PREFIX, load_config
from trioserve._versions import HTTPVersions, h2_installed, http_versions, max_header_list_size

INSTALL = "pip install 'trioserve[http2]'"
# What HTTP/2 settings serve once h2 is there (without it, see the without_h2 tests).
needs_h2 = pytest.mark.skipif(not h2_installed(), reason=f"HTTP/2 needs the http2 extra: {INSTALL}")
ROOT = Path(__file__).resolve().parents[2]


class _NoH2(importlib.abc.MetaPathFinder):
    """Refuses to import h2 and its submodules, as if it were not installed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if fullname == "h2" or fullname.startswith("h2."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@pytest.fixture
def without_h2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The h2 package as if not installed: its loaded modules forgotten, its import
    refused by the import machinery (restored after the test)."""
    for name in list(sys.modules):
        if name == "h2" or name.startswith("h2."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoH2(), *sys.meta_path])


@needs_h2
def test_defaults_serve_http2_by_every_route_but_the_upgrade() -> None:
    """By default (h2 installed): HTTP/2 by ALPN, h2 offered first, and by prior
    knowledge; Upgrade: h2c off; gunicorn's defaults for the numbers."""
    assert h2_installed()
    config = Config()
    assert config.http_protocols == ("h1", "h2")
    assert http_versions(config) == HTTPVersions(
        http2=True, prior_knowledge=True, upgrade=False, alpn=("h2", "http/1.1")
    )
    assert (
        config.http2_max_concurrent_streams,
        config.http2_initial_window_size,
        config.http2_max_frame_size,
    ) == (100, 65535, 16384)


@pytest.mark.parametrize(
    ("argv", "versions"),
    [
        (["--http-protocols", "h1"], HTTPVersions(http2=False)),
        (
            ["--http-protocols", "h2"],
            HTTPVersions(http2=True, prior_knowledge=True, alpn=("h2",)),
        ),
        (
            ["--http-protocols", "H2, h1"],
            HTTPVersions(http2=True, prior_knowledge=True, alpn=("h2", "http/1.1")),
        ),
        (
            ["--http2-cleartext", "upgrade"],
            HTTPVersions(http2=True, upgrade=True, alpn=("h2", "http/1.1")),
        ),
        (
            ["--http2-cleartext", "both"],
            HTTPVersions(http2=True, prior_knowledge=True, upgrade=True, alpn=("h2", "http/1.1")),
        ),
        (["--http2-cleartext", "off"], HTTPVersions(http2=True, alpn=("h2", "http/1.1"))),
    ],
    ids=["h1", "h2", "h2-h1", "upgrade", "both", "cleartext-off"],
)
@needs_h2
def test_settings_decide_the_routes(argv: list[str], versions: HTTPVersions) -> None:
    """--http-protocols and --http2-cleartext, from the command line, decide ALPN and
    the cleartext routes."""
    assert http_versions(config_from_argv(argv)) == versions


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--http-protocols", "h3"],
            "--http-protocols: expected 'h1', 'h2' or 'h1,h2', got 'h3'",
        ),
        (
            ["--http-protocols", "h1,h1"],
            "--http-protocols: expected 'h1', 'h2' or 'h1,h2', got 'h1,h1'; 'h1' is listed twice",
        ),
        (["--http-protocols", ","], "--http-protocols: expected 'h1', 'h2' or 'h1,h2', got ','"),
        (
            ["--http2-cleartext", "yes"],
            "--http2-cleartext: expected one of 'prior-knowledge', 'upgrade', 'both' or "
            "'off', got 'yes'",
        ),
        (
            ["--http2-max-frame-size", "16383"],
            "--http2-max-frame-size: expected an integer from 16384 to 16777215, got 16383",
        ),
        (
            ["--http2-max-frame-size", "16777216"],
            "--http2-max-frame-size: expected an integer from 16384 to 16777215, got 16777216",
        ),
        (
            ["--http2-max-concurrent-streams", "0"],
            "--http2-max-concurrent-streams: expected an integer from 1 to 2147483647, got 0",
        ),
        (
            ["--http2-initial-window-size", "2147483648"],
            "--http2-initial-window-size: expected an integer from 1 to 2147483647, got 2147483648",
        ),
        (
            ["--http2-max-header-list-size", "-1"],
            "--http2-max-header-list-size: expected an integer >= 0, got -1",
        ),
    ],
    ids=[
        "unknown-protocol",
        "twice",
        "empty",
        "cleartext",
        "frame-too-small",
        "frame-too-large",
        "no-streams",
        "window-too-large",
        "negative-header-list",
    ],
)
def test_bad_values_are_one_line_errors(argv: list[str], message: str) -> None:
    """A bad HTTP/2 setting is refused in one line naming the flag and the accepted form."""
    with pytest.raises(ConfigError) as error:
        config_from_argv(argv)
    assert str(error.value) == message


def test_values_from_code_and_files_are_checked_alike() -> None:
    """Python values (a list, a gunicorn-style string) pass the same checks."""
    assert Config(http_protocols=["h2", "h1"]).http_protocols == ("h1", "h2")
    assert Config(http_protocols="h2").http_protocols == ("h2",)
    with pytest.raises(ConfigError, match=r"^http_protocols: expected"):
        Config(http_protocols=["h1", "spdy"])
    with pytest.raises(ConfigError, match=r"^http2_max_frame_size: expected an integer from"):
        Config(http2_max_frame_size=True)


@pytest.fixture
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no TRIOSERVE_* variables, no config module left over."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name == "WEB_CONCURRENCY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, CONFIG_MODULE, None)
    return tmp_path


def test_gunicorn_config_carries_over(clean_cwd: Path) -> None:
    """A gunicorn.conf.py's HTTP/2 settings read as ours, http2_cleartext = True too,
    without warnings."""
    (clean_cwd / "gunicorn.conf.py").write_text(
        "http_protocols = 'h2,h1'\n"
        "http2_cleartext = True\n"
        "http2_max_concurrent_streams = 50\n"
        "http2_initial_window_size = 1048576\n"
        "http2_max_frame_size = 32768\n"
        "http2_max_header_list_size = 65536\n",
        encoding="utf-8",
    )
    loaded = load_config(environ={}, cli={"config": "gunicorn.conf.py"}, cwd=clean_cwd)
    config = loaded.config
    assert config.http_protocols == ("h1", "h2")
    assert config.http2_cleartext == "prior-knowledge"
    assert (
        config.http2_max_concurrent_streams,
        config.http2_initial_window_size,
        config.http2_max_frame_size,
        config.http2_max_header_list_size,
    ) == (50, 1048576, 32768, 65536)
    assert loaded.warnings == ()
    off = clean_cwd / "off.conf.py"
    off.write_text("http2_cleartext = False\n", encoding="utf-8")
    loaded = load_config(environ={}, cli={"config": str(off)}, cwd=clean_cwd)
    assert loaded.config.http2_cleartext == "off"


def test_header_list_limit_follows_the_head_limit_by_default() -> None:
    """0 (the default) means --limit-request-head, or what the line and field limits
    allow without it; a value of its own wins."""
    assert max_header_list_size(Config()) == 32768
    assert max_header_list_size(Config(limit_request_head=8000)) == 8000
    unbounded_head = Config(
        limit_request_head=0,
        limit_request_line=100,
        limit_request_fields=2,
        limit_request_field_size=50,
    )
    assert max_header_list_size(unbounded_head) == 100 + 2 + 2 * (50 + 2) + 2
    assert max_header_list_size(Config(http2_max_header_list_size=1000)) == 1000


def test_without_h2_the_default_is_http1_quietly(without_h2: None) -> None:
    """Without the h2 package, the default settings serve HTTP/1.1 only, no error; so do
    settings that ask for less HTTP/2."""
    assert not h2_installed()
    assert http_versions(Config()) == HTTPVersions(http2=False)
    assert http_versions(Config(http2_cleartext="off")) == HTTPVersions(http2=False)
    # An HTTP/2 number with HTTP/2 not asked for is not an ask.
    assert http_versions(Config(http_protocols="h1", http2_max_frame_size=20000)) == HTTPVersions(
        http2=False
    )


@pytest.mark.parametrize(
    ("settings", "ask"),
    [
        ({"http_protocols": "h2"}, "--http-protocols h2"),
        ({"http2_cleartext": "upgrade"}, "--http2-cleartext upgrade"),
        ({"http2_max_concurrent_streams": 10}, "--http2-max-concurrent-streams 10"),
        ({"http2_initial_window_size": 1 << 20}, "--http2-initial-window-size 1048576"),
        ({"http2_max_frame_size": 20000}, "--http2-max-frame-size 20000"),
        ({"http2_max_header_list_size": 9000}, "--http2-max-header-list-size 9000"),
    ],
)
def test_asking_for_http2_without_h2_says_how_to_install_it(
    without_h2: None, settings: dict[str, Any], ask: str
) -> None:
    """Asking for HTTP/2 explicitly without h2 is a one-line error naming the setting and
    the install command."""
    with pytest.raises(ConfigError) as error:
        http_versions(Config(**settings))
    assert str(error.value) == f"{ask}: HTTP/2 needs the h2 package; install it with {INSTALL}"


# The command line in a process of its own (it sets up logging for the process), with
# the same import blocker installed before trioserve is imported.
_CLI_WITHOUT_H2 = """
import importlib.abc, sys

class NoH2(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "h2" or fullname.startswith("h2."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, NoH2())
from trioserve._cli import main
sys.exit(main(sys.argv[1:]))
"""


CHECK_H2_ONLY = ("--check-config", "--http-protocols", "h2", "examples.hello:app")


def test_command_line_reports_missing_h2_in_one_line() -> None:
    """--check-config --http-protocols h2 without h2: one 'trioserve: error:' line, exit 1."""
    result = subprocess.run(
        [sys.executable, "-c", _CLI_WITHOUT_H2, *CHECK_H2_ONLY],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "trioserve: error: --http-protocols h2: HTTP/2 needs the h2 package; install it "
        f"with {INSTALL}"
    ]


async def test_serve_refuses_http2_without_h2_before_binding(without_h2: None, nursery) -> None:
    """serve() refuses the same configuration before anything starts."""
    config = Config(app=hello_app, bind=["127.0.0.1:0"], workers=0, http_protocols="h2")
    with pytest.raises(ConfigError, match=r"trioserve\[http2\]"):
        await nursery.start(serve, config)

"""Tests for trioserve._docs: the generated references docs/settings.md and docs/hooks.md."""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import pytest

from trioserve._cli import build_parser
from trioserve._config import CONFIG_MODULE, file_layer, resolve, settings
from trioserve._docs import (
    HOOKS_EXAMPLE,
    HOOKS_PATH,
    REFERENCE_PATH,
    main,
    render_hooks_reference,
    render_settings_reference,
)
from trioserve._gunicorn import GUNICORN_NAMES
from trioserve._hooks import HOOKS, ConnectionInfo, ResponseInfo, ServerInfo, WorkerInfo


def test_settings_reference_is_up_to_date() -> None:
    """docs/settings.md is exactly what the registry generates."""
    assert REFERENCE_PATH.is_file(), "run: python -m trioserve._docs --write"
    checked_in = REFERENCE_PATH.read_text(encoding="utf-8")
    assert checked_in == render_settings_reference(), (
        "docs/settings.md is stale; regenerate it with: python -m trioserve._docs --write"
    )


def test_every_setting_has_a_section() -> None:
    """Each setting gets a heading, its environment variable and its help text."""
    text = render_settings_reference()
    for info in settings():
        assert f"\n### {info.name}\n" in text
        if info.env_var:
            assert f"`{info.env_var}`" in text
        assert info.setting.help in text


def test_sections_follow_registry_order() -> None:
    """Section headings appear once each, in the order the registry first uses them, then
    gunicorn's names."""
    text = render_settings_reference()
    sections = list(dict.fromkeys(info.setting.section for info in settings()))
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == [*sections, "Coming from gunicorn"]


def test_gunicorn_names_are_listed() -> None:
    """Every row of the gunicorn table is in docs/settings.md, with its flags and what
    trioserve does with it."""
    text = render_settings_reference()
    for row in GUNICORN_NAMES:
        line = next(line for line in text.splitlines() if line.startswith(f"| `{row.name}` |"))
        for flag in row.flags:
            assert f"`{flag}`" in line, (row.name, flag)
        if row.setting is not None:
            assert f"[`{row.setting}`](#{row.setting})" in line
    assert (
        "| `worker_class` | `-k`, `--worker-class` | error: trioserve has one worker kind "
        "(trio); remove worker_class |"
    ) in text


def test_defaults_and_scopes_are_shown() -> None:
    """Defaults are shown repr-style (tuples as lists) and each scope is named."""
    text = render_settings_reference()
    assert "- Default: `['127.0.0.1:8000']`" in text
    assert "- Default: `5.0`" in text
    assert "- Scope: server-wide" in text
    assert "- Scope: per application" in text
    assert "- Command line: positional `APP`" in text
    assert "`keep-alive` works too" in text


def test_every_flag_is_in_help() -> None:
    """Every flag in the registry appears in the --help output."""
    help_text = build_parser().format_help()
    for info in settings():
        for flag in info.setting.flags:
            assert flag in help_text, flag
    assert "--no-factory" in help_text


def test_main_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --write the reference goes to stdout."""
    assert main([]) == 0
    assert capsys.readouterr().out == render_settings_reference()


def test_main_prints_the_hooks_reference(capsys: pytest.CaptureFixture[str]) -> None:
    """--hooks prints the hooks reference instead."""
    assert main(["--hooks"]) == 0
    assert capsys.readouterr().out == render_hooks_reference()


def test_main_write_writes_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--write writes docs/settings.md and docs/hooks.md."""
    settings_path, hooks_path = tmp_path / "settings.md", tmp_path / "hooks.md"
    monkeypatch.setattr("trioserve._docs.REFERENCE_PATH", settings_path)
    monkeypatch.setattr("trioserve._docs.HOOKS_PATH", hooks_path)
    assert main(["--write"]) == 0
    assert settings_path.read_text(encoding="utf-8") == render_settings_reference()
    assert hooks_path.read_text(encoding="utf-8") == render_hooks_reference()
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {settings_path}",
        f"wrote {hooks_path}",
    ]


def test_main_rejects_unknown_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """An argument other than --write is a usage error."""
    assert main(["--wirte"]) == 2
    assert "usage:" in capsys.readouterr().err


# -- docs/hooks.md ---------------------------------------------------------------------------


def test_hooks_reference_is_up_to_date() -> None:
    """docs/hooks.md is exactly what the hook table generates."""
    assert HOOKS_PATH.is_file(), "run: python -m trioserve._docs --write"
    checked_in = HOOKS_PATH.read_text(encoding="utf-8")
    assert checked_in == render_hooks_reference(), (
        "docs/hooks.md is stale; regenerate it with: python -m trioserve._docs --write"
    )


def test_every_hook_has_a_section_with_its_signature_and_policy() -> None:
    """Each hook's section: signature with exc, where it runs, when, exc, what raising does."""
    text = render_hooks_reference()
    for hook in HOOKS:
        section = text.split(f"\n### {hook.name}\n", 1)[1].split("\n### ", 1)[0]
        args = "".join(f"{name}, " for name in hook.args)
        assert f"def {hook.name}({args}*, exc=None): ..." in section
        assert "- Runs in: " in section
        assert ("`--workers 0`" in section.split("- Runs in: ", 1)[1].split("\n", 1)[0]) == (
            hook.in_process
        )
        assert hook.when.replace("``", "`") in section
        assert hook.raising.replace("``", "`") in section
        assert "- `exc`: " in section
        assert f"[`{hook.name}`](#{hook.name})" in text


def test_hooks_reference_describes_every_argument_object_attribute() -> None:
    """Every attrs field of the objects hooks receive is listed with its type."""
    text = render_hooks_reference()
    for cls in (ServerInfo, WorkerInfo, ConnectionInfo, ResponseInfo):
        assert f"\n### {cls.__name__}\n" in text
        for field in attrs.fields(cls):
            assert f"| `{field.name}` | `" in text, (cls.__name__, field.name)
    assert "| `num_workers` | `int` |" in text
    for name in {name for hook in HOOKS for name in hook.args}:
        assert f"\n- `{name}`: " in text


def test_hooks_reference_says_how_hooks_are_called_and_set() -> None:
    """The intro: sync and async hooks, the exc keyword, HookError, every way to set them."""
    text = render_hooks_reference()
    for phrase in (
        "`async def`",
        "keyword argument `exc`",
        "never swallowed",
        "`trioserve.HookError`",
        "`Config(on_starting=my_function, ...)`",
        "Python config file (`-c FILE`)",
        "`'module:attribute'`",
        HOOKS_EXAMPLE,
    ):
        assert phrase in text, phrase


def test_hooks_example_config_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example config file of docs/hooks.md loads as a -c file and sets its hooks."""
    monkeypatch.setitem(sys.modules, CONFIG_MODULE, None)  # restored after the test
    path = tmp_path / "hooks.py"
    path.write_text(HOOKS_EXAMPLE, encoding="utf-8")
    config = resolve([file_layer(path)]).config
    assert config.workers == 4
    for name in ("on_starting", "post_fork", "post_worker_init", "post_request", "child_exit"):
        assert callable(getattr(config, name)), name

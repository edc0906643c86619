"""Tests for trioserve._docs: the generated settings reference in docs/settings.md."""

from __future__ import annotations

import pytest

from trioserve._cli import build_parser
from trioserve._config import settings
from trioserve._docs import REFERENCE_PATH, main, render_settings_reference


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
    """Section headings appear once each, in the order the registry first uses them."""
    text = render_settings_reference()
    sections = list(dict.fromkeys(info.setting.section for info in settings()))
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == sections


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


def test_main_rejects_unknown_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """An argument other than --write is a usage error."""
    assert main(["--wirte"]) == 2
    assert "usage:" in capsys.readouterr().err

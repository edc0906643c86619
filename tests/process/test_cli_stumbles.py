"""Small stumbles of a first run, under the real CLI (issue 12): each error said once,
at once, with the exit status of its kind."""

from __future__ import annotations

import pytest

from tests.process.test_cli import APPS, run_cli

NO_APP = (
    "trioserve: error: no application given: pass APP as 'module:attribute'"
    " or set 'app' in the config"
)


@pytest.mark.parametrize("workers", ["0", "1"])
async def test_no_app_is_a_usage_error_before_any_worker(workers: str) -> None:
    """trioserve without APP says "no application given" and exits 2, with workers or not."""
    status, out, err = await run_cli("-b", "127.0.0.1:0", "-w", workers)
    assert (status, out, err) == (2, "", NO_APP + "\n")


async def test_check_config_without_app_says_no_application_given() -> None:
    """--check-config without APP reports the same line, with --check-config's status 1."""
    status, _, err = await run_cli("--check-config")
    assert (status, err) == (1, NO_APP + "\n")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "not_served:create_app",
            "factory 'not_served:create_app' raised RuntimeError: database down",
        ),
        (
            "not_served:settings",
            "'not_served:settings' is an int, not an ASGI or WSGI app, a stream handler"
            " or an app factory",
        ),
    ],
)
@pytest.mark.parametrize("workers", ["0", "1"])
async def test_an_app_that_cannot_load_is_reported_once(
    target: str, message: str, workers: str
) -> None:
    """A raising factory or a non-app is printed once (exit 4), not logged and printed again."""
    status, _, err = await run_cli("--app-dir", APPS, target, "-b", "127.0.0.1:0", "-w", workers)
    assert status == 4, err
    assert err.count(message) == 1, err
    assert err.splitlines()[-1].endswith(message)

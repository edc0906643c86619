"""The configured app: what every entry point serves, loaded one way.

The in-process server, a worker, the preloader (``--preload``) and ``--check-config``
all call :func:`load_config_app`, so the app each of them gets is wrapped the same way:
the target imported (and its factory called) from ``app_dir``, ASGI 2 and WSGI apps
turned into ASGI 3 (WSGI with ``threads`` worker threads), and, for ``--app-loop
asyncio``, every call of the app run on the asyncio loop. A path that skipped one of
these steps served a different app than the others (issue 12: ``--preload --app-loop
asyncio`` answered every request with 500).
"""

from __future__ import annotations

import attrs

from ._asyncio_loop import asyncio_app
from ._config import Config
from ._errors import ConfigError
from ._importer import LoadedApp, load_app

__all__ = ["load_config_app", "require_app"]


def require_app(config: Config) -> None:
    """Fail at once, before any process starts, when ``config`` names no app.

    Raises:
        ConfigError: ``config.app`` is None.
    """
    if config.app is None:
        raise ConfigError(
            "no application given: pass APP as 'module:attribute' or set 'app' in the config"
        )


async def load_config_app(config: Config) -> LoadedApp:
    """Import the app that ``config`` names and wrap it as every setting asks.

    It awaits nothing but an async app factory, so the preloader (which runs no trio
    loop) can drive it by hand.

    Raises:
        AppLoadError: the target cannot be imported, built or recognised.
        ConfigError: no app is given, or ``--app-loop asyncio`` without trio-asyncio
            installed.
    """
    require_app(config)
    loaded = await load_app(
        config.app,
        factory=config.factory,
        interface=config.interface,
        app_dir=config.app_dir,
        threads=config.threads,
        multiprocess=config.workers > 1,
    )
    if config.app_loop == "asyncio" and loaded.asgi is not None:
        loaded = attrs.evolve(loaded, asgi=asyncio_app(loaded.asgi))
    return loaded

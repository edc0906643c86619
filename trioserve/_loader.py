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

import contextvars
import importlib.util
import os
import sys

import attrs

from ._asyncio_loop import asyncio_app
from ._config import Config
from ._errors import ConfigError
from ._importer import LoadedApp, load_app

__all__ = ["import_main_script", "load_config_app", "refuse_while_importing_main", "require_app"]

# The parent's main script while a worker imports it: serve() or run() called then comes
# from a script without an ``if __name__ == "__main__":`` guard, and would start workers
# that import it again, without end.
_IMPORTING_MAIN: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trioserve_importing_main", default=None
)


def import_main_script(path: str) -> None:
    """Import the parent's main script as ``__mp_main__`` and make it ``__main__`` here.

    What multiprocessing's spawn does, so that apps, hooks and factories defined in a
    script (``python script.py`` calling :func:`trioserve.serve`) unpickle in a worker
    by the names they had there; the script's ``if __name__ == "__main__":`` block
    does not run.
    """
    spec = importlib.util.spec_from_file_location("__mp_main__", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the main script {path!r}")
    module = importlib.util.module_from_spec(spec)
    # Its own directory first, as when it was run: its sibling modules import.
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules["__mp_main__"] = module
    token = _IMPORTING_MAIN.set(path)
    try:
        spec.loader.exec_module(module)
    finally:
        _IMPORTING_MAIN.reset(token)
    sys.modules["__main__"] = module


def refuse_while_importing_main() -> None:
    """Fail when called while a worker imports the parent's main script.

    Raises:
        ConfigError: the script starts the server when imported, not only when run.
    """
    path = _IMPORTING_MAIN.get()
    if path is not None:
        raise ConfigError(
            f"a worker process imported {path} and it started the server again: "
            "put the call to serve() or run() under 'if __name__ == \"__main__\":'"
        )


def require_app(config: Config) -> None:
    """Fail at once, before any process starts, when ``config`` names no app.

    Raises:
        ConfigError: ``config.app`` is None, or the server is being started by a
            worker importing the parent's main script.
    """
    refuse_while_importing_main()
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

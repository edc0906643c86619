"""trioserve: a Trio-native application server.

Public API (everything else is private):

- :func:`serve` serves a :class:`Config` inside a running trio program;
- :func:`run` serves until SIGINT/SIGTERM, blocking (what the command line does);
- :class:`Config` holds every setting;
- :class:`Application` bundles an app with its settings, :class:`MultiApp` serves
  several under one master (:class:`NewApp` is what ``MultiApp.new_app`` returns);
- what server hooks receive: :class:`ServerInfo`, :class:`WorkerInfo`,
  :class:`ConnectionInfo`, :class:`RequestInfo`, :class:`ResponseInfo`, and
  :class:`ExitReason`, why a worker exits (``WorkerInfo.exit_reason``);
- the errors :class:`TrioserveError`, :class:`ConfigError`, :class:`AppLoadError`,
  :class:`BindError`, :class:`LifespanError`, :class:`HookError`,
  :class:`WorkerBootError`, and :class:`ClientDisconnected` (an ``OSError`` that an
  app's ``send()`` raises once the client has gone).
"""

from __future__ import annotations

from ._apps import Application as Application
from ._apps import MultiApp as MultiApp
from ._apps import NewApp as NewApp
from ._config import Config as Config
from ._errors import AppLoadError as AppLoadError
from ._errors import BindError as BindError
from ._errors import ClientDisconnected as ClientDisconnected
from ._errors import ConfigError as ConfigError
from ._errors import LifespanError as LifespanError
from ._errors import TrioserveError as TrioserveError
from ._hooks import ConnectionInfo as ConnectionInfo
from ._hooks import ExitReason as ExitReason
from ._hooks import HookError as HookError
from ._hooks import RequestInfo as RequestInfo
from ._hooks import ResponseInfo as ResponseInfo
from ._hooks import ServerInfo as ServerInfo
from ._hooks import WorkerBootError as WorkerBootError
from ._hooks import WorkerInfo as WorkerInfo
from ._server import run as run
from ._server import serve as serve
from ._version import __version__ as __version__

__all__ = [
    "AppLoadError",
    "Application",
    "BindError",
    "ClientDisconnected",
    "Config",
    "ConfigError",
    "ConnectionInfo",
    "ExitReason",
    "HookError",
    "LifespanError",
    "MultiApp",
    "NewApp",
    "RequestInfo",
    "ResponseInfo",
    "ServerInfo",
    "TrioserveError",
    "WorkerBootError",
    "WorkerInfo",
    "__version__",
    "run",
    "serve",
]

"""trioserve: a Trio-native application server.

Public API (everything else is private):

- :func:`serve` serves a :class:`Config` inside a running trio program;
- :func:`run` serves until SIGINT/SIGTERM, blocking (what the command line does);
- :class:`Config` holds every setting;
- the errors :class:`TrioserveError`, :class:`ConfigError`, :class:`AppLoadError`,
  :class:`BindError`, :class:`LifespanError`.
"""

from __future__ import annotations

from ._config import Config as Config
from ._errors import AppLoadError as AppLoadError
from ._errors import BindError as BindError
from ._errors import ConfigError as ConfigError
from ._errors import LifespanError as LifespanError
from ._errors import TrioserveError as TrioserveError
from ._server import run as run
from ._server import serve as serve
from ._version import __version__ as __version__

__all__ = [
    "AppLoadError",
    "BindError",
    "Config",
    "ConfigError",
    "LifespanError",
    "TrioserveError",
    "__version__",
    "run",
    "serve",
]

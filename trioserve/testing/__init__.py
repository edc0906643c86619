"""Test helpers for apps served by trioserve, with and without pytest.

pytest users get the fixtures ``trioserve_server``, ``trioserve_process`` and
``trioserve_client`` once trioserve is installed (a ``pytest11`` plugin; the tests need
pytest-trio). Everyone else uses the same machinery directly:

- :func:`serving` serves an app in the running trio program for an ``async with``
  block; :func:`start_server` does it in a nursery you have. Both give a
  :class:`Server`; errors trioserve logs meanwhile (an app that raised) are raised
  as :class:`ServerErrorLogged` when the block ends.
- :func:`running_process` runs the real ``trioserve`` command in a subprocess;
  :func:`start_process` does it in a nursery you have. Both give a
  :class:`ServerProcess`; :func:`child_processes` lists a process's children (a
  master's workers, a daemon's).
- :func:`http_client` returns an httpx client for either (httpx is optional).

Importing this module needs neither pytest nor httpx. See docs/testing.md.
"""

from __future__ import annotations

from ._client import http_client as http_client
from ._factories import ClientFactory as ClientFactory
from ._factories import ProcessFactory as ProcessFactory
from ._factories import ServerFactory as ServerFactory
from ._process import ServerProcess as ServerProcess
from ._process import child_processes as child_processes
from ._process import running_process as running_process
from ._process import start_process as start_process
from ._server import Server as Server
from ._server import ServerErrorLogged as ServerErrorLogged
from ._server import serving as serving
from ._server import start_server as start_server

__all__ = [
    "ClientFactory",
    "ProcessFactory",
    "Server",
    "ServerErrorLogged",
    "ServerFactory",
    "ServerProcess",
    "child_processes",
    "http_client",
    "running_process",
    "serving",
    "start_process",
    "start_server",
]

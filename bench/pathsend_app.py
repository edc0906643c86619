"""The app bench/pathsend.py serves: Starlette's FileResponse for the files of one
directory, with or without the ASGI ``http.response.pathsend`` extension.

``TRIOSERVE_BENCH_FILES`` names the directory; with ``TRIOSERVE_BENCH_NO_PATHSEND=1``
the app hides the extension from FileResponse (it then reads the file itself and sends
it in ``http.response.body`` messages, as it does under a server without the extension).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route

FILES = Path(os.environ.get("TRIOSERVE_BENCH_FILES", "."))
PATHSEND = os.environ.get("TRIOSERVE_BENCH_NO_PATHSEND", "") != "1"


async def download(request: Request) -> FileResponse:
    """The file named in the path, from FILES."""
    return FileResponse(FILES / Path(request.path_params["name"]).name)


files = Starlette(routes=[Route("/{name}", download)])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """FileResponse behind a switch: without pathsend, the scope does not offer it."""
    if not PATHSEND and scope["type"] == "http":
        extensions = dict(scope.get("extensions") or {})
        extensions.pop("http.response.pathsend", None)
        scope = {**scope, "extensions": extensions}
    await files(scope, receive, send)

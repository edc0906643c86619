"""The app bench/pathsend.py serves: Starlette's FileResponse for the files of one
directory (``TRIOSERVE_BENCH_FILES``). It sends the path (http.response.pathsend) when
the server offers it, which trioserve does unless run with ``--no-pathsend``; it then
reads the file itself and sends it in ``http.response.body`` messages, as it does under
a server without the extension.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route

FILES = Path(os.environ.get("TRIOSERVE_BENCH_FILES", "."))


async def download(request: Request) -> FileResponse:
    """The file named in the path, from FILES."""
    return FileResponse(FILES / Path(request.path_params["name"]).name)


app = Starlette(routes=[Route("/{name}", download)])

"""Two applications under one master: an ASGI app and a raw TCP echo.

    trioserve examples.multi:site --web-bind 127.0.0.1:8000 --echo-bind 127.0.0.1:9000

Each application has its own binds and worker pool; per-application settings take
its prefix on the command line (--web-workers 2, --echo-bind ...).
"""

from __future__ import annotations

from collections.abc import Iterator

from trioserve import MultiApp, NewApp


class Site(MultiApp):
    """The hello-world web app (prefix ``web``) and the echo server (prefix ``echo``)."""

    def build(self) -> Iterator[NewApp]:
        yield self.new_app("examples.hello:app", "web", bind=["127.0.0.1:8000"])
        yield self.new_app("examples.echo:handler", "echo", bind=["127.0.0.1:9000"])


site = Site()

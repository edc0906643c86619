"""The Django app of the differential check, as WSGI (``wsgi_app``) and ASGI (``asgi_app``).

Settings are configured here (one module, no project): no database, CommonMiddleware for
APPEND_SLASH, ConditionalGetMiddleware for ETag and 304, GZipMiddleware.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import django  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]

from . import HELLO, STATIC, say

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        # A fixed key for a test app that keeps no secrets.
        SECRET_KEY="trioserve-differential-not-secret",
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        MIDDLEWARE=[
            "django.middleware.gzip.GZipMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.http.ConditionalGetMiddleware",
        ],
    )
    django.setup()

from django.core.asgi import get_asgi_application  # type: ignore[import-untyped]
from django.core.handlers.asgi import ASGIRequest  # type: ignore[import-untyped]
from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]
from django.http import (  # type: ignore[import-untyped]
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path, re_path  # type: ignore[import-untyped]
from django.views.static import serve  # type: ignore[import-untyped]


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"framework": "django"})


def scope(request: HttpRequest, rest: str) -> JsonResponse:
    meta = request.META
    return JsonResponse(
        {
            "path": request.path,
            "path_info": request.path_info,
            "full_path": request.get_full_path(),
            "SCRIPT_NAME": meta.get("SCRIPT_NAME"),
            "QUERY_STRING": meta.get("QUERY_STRING"),
            "REMOTE_ADDR": meta.get("REMOTE_ADDR"),
            "scheme": request.scheme,
            "method": request.method,
            "query": sorted((k, v) for k in request.GET for v in request.GET.getlist(k)),
        }
    )


def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.body, content_type=request.content_type or "text/plain")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    if isinstance(request, ASGIRequest):

        async def achunks() -> AsyncIterator[str]:
            for number in range(5):
                yield f"chunk {number}\n"
                await asyncio.sleep(0)

        return StreamingHttpResponse(achunks(), content_type="text/plain")
    return StreamingHttpResponse((f"chunk {n}\n" for n in range(5)), content_type="text/plain")


def endless(request: HttpRequest) -> StreamingHttpResponse:
    """An endless stream: an async generator under ASGI (Django would drain a sync one
    first), a sync one under WSGI; each says when it ends."""
    if isinstance(request, ASGIRequest):

        async def aevents() -> AsyncIterator[str]:
            say("endless started")
            number = 0
            try:
                while True:
                    yield f"data: {number}\n\n"
                    number += 1
                    await asyncio.sleep(0.02)
            finally:
                say("endless closed")

        return StreamingHttpResponse(aevents(), content_type="text/event-stream")

    def events() -> Iterator[str]:
        say("endless started")
        number = 0
        try:
            while True:
                yield f"data: {number}\n\n"
                number += 1
                time.sleep(0.02)
        finally:
            say("endless closed")

    return StreamingHttpResponse(events(), content_type="text/event-stream")


def fail_mid_stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[str]:
        yield "first\n"
        raise RuntimeError("failing in the middle of a stream (differential check)")

    if isinstance(request, ASGIRequest):

        async def achunks() -> AsyncIterator[str]:
            yield "first\n"
            await asyncio.sleep(0)
            raise RuntimeError("failing in the middle of a stream (differential check)")

        return StreamingHttpResponse(achunks(), content_type="text/plain")
    return StreamingHttpResponse(chunks(), content_type="text/plain")


def error(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("failing view (differential check)")


def cookies(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("cookies\n", content_type="text/plain")
    response.set_cookie("a", "1", path="/")
    response.set_cookie("b", "two words", httponly=True)
    response.set_cookie("c", "3", secure=True, samesite="Strict")
    return response


def redirect(request: HttpRequest) -> HttpResponseRedirect:
    return HttpResponseRedirect("/scope/target?a=1&b=x%2Fy&c=d+e")


def slash(request: HttpRequest) -> HttpResponse:
    return HttpResponse("slash\n", content_type="text/plain")


def big_header(request: HttpRequest) -> HttpResponse:
    return HttpResponse("big\n", content_type="text/plain", headers={"x-big": "v" * 8000})


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(HELLO.open("rb"), content_type="text/plain")


urlpatterns = [
    path("", index),
    path("scope/<path:rest>", scope),
    path("echo", echo),
    path("stream", stream),
    path("endless", endless),
    path("fail-mid-stream", fail_mid_stream),
    path("error", error),
    path("cookies", cookies),
    path("redirect", redirect),
    path("slash/", slash),
    path("big-header", big_header),
    path("file", file),
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": STATIC}),
]

wsgi_app = get_wsgi_application()
asgi_app = get_asgi_application()

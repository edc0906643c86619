"""Views of the example Django project: one sync, two async (one reads the body)."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django\n", content_type="text/plain")


async def async_view(request: HttpRequest) -> JsonResponse:
    # asyncio code proper: served over ASGI it needs --app-loop asyncio.
    results = await asyncio.gather(_step("first"), _step("second"))
    return JsonResponse({"view": "async", "results": results})


async def async_echo(request: HttpRequest) -> HttpResponse:
    # Under WSGI Django runs this in a thread of its own, which reads the body.
    return HttpResponse(request.body, content_type="application/octet-stream")


async def _step(name: str) -> str:
    await asyncio.sleep(0)
    return name

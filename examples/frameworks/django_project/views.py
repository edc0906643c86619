"""Views of the example Django project: one sync, one async."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django\n", content_type="text/plain")


async def async_view(request: HttpRequest) -> JsonResponse:
    # asyncio code proper: served over ASGI it needs --app-loop asyncio.
    results = await asyncio.gather(_step("first"), _step("second"))
    return JsonResponse({"view": "async", "results": results})


async def _step(name: str) -> str:
    await asyncio.sleep(0)
    return name

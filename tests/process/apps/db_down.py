"""Starlette and FastAPI apps whose lifespan fails as with a database that is down.

Both frameworks report ``lifespan.startup.failed`` (with the traceback as the message)
and then re-raise: the server must exit, not serve without lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


@asynccontextmanager
async def connect_database(app: object) -> AsyncIterator[None]:
    raise ConnectionRefusedError("database down")
    yield  # an async generator, as a real lifespan is


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("served without its database")


starlette_app = Starlette(routes=[Route("/", homepage)], lifespan=connect_database)

fastapi_app = FastAPI(lifespan=connect_database)
fastapi_app.get("/")(homepage)

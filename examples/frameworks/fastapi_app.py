"""A FastAPI app: path and query parameters, a pydantic request body, a lifespan.

trioserve examples.frameworks.fastapi_app:app
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    print("fastapi startup", file=sys.stderr, flush=True)
    yield
    print("fastapi shutdown", file=sys.stderr, flush=True)


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


class Created(BaseModel):
    item: Item
    total: float


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, int | str | None]:
    return {"item_id": item_id, "q": q}


@app.post("/items", status_code=201)
async def create_item(item: Item, quantity: int = 1) -> Created:
    return Created(item=item, total=item.price * quantity)

"""Targets that cannot be served: a factory that raises and an object that is no app."""

from __future__ import annotations


def create_app() -> object:
    raise RuntimeError("database down")


settings = 42

"""URLs of the example Django project."""

from __future__ import annotations

from django.urls import path  # type: ignore[import-untyped]

from . import views

urlpatterns = [
    path("", views.index),
    path("async", views.async_view),
    path("async-echo", views.async_echo),
]

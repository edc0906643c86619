"""The Django project as an ASGI app.

trioserve examples.frameworks.django_project.asgi:application --app-loop asyncio

Django's ASGI handler is asyncio code (asgiref), hence --app-loop asyncio. It has no
lifespan support; with the default --lifespan auto the server serves without it.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application  # type: ignore[import-untyped]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.frameworks.django_project.settings")

application = get_asgi_application()

"""The Django project as a WSGI app.

trioserve examples.frameworks.django_project.wsgi:application
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.frameworks.django_project.settings")

application = get_wsgi_application()

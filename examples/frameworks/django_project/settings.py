"""Settings of the example Django project: no database, no sessions, no admin."""

from __future__ import annotations

DEBUG = False
ALLOWED_HOSTS = ["*"]
# A fixed key for an example that keeps no secrets; never use it for a real site.
SECRET_KEY = "trioserve-example-not-secret"
ROOT_URLCONF = "examples.frameworks.django_project.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

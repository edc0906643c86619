"""A minimal Django project, served over ASGI and over WSGI.

trioserve examples.frameworks.django_project.asgi:application --app-loop asyncio
trioserve examples.frameworks.django_project.wsgi:application
"""

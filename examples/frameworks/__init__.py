"""Apps written for popular frameworks, served by trioserve.

Run from the repository root:

    trioserve examples.frameworks.starlette_app:app
    trioserve examples.frameworks.fastapi_app:app
    trioserve examples.frameworks.flask_app:app
    trioserve examples.frameworks.quart_trio_app:app
    trioserve examples.frameworks.django_project.asgi:application --app-loop asyncio
    trioserve examples.frameworks.django_project.wsgi:application
"""

"""ASGI entry point: Django (with the admin's static files), behind the fast path for hot routes."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")

import django

django.setup()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

from orchestrator_site.fastpath import FastPath  # noqa: E402

django_application = ASGIStaticFilesHandler(get_asgi_application())
application = FastPath(django_application)

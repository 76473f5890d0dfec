"""ASGI entry point: Django (with the admin's static files) behind the HTTP edge (`core.edge`:
Host check, body limit), and the fast path (`core.fastpath`) in front for the hot routes."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")

import django

django.setup()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

from core.edge import Guard  # noqa: E402
from core.fastpath import FastPath  # noqa: E402
from orchestrator_site.urls import FAST_ROUTES  # noqa: E402

django_application = Guard(ASGIStaticFilesHandler(get_asgi_application()))
application = FastPath(django_application, FAST_ROUTES)

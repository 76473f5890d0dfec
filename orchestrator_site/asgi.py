"""ASGI entry point: Django (with the admin's static files) behind the HTTP edge (`core.edge`:
Host check, body limit), the fast path (`core.fastpath`) in front for the hot routes,
`core.hardening.json_errors` around everything and `core.requestid` (X-Request-ID) outermost."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")

import django

django.setup()

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402

from core.edge import Guard  # noqa: E402
from core.fastpath import FastPath  # noqa: E402
from core.hardening import json_errors  # noqa: E402
from core.requestid import with_request_id  # noqa: E402
from orchestrator_site.urls import FAST_ROUTES  # noqa: E402

django_application = Guard(ASGIStaticFilesHandler(get_asgi_application()))
# json_errors outermost: whatever escapes (the static files handler raises for `..` paths) is
# still a JSON answer, never daphne's HTML 500.
# with_request_id outermost: every answer, even json_errors' last resort, carries X-Request-ID.
application = with_request_id(json_errors(FastPath(django_application, FAST_ROUTES)))

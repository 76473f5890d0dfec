"""Root URL configuration. Each app owns its routes in `<app>/api/urls.py`.

`FAST_ROUTES` is the one table of the routes the fast path (`core.fastpath`) answers in front of
Django, with the handlers their apps own; each entry names the URLconf route (and so the DRF view)
that answers the same requests on the Django path. `orchestrator_site.asgi` installs it.
"""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView

from core import errors
from core.fastpath import fast_routes
from events import fast as events_fast
from orchestrator_site.api_docs import OpenApiView
from releases import fast as releases_fast
from rollouts import fast as rollouts_fast

urlpatterns = [
    path("admin/fleet/", include("rollouts.fleet_admin")),  # the fleet and node pages
    path("admin/", admin.site.urls),
    path("v1/openapi.json", OpenApiView.as_view(), name="openapi-schema"),
    path("v1/docs", SpectacularSwaggerView.as_view(url_name="openapi-schema"), name="api-docs"),
    path("", include("events.api.urls")),
    path("", include("releases.api.urls")),
    path("", include("rollouts.api.urls")),
    path("", include("crl.api.urls")),
    path("", include("access.api.urls")),
    path("", include("core.readiness")),  # /v1/health/read-ready, /v1/health/write-ready
    path("", include("core.ha")),  # /v1/health/leader, /v1/ha/status
]

# (method, URL name) -> handler. Paths and `Allow` come from the URLconf entry of that name.
FAST_ROUTES = fast_routes(
    urlpatterns,
    {
        ("GET", "health"): events_fast.health,
        ("POST", "events"): events_fast.ingest,
        ("GET", "events"): events_fast.events,
        ("GET", "release-latest"): releases_fast.latest,
        ("POST", "node-ack"): releases_fast.ack,
        ("GET", "rollout-status"): rollouts_fast.status,
    },
)

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500

"""Root URL configuration. Each app owns its routes in `<app>/api/urls.py`."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView

from core import errors
from orchestrator_site.api_docs import OpenApiView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/openapi.json", OpenApiView.as_view(), name="openapi-schema"),
    path("v1/docs", SpectacularSwaggerView.as_view(url_name="openapi-schema"), name="api-docs"),
    path("", include("events.api.urls")),
    path("", include("releases.api.urls")),
    path("", include("rollouts.api.urls")),
    path("", include("crl.api.urls")),
    path("", include("core.readiness")),  # /v1/health/read-ready, /v1/health/write-ready
]

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500

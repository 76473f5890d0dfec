"""Root URL configuration. Each app owns its routes in `<app>/api/urls.py`."""

from django.contrib import admin
from django.urls import include, path

from orchestrator_site import errors

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("events.api.urls")),
    path("", include("releases.api.urls")),
    path("", include("rollouts.api.urls")),
    path("", include("crl.api.urls")),
]

handler400 = errors.handler400
handler403 = errors.handler403
handler404 = errors.handler404
handler500 = errors.handler500

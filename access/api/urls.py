from django.urls import path

from access.api.views import AuditView

urlpatterns = [
    path("v1/audit", AuditView.as_view(), name="audit"),
]

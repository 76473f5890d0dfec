from django.urls import path

from crl.api.views import crl_view

urlpatterns = [
    path("v1/crl", crl_view, name="crl"),
]

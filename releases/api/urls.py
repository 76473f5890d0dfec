"""Routes of the releases app (API.md §3 rows 5-10, plus the release list and detail)."""

from django.urls import path

from releases.api import views

urlpatterns = [
    path("v1/releases", views.ReleaseListView.as_view(), name="release-list"),
    path("v1/releases/latest", views.LatestReleaseView.as_view(), name="release-latest"),
    path("v1/releases/<str:release_id>", views.ReleaseDetailView.as_view(), name="release-detail"),
    path("v1/releases/<str:release_id>/acks", views.ReleaseAcksView.as_view(), name="release-acks"),
    path("v1/nodes/<str:node_id>/ack", views.NodeAckView.as_view(), name="node-ack"),
    path("v1/nodes/<str:node_id>/acks", views.NodeAcksView.as_view(), name="node-acks"),
    path("v1/fleet", views.FleetView.as_view(), name="fleet"),
]

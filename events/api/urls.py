from django.urls import path

from events.api.views import EventsView, HealthView

urlpatterns = [
    path("v1/events", EventsView.as_view(), name="events"),
    path("v1/health", HealthView.as_view(), name="health"),
]

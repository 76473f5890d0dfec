from django.apps import AppConfig


class EventsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "events"
    verbose_name = "Telemetry events"

    def ready(self) -> None:
        # Registers this app's OpenAPI annotations with drf-spectacular.
        from events.api import schema  # noqa: F401

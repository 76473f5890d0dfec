from django.apps import AppConfig


class ReleasesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "releases"
    verbose_name = "Releases and node acks"

    def ready(self) -> None:
        # Registers this app's OpenAPI annotations with drf-spectacular.
        from releases.api import schema  # noqa: F401

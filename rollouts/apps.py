from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "rollouts"
    verbose_name = "Rollouts"

    def ready(self) -> None:
        # Registers this app's OpenAPI annotations with drf-spectacular.
        from rollouts.api import schema  # noqa: F401

from django.apps import AppConfig


class CrlConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "crl"
    verbose_name = "Certificate revocation"

    def ready(self) -> None:
        # Registers this app's OpenAPI annotations with drf-spectacular.
        from crl.api import schema  # noqa: F401

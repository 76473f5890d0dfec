from django.apps import AppConfig


class CrlConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "crl"
    verbose_name = "Certificate revocation"

from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from crl.store import CrlStore


class CrlConfig(AppConfig):
    """The CRL app. `store` is the CRL store this process enforces (None without
    `--tls-crl-file`); `serve`, the composition root, hands it over with `use_store`."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "crl"
    verbose_name = "Certificate revocation"
    store: CrlStore | None = None

    def use_store(self, store: CrlStore | None) -> None:
        self.store = store

    def ready(self) -> None:
        # Registers this app's OpenAPI annotations with drf-spectacular.
        from crl.api import schema  # noqa: F401

"""Reads of the CRL in force (held in memory by the serving process, see crl.store)."""

from __future__ import annotations

from typing import cast

from django.apps import apps

from crl.apps import CrlConfig


def crl_get() -> bytes | None:
    """The bytes of the CRL this server enforces, as in `--tls-crl-file`; None without a CRL.

    The file is re-checked first, so a CRL written a moment ago is served at once; when the file
    is broken, the last good CRL (the one still enforced) is served.
    """
    store = cast(CrlConfig, apps.get_app_config("crl")).store
    if store is None:
        return None
    return store.refresh().raw

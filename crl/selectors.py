"""Reads of the CRL in force (held in memory by the serving process, see core.tls)."""

from __future__ import annotations

from core import tls


def crl_get() -> bytes | None:
    """The bytes of the CRL this server enforces, as in `--tls-crl-file`; None without a CRL.

    The file is re-checked first, so a CRL written a moment ago is served at once; when the file
    is broken, the last good CRL (the one still enforced) is served.
    """
    store = tls.ACTIVE_CRL
    if store is None:
        return None
    return store.refresh().raw

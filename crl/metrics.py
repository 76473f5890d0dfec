"""`cp_crl_next_update_timestamp_seconds` and `cp_crl_last_update_timestamp_seconds`: the
nextUpdate/thisUpdate of the CRL this process enforces (UNIX seconds), read from the CRL store
in memory at scrape time (no sample without `--tls-crl-file`). An alert on
`cp_crl_next_update_timestamp_seconds - time()` warns before clients' certificates can no longer
be checked (docs/prometheus/alerts.yml)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import cast

from django.apps import apps
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from crl.apps import CrlConfig


class CrlCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        store = cast(CrlConfig, apps.get_app_config("crl")).store
        if store is None:
            return
        crl = store.snapshot.crl
        if crl.next_update_utc is not None:
            yield GaugeMetricFamily(
                "cp_crl_next_update_timestamp_seconds",
                "nextUpdate of the CRL in force (UNIX seconds).",
                value=crl.next_update_utc.timestamp(),
            )
        yield GaugeMetricFamily(
            "cp_crl_last_update_timestamp_seconds",
            "thisUpdate of the CRL in force (UNIX seconds).",
            value=crl.last_update_utc.timestamp(),
        )

    def describe(self) -> Iterable[Metric]:
        return []


_installed = False
_lock = threading.Lock()


def install() -> None:
    """Register the collector (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            _installed = True
            REGISTRY.register(CrlCollector())

"""`cp_webhook_deliveries_total{outcome}` and `cp_webhook_outbox_pending` (docs/metrics.md).

`serve --metrics-addr` calls `install()` and hands `record_outcome` to the dispatcher.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from notifications import selectors

logger = logging.getLogger("orchestrator.metrics")

OUTCOMES = ("delivered", "retrying", "gave_up")

DELIVERIES = Counter(
    "cp_webhook_deliveries_total",
    "Webhook delivery attempts made by this replica, by outcome (delivered; failed and "
    "retrying later; failed and given up).",
    ["outcome"],
    registry=None,
)
for _outcome in OUTCOMES:
    DELIVERIES.labels(outcome=_outcome)


def record_outcome(outcome: str) -> None:
    DELIVERIES.labels(outcome=outcome if outcome in OUTCOMES else "retrying").inc()


class OutboxCollector(Collector):
    """`cp_webhook_outbox_pending`: deliveries not yet delivered nor given up (all replicas),
    read from the store at scrape time."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "cp_webhook_outbox_pending",
            "Webhook deliveries waiting to be sent or retried (the whole store).",
        )
        try:
            family.add_metric([], float(selectors.outbox_pending_count()))
        except Exception:
            logger.exception("cannot count the webhook outbox for /metrics")
            return []
        return [family]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


_installed = False


def install() -> None:
    """Register both families with the default registry (idempotent)."""
    global _installed
    if not _installed:
        _installed = True
        REGISTRY.register(DELIVERIES)
        REGISTRY.register(OutboxCollector())

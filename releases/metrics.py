"""The fleet families of `/metrics` (docs/metrics.md), read from the store at scrape time and
cached `CACHE_SECONDS`, so frequent scrapes (or several Prometheus servers) of a large fleet
cost one computation per period:

* `cp_fleet_nodes{status}`: nodes `up` / `stale` / `unknown` (`releases.selectors.
  fleet_status_counts`, with the fleet view's default stale threshold);
* `cp_release_nodes{channel,release_id,ack_status}`: nodes per ack status of the newest
  `RELEASES_PER_CHANNEL` releases of each channel (`releases.selectors.release_ack_counts`).

Cardinality: 3 series, plus channels x RELEASES_PER_CHANNEL x 5 ack statuses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from releases import selectors
from releases.params import DEFAULT_STALE_THRESHOLD

logger = logging.getLogger("orchestrator.metrics")

CACHE_SECONDS = 10.0
RELEASES_PER_CHANNEL = 3
FLEET_STATUSES = ("up", "stale", "unknown")


class _Cached:
    """`fn()`'s value, recomputed at most every `ttl` seconds (one caller at a time computes)."""

    def __init__(self, fn: Callable[[], Any], ttl: float) -> None:
        self.fn = fn
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = -float("inf")

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._value = self.fn()
                self._at = time.monotonic()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._at = -float("inf")


fleet_counts = _Cached(
    lambda: selectors.fleet_status_counts(stale_threshold=DEFAULT_STALE_THRESHOLD), CACHE_SECONDS
)
release_counts = _Cached(
    lambda: selectors.release_ack_counts(per_channel=RELEASES_PER_CHANNEL), CACHE_SECONDS
)


class FleetCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        try:
            fleet: dict[str, int] = fleet_counts.get()
        except Exception:
            logger.exception("cannot count the fleet for /metrics")
        else:
            family = GaugeMetricFamily(
                "cp_fleet_nodes",
                f"Nodes by status: up (an event within {DEFAULT_STALE_THRESHOLD} s), stale "
                "(older), unknown (acks but no event).",
                labels=["status"],
            )
            for status in FLEET_STATUSES:
                family.add_metric([status], fleet.get(status, 0))
            yield family
        try:
            rows: list[tuple[str, str, str, int]] = release_counts.get()
        except Exception:
            logger.exception("cannot count release adoption for /metrics")
        else:
            family = GaugeMetricFamily(
                "cp_release_nodes",
                f"Nodes per ack status of the newest {RELEASES_PER_CHANNEL} releases of each "
                "channel.",
                labels=["channel", "release_id", "ack_status"],
            )
            for channel, release_id, status, nodes in rows:
                family.add_metric([channel, release_id, status], nodes)
            yield family

    def describe(self) -> Iterable[Metric]:
        return []


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Register the collector (idempotent)."""
    global _installed
    with _install_lock:
        if not _installed:
            _installed = True
            REGISTRY.register(FleetCollector())

"""`cp_rollout_plans_total{phase}`: plans now in each phase, read from the store at scrape time
(TYPE counter, see docs/metrics.md). Every phase of `rollouts.models.Phase` is always present."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from rollouts import selectors
from rollouts.models import Phase

logger = logging.getLogger("orchestrator.metrics")

# Stored plan specs found altered (their bytes no longer match the signed digest), by this
# process: `rollouts.services.plan_tampered` counts each plan once per altered content.
PLAN_TAMPERED = Counter(
    "cp_rollout_plan_tampered",
    "Rollout plans whose stored spec no longer matched its signed digest (halted).",
)


class RolloutPhaseCollector(Collector):
    """`cp_rollout_plans_total{phase}`: plans per phase, read from the store at scrape time."""

    def collect(self) -> Iterable[CounterMetricFamily]:
        # Exposed with TYPE counter because the contract's name ends in `_total` (promtool
        # rejects that suffix on a gauge); the value is the number of plans now in the phase.
        family = CounterMetricFamily(
            "cp_rollout_plans", "Rollout plans now in each phase.", labels=["phase"]
        )
        try:
            counts = dict(selectors.rollout_phase_counts())
        except Exception:
            logger.exception("cannot read rollout phase counts for /metrics")
            return [family]
        phases = [str(phase) for phase in Phase.values]
        for phase in (*phases, *sorted(set(counts) - set(phases))):
            family.add_metric([phase], float(counts.get(phase, 0)))
        return [family]

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []  # collected lazily at scrape time, never at registration


_COLLECTOR = RolloutPhaseCollector()
_installed = False


def install() -> None:
    """Register the collector with the default registry (idempotent)."""
    global _installed
    if not _installed:
        _installed = True
        REGISTRY.register(_COLLECTOR)

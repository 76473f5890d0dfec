"""`cp_rollout_plans_total{phase}`: plans now in each phase, read from the store at scrape time
(TYPE counter, see docs/metrics.md). Every phase of `rollouts.models.Phase` is always present.

`cp_rollout_stage_nodes{plan_id,stage_id,state}`: the node counts of `GET …/status` for every
stage of every live (non-terminal) plan, from the status cache (`rollouts.progress`), so a
scrape recomputes a plan at most once per `SCRAPE_MAX_AGE` seconds."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rollouts import progress, selectors
from rollouts.models import Phase

logger = logging.getLogger("orchestrator.metrics")


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


# States exposed per stage (the status' `waiting` is left out: targeted minus the others).
STAGE_NODE_STATES = (
    "targeted",
    "pending",
    "acknowledged",
    "active",
    "failed",
    "rejected",
    "silent",
)
SCRAPE_MAX_AGE = 30.0  # seconds: a scrape reuses a plan's counts up to this old


def stage_node_family() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "cp_rollout_stage_nodes",
        "Nodes of each stage of each live rollout plan per state (targeted, acked per status, "
        "silent), as GET /v1/rollouts/{plan_id}/status counts them.",
        labels=["plan_id", "stage_id", "state"],
    )
    for plan in progress.live_plans():
        counts = progress.plan_progress(plan, max_age=SCRAPE_MAX_AGE)
        for stage_id, stage_counts in zip(counts.stage_ids, counts.stage_counts, strict=True):
            for state in STAGE_NODE_STATES:
                family.add_metric([plan.plan_id, stage_id, state], float(stage_counts[state]))
    return family


class RolloutStageNodesCollector(Collector):
    """`cp_rollout_stage_nodes{plan_id,stage_id,state}` for live plans only (bounded)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            return [stage_node_family()]
        except Exception:
            logger.exception("cannot read rollout stage node counts for /metrics")
            return []

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


_COLLECTOR = RolloutPhaseCollector()
_STAGE_NODES = RolloutStageNodesCollector()
_installed = False


def install() -> None:
    """Register the collectors with the default registry (idempotent)."""
    global _installed
    if not _installed:
        _installed = True
        REGISTRY.register(_COLLECTOR)
        REGISTRY.register(_STAGE_NODES)

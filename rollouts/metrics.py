"""The rollout families of `/metrics` (docs/metrics.md).

Read from the store at scrape time (`RolloutCollector`, registered by `install()`):

* `cp_rollout_plans{phase}` (gauge): plans now in each phase, every phase present;
* `cp_rollout_plans_total{phase}` (counter, deprecated): the same values, kept for the contract
  (API.md §5). In the text format 0.0.4 the two are distinct families (`# TYPE
  cp_rollout_plans_total counter`, `# TYPE cp_rollout_plans gauge`); both come from this one
  collector, since the registry checks duplicate names only across collectors (docs/metrics.md);
* `cp_rollout_pending_approvals`, `cp_rollout_pending_approval_age_seconds`,
  `cp_rollout_stuck_plans`, `cp_rollout_max_idle_seconds`: the running plans
  (`selectors.rollout_live_summary`);
* `cp_rollout_evaluator_lag_seconds`: since the evaluator's last completed pass;
* `cp_rollout_stage_nodes{plan_id,stage_id,state}` (`RolloutStageNodesCollector`): the node
  counts of `GET …/status` for every stage of every live (non-terminal) plan, from the status
  cache (`rollouts.progress`), so a scrape recomputes a plan at most once per `SCRAPE_MAX_AGE`.

Counted as things happen (module-level counters, exist from import):

* `cp_rollout_transitions_total{to,trigger}` and `cp_rollout_halts_total{trigger}`
  (`record_transition`, called by `rollouts.services` after each committed transition);
* `cp_rollout_evaluator_errors_total` (`rollouts.evaluator`).

`trigger` is `automatic` for the server's own transitions (the evaluator), `operator` for
everything a person or a script asked for. Every label value is from a fixed set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rollouts import progress
from rollouts.models import Phase

logger = logging.getLogger("orchestrator.metrics")

# Stored plan specs found altered (their bytes no longer match the signed digest), by this
# process: `rollouts.services.plan_tampered` counts each plan once per altered content.
PLAN_TAMPERED = Counter(
    "cp_rollout_plan_tampered",
    "Rollout plans whose stored spec no longer matched its signed digest (halted).",
)

AUTOMATIC = "automatic"
OPERATOR = "operator"
TRIGGERS = (OPERATOR, AUTOMATIC)
# The default threshold of `GET /v1/rollouts/stuck` (rollouts/api/views.py).
STUCK_THRESHOLD_SECONDS = 3600

TRANSITIONS = Counter(
    "cp_rollout_transitions_total",
    "Rollout plan transitions, by the phase entered and what triggered them.",
    ["to", "trigger"],
)
HALTS = Counter(
    "cp_rollout_halts_total",
    "Rollout halts, by what triggered them (automatic: a failure gate tripped).",
    ["trigger"],
)
EVALUATOR_ERRORS = Counter(
    "cp_rollout_evaluator_errors_total",
    "Rollout evaluations that failed (one plan, or a whole pass); retried on the next pass.",
)
for _trigger in TRIGGERS:
    HALTS.labels(trigger=_trigger)
    for _phase in Phase.values:
        TRANSITIONS.labels(to=_phase, trigger=_trigger)


def record_transition(*, to_phase: str, action: str, automatic: bool) -> None:
    """Count one committed transition (and a halt)."""
    trigger = AUTOMATIC if automatic else OPERATOR
    TRANSITIONS.labels(to=to_phase, trigger=trigger).inc()
    if action == "halt":
        HALTS.labels(trigger=trigger).inc()


# The evaluator thread's progress (monotonic seconds), set by rollouts.evaluator.
_evaluator_started: float | None = None
_evaluator_last_pass: float | None = None


def evaluator_started() -> None:
    global _evaluator_started
    _evaluator_started = time.monotonic()


def evaluator_pass_completed() -> None:
    global _evaluator_last_pass
    _evaluator_last_pass = time.monotonic()


def evaluator_lag() -> float | None:
    """Seconds since the last completed pass (since the start before the first); None when no
    evaluator runs in this process."""
    since = _evaluator_last_pass or _evaluator_started
    return None if since is None else max(time.monotonic() - since, 0.0)


class RolloutCollector(Collector):
    """The families read at scrape time (a few small queries over the live plans)."""

    def collect(self) -> Iterable[Metric]:
        from rollouts import selectors

        gauge = GaugeMetricFamily(
            "cp_rollout_plans", "Rollout plans now in each phase.", labels=["phase"]
        )
        # Exposed as `cp_rollout_plans_total` (TYPE counter): the contract's name, kept for
        # compatibility. Deprecated: the value is a gauge's; query `cp_rollout_plans`.
        legacy = CounterMetricFamily(
            "cp_rollout_plans",
            "Rollout plans now in each phase (deprecated: same values as the gauge "
            "cp_rollout_plans; use that).",
            labels=["phase"],
        )
        try:
            counts = dict(selectors.rollout_phase_counts())
        except Exception:
            logger.exception("cannot read rollout phase counts for /metrics")
            counts = None
        if counts is not None:
            phases = [str(phase) for phase in Phase.values]
            for phase in (*phases, *sorted(set(counts) - set(phases))):
                gauge.add_metric([phase], float(counts.get(phase, 0)))
                legacy.add_metric([phase], float(counts.get(phase, 0)))
        yield gauge
        yield legacy
        try:
            live = selectors.rollout_live_summary(stuck_threshold=STUCK_THRESHOLD_SECONDS)
        except Exception:
            logger.exception("cannot read the running rollouts for /metrics")
        else:
            yield GaugeMetricFamily(
                "cp_rollout_pending_approvals",
                "Open stages of running plans waiting for their manual gate's approval.",
                value=live.pending_approvals,
            )
            yield GaugeMetricFamily(
                "cp_rollout_pending_approval_age_seconds",
                "Seconds the oldest stage waiting for approval has been open (0 when none).",
                value=live.oldest_pending_approval_seconds,
            )
            yield GaugeMetricFamily(
                "cp_rollout_stuck_plans",
                f"Running plans without a transition for {STUCK_THRESHOLD_SECONDS} s "
                "(GET /v1/rollouts/stuck with its default threshold).",
                value=live.stuck_plans,
            )
            yield GaugeMetricFamily(
                "cp_rollout_max_idle_seconds",
                "The longest time a running plan has gone without a transition (0 when none).",
                value=live.max_idle_seconds,
            )
        lag = evaluator_lag()
        if lag is not None:
            yield GaugeMetricFamily(
                "cp_rollout_evaluator_lag_seconds",
                "Seconds since the rollout evaluator's last completed pass (it runs on the "
                "leader only; followers' lag grows).",
                value=lag,
            )

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily at scrape time, never at registration


# The old name of the collector (tests and docs referred to it).
RolloutPhaseCollector = RolloutCollector

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


_COLLECTOR = RolloutCollector()
_STAGE_NODES = RolloutStageNodesCollector()
_installed = False


def install() -> None:
    """Register the collectors with the default registry (idempotent)."""
    global _installed
    if not _installed:
        _installed = True
        REGISTRY.register(_COLLECTOR)
        REGISTRY.register(_STAGE_NODES)

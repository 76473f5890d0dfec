"""Reads of rollout state: the rollout-aware desired release, listings, gates, stuck plans."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count

from core.errors import ApiError
from core.params import format_rfc3339
from releases.models import NodeAck, Release
from rollouts import clock
from rollouts.cohort import display_percent, snapshot_by_pk, snapshot_of
from rollouts.gates import StageReport, evaluate_stage, unmet_reason
from rollouts.models import (
    NON_TERMINAL_PHASES,
    RUNNING_PHASES,
    Phase,
    RolloutPlan,
    RolloutTransition,
    StagePhase,
)

_previous: dict[tuple[int, str], Release | None] = {}
_previous_lock = threading.Lock()


def _previous_release(latest: Release) -> Release | None:
    """The channel's release just below `latest` (cached: sequences never change; not inside a
    transaction, which may roll back - as every test does)."""
    key = (latest.pk, latest.release_id)
    if key in _previous:
        return _previous[key]
    previous = (
        Release.objects.filter(channel=latest.channel, sequence__lt=latest.sequence)
        .order_by("-sequence")
        .first()
    )
    if connection.in_atomic_block:
        return previous
    with _previous_lock:
        if len(_previous) > 4096:
            _previous.clear()
        _previous[key] = previous
    return previous


_PLAN_HEAD_SQL = (
    f"SELECT id, version FROM {RolloutPlan._meta.db_table} "
    "WHERE release_id = %s ORDER BY id DESC LIMIT 1"
)
_ACTIVE_ACK_SQL = (
    f"SELECT 1 FROM {NodeAck._meta.db_table} "
    "WHERE release_id = %s AND node_id = %s AND status = %s LIMIT 1"
)


def desired_release_for_node(*, latest: Release, node_id: str) -> Release | None:
    """The release `node_id` should run when `latest` is its channel's latest release
    (rollout-aware, API.md §4 "Which release a node gets"). None: no release for this node.

    The poll hot path: one indexed query when `latest` has no plan; otherwise the plan's cached
    snapshot (keyed by its version), at most one more indexed query (the node's `active` ack) and
    the previous release (cached). Plain SQL: the ORM's query building costs more than SQLite.
    """
    with connection.cursor() as cursor:
        cursor.execute(_PLAN_HEAD_SQL, [latest.pk])
        head = cursor.fetchone()
        if head is None:
            return latest
        # The newest plan governs: a new plan for a release can only be published once the
        # older ones are terminal.
        snap = snapshot_by_pk(int(head[0]), int(head[1]))
        if snap is None or snap.in_rollout(node_id):
            return latest
        cursor.execute(_ACTIVE_ACK_SQL, [latest.pk, node_id, NodeAck.Status.ACTIVE.value])
        if cursor.fetchone() is not None:
            return latest
    return _previous_release(latest)


def rollout_phase_counts() -> dict[str, int]:
    """Number of rollout plans per phase (every phase present), for `cp_rollout_plans_total`."""
    counts = {phase.value: 0 for phase in Phase}
    for row in RolloutPlan.objects.values("phase").annotate(n=Count("id")).order_by():
        counts[row["phase"]] = row["n"]
    return counts


# --- API reads --------------------------------------------------------------------------------


def plan_list(*, limit: int, offset: int, phase: str | None) -> list[RolloutPlan]:
    plans = RolloutPlan.objects.select_related("release").defer("spec").order_by("-id")
    if phase:
        plans = plans.filter(phase=phase)
    return list(plans[offset : offset + limit])


def plan_summary(plan: RolloutPlan) -> dict[str, Any]:
    return {
        "plan_id": plan.plan_id,
        "release_id": plan.release.release_id,
        "channel": plan.channel,
        "description": plan.description,
        "created_by": plan.created_by,
        "phase": plan.phase,
        "current_stage_id": plan.current_stage_id,
        "digest": plan.digest,
        "created_at": format_rfc3339(plan.created_at),
        "updated_at": format_rfc3339(plan.updated_at),
    }


def plan_signature(plan: RolloutPlan) -> dict[str, str]:
    from rollouts.signing import ALGORITHM

    return {"alg": ALGORITHM, "key_id": plan.key_id, "value": plan.signature}


def plan_status(plan: RolloutPlan) -> dict[str, Any]:
    snap = snapshot_of(plan)
    history = RolloutTransition.objects.filter(plan_id=plan.pk).order_by("id")
    return {
        "plan_id": plan.plan_id,
        "phase": plan.phase,
        "current_stage_id": plan.current_stage_id,
        "stages": [
            {
                "stage_id": stage.stage_id,
                "phase": stage.phase,
                "percent": display_percent(stage.percent),
                "opened_at": format_rfc3339(stage.opened_at),
                "promoted_at": format_rfc3339(stage.promoted_at),
                "manual_approved": stage.manual_approved,
                "halt_reason": stage.halt_reason or None,
            }
            for stage in snap.stages
        ],
        "updated_at": format_rfc3339(plan.updated_at),
        "history": [
            {
                "action": entry.action,
                "from_phase": entry.from_phase or None,
                "to_phase": entry.to_phase,
                "stage_id": entry.stage_id or None,
                "operator": entry.operator,
                "claimed_operator": entry.claimed_operator or None,
                "reason": entry.reason,
                "at": format_rfc3339(entry.at),
            }
            for entry in history
        ],
    }


def stage_gates(*, plan: RolloutPlan, stage_id: str) -> StageReport:
    snap = snapshot_of(plan)
    stage = snap.stage(stage_id)
    if stage is None:
        raise ApiError(
            404,
            f"no stage {stage_id!r} in rollout plan {plan.plan_id!r}",
            plan_id=plan.plan_id,
            stage_id=stage_id,
        )
    return evaluate_stage(snap, stage, now=clock.now())


def stuck_plans(*, threshold_seconds: int) -> list[dict[str, Any]]:
    """Plans in `published`/`active` whose last transition is older than the threshold."""
    cutoff = clock.now() - timedelta(seconds=threshold_seconds)
    plans = RolloutPlan.objects.filter(phase__in=RUNNING_PHASES, updated_at__lt=cutoff).order_by(
        "updated_at"
    )
    now = clock.now()
    result = []
    for plan in plans:
        snap = snapshot_of(plan)
        stage = snap.current
        report = evaluate_stage(snap, stage, now=now)
        result.append(
            {
                "plan_id": plan.plan_id,
                "phase": plan.phase,
                "current_stage_id": plan.current_stage_id,
                "stuck_since": format_rfc3339(plan.updated_at),
                "stuck_reason": f"no progress for {_age(now - plan.updated_at)}; "
                + unmet_reason(report),
            }
        )
    return result


def _age(delta: timedelta) -> str:
    from rollouts.gates import human_duration

    return human_duration(delta.total_seconds())


def event_gate_windows_start() -> datetime | None:
    """The oldest event arrival time an `event_threshold` gate may still read, or None.

    Such a gate counts events received after its stage opened (`received_at > opened_at`), so
    events retention (events/retention.py) keeps everything received since the earliest
    `opened_at` of an opened, not yet promoted stage (open, or halted: a halted plan may be
    resumed) that has such a gate, in any plan that is not over. One query for the plans, their
    snapshots from the cache.
    """
    from rollouts.gates.event_threshold import EventThreshold

    oldest: datetime | None = None
    for plan in RolloutPlan.objects.filter(phase__in=NON_TERMINAL_PHASES):
        for stage in snapshot_of(plan).stages:
            if stage.opened_at is None or stage.phase not in _WINDOW_STAGE_PHASES:
                continue
            if not any(gate.kind == EventThreshold.kind for gate in stage.gates):
                continue
            if oldest is None or stage.opened_at < oldest:
                oldest = stage.opened_at
    return oldest


_WINDOW_STAGE_PHASES = frozenset({StagePhase.OPEN, StagePhase.HALTED})

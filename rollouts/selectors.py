"""Reads of rollout state: the rollout-aware desired release, listings, gates, stuck plans."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from django.db import connection
from django.db.models import Count

from core.errors import ApiError
from core.params import format_rfc3339
from releases.models import NodeAck, Release
from rollouts import clock
from rollouts.cohort import PlanSnapshot, display_percent, snapshot_by_pk, snapshot_of
from rollouts.gates import StageReport, evaluate_stage, unmet_reason
from rollouts.models import RUNNING_PHASES, Phase, RolloutPlan, RolloutTransition

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
    (rollout-aware, API.md §4 "Which release a node gets"). None: no release for this node."""
    return desired_for_node(latest=latest, node_id=node_id)[0]


def desired_for_node(
    *, latest: Release, node_id: str
) -> tuple[Release | None, PlanSnapshot | None]:
    """`desired_release_for_node`, and the snapshot of the plan that decided it (None when no
    plan governs `latest`): the signed desired state names that plan and its digest.

    The poll hot path: one indexed query when `latest` has no plan; otherwise the plan's cached
    snapshot (keyed by its version), at most one more indexed query (the node's `active` ack) and
    the previous release (cached). Plain SQL: the ORM's query building costs more than SQLite.
    """
    with connection.cursor() as cursor:
        cursor.execute(_PLAN_HEAD_SQL, [latest.pk])
        head = cursor.fetchone()
        if head is None:
            return latest, None
        # The newest plan governs: a new plan for a release can only be published once the
        # older ones are terminal.
        snap = snapshot_by_pk(int(head[0]), int(head[1]))
        if snap is None or snap.in_rollout(node_id):
            return latest, snap
        cursor.execute(_ACTIVE_ACK_SQL, [latest.pk, node_id, NodeAck.Status.ACTIVE.value])
        if cursor.fetchone() is not None:
            return latest, snap
    return _previous_release(latest), snap


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


def signing_ring() -> Any:
    """The keyring that signs plans and desired-state answers (`rollouts.signing.KeyRing`)."""
    from rollouts import signing

    return signing.current_ring()


def signing_generation() -> int:
    """Changes whenever this process rotated or re-read its keys (`rollouts.signing`)."""
    from rollouts import signing

    return signing.generation()


def signing_key_refusal(path: Any, using_postgres: bool) -> str | None:
    """Why `serve` must not mint a new signing key at `path` (it does not exist), as one line;
    None when a first key may be created. Nodes pin the key: a new one would make them reject
    every answer, so it is refused when signed plans exist or, on PostgreSQL, when another
    replica already registered its key (docs/trust.md)."""
    from core import ha

    signed = RolloutPlan.objects.count()
    if signed:
        key_ids = sorted(set(RolloutPlan.objects.values_list("key_id", flat=True)))
        return (
            f"refusing to start: no signing key at {path}, but {signed} rollout plans were "
            f"signed by key {', '.join(key_ids)}; restore that keyring (or pass "
            "--signing-key-file) instead of minting a key the nodes do not pin"
        )
    if using_postgres:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT node_id FROM {ha.SHARED_KEY_TABLE} WHERE name = %s",
                ["rollout signing key"],
            )
            row = cursor.fetchone()
        if row is not None:
            return (
                f"refusing to start: no signing key at {path}, and replica {row[0]} already "
                "signs with one; give every replica the same --signing-key-file (docs/trust.md)"
            )
    return None


def signing_keys_as_list(ring: Any) -> list[dict[str, Any]]:
    """`GET /v1/signing-keys` entries: id, public key PEM, status, since (active key first)."""
    return [
        {
            "key_id": key.key_id,
            "public_key": key.public_pem,
            "status": key.status,
            "since": format_rfc3339(key.since),
        }
        for key in ring.keys
    ]

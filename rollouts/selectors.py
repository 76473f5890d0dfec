"""Reads of rollout state: the rollout-aware desired release, listings, gates, stuck plans."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count
from django.db.models.signals import post_delete, post_migrate, post_save

from core import sharedstate
from core.errors import ApiError
from core.params import format_rfc3339
from releases.models import NodeAck, Release
from releases.selectors import ack_book
from rollouts import clock, progress
from rollouts.cohort import (
    PlanSnapshot,
    cached_snapshot,
    display_percent,
    snapshot_by_pk,
    snapshot_of,
)
from rollouts.gates import StageReport, evaluate_stage, unmet_reason
from rollouts.models import (
    NON_TERMINAL_PHASES,
    RUNNING_PHASES,
    Phase,
    RolloutPlan,
    RolloutTransition,
    StagePhase,
    StageStatus,
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

_MISSING: Any = object()


class _PlanHeads:
    """release pk -> (id, version) of its newest plan, or None: no plan (SQLite store only).

    Every change to a plan or its stages bumps the plan's version in a transaction that calls
    `plans_changed()` (rollouts.services), which empties this cache at once and again after the
    commit; model signals do the same for other writes (admin, tests, flush). A generation
    counter makes a read that raced with a change drop its result instead of caching it. Like
    the latest-release cache (releases.selectors), only for the SQLite store: one `serve`
    process owns it, so every plan change passes through this process (under `serve --workers
    N`, a shared change counter carries the change to the other workers: `core.sharedstate`). On
    PostgreSQL every poll reads the plan head (one indexed query).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._entries: dict[int, tuple[int, int] | None] = {}
        self._others = sharedstate.Watch(sharedstate.PLANS)

    @staticmethod
    def usable() -> bool:
        return connection.vendor == "sqlite" and not connection.in_atomic_block

    def _sync(self) -> None:
        if self._others.moved():  # another worker (serve --workers) changed a plan
            self._drop()

    def get(self, release_pk: int) -> Any:
        self._sync()
        return self._entries.get(release_pk, _MISSING)

    def generation(self) -> int:
        self._sync()
        return self._generation

    def put(self, release_pk: int, generation: int, head: tuple[int, int] | None) -> None:
        with self._lock:
            if generation == self._generation:
                if len(self._entries) >= 4096:
                    self._entries.clear()
                self._entries[release_pk] = head

    def _drop(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def invalidate(self) -> None:
        """A plan changed in this process: empty the cache here and in the other workers."""
        self._drop()
        sharedstate.bump(sharedstate.PLANS)


plan_heads = _PlanHeads()


def plans_changed(**_: Any) -> None:
    """A plan or its stages changed (or will, when the current transaction commits)."""
    plan_heads.invalidate()
    if connection.in_atomic_block:  # readers outside the transaction may refill before commit
        connection.on_commit(plan_heads.invalidate)


post_save.connect(plans_changed, sender=RolloutPlan, dispatch_uid="rollouts.plan_heads.save")
post_delete.connect(plans_changed, sender=RolloutPlan, dispatch_uid="rollouts.plan_heads.del")
post_save.connect(plans_changed, sender=StageStatus, dispatch_uid="rollouts.plan_heads.stage")
post_migrate.connect(plans_changed, dispatch_uid="rollouts.plan_heads.migrate")


def _plan_head(cursor: Any, release_pk: int) -> tuple[int, int] | None:
    use_cache = plan_heads.usable()
    if use_cache:
        head = plan_heads.get(release_pk)
        if head is not _MISSING:
            return head
        generation = plan_heads.generation()
    cursor.execute(_PLAN_HEAD_SQL, [release_pk])
    row = cursor.fetchone()
    head = None if row is None else (int(row[0]), int(row[1]))
    if use_cache:
        plan_heads.put(release_pk, generation, head)
    return head


def desired_release_for_node(*, latest: Release, node_id: str) -> Release | None:
    """The release `node_id` should run when `latest` is its channel's latest release
    (rollout-aware, API.md §4 "Which release a node gets"). None: no release for this node."""
    return desired_for_node(latest=latest, node_id=node_id)[0]


def desired_for_node(
    *, latest: Release, node_id: str
) -> tuple[Release | None, PlanSnapshot | None]:
    """`desired_release_for_node`, and the snapshot of the plan that decided it (None when no
    plan governs `latest`): the signed desired state names that plan and its digest.

    The poll hot path. On SQLite usually no query at all: the plan head (`plan_heads`), the
    plan's snapshot (keyed by its version), whether the node acked `active` (the in-process ack
    book, `releases.ackbook`) and the previous release are all cached in this process. On
    PostgreSQL one indexed query when `latest` has no plan; otherwise the cached snapshot, at
    most one more indexed query (the node's `active` ack) and the previous release (cached).
    Plain SQL: the ORM's query building costs more than SQLite.
    """
    with connection.cursor() as cursor:
        head = _plan_head(cursor, latest.pk)
        if head is None:
            return latest, None
        # The newest plan governs: a new plan for a release can only be published once the
        # older ones are terminal.
        snap = snapshot_by_pk(head[0], head[1])
        if snap is None or snap.in_rollout(node_id):
            return latest, snap
        active = ack_book.is_active(latest.pk, node_id)
        if active is None:
            cursor.execute(_ACTIVE_ACK_SQL, [latest.pk, node_id, NodeAck.Status.ACTIVE.value])
            active = cursor.fetchone() is not None
        if active:
            return latest, snap
    return _previous_release(latest), snap


def desired_release_cached(*, latest: Release, node_id: str) -> Any:
    """`desired_for_node` ((release, deciding plan's snapshot)) from this process's caches only,
    or `MISSING` when any piece is not cached (then call `desired_for_node` on a database
    thread). Never touches a database connection: safe on the event loop. The caches are only
    ever filled on SQLite."""
    head = plan_heads.get(latest.pk)
    if head is _MISSING:
        return MISSING
    if head is None:
        return latest, None
    snap = cached_snapshot(head[0], head[1])
    if snap is None:
        return MISSING
    if snap.in_rollout(node_id):
        return latest, snap
    active = ack_book.is_active_cached(latest.pk, node_id)
    if active is None:
        return MISSING
    if active:
        return latest, snap
    previous = _previous.get((latest.pk, latest.release_id), MISSING)
    if previous is MISSING:
        return MISSING
    return previous, snap


MISSING = _MISSING


def rollout_phase_counts() -> dict[str, int]:
    """Number of rollout plans per phase (every phase present), for `cp_rollout_plans` (and its
    deprecated twin `cp_rollout_plans_total`)."""
    counts = {phase.value: 0 for phase in Phase}
    for row in RolloutPlan.objects.values("phase").annotate(n=Count("id")).order_by():
        counts[row["phase"]] = row["n"]
    return counts


@dataclass(frozen=True)
class LiveSummary:
    """What `/metrics` says about the live rollouts (`rollouts.metrics`)."""

    pending_approvals: int  # open stages of running plans whose manual gate nobody approved
    oldest_pending_approval_seconds: float  # since the oldest of those stages opened (0: none)
    stuck_plans: int  # running plans without a transition for `stuck_threshold` seconds
    max_idle_seconds: float  # the longest time a running plan has gone without a transition


def rollout_live_summary(*, stuck_threshold: int) -> LiveSummary:
    """One read of the running plans (published/active: a handful, never the history) and their
    cached snapshots."""
    now = clock.now()
    pending = 0
    oldest = 0.0
    stuck = 0
    idle_max = 0.0
    for plan in RolloutPlan.objects.filter(phase__in=RUNNING_PHASES):
        idle = max((now - plan.updated_at).total_seconds(), 0.0)
        idle_max = max(idle_max, idle)
        if idle >= stuck_threshold:
            stuck += 1
        stage = snapshot_of(plan).current
        if (
            stage.phase == StagePhase.OPEN
            and not stage.manual_approved
            and any(gate.kind == "manual" for gate in stage.gates)
        ):
            pending += 1
            if stage.opened_at is not None:
                oldest = max(oldest, (now - stage.opened_at).total_seconds())
    return LiveSummary(pending, oldest, stuck, idle_max)


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
    nodes = progress.plan_progress(plan, snap=snap)
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
                "nodes": progress.counts_dict(nodes.stage_counts[stage.position]),
            }
            for stage in snap.stages
        ],
        "nodes": progress.counts_dict(nodes.plan_counts),
        "silent_after_seconds": display_percent(nodes.silent_after),
        "known_nodes": nodes.known,
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


def plan_nodes(
    *, plan: RolloutPlan, stage_id: str | None, state: str, limit: int, cursor: str | None
) -> dict[str, Any]:
    """`GET /v1/rollouts/{plan_id}/nodes`: one page of the nodes behind a count (the current
    stage's when `stage_id` is absent), by node_id; 404 for an unknown stage."""
    nodes = progress.plan_progress(plan)
    if stage_id is None:
        position = nodes.current_position
    else:
        found = nodes.position(stage_id)
        if found is None:
            raise ApiError(
                404,
                f"no stage {stage_id!r} in rollout plan {plan.plan_id!r}",
                plan_id=plan.plan_id,
                stage_id=stage_id,
            )
        position = found
    rows, next_cursor = nodes.page(position=position, state=state, after=cursor, limit=limit)
    stage_ids = nodes.stage_ids
    return {
        "plan_id": plan.plan_id,
        "stage_id": stage_ids[position],
        "state": state,
        "total": nodes.stage_counts[position][state],
        "nodes": [
            {
                "node_id": row.node_id,
                "state": row.state,
                "entry_stage_id": stage_ids[row.entry],
                "ack_status": row.ack_status,
                "acked_at": format_rfc3339(row.acked_at),
                "ack_updated_at": format_rfc3339(row.ack_updated_at),
                "last_seen": format_rfc3339(row.last_seen),
            }
            for row in rows
        ],
        "count": len(rows),
        "limit": limit,
        "next_cursor": next_cursor,
        "nodes_at": format_rfc3339(nodes.generated_at),
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

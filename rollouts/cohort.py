"""Who is in a rollout (API.md §4 "Which release a node gets").

A node is in plan P's rollout when it is listed in an open/promoted stage's `nodes`, or its
bucket is below the `percent` of the furthest open or promoted stage (a halted stage is neither,
so a halted plan keeps the furthest promoted stage's share), or it already acked the release
`active`. Cancelled and rolled-back plans take nobody new. The bucket is deterministic:

    int(sha256(f"{plan_id}:{node_id}")[:8], 16) % 10000 / 100      # 0.00 .. 99.99

`PlanSnapshot` is an immutable picture of a plan at one `version`, cached per (plan, version):
every change to a plan or its stages bumps the version, so a cached snapshot is never stale.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from rollouts.models import TERMINAL_PHASES, Phase, RolloutPlan, StagePhase, StageStatus
from rollouts.signing import digest_of
from rollouts.validation import GateSpec, stages_of

LIVE_STAGE_PHASES = frozenset({StagePhase.OPEN, StagePhase.PROMOTED})
NO_NEW_NODES = frozenset({Phase.CANCELLED, Phase.ROLLED_BACK})


def display_percent(value: float) -> float | int:
    """5.0 -> 5, 37.5 -> 37.5: percents read back as they were written in the spec."""
    return int(value) if float(value).is_integer() else value


def bucket(plan_id: str, node_id: str) -> float:
    digest = hashlib.sha256(f"{plan_id}:{node_id}".encode()).hexdigest()
    return int(digest[:8], 16) % 10000 / 100


@dataclass(frozen=True)
class StageSnap:
    pk: int
    position: int
    stage_id: str
    phase: str
    percent: float
    nodes: frozenset[str]
    gates: tuple[GateSpec, ...]
    opened_at: datetime | None
    promoted_at: datetime | None
    manual_approved: bool
    manual_approved_by: str
    halt_reason: str


@dataclass(frozen=True)
class PlanSnapshot:
    pk: int
    plan_id: str
    release_pk: int
    phase: str
    version: int
    current_stage_id: str
    updated_at: datetime
    stages: tuple[StageSnap, ...]
    digest: str = ""  # the stored spec digest ("sha256:<hex>")
    # The stored spec bytes no longer match `digest` (altered outside the API): the snapshot
    # uses none of the spec (no listed nodes, no gates) and shows the plan halted.
    tampered: bool = False

    @property
    def takes_new_nodes(self) -> bool:
        return self.phase not in NO_NEW_NODES

    def stage(self, stage_id: str) -> StageSnap | None:
        for stage in self.stages:
            if stage.stage_id == stage_id:
                return stage
        return None

    @property
    def current(self) -> StageSnap:
        stage = self.stage(self.current_stage_id)
        assert stage is not None
        return stage

    def rollout_percent(self) -> float:
        """The share of nodes in the rollout now (0 when it takes nobody new)."""
        if not self.takes_new_nodes:
            return 0.0
        live = [s.percent for s in self.stages if s.phase in LIVE_STAGE_PHASES]
        return max(live, default=0.0)

    def explicit_nodes(self) -> frozenset[str]:
        if not self.takes_new_nodes:
            return frozenset()
        nodes: set[str] = set()
        for stage in self.stages:
            if stage.phase in LIVE_STAGE_PHASES:
                nodes |= stage.nodes
        return frozenset(nodes)

    def in_rollout(self, node_id: str) -> bool:
        """In by bucket or explicit listing (the already-`active` rule needs the acks)."""
        if not self.takes_new_nodes:
            return False
        if node_id in self.explicit_nodes():
            return True
        return bucket(self.plan_id, node_id) < self.rollout_percent()

    def stage_member(self, node_id: str, position: int) -> bool:
        """In the rollout up to and including stage `position` (bucket or explicit listing)."""
        stage = self.stages[position]
        if bucket(self.plan_id, node_id) < stage.percent:
            return True
        return any(node_id in s.nodes for s in self.stages[: position + 1])


# Keyed by (pk, version). Only committed states are cached (never inside a transaction), and a
# committed plan's pk is never reused, so a key always means the same state.
_cache: dict[tuple[int, int], PlanSnapshot] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 512


def build_snapshot(plan: RolloutPlan) -> PlanSnapshot:
    raw = bytes(plan.spec)
    actual = digest_of(raw)
    if actual != plan.digest:
        return _tampered_snapshot(plan, actual)
    spec_stages = stages_of(raw)
    rows = list(StageStatus.objects.filter(plan_id=plan.pk).order_by("position"))
    stages = tuple(
        StageSnap(
            pk=row.pk,
            position=row.position,
            stage_id=row.stage_id,
            phase=row.phase,
            percent=row.percent,
            nodes=frozenset(spec.nodes),
            gates=spec.gates,
            opened_at=row.opened_at,
            promoted_at=row.promoted_at,
            manual_approved=row.manual_approved,
            manual_approved_by=row.manual_approved_by,
            halt_reason=row.halt_reason,
        )
        for row, spec in zip(rows, spec_stages, strict=True)
    )
    return PlanSnapshot(
        pk=plan.pk,
        plan_id=plan.plan_id,
        release_pk=plan.release_id,
        phase=plan.phase,
        version=plan.version,
        current_stage_id=plan.current_stage_id,
        updated_at=plan.updated_at,
        stages=stages,
        digest=plan.digest,
    )


def _tampered_snapshot(plan: RolloutPlan, actual: str) -> PlanSnapshot:
    """The plan as if halted, built from its stage rows only: the altered spec's nodes and
    gates are never used. Reports the mismatch (halt, metric, audit, log) through
    `rollouts.services.plan_tampered`, once per plan and altered content in this process."""
    reason = _tamper_reason(plan, actual)
    rows = list(StageStatus.objects.filter(plan_id=plan.pk).order_by("position"))
    stages = tuple(
        StageSnap(
            pk=row.pk,
            position=row.position,
            stage_id=row.stage_id,
            phase=StagePhase.HALTED if row.phase == StagePhase.OPEN else row.phase,
            percent=row.percent,
            nodes=frozenset(),
            gates=(),
            opened_at=row.opened_at,
            promoted_at=row.promoted_at,
            manual_approved=row.manual_approved,
            manual_approved_by=row.manual_approved_by,
            halt_reason=reason if row.phase == StagePhase.OPEN else row.halt_reason,
        )
        for row in rows
    )
    _report(plan, actual, reason)
    return PlanSnapshot(
        pk=plan.pk,
        plan_id=plan.plan_id,
        release_pk=plan.release_id,
        phase=plan.phase if plan.phase in TERMINAL_PHASES else Phase.HALTED,
        version=plan.version,
        current_stage_id=plan.current_stage_id,
        updated_at=plan.updated_at,
        stages=stages,
        digest=plan.digest,
        tampered=True,
    )


# (plan pk, digest of the altered bytes) already reported by this process.
_reported: set[tuple[int, str]] = set()


def _tamper_reason(plan: RolloutPlan, actual: str) -> str:
    return (
        f"the stored spec no longer matches its signed digest (signed {plan.digest}, stored "
        f"bytes {actual}): it was altered outside the API"
    )


def _report(plan: RolloutPlan, actual: str, reason: str) -> None:
    key = (plan.pk, actual)
    if key in _reported:
        return
    with _cache_lock:
        first = key not in _reported
        _reported.add(key)
    if first:
        from rollouts.services import plan_tampered

        plan_tampered(plan=plan, actual_digest=actual, reason=reason)


def spec_intact(plan: RolloutPlan) -> bool:
    """Check the stored spec bytes of this plan row against its digest, uncached (one sha256 of
    the spec): False, and the mismatch reported (`rollouts.services.plan_tampered`, once per
    altered content), when they differ. For the evaluator and the actions, which read the row
    anyway; the poll path relies on the per-version snapshot (checked when it is built)."""
    actual = digest_of(bytes(plan.spec))
    if actual == plan.digest:
        return True
    _report(plan, actual, _tamper_reason(plan, actual))
    return False


def snapshot_of(plan: RolloutPlan) -> PlanSnapshot:
    """The plan's snapshot at its current version (cached)."""
    key = (plan.pk, plan.version)
    snap = _cache.get(key)
    if snap is None:
        snap = build_snapshot(plan)
        # Not inside a transaction (it may roll back and the pk be reused, as in tests), and not
        # when the stages, read after the plan row, may have moved on meanwhile.
        if (
            not connection.in_atomic_block
            and RolloutPlan.objects.filter(pk=plan.pk, version=plan.version).exists()
        ):
            with _cache_lock:
                if len(_cache) >= _CACHE_MAX:
                    _cache.clear()
                _cache[key] = snap
    return snap


def snapshot_by_pk(pk: int, version: int) -> PlanSnapshot | None:
    snap = _cache.get((pk, version))
    if snap is not None:
        return snap
    plan = RolloutPlan.objects.filter(pk=pk).first()
    return snapshot_of(plan) if plan is not None else None

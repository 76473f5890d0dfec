"""Gates: what lets a stage be promoted, or halts the plan (API.md §4 "Gates and automatic
progress").

One module per kind (`time_soak`, `manual`, `ack_success`, `ack_failure`, `event_threshold`), each
with its validation, its evaluation and its schema side by side (`base.GateKind`), registered in
`registry.GATE_KINDS`; the validator and the evaluator dispatch through it.

Evaluating one stage reads at most two aggregates: the stage's ack counts per status
(`stage_ack_counts`: on SQLite kept in memory and moved by every ack, elsewhere counted from the
release's acks), and, for `event_threshold`, the distinct reporting nodes among those on the new
release. The time comes
from `now`, which callers take from `rollouts.clock.now()` so that tests control it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from releases.models import NodeAck
from releases.selectors import ack_book
from rollouts.gates.base import AckCounts, GateKind, GateResult, human_duration
from rollouts.gates.registry import FAILURE_GATES, GATE_KINDS, gate_kind, gates_openapi_schema

if TYPE_CHECKING:
    from rollouts.cohort import PlanSnapshot, StageSnap


@dataclass(frozen=True)
class StageReport:
    stage: StageSnap
    gates: tuple[GateResult, ...] = field(default=())

    @property
    def all_passed(self) -> bool:
        """True when the stage has gates and every one passes (no gates: promote by hand)."""
        return bool(self.gates) and all(gate.passed for gate in self.gates)

    @property
    def tripped(self) -> tuple[GateResult, ...]:
        return tuple(gate for gate in self.gates if gate.tripped)

    @property
    def unmet(self) -> tuple[GateResult, ...]:
        return tuple(gate for gate in self.gates if not gate.passed)


def _member_rule(snap: PlanSnapshot, stage: StageSnap) -> tuple[object, ...]:
    """What decides `snap.stage_member(node, stage.position)`: a key for the ack book."""
    listed = frozenset().union(*(s.nodes for s in snap.stages[: stage.position + 1]))
    return ("stage", snap.pk, snap.plan_id, stage.position, stage.percent, listed)


def stage_ack_counts_recount(
    snap: PlanSnapshot, stage: StageSnap, *, active_nodes: bool = True
) -> AckCounts:
    """The stage's ack counts read from the database now: every ack of the plan's release
    (one query), kept when `active` or from a stage member."""
    by_status: dict[str, int] = {}
    active: list[str] = []
    acks = NodeAck.objects.filter(release_id=snap.release_pk).values_list("node_id", "status")
    for node, status in acks:
        if status == NodeAck.Status.ACTIVE:
            if active_nodes:
                active.append(node)
        elif not snap.stage_member(node, stage.position):
            continue
        by_status[status] = by_status.get(status, 0) + 1
    return AckCounts(by_status=by_status, active_nodes=active)


def stage_ack_counts(
    snap: PlanSnapshot, stage: StageSnap, *, active_nodes: bool = True
) -> AckCounts:
    """The stage's ack counts (`AckCounts`): on SQLite from the in-process ack book
    (`releases.ackbook`), which counts each stage's acks once and then moves the counts with
    every ack the writer commits, so an evaluation pass costs no scan of the acks; elsewhere
    (PostgreSQL, inside a transaction) `stage_ack_counts_recount`. Both give the same counts."""
    counted = ack_book.counts(
        snap.release_pk,
        _member_rule(snap, stage),
        lambda node: snap.stage_member(node, stage.position),
        active_nodes=active_nodes,
    )
    if counted is None:
        return stage_ack_counts_recount(snap, stage, active_nodes=active_nodes)
    by_status, active = counted
    return AckCounts(by_status=by_status, active_nodes=active)


def evaluate_stage(snap: PlanSnapshot, stage: StageSnap, *, now: datetime) -> StageReport:
    kinds = [gate_kind(gate.kind) for gate in stage.gates]
    acks = (
        stage_ack_counts(snap, stage, active_nodes=any(k.needs_active_nodes for k in kinds))
        if any(kind.needs_acks for kind in kinds)
        else None
    )
    return StageReport(
        stage=stage,
        gates=tuple(
            kind.evaluate(gate.params, stage, acks, now)
            for kind, gate in zip(kinds, stage.gates, strict=True)
        ),
    )


def halt_reason(report: StageReport) -> str:
    reasons = "; ".join(f"{gate.kind} gate tripped: {gate.detail}" for gate in report.tripped)
    return f"stage {report.stage.stage_id}: {reasons}"


def unmet_reason(report: StageReport) -> str:
    stage = report.stage.stage_id
    if not report.gates:
        return f"stage {stage} has no gates; it is promoted only by hand"
    unmet = report.unmet
    if not unmet:
        return f"stage {stage}: all gates pass; promotion is pending"
    return f"stage {stage}: unmet gates: " + "; ".join(f"{g.kind} ({g.detail})" for g in unmet)


__all__ = [
    "FAILURE_GATES",
    "GATE_KINDS",
    "AckCounts",
    "GateKind",
    "GateResult",
    "StageReport",
    "evaluate_stage",
    "gate_kind",
    "gates_openapi_schema",
    "halt_reason",
    "human_duration",
    "unmet_reason",
]

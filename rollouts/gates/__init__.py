"""Gates: what lets a stage be promoted, or halts the plan (API.md §4 "Gates and automatic
progress").

One module per kind (`time_soak`, `manual`, `ack_success`, `ack_failure`, `event_threshold`), each
with its validation, its evaluation and its schema side by side (`base.GateKind`), registered in
`registry.GATE_KINDS`; the validator and the evaluator dispatch through it.

Evaluating one stage reads at most two aggregates: the release's acks (node, status), and, for
`event_threshold`, the distinct reporting nodes among those on the new release. The time comes
from `now`, which callers take from `rollouts.clock.now()` so that tests control it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from releases.models import NodeAck
from rollouts.gates.base import GateKind, GateResult, human_duration
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


def stage_acks(snap: PlanSnapshot, stage: StageSnap) -> dict[str, str]:
    """node_id -> ack status, for the stage's nodes' acks of the plan's release."""
    acks = NodeAck.objects.filter(release_id=snap.release_pk).values_list("node_id", "status")
    return {
        node: status
        for node, status in acks
        if status == NodeAck.Status.ACTIVE or snap.stage_member(node, stage.position)
    }


def evaluate_stage(snap: PlanSnapshot, stage: StageSnap, *, now: datetime) -> StageReport:
    kinds = [gate_kind(gate.kind) for gate in stage.gates]
    acks = stage_acks(snap, stage) if any(kind.needs_acks for kind in kinds) else None
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

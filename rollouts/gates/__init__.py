"""Gate evaluation for one stage (API.md §4 "Gates and automatic progress").

Two aggregate reads at most per stage: the release's acks (node, status), and, for
`event_threshold`, the distinct reporting nodes among those on the new release (chunked
`node_id IN (...)` on the (node_id, event_type, id) index). The time comes from `now`, which
callers take from `rollouts.clock.now()` so that tests control it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from events.models import Event
from releases.models import NodeAck
from rollouts.cohort import PlanSnapshot, StageSnap
from rollouts.models import StagePhase
from rollouts.validation import FAILURE_GATES, GateSpec

ACTIVE = NodeAck.Status.ACTIVE
FAILED_STATUSES = frozenset({NodeAck.Status.FAILED, NodeAck.Status.REJECTED})
_IN_CHUNK = 500


@dataclass(frozen=True)
class GateResult:
    kind: str
    passed: bool
    detail: str
    tripped: bool = False  # a failure gate over its limit: the plan must halt

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "passed": self.passed, "detail": self.detail}


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


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or not parts:
        parts.append(f"{secs}s")
    return "".join(parts)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _nodes_reporting(node_ids: Iterable[str], event_type: str, since: datetime) -> set[str]:
    nodes = sorted(node_ids)
    reporting: set[str] = set()
    for start in range(0, len(nodes), _IN_CHUNK):
        chunk = nodes[start : start + _IN_CHUNK]
        reporting.update(
            Event.objects.filter(node_id__in=chunk, event_type=event_type, received_at__gt=since)
            .values_list("node_id", flat=True)
            .distinct()
        )
    return reporting


def stage_acks(snap: PlanSnapshot, stage: StageSnap) -> dict[str, str]:
    """node_id -> ack status, for the stage's nodes' acks of the plan's release."""
    acks = NodeAck.objects.filter(release_id=snap.release_pk).values_list("node_id", "status")
    return {
        node: status
        for node, status in acks
        if status == ACTIVE or snap.stage_member(node, stage.position)
    }


def _evaluate_gate(
    gate: GateSpec, stage: StageSnap, acks: dict[str, str] | None, now: datetime
) -> GateResult:
    kind, params = gate.kind, gate.params
    if kind == "time_soak":
        required = float(params["seconds"])
        if stage.opened_at is None or stage.phase == StagePhase.PENDING:
            return GateResult(kind, False, "the stage is not open yet; the soak has not started")
        elapsed = (now - stage.opened_at).total_seconds()
        passed = elapsed >= required
        return GateResult(
            kind,
            passed,
            f"soak elapsed {human_duration(min(elapsed, required))} "
            f"of required {human_duration(required)}",
        )
    if kind == "manual":
        if stage.manual_approved:
            who = f" by {stage.manual_approved_by}" if stage.manual_approved_by else ""
            return GateResult(kind, True, f"approved{who}")
        return GateResult(kind, False, "awaiting operator approval")
    assert acks is not None
    total = len(acks)
    if kind == "ack_success":
        active = sum(1 for status in acks.values() if status == ACTIVE)
        ratio = _ratio(active, total)
        min_ratio, min_acks = float(params["min_ratio"]), int(params["min_acks"])
        passed = total >= min_acks and ratio >= min_ratio
        return GateResult(
            kind,
            passed,
            f"{active} of {total} stage acks active "
            f"(ratio {ratio:.3f}, needs >= {min_ratio:g}); "
            f"{total} acks of at least {min_acks}",
        )
    if kind == "ack_failure":
        failed = sum(1 for status in acks.values() if status in FAILED_STATUSES)
        ratio = _ratio(failed, total)
        max_ratio = float(params["max_ratio"])
        tripped = ratio > max_ratio
        return GateResult(
            kind,
            not tripped,
            f"{failed} of {total} stage acks failed or rejected "
            f"(ratio {ratio:.3f}, limit {max_ratio:g})",
            tripped,
        )
    if kind == "event_threshold":
        event_type, max_ratio = str(params["event_type"]), float(params["max_ratio"])
        min_nodes = int(params["min_nodes"])
        on_new = [node for node, status in acks.items() if status == ACTIVE]
        if len(on_new) < min_nodes:
            return GateResult(
                kind,
                True,
                f"{len(on_new)} stage nodes on the new release; "
                f"{event_type} is counted from {min_nodes}",
            )
        if stage.opened_at is None:
            return GateResult(kind, True, "the stage is not open yet")
        reporting = _nodes_reporting(on_new, event_type, stage.opened_at)
        ratio = _ratio(len(reporting), len(on_new))
        tripped = ratio > max_ratio
        return GateResult(
            kind,
            not tripped,
            f"{len(reporting)} of {len(on_new)} stage nodes on "
            f"the new release reported {event_type} since the stage opened "
            f"(ratio {ratio:.3f}, limit {max_ratio:g})",
            tripped,
        )
    raise ValueError(f"unknown gate kind {kind!r}")  # validation rejects these on publish


def evaluate_stage(snap: PlanSnapshot, stage: StageSnap, *, now: datetime) -> StageReport:
    needs_acks = any(gate.kind not in ("time_soak", "manual") for gate in stage.gates)
    acks = stage_acks(snap, stage) if needs_acks else None
    return StageReport(
        stage=stage,
        gates=tuple(_evaluate_gate(gate, stage, acks, now) for gate in stage.gates),
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


__all__ = ["FAILURE_GATES", "GateResult", "StageReport", "evaluate_stage"]

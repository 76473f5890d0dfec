"""`ack_failure`: halts the plan when too many of the stage's acks failed or were rejected."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from releases.models import NodeAck
from rollouts.gates.base import GateKind, GateResult, check_ratio, ratio_schema, share

if TYPE_CHECKING:
    from rollouts.cohort import StageSnap

FAILED_STATUSES = frozenset({NodeAck.Status.FAILED, NodeAck.Status.REJECTED})


class AckFailure(GateKind):
    kind = "ack_failure"
    description = "Halts the plan when `failed`+`rejected` acks / stage acks > `max_ratio`."
    required = ("max_ratio",)
    properties = {"max_ratio": ratio_schema("Tolerated share of failed or rejected acks.")}
    halts = True
    needs_acks = True

    def validate(self, params: dict[str, Any], where: str) -> None:
        check_ratio(params, "max_ratio", where)

    def evaluate(
        self,
        params: dict[str, Any],
        stage: StageSnap,
        acks: dict[str, str] | None,
        now: datetime,
    ) -> GateResult:
        assert acks is not None
        total = len(acks)
        failed = sum(1 for status in acks.values() if status in FAILED_STATUSES)
        ratio = share(failed, total)
        max_ratio = float(params["max_ratio"])
        tripped = ratio > max_ratio
        return GateResult(
            self.kind,
            not tripped,
            f"{failed} of {total} stage acks failed or rejected "
            f"(ratio {ratio:.3f}, limit {max_ratio:g})",
            tripped,
        )

"""`ack_failure`: halts the plan when too many of the stage's acks failed or were rejected."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rollouts.gates.base import (
    FAILED_STATUSES,
    AckCounts,
    GateKind,
    GateResult,
    check_ratio,
    ratio_schema,
    share,
)

if TYPE_CHECKING:
    from rollouts.cohort import StageSnap

__all__ = ["FAILED_STATUSES", "AckFailure"]


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
        acks: AckCounts | None,
        now: datetime,
    ) -> GateResult:
        assert acks is not None
        total, failed = acks.total, acks.failed
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

"""`manual`: passes once an operator approves the stage (`.../gates/approve`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rollouts.gates.base import AckCounts, GateKind, GateResult

if TYPE_CHECKING:
    from rollouts.cohort import StageSnap


class Manual(GateKind):
    kind = "manual"
    description = "Passes once approved (`.../gates/approve`)."

    def evaluate(
        self,
        params: dict[str, Any],
        stage: StageSnap,
        acks: AckCounts | None,
        now: datetime,
    ) -> GateResult:
        if stage.manual_approved:
            who = f" by {stage.manual_approved_by}" if stage.manual_approved_by else ""
            return GateResult(self.kind, True, f"approved{who}")
        return GateResult(self.kind, False, "awaiting operator approval")

"""`time_soak`: passes once the stage has been open `seconds`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from rollouts.gates.base import (
    AckCounts,
    GateKind,
    GateResult,
    human_duration,
    invalid_field,
    is_number,
)
from rollouts.models import StagePhase

if TYPE_CHECKING:
    from rollouts.cohort import StageSnap


class TimeSoak(GateKind):
    kind = "time_soak"
    description = "Passes once the stage has been open this many seconds."
    required = ("seconds",)
    properties = {"seconds": {"type": "number", "minimum": 0}}

    def validate(self, params: dict[str, Any], where: str) -> None:
        if not is_number(params["seconds"]) or params["seconds"] < 0:
            raise invalid_field(f"{where}.seconds", "must be a number of seconds >= 0")

    def evaluate(
        self,
        params: dict[str, Any],
        stage: StageSnap,
        acks: AckCounts | None,
        now: datetime,
    ) -> GateResult:
        required = float(params["seconds"])
        if stage.opened_at is None or stage.phase == StagePhase.PENDING:
            return GateResult(
                self.kind, False, "the stage is not open yet; the soak has not started"
            )
        elapsed = (now - stage.opened_at).total_seconds()
        return GateResult(
            self.kind,
            elapsed >= required,
            f"soak elapsed {human_duration(min(elapsed, required))} "
            f"of required {human_duration(required)}",
        )

"""`ack_success`: enough of the stage's acks say `active`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.jsonvalues import MAX_INT  # the JSON-values rule (docs/api.md)
from rollouts.gates.base import (
    AckCounts,
    GateKind,
    GateResult,
    check_ratio,
    invalid_field,
    is_int,
    ratio_schema,
    share,
)

if TYPE_CHECKING:
    from rollouts.cohort import StageSnap


class AckSuccess(GateKind):
    kind = "ack_success"
    description = "At least `min_acks` stage acks, and `active` acks / stage acks >= `min_ratio`."
    required = ("min_ratio",)
    defaults = {"min_acks": 1}
    properties = {
        "min_ratio": ratio_schema("Required share of `active` acks."),
        "min_acks": {"type": "integer", "minimum": 0, "maximum": MAX_INT, "default": 1},
    }
    needs_acks = True

    def validate(self, params: dict[str, Any], where: str) -> None:
        check_ratio(params, "min_ratio", where)
        if not is_int(params["min_acks"]) or params["min_acks"] < 0:
            raise invalid_field(f"{where}.min_acks", "must be an integer >= 0")

    def evaluate(
        self,
        params: dict[str, Any],
        stage: StageSnap,
        acks: AckCounts | None,
        now: datetime,
    ) -> GateResult:
        assert acks is not None
        total, active = acks.total, acks.active
        ratio = share(active, total)
        min_ratio, min_acks = float(params["min_ratio"]), int(params["min_acks"])
        return GateResult(
            self.kind,
            total >= min_acks and ratio >= min_ratio,
            f"{active} of {total} stage acks active "
            f"(ratio {ratio:.3f}, needs >= {min_ratio:g}); "
            f"{total} acks of at least {min_acks}",
        )

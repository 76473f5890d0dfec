"""`event_threshold`: halts the plan when too many of the stage's nodes on the new release sent an
event of one type since the stage opened.

One aggregate read: the distinct reporting nodes among those on the new release (chunked
`node_id IN (...)` on the (node_id, event_type, id) index).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.jsonvalues import MAX_INT  # the JSON-values rule (docs/api.md)
from events.models import Event
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

_IN_CHUNK = 500


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


class EventThreshold(GateKind):
    kind = "event_threshold"
    description = (
        "Halts the plan when more than `max_ratio` of the stage's nodes on the new release "
        "sent an `event_type` event since the stage opened (once `min_nodes` are on it)."
    )
    required = ("event_type", "max_ratio")
    defaults = {"min_nodes": 1}
    properties = {
        "event_type": {"type": "string", "minLength": 1, "maxLength": 256},
        "max_ratio": ratio_schema("Tolerated share of nodes sending the event."),
        "min_nodes": {"type": "integer", "minimum": 1, "maximum": MAX_INT, "default": 1},
    }
    halts = True
    needs_acks = True
    needs_active_nodes = True

    def validate(self, params: dict[str, Any], where: str) -> None:
        event_type = params["event_type"]
        if not isinstance(event_type, str) or not event_type or len(event_type) > 256:
            raise invalid_field(
                f"{where}.event_type", "must be a non-empty string of at most 256 chars"
            )
        check_ratio(params, "max_ratio", where)
        if not is_int(params["min_nodes"]) or params["min_nodes"] < 1:
            raise invalid_field(f"{where}.min_nodes", "must be an integer >= 1")

    def evaluate(
        self,
        params: dict[str, Any],
        stage: StageSnap,
        acks: AckCounts | None,
        now: datetime,
    ) -> GateResult:
        assert acks is not None
        event_type, max_ratio = str(params["event_type"]), float(params["max_ratio"])
        min_nodes = int(params["min_nodes"])
        on_new = acks.active_nodes
        if len(on_new) < min_nodes:
            return GateResult(
                self.kind,
                True,
                f"{len(on_new)} stage nodes on the new release; "
                f"{event_type} is counted from {min_nodes}",
            )
        if stage.opened_at is None:
            return GateResult(self.kind, True, "the stage is not open yet")
        reporting = _nodes_reporting(on_new, event_type, stage.opened_at)
        ratio = share(len(reporting), len(on_new))
        tripped = ratio > max_ratio
        return GateResult(
            self.kind,
            not tripped,
            f"{len(reporting)} of {len(on_new)} stage nodes on "
            f"the new release reported {event_type} since the stage opened "
            f"(ratio {ratio:.3f}, limit {max_ratio:g})",
            tripped,
        )

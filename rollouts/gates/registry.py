"""The gate kinds, by name, in the order the docs and the OpenAPI document list them."""

from __future__ import annotations

from typing import Any

from rollouts.gates.ack_failure import AckFailure
from rollouts.gates.ack_success import AckSuccess
from rollouts.gates.base import GateKind
from rollouts.gates.event_threshold import EventThreshold
from rollouts.gates.manual import Manual
from rollouts.gates.time_soak import TimeSoak

GATE_KINDS: dict[str, GateKind] = {
    kind.kind: kind for kind in (TimeSoak(), Manual(), AckSuccess(), AckFailure(), EventThreshold())
}
# Gates that halt the plan when tripped (they pass while under their limit).
FAILURE_GATES = frozenset(name for name, kind in GATE_KINDS.items() if kind.halts)


def gate_kind(name: str) -> GateKind:
    """The kind called `name`; ValueError for an unknown one (publishing refuses those)."""
    try:
        return GATE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown gate kind {name!r}") from None


def gates_openapi_schema() -> dict[str, Any]:
    """One gate in the OpenAPI document: one closed object per kind."""
    return {"oneOf": [kind.openapi_schema() for kind in GATE_KINDS.values()]}

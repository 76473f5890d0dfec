"""Validating a rollout plan spec (API.md §4 "Plan spec"). Pure: no database access.

Every error is an `ApiError(400, ...)` naming the field by its JSON path
(`stages[1].gates[0].max_ratio`). Unknown top-level and stage keys are kept (the spec is stored
as received); unknown keys inside a gate are rejected, since a misspelt gate parameter would
silently weaken a safety check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from core import jsonvalues
from core.errors import ApiError

MAX_STAGES = 50
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
RESERVED_PLAN_IDS = frozenset({"stuck"})

# kind -> (required parameters, optional parameters with defaults)
GATE_KINDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "time_soak": (("seconds",), {}),
    "manual": ((), {}),
    "ack_success": (("min_ratio",), {"min_acks": 1}),
    "ack_failure": (("max_ratio",), {}),
    "event_threshold": (("event_type", "max_ratio"), {"min_nodes": 1}),
}
# Gates that halt the plan when tripped (they pass while under their limit).
FAILURE_GATES = frozenset({"ack_failure", "event_threshold"})


@dataclass(frozen=True)
class GateSpec:
    kind: str
    params: dict[str, Any]


@dataclass(frozen=True)
class StageSpec:
    stage_id: str
    percent: float
    nodes: tuple[str, ...] = ()
    gates: tuple[GateSpec, ...] = ()


@dataclass(frozen=True)
class PlanSpec:
    plan_id: str | None
    release_id: str
    channel: str | None
    description: str
    created_by: str
    stages: tuple[StageSpec, ...] = field(default=())


def _bad(field_path: str, message: str) -> ApiError:
    return ApiError(400, f"invalid field '{field_path}': {message}", field=field_path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_str(body: dict[str, Any], key: str, max_len: int = 4096) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(key, "must be a string")
    if len(value) > max_len:
        raise _bad(key, f"must be at most {max_len} characters")
    return value


def _ratio(params: dict[str, Any], key: str, where: str) -> None:
    value = params.get(key)
    if not _is_number(value) or not 0 <= value <= 1:
        raise _bad(f"{where}.{key}", "must be a number between 0 and 1")


def _gate(raw: Any, where: str) -> GateSpec:
    if not isinstance(raw, dict):
        raise _bad(where, "a gate must be an object with a 'kind'")
    kind = raw.get("kind")
    if kind is None:
        raise _bad(f"{where}.kind", "is required")
    if not isinstance(kind, str) or kind not in GATE_KINDS:
        known = ", ".join(GATE_KINDS)
        raise _bad(f"{where}.kind", f"unknown gate kind {kind!r} (known: {known})")
    required, optional = GATE_KINDS[kind]
    for key in raw:
        if key != "kind" and key not in required and key not in optional:
            raise _bad(f"{where}.{key}", f"is not a parameter of a {kind} gate")
    for key in required:
        if key not in raw or raw[key] is None:
            raise _bad(f"{where}.{key}", f"is required for a {kind} gate")
    params = {**optional, **{k: v for k, v in raw.items() if k != "kind"}}
    if kind == "time_soak":
        if not _is_number(params["seconds"]) or params["seconds"] < 0:
            raise _bad(f"{where}.seconds", "must be a number of seconds >= 0")
    elif kind == "ack_success":
        _ratio(params, "min_ratio", where)
        if not _is_int(params["min_acks"]) or params["min_acks"] < 0:
            raise _bad(f"{where}.min_acks", "must be an integer >= 0")
    elif kind == "ack_failure":
        _ratio(params, "max_ratio", where)
    elif kind == "event_threshold":
        event_type = params["event_type"]
        if not isinstance(event_type, str) or not event_type or len(event_type) > 256:
            raise _bad(f"{where}.event_type", "must be a non-empty string of at most 256 chars")
        _ratio(params, "max_ratio", where)
        if not _is_int(params["min_nodes"]) or params["min_nodes"] < 1:
            raise _bad(f"{where}.min_nodes", "must be an integer >= 1")
    return GateSpec(kind=kind, params=params)


def _stage(raw: Any, index: int, previous_percent: float, seen: set[str]) -> StageSpec:
    where = f"stages[{index}]"
    if not isinstance(raw, dict):
        raise _bad(where, "a stage must be an object")
    stage_id = raw.get("stage_id")
    if stage_id is None:
        raise _bad(f"{where}.stage_id", "is required")
    if not isinstance(stage_id, str) or not ID_PATTERN.match(stage_id):
        raise _bad(
            f"{where}.stage_id", "must be 1-128 characters: letters, digits, '.', '_', ':', '-'"
        )
    if stage_id in seen:
        raise _bad(f"{where}.stage_id", f"stage ids must be unique; {stage_id!r} is repeated")
    seen.add(stage_id)
    percent = raw.get("percent")
    if percent is None:
        raise _bad(f"{where}.percent", "is required")
    if not _is_number(percent) or not 0 < percent <= 100:
        raise _bad(f"{where}.percent", "must be a number with 0 < percent <= 100")
    if percent < previous_percent:
        raise _bad(
            f"{where}.percent",
            f"percent is cumulative and must not decrease ({percent} < {previous_percent})",
        )
    nodes = raw.get("nodes", [])
    if nodes is None:
        nodes = []
    if not isinstance(nodes, list):
        raise _bad(f"{where}.nodes", "must be a list of node ids")
    for position, node in enumerate(nodes):
        if not isinstance(node, str) or not node or len(node) > 256:
            raise _bad(
                f"{where}.nodes[{position}]", "must be a non-empty string of at most 256 characters"
            )
    gates = raw.get("gates", [])
    if gates is None:
        gates = []
    if not isinstance(gates, list):
        raise _bad(f"{where}.gates", "must be a list of gates")
    return StageSpec(
        stage_id=stage_id,
        percent=float(percent),
        nodes=tuple(dict.fromkeys(nodes)),
        gates=tuple(_gate(gate, f"{where}.gates[{i}]") for i, gate in enumerate(gates)),
    )


def parse_spec(raw: bytes) -> PlanSpec:
    """Validate the raw body of `POST /v1/rollouts`; raise ApiError(400) naming the field."""
    body = jsonvalues.loads(raw)  # 400 for malformed JSON or a value breaking the rule
    if not isinstance(body, dict):
        raise ApiError(400, "the plan spec must be a JSON object")
    plan_id = body.get("plan_id")
    if plan_id is not None and (
        not isinstance(plan_id, str)
        or not ID_PATTERN.match(plan_id)
        or plan_id in RESERVED_PLAN_IDS
    ):
        raise _bad(
            "plan_id",
            "must be 1-128 characters: letters, digits, '.', '_', ':', '-' (and not 'stuck')",
        )
    release_id = body.get("release_id")
    if release_id is None:
        raise _bad("release_id", "is required")
    if not isinstance(release_id, str) or not release_id or len(release_id) > 256:
        raise _bad("release_id", "must be a non-empty string of at most 256 characters")
    channel = body.get("channel")
    if channel is not None and (not isinstance(channel, str) or not channel):
        raise _bad("channel", "must be a non-empty string")
    stages = body.get("stages")
    if stages is None:
        raise _bad("stages", "is required")
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        raise _bad("stages", f"must be a list of 1 to {MAX_STAGES} stages")
    seen: set[str] = set()
    parsed: list[StageSpec] = []
    previous = 0.0
    for index, stage in enumerate(stages):
        parsed.append(_stage(stage, index, previous, seen))
        previous = parsed[-1].percent
    return PlanSpec(
        plan_id=plan_id,
        release_id=release_id,
        channel=channel,
        description=_optional_str(body, "description"),
        created_by=_optional_str(body, "created_by", 256),
        stages=tuple(parsed),
    )


def stages_of(raw: bytes) -> tuple[StageSpec, ...]:
    """The stages of an already-stored (valid) spec."""
    return parse_spec(raw).stages

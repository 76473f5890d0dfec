"""Validating a rollout plan spec (API.md §4 "Plan spec"). Pure: no database access.

Every error is an `ApiError(400, ...)` naming the field by its JSON path
(`stages[1].gates[0].max_ratio`). Unknown top-level and stage keys are kept (the spec is stored
as received); unknown keys inside a gate are rejected, since a misspelt gate parameter would
silently weaken a safety check. Each gate kind checks its own parameters (`rollouts/gates/`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from core import jsonvalues
from core.errors import ApiError
from rollouts.gates.base import invalid_field as _bad
from rollouts.gates.base import is_number as _is_number
from rollouts.gates.registry import GATE_KINDS

MAX_STAGES = 50
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
RESERVED_PLAN_IDS = frozenset({"stuck"})


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


def _optional_str(body: dict[str, Any], key: str, max_len: int = 4096) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(key, "must be a string")
    if len(value) > max_len:
        raise _bad(key, f"must be at most {max_len} characters")
    return value


def _gate(raw: Any, where: str) -> GateSpec:
    if not isinstance(raw, dict):
        raise _bad(where, "a gate must be an object with a 'kind'")
    kind = raw.get("kind")
    if kind is None:
        raise _bad(f"{where}.kind", "is required")
    if not isinstance(kind, str) or kind not in GATE_KINDS:
        known = ", ".join(GATE_KINDS)
        raise _bad(f"{where}.kind", f"unknown gate kind {kind!r} (known: {known})")
    gate_kind = GATE_KINDS[kind]
    required, optional = gate_kind.required, gate_kind.defaults
    for key in raw:
        if key != "kind" and key not in required and key not in optional:
            raise _bad(f"{where}.{key}", f"is not a parameter of a {kind} gate")
    for key in required:
        if key not in raw or raw[key] is None:
            raise _bad(f"{where}.{key}", f"is required for a {kind} gate")
    params = {**optional, **{k: v for k, v in raw.items() if k != "kind"}}
    gate_kind.validate(params, where)
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

"""What every gate kind is: its parameters, their validation, its evaluation and its schema.

A kind is one subclass of `GateKind` in its own module of this package, registered in
`rollouts.gates.registry.GATE_KINDS`. The spec validator (`rollouts.validation`) checks the
parameters every kind shares (no unknown key, every required key present, defaults filled in)
and then calls the kind's `validate`; the evaluator calls its `evaluate`; the OpenAPI document
takes its `openapi_schema()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

from core.errors import ApiError

if TYPE_CHECKING:
    from rollouts.cohort import StageSnap


FAILED_STATUSES = frozenset({"failed", "rejected"})


@dataclass(frozen=True)
class AckCounts:
    """The acks a stage's gates look at: the release's acks from the stage's nodes (bucket or
    listing up to this stage) plus every `active` ack of the release, counted per status;
    `active_nodes` lists the nodes of the `active` ones (only filled when a gate needs them)."""

    by_status: Mapping[str, int]
    active_nodes: Sequence[str] = ()

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def active(self) -> int:
        return self.by_status.get("active", 0)

    @property
    def failed(self) -> int:
        return sum(self.by_status.get(status, 0) for status in FAILED_STATUSES)


@dataclass(frozen=True)
class GateResult:
    kind: str
    passed: bool
    detail: str
    tripped: bool = False  # a failure gate over its limit: the plan must halt

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "passed": self.passed, "detail": self.detail}


def invalid_field(field_path: str, message: str) -> ApiError:
    """The 400 of a spec field, named by its JSON path (`stages[1].gates[0].max_ratio`)."""
    return ApiError(400, f"invalid field '{field_path}': {message}", field=field_path)


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ratio(params: dict[str, Any], key: str, where: str) -> None:
    value = params.get(key)
    if not is_number(value) or not 0 <= value <= 1:
        raise invalid_field(f"{where}.{key}", "must be a number between 0 and 1")


def ratio_schema(description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": 1, "description": description}


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


def share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


class GateKind:
    """One kind of gate. Subclasses set the class attributes and override `validate` and
    `evaluate`; `openapi_schema` is built from `description`, `required` and `properties`."""

    kind: ClassVar[str]
    description: ClassVar[str]  # for the OpenAPI document
    required: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}  # optional parameters and their defaults
    properties: ClassVar[dict[str, dict[str, Any]]] = {}  # JSON schema of each parameter
    halts: ClassVar[bool] = False  # a failure gate: tripped, it halts the plan
    needs_acks: ClassVar[bool] = False  # evaluation reads the stage's acks
    needs_active_nodes: ClassVar[bool] = False  # ... and which nodes acked `active`

    def validate(self, params: dict[str, Any], where: str) -> None:
        """Check the values of `params` (all required keys present, defaults filled in);
        raise `invalid_field(f"{where}.<key>", ...)`."""

    def evaluate(
        self,
        params: dict[str, Any],
        stage: StageSnap,
        acks: AckCounts | None,
        now: datetime,
    ) -> GateResult:
        """This gate for `stage` at `now`; `acks` (the stage's ack counts) when `needs_acks`."""
        raise NotImplementedError

    def openapi_schema(self) -> dict[str, Any]:
        """The gate as a closed JSON-schema object (a misspelt parameter is refused)."""
        return {
            "type": "object",
            "title": self.kind,
            "description": self.description,
            "properties": {"kind": {"type": "string", "enum": [self.kind]}, **self.properties},
            "required": ["kind", *self.required],
            "additionalProperties": False,
        }

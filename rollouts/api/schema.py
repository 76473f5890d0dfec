"""The OpenAPI description of the rollout routes and `/v1/signing-key` (`rollouts/api/views.py`).

The views parse by hand (the spec is stored byte for byte), so requests and answers are
described by the documentation serializers below. The gate schemas mirror
`rollouts.validation.GATE_KINDS`. Registered by `RolloutsConfig.ready()`; shared pieces are in
core/openapi.py.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiViewExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers

from core.openapi import (
    BINARY,
    MAX_ID_CHARS,
    NO_DATABASE,
    errors,
    excluding,
    int_parameter,
    limit_parameter,
    offset_parameter,
    path_id,
    replace,
    response_headers,
)
from core.params import DEFAULT_LIMIT, MAX_LIMIT
from rollouts.api.views import DEFAULT_STUCK_THRESHOLD, MAX_THRESHOLD
from rollouts.gates import gates_openapi_schema
from rollouts.models import Phase, StagePhase
from rollouts.statemachine import RECOVER_STRATEGIES
from rollouts.validation import ID_PATTERN, MAX_STAGES, RESERVED_PLAN_IDS

RECOVER_STRATEGY_VALUES = list(RECOVER_STRATEGIES)
# A plan id as `rollouts.validation` accepts it, and not a literal route beside `{plan_id}`.
PLAN_ID_PATTERN = excluding(ID_PATTERN.pattern, tuple(sorted(RESERVED_PLAN_IDS)))
PEM = "application/x-pem-file"
PEM_DESCRIPTION = (
    f"The PEM public key, answered as `{PEM}` (`{BINARY}` is listed for client generators "
    "that know no PEM type: the same bytes)."
)
KEY_ID_HEADER = {
    "description": "The key id: the first 16 hex characters of the sha256 of the raw key.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
}
SPEC_HEADERS = {
    "X-Autonomy-Digest": {
        "description": "With `raw=true`: `sha256:<hex of the stored spec bytes>`.",
        "schema": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
    },
    "X-Autonomy-Signature": {
        "description": "With `raw=true`: base64 Ed25519 signature over the digest string.",
        "schema": {"type": "string"},
    },
    "X-Autonomy-Key-Id": {**KEY_ID_HEADER, "required": False},
}


# Each gate kind's schema sits beside its validation and evaluation (rollouts/gates/).
GATE_SCHEMA: dict[str, Any] = gates_openapi_schema()


@extend_schema_field({"type": "array", "items": GATE_SCHEMA, "nullable": True})
class GatesField(serializers.JSONField):
    """A stage's gates (documentation only)."""


@extend_schema_field(
    {"type": "string", "pattern": ID_PATTERN.pattern, "description": "1-128 of `A-Za-z0-9._:-`."}
)
class IdField(serializers.CharField):
    """A stage id (documentation only)."""


@extend_schema_field(
    {
        "type": "string",
        "pattern": PLAN_ID_PATTERN,
        "description": "1-128 of `A-Za-z0-9._:-`, not `stuck`.",
    }
)
class PlanIdField(serializers.CharField):
    """A plan id (documentation only)."""


@extend_schema_field({"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 100})
class PercentField(serializers.FloatField):
    """0 < percent <= 100 (documentation only)."""


class StageSpecSerializer(serializers.Serializer):
    """One stage of a plan spec. Keys beyond these are kept in the stored spec."""

    stage_id = IdField(help_text="Unique within the plan.")
    percent = PercentField(
        help_text="Cumulative share of the channel's nodes, 0 < percent <= 100, non-decreasing "
        "from stage to stage."
    )
    nodes = serializers.ListField(
        child=serializers.CharField(min_length=1, max_length=MAX_ID_CHARS),
        required=False,
        allow_null=True,
        help_text="Explicit members, always included.",
    )
    gates = GatesField(required=False, help_text="No gates: the stage is promoted only by hand.")


class PlanSpecSerializer(serializers.Serializer):
    """A rollout plan spec, stored byte for byte as received and signed by the server."""

    plan_id = PlanIdField(
        required=False,
        help_text='Optional: the server makes `plan-<12 hex>` when absent; not "stuck".',
    )
    release_id = serializers.CharField(
        min_length=1, max_length=MAX_ID_CHARS, help_text="Must exist (else 400)."
    )
    channel = serializers.CharField(
        required=False, min_length=1, help_text="Default: the release's channel (must match)."
    )
    description = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=4096
    )
    # many=True hands min_length/max_length to the ListSerializer (the stubs do not know).
    stages = StageSpecSerializer(  # type: ignore[call-arg]
        many=True, min_length=1, max_length=MAX_STAGES, help_text=f"1 to {MAX_STAGES} stages."
    )
    created_by = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=256
    )


class PlanSpecSchema(OpenApiSerializerExtension):
    """drf-spectacular does not carry a list serializer's length limits into the schema."""

    target_class = PlanSpecSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema["properties"]["stages"].update({"minItems": 1, "maxItems": MAX_STAGES})
        return dict(schema)


class SignatureSerializer(serializers.Serializer):
    alg = serializers.ChoiceField(choices=["Ed25519"])
    key_id = serializers.CharField(
        help_text="First 16 hex characters of the sha256 of the raw public key."
    )
    value = serializers.CharField(help_text="Base64 signature over the `digest` string.")


@extend_schema_field({"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"})
class DigestField(serializers.CharField):
    """`sha256:<hex of the stored spec bytes>`."""


class PlanSummarySerializer(serializers.Serializer):
    plan_id = serializers.CharField()
    release_id = serializers.CharField()
    channel = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    created_by = serializers.CharField(allow_blank=True)
    phase = serializers.ChoiceField(choices=Phase.choices)
    current_stage_id = serializers.CharField()
    digest = DigestField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class StageStatusSerializer(serializers.Serializer):
    stage_id = serializers.CharField()
    phase = serializers.ChoiceField(choices=StagePhase.choices)
    percent = serializers.FloatField()
    opened_at = serializers.DateTimeField(allow_null=True)
    promoted_at = serializers.DateTimeField(allow_null=True)
    manual_approved = serializers.BooleanField()
    halt_reason = serializers.CharField(allow_null=True)


class HistoryEntrySerializer(serializers.Serializer):
    action = serializers.CharField(help_text="`publish`, `pause`, `promote`, `retry`, ...")
    from_phase = serializers.CharField(allow_null=True)
    to_phase = serializers.CharField()
    stage_id = serializers.CharField(allow_null=True)
    operator = serializers.CharField(
        help_text="The authenticated principal (token name, certificate CN, admin user); "
        "`evaluator` for the server's own actions; in open loopback mode the claimed operator."
    )
    claimed_operator = serializers.CharField(
        allow_null=True,
        help_text="X-Autonomy-Operator (or body `operator`, spec `created_by`) when it named "
        "someone other than `operator`; null otherwise.",
    )
    reason = serializers.CharField(allow_blank=True)
    at = serializers.DateTimeField()


class PlanStatusSerializer(serializers.Serializer):
    plan_id = serializers.CharField()
    phase = serializers.ChoiceField(choices=Phase.choices)
    current_stage_id = serializers.CharField()
    stages = StageStatusSerializer(many=True)
    updated_at = serializers.DateTimeField(help_text="Changes on every transition.")
    history = HistoryEntrySerializer(many=True, help_text="Oldest first.")


class PlanDetailSerializer(PlanSummarySerializer):
    spec = serializers.DictField(help_text="The spec exactly as received.")
    signature = SignatureSerializer()
    status = PlanStatusSerializer()


class PlanListSerializer(serializers.Serializer):
    plans = PlanSummarySerializer(many=True, help_text="Newest first.")
    count = serializers.IntegerField(min_value=0)
    limit = serializers.IntegerField(min_value=1)
    offset = serializers.IntegerField(min_value=0)


class DryRunStageSerializer(serializers.Serializer):
    stage_id = serializers.CharField()
    percent = serializers.FloatField()
    nodes = serializers.IntegerField(
        min_value=0, help_text="Known nodes on the new release once this stage is open."
    )
    sample = serializers.ListField(child=serializers.CharField(), help_text="Up to 10 node ids.")


class DryRunSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField()
    valid = serializers.BooleanField()
    plan_id = serializers.CharField()
    plan_id_generated = serializers.BooleanField()
    release_id = serializers.CharField()
    channel = serializers.CharField()
    digest = DigestField()
    known_nodes = serializers.IntegerField(min_value=0)
    stages = DryRunStageSerializer(many=True)


class SignedSpecSerializer(serializers.Serializer):
    plan_id = serializers.CharField()
    spec = serializers.DictField(help_text="The spec exactly as received (same bytes).")
    digest = DigestField()
    signature = SignatureSerializer()


class SpecAnswerSerializer(serializers.Serializer):
    """`GET .../spec`: the signed envelope, or (`raw=true`) the stored spec alone."""


class SpecAnswerSchema(OpenApiSerializerExtension):
    target_class = SpecAnswerSerializer

    def get_name(self, auto_schema: Any, direction: Any) -> str:
        return "SpecAnswer"

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        signed = auto_schema.resolve_serializer(SignedSpecSerializer, direction)
        return {
            "anyOf": [
                signed.ref,
                {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "`raw=true`: the stored spec bytes, exactly as published.",
                },
            ]
        }


class ActionBodySerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    operator = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="Used when the `X-Autonomy-Operator` header is absent.",
    )


class TransitionBodySerializer(ActionBodySerializer):
    stage_id = serializers.CharField(
        required=False,
        allow_null=True,
        help_text="The stage the action is meant for: 409 when the plan has moved on from it.",
    )


class RecoverBodySerializer(TransitionBodySerializer):
    strategy = serializers.ChoiceField(choices=RECOVER_STRATEGY_VALUES)


class StuckPlanSerializer(serializers.Serializer):
    plan_id = serializers.CharField()
    phase = serializers.ChoiceField(choices=Phase.choices)
    current_stage_id = serializers.CharField()
    stuck_since = serializers.DateTimeField(help_text="The plan's last transition.")
    stuck_reason = serializers.CharField(help_text="Which gates are unmet.")


class StuckSerializer(serializers.Serializer):
    threshold_seconds = serializers.IntegerField(min_value=0)
    stuck_plans = StuckPlanSerializer(many=True)


class GateResultSerializer(serializers.Serializer):
    kind = serializers.CharField()
    passed = serializers.BooleanField()
    detail = serializers.CharField()


class StageGatesSerializer(serializers.Serializer):
    plan_id = serializers.CharField()
    stage_id = serializers.CharField()
    stage_phase = serializers.ChoiceField(choices=StagePhase.choices)
    gates = GateResultSerializer(many=True)
    manual_approved = serializers.BooleanField()
    all_passed = serializers.BooleanField(
        help_text="Every gate passes (false for a stage without gates)."
    )


class ApprovalSerializer(serializers.Serializer):
    approved = serializers.BooleanField()
    promoted = serializers.BooleanField()
    message = serializers.CharField()


OPERATOR_HEADER = OpenApiParameter(
    "X-Autonomy-Operator",
    str,
    OpenApiParameter.HEADER,
    description="Who claims to act: recorded as the history's `claimed_operator` when it differs "
    "from the authenticated principal (in open loopback mode it names the actor).",
)
PLAN_ID = path_id(
    "plan_id",
    "The rollout plan.",
    reserved=tuple(RESERVED_PLAN_IDS),
    pattern=ID_PATTERN.pattern,
)
STAGE_ID = path_id("stage_id", "A stage of the plan.")

PLAN_EXAMPLE = {
    "plan_id": "plan-2026-11-web",
    "release_id": "rel-004",
    "description": "web 4.0 to stable",
    "stages": [
        {
            "stage_id": "canary",
            "percent": 5,
            "nodes": ["node-a"],
            "gates": [{"kind": "manual"}, {"kind": "ack_success", "min_ratio": 0.95}],
        },
        {"stage_id": "all", "percent": 100, "gates": [{"kind": "time_soak", "seconds": 1800}]},
    ],
    "created_by": "alice",
}

_ACTION_TEXT = {
    "pause": "Pause a published or active rollout.",
    "resume": "Resume a paused or halted rollout (a halted stage re-opens, its soak restarts).",
    "promote": "Promote the current stage by hand (the last one completes the plan).",
    "halt": "Halt a rollout: the current stage is marked `halted`.",
    "cancel": "Cancel a rollout (terminal).",
}


class RolloutListViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.RolloutListView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="rollouts_list",
                description="Plan summaries (no spec, no status), newest first.",
                summary="Rollout plans, newest first",
                tags=["rollouts"],
                parameters=[
                    limit_parameter(DEFAULT_LIMIT, MAX_LIMIT),
                    offset_parameter(),
                    # The one phase enum (the model's choices), not an inline copy.
                    OpenApiParameter(
                        "phase",
                        {"$ref": "#/components/schemas/PlanPhaseEnum"},
                        description="Only this phase.",
                    ),
                ],
                responses={200: PlanListSerializer, **errors(400)},
            ),
            post=extend_schema(
                operation_id="rollouts_publish",
                summary="Publish a rollout plan",
                description=(
                    "The spec is stored byte for byte and signed (see `.../spec`); stage 1 "
                    "opens at once. With `?dry_run=true` the same body is validated and the "
                    "answer says, per stage, how many known nodes would run the release "
                    "(cumulative) with a sample of their ids; nothing is stored."
                ),
                tags=["rollouts"],
                parameters=[
                    OpenApiParameter(
                        "dry_run",
                        bool,
                        description="Validate and preview the cohorts; store nothing.",
                        default=False,
                    ),
                    OPERATOR_HEADER,
                ],
                request=PlanSpecSerializer,
                responses={
                    201: OpenApiResponse(PlanDetailSerializer, description="Published."),
                    200: OpenApiResponse(DryRunSerializer, description="`dry_run=true`."),
                    **errors(
                        e400="Invalid spec (the field is named by its JSON path, e.g. "
                        "`stages[1].gates[0].max_ratio`), or an unknown `release_id`.",
                        e409="A plan with this `plan_id` exists, or the release already has a "
                        "rollout in progress.",
                    ),
                },
                examples=[OpenApiExample("two stages", value=PLAN_EXAMPLE, request_only=True)],
            ),
        )


class RolloutDetailViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.RolloutDetailView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="rollouts_get",
                description="The summary plus the spec as received, its signature and the status.",
                summary="A plan with its spec and status",
                tags=["rollouts"],
                parameters=[PLAN_ID],
                responses={200: PlanDetailSerializer, **errors(e404="No such plan.")},
            ),
        )


class RolloutSpecViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.RolloutSpecView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="rollouts_spec",
                summary="The immutable signed spec",
                description=(
                    "`spec` holds the stored bytes verbatim; `digest` is their sha256, "
                    "`signature.value` the Ed25519 signature over the digest string (public key: "
                    "`GET /v1/signing-key`). With `?raw=true` the answer is the stored bytes "
                    "alone, digest and signature in `X-Autonomy-*` headers."
                ),
                tags=["rollouts"],
                parameters=[
                    PLAN_ID,
                    OpenApiParameter(
                        "raw", bool, default=False, description="Answer the stored bytes alone."
                    ),
                ],
                responses={
                    200: OpenApiResponse(
                        SpecAnswerSerializer,
                        description="The signed envelope (or, with `raw=true`, the spec).",
                    ),
                    **errors(e404="No such plan."),
                },
                extensions=response_headers(200, SPEC_HEADERS),
            ),
        )


class RolloutStatusViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.RolloutStatusView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="rollouts_status",
                description="Phase, current stage, every stage's phase and the history of actions.",
                summary="The mutable status and history",
                tags=["rollouts"],
                parameters=[PLAN_ID],
                responses={200: PlanStatusSerializer, **errors(e404="No such plan.")},
            ),
        )


class RolloutActionViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.RolloutActionView"

    def view_replacement(self) -> type:
        action = self.target_callback.initkwargs.get("transition", "")
        return replace(
            self.target_class,
            post=extend_schema(
                operation_id=f"rollouts_{action}",
                summary=_ACTION_TEXT.get(action, action),
                description=(
                    "Recorded in the plan's history with the operator and the reason. "
                    "An action the plan's phase does not allow is a 409 naming the phase."
                ),
                tags=["rollout actions"],
                parameters=[PLAN_ID, OPERATOR_HEADER],
                request=TransitionBodySerializer,
                responses={
                    200: PlanStatusSerializer,
                    **errors(
                        400,
                        e404="No such plan.",
                        e409="Not allowed in the plan's current phase (`phase`).",
                    ),
                },
            ),
        )


class RolloutRecoverViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.RolloutRecoverView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            post=extend_schema(
                operation_id="rollouts_recover",
                summary="Recover a rollout: retry, rollback or skip_failed",
                description=(
                    "`retry`: back to `active`; `rollback`: `rolled_back` (terminal); "
                    "`skip_failed`: the current stage is skipped and the next opens."
                ),
                tags=["rollout actions"],
                parameters=[PLAN_ID, OPERATOR_HEADER],
                request=RecoverBodySerializer,
                responses={
                    200: PlanStatusSerializer,
                    **errors(
                        400,
                        e404="No such plan.",
                        e409="Not allowed in the plan's current phase (`phase`).",
                    ),
                },
                examples=[
                    OpenApiExample("retry", value={"strategy": "retry"}, request_only=True),
                ],
            ),
        )


class StageGatesViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.StageGatesView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="rollouts_stage_gates",
                description="Each gate of the stage evaluated now: `passed`, and a `detail`.",
                summary="Gate evaluation of one stage",
                tags=["rollouts"],
                parameters=[PLAN_ID, STAGE_ID],
                responses={200: StageGatesSerializer, **errors(e404="No such plan or stage.")},
            ),
        )


class StageGatesApproveViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.StageGatesApproveView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            post=extend_schema(
                operation_id="rollouts_stage_gates_approve",
                summary="Approve a stage's manual gate",
                description="Marks the manual gate passed, re-evaluates the stage, and promotes "
                "it when every gate passes.",
                tags=["rollout actions"],
                parameters=[PLAN_ID, STAGE_ID, OPERATOR_HEADER],
                request=ActionBodySerializer,
                responses={
                    200: ApprovalSerializer,
                    **errors(
                        400,
                        e404="No such plan or stage.",
                        e409="The plan or stage is not open, or the stage has no manual gate.",
                    ),
                },
            ),
        )


class StuckViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.StuckView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="rollouts_stuck",
                summary="Running plans without progress",
                description="Plans in `published`/`active` whose last transition is older than "
                "`threshold_seconds`. Paused and terminal plans never appear.",
                tags=["rollouts"],
                parameters=[
                    int_parameter(
                        "threshold_seconds",
                        "Seconds without a transition (at most a century).",
                        minimum=0,
                        default=DEFAULT_STUCK_THRESHOLD,
                        maximum=MAX_THRESHOLD,
                    )
                ],
                responses={200: StuckSerializer, **errors(400)},
            ),
        )


class SigningKeyViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.SigningKeyView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="signing_key",
                summary="The public key that signs plan specs (PEM)",
                description="The same PEM as `autonomy-orchestrator signing-key`, for nodes to "
                "pin. `X-Autonomy-Key-Id` carries the key id.",
                tags=["rollouts"],
                responses={
                    (200, PEM): OpenApiResponse({"type": "string"}, description=PEM_DESCRIPTION),
                    (200, BINARY): OpenApiResponse(
                        {"type": "string", "format": "binary"}, description=PEM_DESCRIPTION
                    ),
                    **errors(e503="The signing key cannot be read."),
                },
                extensions={
                    **NO_DATABASE,
                    **response_headers(200, {"X-Autonomy-Key-Id": KEY_ID_HEADER}),
                },
            ),
        )


class SigningKeyEntrySerializer(serializers.Serializer):
    key_id = serializers.RegexField(
        r"^[0-9a-f]{16}$", help_text="First 16 hex characters of sha256(raw public key)."
    )
    public_key = serializers.CharField(help_text="PEM SubjectPublicKeyInfo of the Ed25519 key.")
    status = serializers.ChoiceField(
        choices=["active", "retired"],
        help_text="`active` signs new plans and poll answers; `retired` keys signed earlier "
        "ones and stay listed so those signatures can still be verified.",
    )
    since = serializers.DateTimeField(
        help_text="When the key became active (active) or was retired (retired)."
    )


class SigningKeysSerializer(serializers.Serializer):
    keys = SigningKeyEntrySerializer(many=True, help_text="The active key first.")


class SigningKeysViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.SigningKeysView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="signing_keys",
                summary="Every key of the signing keyring (active and retired)",
                description="The keys a node pins to verify plan signatures and the signed "
                "desired state of `GET /v1/releases/latest` (`X-Autonomy-Key-Id` names the key "
                "that signed). `autonomy-orchestrator signing-key rotate` makes a new active key; "
                "the old one stays here as `retired` (docs/trust.md).",
                tags=["rollouts"],
                responses={
                    200: SigningKeysSerializer,
                    **errors(e503="The signing keyring cannot be read."),
                },
                extensions={**NO_DATABASE},
            ),
        )

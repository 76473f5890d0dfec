"""The OpenAPI document's annotations, kept out of the views (drf-spectacular, out of band).

Every route of the contract (API.md §3) is described here with `OpenApiViewExtension`s: each
one takes an app's view class by its dotted path and returns an `extend_schema`-decorated
subclass, used only while the schema is generated. The views themselves stay plain; this
module is imported by `orchestrator_site.api_docs` (which the URLconf imports), and that import
registers the extensions.

Where a view validates by hand (the hot paths share one validator with the ASGI fast path) the
wire format is described by the documentation serializers below; where a view has its own input
serializer it is referenced directly. `postprocess_schema` (a SPECTACULAR_SETTINGS hook) adds
what every operation shares (the error body on 400/413/415/503/507, `Retry-After`), the two
routes answered outside DRF (`/v1/crl`, `/metrics`), and the checks the apps make by hand after
their serializers (`_COMPONENT_PATCHES`).

tests/test_openapi.py holds the document to the contract; tests/test_fuzz.py holds the server
to the document (docs/api.md).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension, OpenApiViewExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers

from releases.models import NodeAck
from rollouts.models import Phase, StagePhase
from rollouts.statemachine import RECOVER_STRATEGIES

# --------------------------------------------------------------------------------------------
# The error body, shared by every error answer


class ErrorSerializer(serializers.Serializer):
    """Every error answer: `{"error": "<one readable sentence>", ...detail keys}`."""

    error = serializers.CharField(help_text="One readable sentence saying what went wrong.")
    field = serializers.CharField(
        required=False,
        help_text="The offending field, on a 400 about one field (`events`, `limit`, ...).",
    )
    index = serializers.IntegerField(
        required=False,
        help_text="On a rejected event batch: the index of the first invalid event.",
    )


ERROR_COMPONENT = "Error"

_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed JSON, or a missing or invalid field (named in `field`).",
    404: "Unknown object (or route).",
    405: "Method not allowed on this route (see the `Allow` header).",
    409: "Illegal state transition, or a conflicting duplicate.",
    413: "The request body is larger than the server's limit (`limit`, in bytes).",
    415: "The request body is not `application/json`.",
    503: "The database is busy beyond its busy timeout: retry after `Retry-After` seconds.",
    507: "The disk holding the database is full; nothing was stored.",
}


def error(status: int, description: str | None = None) -> OpenApiResponse:
    """An error response with the shared error body."""
    return OpenApiResponse(
        response=ErrorSerializer, description=description or _ERROR_DESCRIPTIONS[status]
    )


def errors(*statuses: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """`errors(400, 404, e409="plan is terminal")` -> responses dict entries."""
    out = {status: error(status) for status in statuses}
    for key, text in descriptions.items():
        status = int(key.lstrip("e"))
        out[status] = error(status, text)
    return out


def limit_parameter(default: int = 100, maximum: int = 1000) -> OpenApiParameter:
    """The contract's `limit`: default 100; larger values are clamped (not refused)."""
    return OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "default": default},
        description=(
            f"Page size: at least 1, default {default}; values above {maximum} are clamped "
            f"to {maximum}."
        ),
    )


LIMIT_PARAMETER = limit_parameter()


def _replace(target: type, **methods: Any) -> type:
    """A subclass of `target` carrying the given per-method `extend_schema` annotations."""
    namespace = {"__doc__": target.__doc__}
    decorated = extend_schema_view(**methods)(type(target.__name__, (target,), namespace))
    decorated.__module__ = target.__module__
    return decorated


# --------------------------------------------------------------------------------------------
# Events and health (events/api/views.py; the fast path answers the same routes)

MAX_ID_CHARS = 256


def _id_field(help_text: str, **kwargs: Any) -> serializers.CharField:
    return serializers.CharField(
        min_length=1, max_length=MAX_ID_CHARS, help_text=help_text, **kwargs
    )


class EventSerializer(serializers.Serializer):
    """One telemetry event. Keys beyond these are kept and returned exactly as received."""

    event_id = _id_field(
        "Unique per node: an (`node_id`, `event_id`) already stored is counted in `deduped`."
    )
    event_type = _id_field("For example `app.crash`.")
    node_id = _id_field("The sending node.")
    timestamp = serializers.DateTimeField(
        help_text="RFC 3339 with an offset (`Z` or `±hh:mm`); one without an offset is invalid."
    )
    lock_fingerprint = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=MAX_ID_CHARS
    )
    release_id = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=MAX_ID_CHARS
    )


class StoredEventSerializer(EventSerializer):
    """A stored event, exactly as it was received (every key, unknown ones too)."""

    timestamp = serializers.CharField(help_text="As the node sent it (RFC 3339 with an offset).")


MAX_BATCH_EVENTS = 10_000


class EventBatchSerializer(serializers.Serializer):
    events = EventSerializer(
        many=True,
        help_text=f"At most {MAX_BATCH_EVENTS} events. One invalid event rejects the whole "
        "batch (400 naming `index` and `field`); nothing is stored.",
    )


class IngestResultSerializer(serializers.Serializer):
    received = serializers.IntegerField(min_value=0, help_text="`inserted + deduped`.")
    inserted = serializers.IntegerField(min_value=0)
    deduped = serializers.IntegerField(
        min_value=0, help_text="Already stored, or repeated inside the batch."
    )


class EventPageSerializer(serializers.Serializer):
    events = StoredEventSerializer(many=True, help_text="Newest (last inserted) first.")
    count = serializers.IntegerField(min_value=0, help_text="Events in this response.")
    next_before = serializers.CharField(
        allow_null=True,
        help_text="Pass as `before` to read further back; null on the last page.",
    )


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok"])


EVENT_EXAMPLE = {
    "event_id": "evt-0001",
    "event_type": "app.heartbeat",
    "node_id": "node-a",
    "timestamp": "2026-04-07T10:00:00Z",
    "release_id": "rel-004",
}


class EventsViewSchema(OpenApiViewExtension):
    target_class = "events.api.views.EventsView"

    def view_replacement(self) -> type:
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="events_list",
                summary="Stored events, newest first",
                description=(
                    'Each event exactly as it was received (same keys and values). "Newest '
                    'first" is last inserted first, not by `timestamp`. Page further back '
                    "with `before=<next_before>`."
                ),
                tags=["events"],
                parameters=[
                    OpenApiParameter("node_id", str, description="Only this node's events."),
                    OpenApiParameter("event_type", str, description="Only this event type."),
                    LIMIT_PARAMETER,
                    OpenApiParameter(
                        "before",
                        {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"},
                        description="Cursor: the `next_before` of the previous page.",
                    ),
                ],
                responses={200: EventPageSerializer, **errors(400)},
            ),
            post=extend_schema(
                operation_id="events_ingest",
                summary="Ingest a batch of events",
                description=(
                    "Idempotent on (`node_id`, `event_id`): the first copy wins, later copies "
                    "(stored, or repeated in the batch) are counted in `deduped`; the same "
                    "`event_id` from another node is a different event. A 200 means every "
                    "inserted event is on disk."
                ),
                tags=["events"],
                request=EventBatchSerializer,
                responses={
                    200: IngestResultSerializer,
                    **errors(e400="Invalid batch: `index` and `field` name the first bad event."),
                },
                examples=[
                    OpenApiExample(
                        "one event",
                        value={"events": [EVENT_EXAMPLE]},
                        request_only=True,
                    )
                ],
            ),
        )


class HealthViewSchema(OpenApiViewExtension):
    target_class = "events.api.views.HealthView"

    def view_replacement(self) -> type:
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="health",
                description="Answers as long as the process serves requests; touches no database.",
                summary="Liveness",
                tags=["health"],
                responses={200: HealthSerializer},
            ),
        )


# --------------------------------------------------------------------------------------------
# Releases, acks, fleet (releases/api/views.py)

# The model's choices (not a copy): the enum stays what the server accepts.
ACK_STATUSES = NodeAck.Status.values
NODE_STATUSES = ["up", "stale", "unknown"]


def _path_id(name: str, description: str, *, not_: str | None = None) -> OpenApiParameter:
    """A path segment: no `/`; `not_` is the literal route that shadows this parameter."""
    schema: dict[str, Any] = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_CHARS,
        "pattern": "^[^/]+$",
    }
    if not_ is not None:
        schema["not"] = {"enum": [not_]}
    return OpenApiParameter(
        name,
        schema,
        OpenApiParameter.PATH,
        required=True,
        description=description,
    )


def _query_id(name: str, description: str, default: str | None = None) -> OpenApiParameter:
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
    if default is not None:
        schema["default"] = default
    return OpenApiParameter(name, schema, description=description)


def _int_parameter(
    name: str, description: str, *, minimum: int, default: int, maximum: int | None = None
) -> OpenApiParameter:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "default": default}
    if maximum is not None:
        schema["maximum"] = maximum
    return OpenApiParameter(name, schema, description=description)


CHANNEL_PARAMETER = _query_id("channel", "The release channel.", default="stable")


def offset_parameter(maximum: int) -> OpenApiParameter:
    return _int_parameter(
        "offset", "Items to skip (paging).", minimum=0, default=0, maximum=maximum
    )


class ReleaseSerializer(serializers.Serializer):
    """A published release."""

    release_id = serializers.CharField()
    channel = serializers.CharField()
    sequence = serializers.IntegerField(
        min_value=1, help_text="Assigned by the server: 1, 2, 3, ... per channel, no gaps."
    )
    policy_ref = serializers.CharField(allow_null=True)
    lock_fingerprint = serializers.CharField(allow_null=True)
    artifact_ref = serializers.CharField(allow_null=True)
    metadata = serializers.DictField(help_text="Free-form object, as published.")
    created_at = serializers.DateTimeField()


class ReleasePageSerializer(serializers.Serializer):
    releases = ReleaseSerializer(many=True, help_text="Newest (last published) first.")
    count = serializers.IntegerField(min_value=0, help_text="Releases in this response.")
    limit = serializers.IntegerField(min_value=1)
    offset = serializers.IntegerField(min_value=0)
    next_offset = serializers.IntegerField(
        allow_null=True, help_text="`offset` of the next page; null on the last page."
    )


class AckSerializer(serializers.Serializer):
    """A node's stored ack for a release."""

    node_id = serializers.CharField()
    release_id = serializers.CharField()
    status = serializers.ChoiceField(choices=ACK_STATUSES)
    lock_fingerprint = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_null=True)
    acked_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ReleaseAcksSerializer(serializers.Serializer):
    release_id = serializers.CharField()
    acks = AckSerializer(many=True, help_text="Ordered by `node_id`.")
    count = serializers.IntegerField(min_value=0)


class NodeAcksSerializer(serializers.Serializer):
    node_id = serializers.CharField()
    acks = AckSerializer(many=True, help_text="Most recently updated first.")
    count = serializers.IntegerField(min_value=0)


class FleetNodeSerializer(serializers.Serializer):
    node_id = serializers.CharField()
    node_status = serializers.ChoiceField(
        choices=NODE_STATUSES,
        help_text="`up`: an event within `stale_threshold` s; `stale`: older; "
        "`unknown`: acks only, never an event.",
    )
    last_seen = serializers.DateTimeField(
        allow_null=True, help_text="Arrival time of the node's newest event."
    )
    release_id = serializers.CharField(
        allow_null=True, help_text="From the node's newest ack for a release of this channel."
    )
    ack_status = serializers.ChoiceField(choices=ACK_STATUSES, allow_null=True)
    sequence = serializers.IntegerField(allow_null=True)


class FleetSerializer(serializers.Serializer):
    channel = serializers.CharField()
    generated_at = serializers.DateTimeField()
    stale_threshold = serializers.IntegerField(min_value=1)
    total = serializers.IntegerField(min_value=0)
    up = serializers.IntegerField(min_value=0)
    stale = serializers.IntegerField(min_value=0)
    unknown = serializers.IntegerField(min_value=0)
    latest_release = ReleaseSerializer(
        allow_null=True, help_text="The channel's latest release; null when it has none."
    )
    nodes = FleetNodeSerializer(many=True, help_text="Every known node, whatever its channel.")


RELEASE_EXAMPLE = {
    "release_id": "rel-004",
    "channel": "stable",
    "policy_ref": "policies/web@v4",
    "artifact_ref": "registry.example/web:4.0.0",
    "metadata": {"notes": "fourth release"},
}


class ReleaseListViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.ReleaseListView"

    def view_replacement(self) -> type:
        from releases.api.serializers import ReleasePublishSerializer

        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="releases_list",
                description="Newest (last published) first; optionally one channel.",
                summary="Published releases, newest first",
                tags=["releases"],
                parameters=[
                    _query_id("channel", "Only this channel's releases."),
                    LIMIT_PARAMETER,
                    offset_parameter(10**18 - 1),
                ],
                responses={200: ReleasePageSerializer, **errors(400)},
            ),
            post=extend_schema(
                operation_id="releases_publish",
                summary="Publish a desired-state release",
                description=(
                    "The server assigns `sequence` (per channel, without gaps) and "
                    "`created_at`. Publishing the same `release_id` again with the same fields "
                    "(after defaults) answers 200 with the stored release; anything different, "
                    "including another channel, is a 409. `release_id` must not be `latest` "
                    "or contain `/`."
                ),
                tags=["releases"],
                request=ReleasePublishSerializer,
                responses={
                    201: OpenApiResponse(ReleaseSerializer, description="Published."),
                    200: OpenApiResponse(
                        ReleaseSerializer, description="Already published with the same fields."
                    ),
                    **errors(
                        400,
                        e409="The `release_id` exists with different fields (named in `fields`).",
                    ),
                },
                examples=[
                    OpenApiExample("release", value=RELEASE_EXAMPLE, request_only=True),
                ],
            ),
        )


class LatestReleaseViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.LatestReleaseView"

    def view_replacement(self) -> type:
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="releases_latest",
                summary="The release a channel (or one node) should run",
                description=(
                    "The release with the highest `sequence` in the channel. With `node_id`: "
                    "the release **that node** should run, rollout-aware (a node outside a "
                    "running rollout of the latest release gets the previous one). This is "
                    "the nodes' poll route."
                ),
                tags=["releases"],
                parameters=[
                    CHANNEL_PARAMETER,
                    _query_id("node_id", "Answer for this node (rollout-aware)."),
                ],
                responses={
                    200: ReleaseSerializer,
                    **errors(
                        400,
                        e404="The channel has no release (or none for this node yet).",
                    ),
                },
            ),
        )


class ReleaseDetailViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.ReleaseDetailView"

    def view_replacement(self) -> type:
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="releases_get",
                description="The stored release, as `POST /v1/releases` answered it.",
                summary="One release",
                tags=["releases"],
                parameters=[_path_id("release_id", "The release.", not_="latest")],
                responses={200: ReleaseSerializer, **errors(e404="No such release.")},
            ),
        )


class ReleaseAcksViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.ReleaseAcksView"

    def view_replacement(self) -> type:
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="releases_acks",
                description="Every node's ack for this release, ordered by `node_id`.",
                summary="All node acks for a release",
                tags=["acks"],
                parameters=[_path_id("release_id", "The release.")],
                responses={200: ReleaseAcksSerializer, **errors(e404="No such release.")},
            ),
        )


class NodeAckViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.NodeAckView"

    def view_replacement(self) -> type:
        from releases.api.serializers import NodeAckSerializer

        return _replace(
            self.target_class,
            post=extend_schema(
                operation_id="nodes_ack",
                summary="Upsert a node's ack for a release",
                description=(
                    "One ack per (node, release): the first answers 201, later ones replace it "
                    "and answer 200. Omitted optional fields become null; `acked_at` defaults "
                    "to now. Open rollout stages are re-evaluated after every ack."
                ),
                tags=["acks"],
                parameters=[_path_id("node_id", "The acknowledging node.")],
                request=NodeAckSerializer,
                responses={
                    201: OpenApiResponse(AckSerializer, description="First ack of this release."),
                    200: OpenApiResponse(AckSerializer, description="Ack updated."),
                    **errors(400, e404="The `release_id` does not exist."),
                },
                examples=[
                    OpenApiExample(
                        "active",
                        value={"release_id": "rel-004", "status": "active"},
                        request_only=True,
                    ),
                ],
            ),
        )


class NodeAcksViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.NodeAcksView"

    def view_replacement(self) -> type:
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="nodes_acks",
                summary="All acks submitted by a node",
                description="A node with no acks: 200 with an empty list.",
                tags=["acks"],
                parameters=[_path_id("node_id", "The node.")],
                responses={200: NodeAcksSerializer, **errors(400)},
            ),
        )


class FleetViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.FleetView"

    def view_replacement(self) -> type:
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="fleet",
                summary="Per-node observational summary",
                description=(
                    "Every node that sent an event or an ack, computed at read time. "
                    "`release_id`, `ack_status` and `sequence` come from the node's newest ack "
                    "for a release of `channel`."
                ),
                tags=["fleet"],
                parameters=[
                    CHANNEL_PARAMETER,
                    _int_parameter(
                        "stale_threshold",
                        "Seconds since the newest event after which a node is `stale`.",
                        minimum=1,
                        default=60,
                    ),
                ],
                responses={200: FleetSerializer, **errors(400)},
            ),
        )


# --------------------------------------------------------------------------------------------
# Rollouts (rollouts/api/views.py)

PLAN_PHASES = Phase.values
STAGE_PHASES = StagePhase.values
RECOVER_STRATEGY_VALUES = list(RECOVER_STRATEGIES)
ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


def _ratio(description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": 1, "description": description}


def _gate(kind: str, description: str, required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "title": kind,
        "description": description,
        "properties": {"kind": {"type": "string", "enum": [kind]}, **properties},
        "required": ["kind", *required],
        "additionalProperties": False,
    }


# Gate parameters are checked strictly (a misspelt parameter would weaken a safety check), so
# each kind is a closed object.
GATE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        _gate(
            "time_soak",
            "Passes once the stage has been open this many seconds.",
            ["seconds"],
            seconds={"type": "number", "minimum": 0},
        ),
        _gate("manual", "Passes once approved (`.../gates/approve`).", []),
        _gate(
            "ack_success",
            "At least `min_acks` stage acks, and `active` acks / stage acks >= `min_ratio`.",
            ["min_ratio"],
            min_ratio=_ratio("Required share of `active` acks."),
            min_acks={"type": "integer", "minimum": 0, "default": 1},
        ),
        _gate(
            "ack_failure",
            "Halts the plan when `failed`+`rejected` acks / stage acks > `max_ratio`.",
            ["max_ratio"],
            max_ratio=_ratio("Tolerated share of failed or rejected acks."),
        ),
        _gate(
            "event_threshold",
            "Halts the plan when more than `max_ratio` of the stage's nodes on the new release "
            "sent an `event_type` event since the stage opened (once `min_nodes` are on it).",
            ["event_type", "max_ratio"],
            event_type={"type": "string", "minLength": 1, "maxLength": 256},
            max_ratio=_ratio("Tolerated share of nodes sending the event."),
            min_nodes={"type": "integer", "minimum": 1, "default": 1},
        ),
    ]
}


@extend_schema_field({"type": "array", "items": GATE_SCHEMA, "nullable": True})
class GatesField(serializers.JSONField):
    """A stage's gates (documentation only)."""


@extend_schema_field(
    {"type": "string", "pattern": ID_PATTERN, "description": "1-128 of `A-Za-z0-9._:-`."}
)
class IdField(serializers.CharField):
    """A plan or stage id (documentation only)."""


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

    plan_id = IdField(
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
    stages = StageSpecSerializer(many=True, help_text="1 to 50 stages.")
    created_by = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=256
    )


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
    phase = serializers.ChoiceField(choices=PLAN_PHASES)
    current_stage_id = serializers.CharField()
    digest = DigestField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class StageStatusSerializer(serializers.Serializer):
    stage_id = serializers.CharField()
    phase = serializers.ChoiceField(choices=STAGE_PHASES)
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
    operator = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    at = serializers.DateTimeField()


class PlanStatusSerializer(serializers.Serializer):
    plan_id = serializers.CharField()
    phase = serializers.ChoiceField(choices=PLAN_PHASES)
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
    phase = serializers.ChoiceField(choices=PLAN_PHASES)
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
    stage_phase = serializers.ChoiceField(choices=STAGE_PHASES)
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
    description="Who acts; recorded in the plan's history.",
)
PLAN_ID = _path_id("plan_id", "The rollout plan.", not_="stuck")
STAGE_ID = _path_id("stage_id", "A stage of the plan.")

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
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="rollouts_list",
                description="Plan summaries (no spec, no status), newest first.",
                summary="Rollout plans, newest first",
                tags=["rollouts"],
                parameters=[
                    LIMIT_PARAMETER,
                    offset_parameter(2**62),
                    OpenApiParameter(
                        "phase", str, enum=PLAN_PHASES, description="Only this phase."
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
        return _replace(
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
        return _replace(
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
                        {
                            "anyOf": [
                                {"$ref": "#/components/schemas/SignedSpec"},
                                {"type": "object", "description": "`raw=true`: the spec."},
                            ]
                        },
                        description="The signed envelope (or, with `raw=true`, the spec).",
                    ),
                    **errors(e404="No such plan."),
                },
            ),
        )


class RolloutStatusViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.RolloutStatusView"

    def view_replacement(self) -> type:
        return _replace(
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
        return _replace(
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
        return _replace(
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
        return _replace(
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
        return _replace(
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
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="rollouts_stuck",
                summary="Running plans without progress",
                description="Plans in `published`/`active` whose last transition is older than "
                "`threshold_seconds`. Paused and terminal plans never appear.",
                tags=["rollouts"],
                parameters=[
                    _int_parameter(
                        "threshold_seconds",
                        "Seconds without a transition (at most a century).",
                        minimum=0,
                        default=3600,
                        maximum=100 * 365 * 86400,
                    )
                ],
                responses={200: StuckSerializer, **errors(400)},
            ),
        )


class SigningKeyViewSchema(OpenApiViewExtension):
    target_class = "rollouts.api.views.SigningKeyView"

    def view_replacement(self) -> type:
        return _replace(
            self.target_class,
            get=extend_schema(
                operation_id="signing_key",
                summary="The public key that signs plan specs (PEM)",
                description="The same PEM as `autonomy-orchestrator signing-key`, for nodes to "
                "pin. `X-Autonomy-Key-Id` carries the key id.",
                tags=["rollouts"],
                responses={
                    (200, "application/x-pem-file"): OpenApiResponse(
                        {"type": "string"}, description="PEM public key."
                    ),
                    **errors(e503="The signing key cannot be read."),
                },
            ),
        )


# --------------------------------------------------------------------------------------------
# Postprocessing: what every operation shares

# Operations that never touch the database (no 503/507).
_NO_DATABASE = {
    ("/v1/health", "get"),
    ("/v1/crl", "get"),
    ("/metrics", "get"),
    ("/v1/signing-key", "get"),
}
_WRITE_METHODS = {"post", "put", "patch", "delete"}
# What the apps' own input serializers check by hand after field validation, merged into their
# generated components: {component: {property: extra schema}}.
_COMPONENT_PATCHES: dict[str, dict[str, dict[str, Any]]] = {
    "ReleasePublishRequest": {
        # One path segment, and not the literal route /v1/releases/latest.
        "release_id": {"pattern": "^[^/]+$", "not": {"enum": ["latest"]}},
    },
}
# Documentation serializers whose objects carry extra keys beyond the declared ones.
_OPEN_OBJECTS = {"StoredEvent", "EventRequest", "Error"}


def _error_ref() -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _error_ref()}},
    }


API_DESCRIPTION = """\
Fleet control plane: telemetry events, releases and node acks, staged rollouts.

- JSON in and out (`application/json`), except `/metrics` (Prometheus text), `/v1/crl`
  (`application/pkix-crl`) and `/v1/signing-key` (PEM). Exact paths, no trailing slash.
- Timestamps are RFC 3339 (`2026-04-07T10:00:00Z`); the server writes UTC with `Z`.
- Every error answer is `{"error": "<one readable sentence>", ...detail keys}`; a 400 about
  one field names it in `field`. Ids and names containing NUL (U+0000) are refused (400); on
  PostgreSQL, which cannot store it, so is any string carrying one.
- 404 for an unknown route or object, 405 (with `Allow`) for a wrong method, 413 for a body
  over the size limit, 503 with `Retry-After` when the database is busy, 507 when its disk is
  full. No authentication at this layer: deploy behind mTLS (`serve --tls-ca-file`).

Guide with worked examples: docs/api.md. Browsable page: `/v1/docs`.
"""

# Routes answered outside DRF (a plain Django view, an ASGI wrapper): drf-spectacular cannot
# discover them, so they are described here. Both answer non-JSON bodies on success.
PLAIN_ROUTES: dict[str, dict[str, Any]] = {
    "/v1/crl": {
        "get": {
            "operationId": "crl",
            "summary": "The current certificate revocation list",
            "description": (
                "The CRL this server enforces (`serve --tls-crl-file`), as the file holds it "
                "(PEM). Other control planes pull it with `--tls-crl-sync-url`. 404 when no "
                "CRL is configured."
            ),
            "tags": ["tls"],
            "responses": {
                "200": {
                    "description": "The CRL.",
                    "content": {"application/pkix-crl": {"schema": {"type": "string"}}},
                },
                "404": {"$error": "No CRL is configured on this server."},
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "description": (
                "Prometheus text exposition (`cp_*` families plus django-prometheus'). Served "
                "only when `serve --metrics-addr` is set (on that listener and on this one); "
                "otherwise 404."
            ),
            "tags": ["operations"],
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": {"$error": "Metrics are disabled (no `--metrics-addr`)."},
            },
        }
    },
}


def _plain_routes() -> dict[str, dict[str, Any]]:
    routes: dict[str, dict[str, Any]] = {}
    for path, item in PLAIN_ROUTES.items():
        routes[path] = {}
        for method, operation in item.items():
            responses = {}
            for status, response in operation["responses"].items():
                if "$error" in response:
                    response = {**_error_response(int(status)), "description": response["$error"]}
                responses[status] = response
            routes[path][method] = {**operation, "responses": responses}
    return routes


def postprocess_schema(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """Add the shared error answers to every operation and tidy the document.

    - 400 wherever a body or query parameter can be invalid; 415 wherever there is a body;
      413 and 507 on every write; 503 (with `Retry-After`) on every operation that touches
      the database.
    - The `{}` security requirement (no authentication) is dropped: the API has none.
    """
    result.setdefault("info", {})["description"] = API_DESCRIPTION
    result.setdefault("paths", {}).update(_plain_routes())
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name in _OPEN_OBJECTS:
        if name in schemas:
            schemas[name]["additionalProperties"] = True
    for name, properties in _COMPONENT_PATCHES.items():
        for prop, extra in properties.items():
            if name in schemas and prop in schemas[name].get("properties", {}):
                schemas[name]["properties"][prop].update(extra)
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            operation.pop("security", None)
            responses = operation.setdefault("responses", {})
            has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
            if (has_query or "requestBody" in operation) and "400" not in responses:
                responses["400"] = _error_response(400)
            if "requestBody" in operation:
                responses.setdefault("415", _error_response(415))
            if method in _WRITE_METHODS:
                responses.setdefault("413", _error_response(413))
                responses.setdefault("507", _error_response(507))
            if (path, method) not in _NO_DATABASE and "503" not in responses:
                responses["503"] = _error_response(503)
                responses["503"]["headers"] = {
                    "Retry-After": {
                        "description": "Seconds to wait before retrying.",
                        "schema": {"type": "integer", "minimum": 0},
                    }
                }
            operation["responses"] = dict(sorted(responses.items()))
    return result


class Rfc3339FieldSchema(OpenApiSerializerFieldExtension):
    """The releases app's strict timestamp field is an RFC 3339 date-time string."""

    target_class = "releases.api.serializers.Rfc3339Field"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}

"""The OpenAPI document's annotations, kept out of the views (drf-spectacular, out of band).

Every route of the contract (API.md §3) is described here with `OpenApiViewExtension`s: each
one takes an app's view class by its dotted path and returns an `extend_schema`-decorated
subclass, used only while the schema is generated. The views themselves stay plain; this
module is imported by `orchestrator_site.api_docs` (which the URLconf imports), and that import
registers the extensions.

Where a view validates by hand (the hot paths share one validator with the ASGI fast path) the
wire format is described by the documentation serializers below; where a view has its own input
serializer it is referenced directly. `postprocess_schema` (a SPECTACULAR_SETTINGS hook) adds
what every operation shares: the error body, 413/503/507, `Retry-After`.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension, OpenApiViewExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import serializers

from releases.models import NodeAck

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
    decorated = extend_schema_view(**methods)(type(target.__name__, (target,), {}))
    decorated.__doc__ = target.__doc__
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

    event_id = _id_field("Unique id; an id already stored is counted in `deduped`.")
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


class EventBatchSerializer(serializers.Serializer):
    events = EventSerializer(
        many=True,
        help_text="One invalid event rejects the whole batch (400 naming `index` and `field`).",
    )


class IngestResultSerializer(serializers.Serializer):
    received = serializers.IntegerField(min_value=0, help_text="`inserted + deduped`.")
    inserted = serializers.IntegerField(min_value=0)
    deduped = serializers.IntegerField(
        min_value=0, help_text="Already stored, or repeated inside the batch."
    )


class EventPageSerializer(serializers.Serializer):
    events = EventSerializer(many=True, help_text="Newest (last inserted) first.")
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
                    "Idempotent on `event_id`: the first copy wins, later copies (stored, or "
                    "repeated in the batch) are counted in `deduped`. A 200 means every "
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


def _path_id(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(
        name,
        {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
        OpenApiParameter.PATH,
        required=True,
        description=description,
    )


def _query_id(name: str, description: str, default: str | None = None) -> OpenApiParameter:
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
    if default is not None:
        schema["default"] = default
    return OpenApiParameter(name, schema, description=description)


def _int_parameter(name: str, description: str, *, minimum: int, default: int) -> OpenApiParameter:
    return OpenApiParameter(
        name, {"type": "integer", "minimum": minimum, "default": default}, description=description
    )


CHANNEL_PARAMETER = _query_id("channel", "The release channel.", default="stable")
OFFSET_PARAMETER = _int_parameter("offset", "Items to skip (paging).", minimum=0, default=0)


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
                summary="Published releases, newest first",
                tags=["releases"],
                parameters=[
                    _query_id("channel", "Only this channel's releases."),
                    LIMIT_PARAMETER,
                    OFFSET_PARAMETER,
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
                summary="One release",
                tags=["releases"],
                parameters=[_path_id("release_id", "The release.")],
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
# Postprocessing: what every operation shares

# Operations that never touch the database (no 503/507).
_NO_DATABASE = {("/v1/health", "get")}
_WRITE_METHODS = {"post", "put", "patch", "delete"}
# Documentation serializers whose objects carry extra keys beyond the declared ones.
_OPEN_OBJECTS = {"Event", "EventRequest", "Error"}


def _error_ref() -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _error_ref()}},
    }


def postprocess_schema(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """Add the shared error answers to every operation and tidy the document.

    - 400 wherever a body or query parameter can be invalid; 413 and 507 on every write;
      503 (with `Retry-After`) on every operation that touches the database.
    - The `{}` security requirement (no authentication) is dropped: the API has none.
    """
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name in _OPEN_OBJECTS:
        if name in schemas:
            schemas[name]["additionalProperties"] = True
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            operation.pop("security", None)
            responses = operation.setdefault("responses", {})
            has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
            if (has_query or "requestBody" in operation) and "400" not in responses:
                responses["400"] = _error_response(400)
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

"""The OpenAPI description of the releases, acks and fleet routes (`releases/api/views.py`).

Answers are described by the documentation serializers below; requests by the views' own input
serializers (`releases/api/serializers.py`), with what the views check by hand after them added
by `ReleasePublishSchema`. Registered by `ReleasesConfig.ready()`; shared pieces are in
core/openapi.py.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import (
    OpenApiSerializerExtension,
    OpenApiSerializerFieldExtension,
    OpenApiViewExtension,
)
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers

from core.openapi import (
    errors,
    excluding,
    int_parameter,
    limit_parameter,
    offset_parameter,
    path_id,
    query_id,
    replace,
    response_headers,
)
from core.params import DEFAULT_LIMIT, MAX_LIMIT, MAX_PARSED_INT, RFC3339
from releases.api.serializers import NodeAckSerializer, ReleasePublishSerializer
from releases.models import NodeAck
from releases.params import (
    ACK_STATUSES,
    DEFAULT_CHANNEL,
    DEFAULT_STALE_THRESHOLD,
    FLEET_DEFAULT_LIMIT,
    FLEET_MAX_LIMIT,
)
from releases.selectors import NO_ACK

# `latest` is a route of its own (`/v1/releases/latest`), never a release id.
RESERVED_RELEASE_IDS = ("latest",)
NODE_STATUSES = ["up", "stale", "unknown"]
# releases.params reads integers of at most 18 digits.
CHANNEL_PARAMETER = query_id("channel", "The release channel.", default=DEFAULT_CHANNEL)
NO_NUL = "^[^\\x00]*$"
BASE64 = "^[A-Za-z0-9+/]*={0,2}$"
DESIRED_STATE_HEADERS = {
    "X-Autonomy-Desired-State": {
        "description": "Standard base64 of the signed statement: UTF-8 JSON binding `type` "
        "(`autonomy.desired-state/v1`), `node_id`, `channel`, `release_id`, `sequence`, "
        "`artifact_ref`, `lock_fingerprint`, `plan_id`, `spec_digest`, `release_signature`, "
        "`issued_at`, `expires_at` and `key_id`. Verify the signature over exactly the decoded "
        "bytes, then parse them (docs/trust.md); never re-serialise.",
        "required": True,
        "schema": {"type": "string", "pattern": BASE64},
    },
    "X-Autonomy-Desired-State-Signature": {
        "description": "Standard base64 of the Ed25519 signature over the decoded statement.",
        "required": True,
        "schema": {"type": "string", "pattern": BASE64},
    },
    "X-Autonomy-Key-Id": {
        "description": "The signing key's id (`GET /v1/signing-keys`): the first 16 hex "
        "characters of the sha256 of the raw public key.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
    },
}


class ReleaseSignatureSerializer(serializers.Serializer):
    """The offline release signature (docs/trust.md): Ed25519 over the decoded `signed` bytes,
    whose JSON fields must equal the release's."""

    key_id = serializers.RegexField(
        r"^[0-9a-f]{16}$", help_text="The release key's id: sha256(raw public key), 16 hex."
    )
    algorithm = serializers.RegexField(r"^Ed25519$", help_text="Always `Ed25519`.")
    signed = serializers.RegexField(
        BASE64,
        help_text="Standard base64 of the signed bytes: UTF-8 JSON `{type: "
        "autonomy.release/v1, release_id, channel, artifact_ref, lock_fingerprint, metadata}`.",
    )
    signature = serializers.RegexField(
        BASE64, help_text="Standard base64 of the Ed25519 signature over the signed bytes."
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
    release_signature = ReleaseSignatureSerializer(
        allow_null=True,
        help_text="The offline release signature it was published with (`release sign`), or null.",
    )


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
    status = serializers.ChoiceField(choices=NodeAck.Status.choices)
    lock_fingerprint = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_null=True)
    acked_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


PAGE_LIMIT_HELP = "The page size used (after clamping)."
NEXT_CURSOR_HELP = "Pass as `cursor` for the next page; null on the last page."


class ReleaseAcksSerializer(serializers.Serializer):
    release_id = serializers.CharField()
    acks = AckSerializer(many=True, help_text="Ordered by `node_id`; one page.")
    count = serializers.IntegerField(min_value=0, help_text="All acks of the release (all pages).")
    limit = serializers.IntegerField(min_value=1, help_text=PAGE_LIMIT_HELP)
    next_cursor = serializers.CharField(allow_null=True, help_text=NEXT_CURSOR_HELP)


class NodeAcksSerializer(serializers.Serializer):
    node_id = serializers.CharField()
    acks = AckSerializer(many=True, help_text="Most recently updated first; one page.")
    count = serializers.IntegerField(min_value=0, help_text="All acks of the node (all pages).")
    limit = serializers.IntegerField(min_value=1, help_text=PAGE_LIMIT_HELP)
    next_cursor = serializers.CharField(allow_null=True, help_text=NEXT_CURSOR_HELP)


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
    ack_status = serializers.ChoiceField(choices=NodeAck.Status.choices, allow_null=True)
    sequence = serializers.IntegerField(allow_null=True)


class FleetReleaseCountSerializer(serializers.Serializer):
    release_id = serializers.CharField()
    sequence = serializers.IntegerField(min_value=1)
    ack_status = serializers.ChoiceField(choices=NodeAck.Status.choices)
    nodes = serializers.IntegerField(
        min_value=1, help_text="Selected nodes whose newest ack in the channel is this one."
    )


class FleetSerializer(serializers.Serializer):
    channel = serializers.CharField()
    generated_at = serializers.DateTimeField()
    stale_threshold = serializers.IntegerField(min_value=1)
    total = serializers.IntegerField(
        min_value=0, help_text="Nodes the filters select, on all pages."
    )
    up = serializers.IntegerField(min_value=0)
    stale = serializers.IntegerField(min_value=0)
    unknown = serializers.IntegerField(min_value=0)
    latest_release = ReleaseSerializer(
        allow_null=True, help_text="The channel's latest release; null when it has none."
    )
    by_release = FleetReleaseCountSerializer(
        many=True,
        help_text="Selected nodes per (release, ack status) of their newest ack in the channel, "
        "newest release first; nodes without one are not counted here.",
    )
    nodes = FleetNodeSerializer(
        many=True,
        required=False,
        help_text="One page of the selected nodes, by `node_id`, whatever their channel; "
        "absent with `summary=true`.",
    )
    limit = serializers.IntegerField(
        min_value=1, required=False, help_text=PAGE_LIMIT_HELP + " Absent with `summary=true`."
    )
    next_cursor = serializers.CharField(
        allow_null=True,
        required=False,
        help_text=NEXT_CURSOR_HELP + " Absent with `summary=true`.",
    )


NODE_ACK_CURSOR_PATTERN = "^[0-9]{1,18}\\.[0-9]{1,18}$"


def page_parameters(cursor_pattern: str = NO_NUL) -> list[OpenApiParameter]:
    return [
        OpenApiParameter(
            "limit",
            {
                "type": "integer",
                "minimum": 1,
                "default": FLEET_DEFAULT_LIMIT,
                "maximum": MAX_PARSED_INT,
            },
            description=(
                f"Page size: at least 1, default {FLEET_DEFAULT_LIMIT}; values above "
                f"{FLEET_MAX_LIMIT} are clamped to {FLEET_MAX_LIMIT}."
            ),
        ),
        OpenApiParameter(
            "cursor",
            {"type": "string", "minLength": 1, "maxLength": 256, "pattern": cursor_pattern},
            description="Opaque: the `next_cursor` of the previous page (absent: the first page).",
        ),
    ]


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

        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="releases_list",
                description="Newest (last published) first; optionally one channel.",
                summary="Published releases, newest first",
                tags=["releases"],
                parameters=[
                    query_id("channel", "Only this channel's releases."),
                    limit_parameter(DEFAULT_LIMIT, MAX_LIMIT),
                    offset_parameter(),
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
                    "or contain `/`. When the server runs with `--release-trust-key`, "
                    "`release_signature` (made offline by `autonomy-orchestrator release sign`) "
                    "is required and must verify with one of those keys over exactly these "
                    "fields: else 400 naming `release_signature` (docs/trust.md)."
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
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="releases_latest",
                summary="The release a channel (or one node) should run",
                description=(
                    "The release with the highest `sequence` in the channel. With `node_id`: "
                    "the release **that node** should run, rollout-aware (a node outside a "
                    "running rollout of the latest release gets the previous one). This is "
                    "the nodes' poll route. Every 200 carries the signed desired state in three "
                    "headers (docs/trust.md); the body is the release as stored."
                ),
                tags=["releases"],
                parameters=[
                    CHANNEL_PARAMETER,
                    query_id("node_id", "Answer for this node (rollout-aware)."),
                ],
                responses={
                    200: ReleaseSerializer,
                    **errors(
                        400,
                        e404="The channel has no release (or none for this node yet).",
                    ),
                },
                extensions=response_headers(200, DESIRED_STATE_HEADERS),
            ),
        )


class ReleaseDetailViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.ReleaseDetailView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="releases_get",
                description="The stored release, as `POST /v1/releases` answered it.",
                summary="One release",
                tags=["releases"],
                parameters=[path_id("release_id", "The release.", reserved=RESERVED_RELEASE_IDS)],
                responses={200: ReleaseSerializer, **errors(e404="No such release.")},
            ),
        )


class ReleaseAcksViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.ReleaseAcksView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="releases_acks",
                description=(
                    "Every node's ack for this release, ordered by `node_id`, in pages "
                    "(`limit`, `cursor`); `count` is the release's total."
                ),
                summary="All node acks for a release",
                tags=["acks"],
                parameters=[path_id("release_id", "The release."), *page_parameters()],
                responses={200: ReleaseAcksSerializer, **errors(400, e404="No such release.")},
            ),
        )


class NodeAckViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.NodeAckView"

    def view_replacement(self) -> type:

        return replace(
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
                parameters=[path_id("node_id", "The acknowledging node.")],
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
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="nodes_acks",
                summary="All acks submitted by a node",
                description=(
                    "Most recently updated first, in pages (`limit`, `cursor`); `count` is the "
                    "node's total. A node with no acks: 200 with an empty list."
                ),
                tags=["acks"],
                parameters=[
                    path_id("node_id", "The node."),
                    *page_parameters(NODE_ACK_CURSOR_PATTERN),
                ],
                responses={200: NodeAcksSerializer, **errors(400)},
            ),
        )


class FleetViewSchema(OpenApiViewExtension):
    target_class = "releases.api.views.FleetView"

    def view_replacement(self) -> type:
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="fleet",
                summary="Per-node observational summary",
                description=(
                    "Every node that sent an event or an ack, by `node_id`, in pages (`limit`, "
                    "`cursor`), from per-node tables kept up to date by every event batch and "
                    "ack. `release_id`, `ack_status` and `sequence` come from the node's newest "
                    "ack for a release of `channel`. The filters select nodes; the counts "
                    "(`total`, `up`, `stale`, `unknown`, `by_release`) cover every selected "
                    "node on all pages; `summary=true` answers only them. With "
                    "`--fleet-forget-after`, nodes not heard from for that long are left out."
                ),
                tags=["fleet"],
                parameters=[
                    CHANNEL_PARAMETER,
                    int_parameter(
                        "stale_threshold",
                        "Seconds since the newest event after which a node is `stale`.",
                        minimum=1,
                        default=DEFAULT_STALE_THRESHOLD,
                        maximum=MAX_PARSED_INT,
                    ),
                    *page_parameters(),
                    OpenApiParameter(
                        "node_status",
                        {"type": "string", "enum": NODE_STATUSES},
                        description="Only nodes with this status.",
                    ),
                    query_id("release_id", "Only nodes whose newest ack in the channel is for it."),
                    OpenApiParameter(
                        "ack_status",
                        {"type": "string", "enum": [*ACK_STATUSES, NO_ACK]},
                        description=(
                            "Only nodes whose newest ack in the channel has this status "
                            f"(`{NO_ACK}`: nodes without an ack in the channel)."
                        ),
                    ),
                    OpenApiParameter(
                        "summary",
                        {"type": "boolean", "default": False},
                        description="`true`: only the counts, no `nodes` (any fleet size).",
                    ),
                ],
                responses={200: FleetSerializer, **errors(400)},
            ),
        )


class ReleasePublishSchema(OpenApiSerializerExtension):
    """What `ReleaseListView.post` checks by hand after the serializer: one path segment, not
    the literal route `latest`. DRF's CharField refuses NUL in every string."""

    target_class = "releases.api.serializers.ReleasePublishSerializer"

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        _no_nul(schema)
        schema["properties"]["release_id"].update(
            {
                "minLength": 1,
                # a path segment without NUL (DRF's CharField refuses NUL on every store)
                "pattern": excluding("^[^/\\x00]+$", RESERVED_RELEASE_IDS),
                "not": {"enum": list(RESERVED_RELEASE_IDS)},
            }
        )
        schema["properties"]["channel"]["minLength"] = 1
        schema["properties"]["release_signature"] = {
            "allOf": [{"$ref": "#/components/schemas/ReleaseSignature"}],
            "nullable": True,
            "description": "What `autonomy-orchestrator release sign` adds. Required (and "
            "verified against the trusted keys) when the server runs with "
            "`--release-trust-key`; else optional, and checked against the release's fields.",
        }
        return dict(schema)


class NodeAckRequestSchema(OpenApiSerializerExtension):
    target_class = "releases.api.serializers.NodeAckSerializer"

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        _no_nul(schema)
        schema["properties"]["release_id"]["minLength"] = 1
        return dict(schema)


def _no_nul(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        if prop.get("type") == "string" and "enum" not in prop and "format" not in prop:
            prop.setdefault("pattern", NO_NUL)


class Rfc3339FieldSchema(OpenApiSerializerFieldExtension):
    """The releases app's strict timestamp field is an RFC 3339 date-time string."""

    target_class = "releases.api.serializers.Rfc3339Field"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        return {
            "type": "string",
            "format": "date-time",
            "maxLength": 64,
            "pattern": f"^{RFC3339.pattern}$",
        }

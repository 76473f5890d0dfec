"""The OpenAPI description of the events routes (`events/api/views.py`), for drf-spectacular.

The views validate by hand (one validator shared with the fast path), so the wire format is
described by the documentation serializers below; `OpenApiViewExtension`s attach them to the
views without touching them. Registered by `EventsConfig.ready()`. Shared pieces (the error
body, `limit`, the postprocessing hook) are in core/openapi.py.
"""

from __future__ import annotations

from django.core.validators import MaxLengthValidator, RegexValidator
from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers

from core.openapi import (
    NO_DATABASE,
    OpenObjectSerializer,
    before_parameter,
    errors,
    limit_parameter,
    replace,
)
from core.params import DEFAULT_LIMIT, MAX_ID_CHARS, MAX_LIMIT, MAX_TIMESTAMP_CHARS
from events.validation import MAX_BATCH_EVENTS

# What events.validation accepts: a non-empty string of at most MAX_ID_CHARS without NUL.
_ID_PATTERN = "^[^\\x00]+$"
_OPTIONAL_PATTERN = "^[^\\x00]+$"  # blank is allowed separately (allow_blank)
# events.validation._RFC3339: a date, `T` (or `t`/space), a time with an optional fraction of up
# to 9 digits, and a mandatory offset.
TIMESTAMP_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?"
    "([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _id_field(help_text: str) -> serializers.CharField:
    return serializers.CharField(
        min_length=1,
        max_length=MAX_ID_CHARS,
        validators=[RegexValidator(_ID_PATTERN)],
        help_text=help_text,
    )


def _optional_id_field() -> serializers.CharField:
    return serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=MAX_ID_CHARS,
        validators=[RegexValidator(_OPTIONAL_PATTERN)],
    )


class EventSerializer(OpenObjectSerializer):
    """One telemetry event. Keys beyond these are kept and returned exactly as received."""

    event_id = _id_field(
        "Unique per node: an (`node_id`, `event_id`) already stored is counted in `deduped`."
    )
    event_type = _id_field("For example `app.crash`.")
    node_id = _id_field("The sending node.")
    timestamp = serializers.DateTimeField(
        validators=[
            MaxLengthValidator(MAX_TIMESTAMP_CHARS),
            RegexValidator(TIMESTAMP_PATTERN),
        ],
        help_text="RFC 3339 with an offset (`Z` or `±hh:mm`); one without an offset is invalid.",
    )
    lock_fingerprint = _optional_id_field()
    release_id = _optional_id_field()


class StoredEventSerializer(EventSerializer):
    """A stored event, exactly as it was received (every key, unknown ones too)."""

    # The stored form is the string the node sent, not a parsed date-time.
    timestamp = serializers.CharField(help_text="As the node sent it (RFC 3339 with an offset).")  # type: ignore[assignment]


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
        return replace(
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
                    limit_parameter(DEFAULT_LIMIT, MAX_LIMIT),
                    before_parameter(),
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
        return replace(
            self.target_class,
            get=extend_schema(
                operation_id="health",
                description="Answers as long as the process serves requests; touches no database.",
                summary="Liveness",
                tags=["health"],
                responses={200: HealthSerializer},
                extensions=NO_DATABASE,
            ),
        )

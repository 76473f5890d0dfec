"""Envelope and query-string serializers for the DRF path. Per-event validation is NOT done here
(it is events.validation, one pass, shared with the fast path)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from events import validation


class EventListQuerySerializer(serializers.Serializer):
    """`GET /v1/events` query: the same rules and messages as `validation.parse_list_query`."""

    node_id = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    event_type = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    limit = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    before = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)

    def validate_limit(self, value: str) -> int:
        try:
            return validation.parse_limit(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_before(self, value: str) -> int | None:
        try:
            return validation.parse_before(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_query(self) -> validation.ListQuery:
        data: dict[str, Any] = self.validated_data
        return validation.ListQuery(
            node_id=validation.parse_filter(data.get("node_id")),
            event_type=validation.parse_filter(data.get("event_type")),
            limit=data.get("limit", validation.DEFAULT_LIMIT),
            before=data.get("before"),
        )


class IngestResultSerializer(serializers.Serializer):
    received = serializers.IntegerField()
    inserted = serializers.IntegerField()
    deduped = serializers.IntegerField()

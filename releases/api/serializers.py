"""Input serializers for the releases routes (low-rate writes: DRF is fine here).

Strings must be JSON strings (DRF's CharField would turn 5 into "5"); errors become
`{"error": "invalid field 'x': ...", "field": "x"}` through the project's exception handler.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rest_framework import serializers

from core.params import MAX_ID_CHARS, parse_rfc3339
from releases.models import NodeAck


class StrictCharField(serializers.CharField):
    """A CharField that accepts only JSON strings and keeps them exactly as sent."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class Rfc3339Field(StrictCharField):
    """An RFC 3339 timestamp with an offset (core.params.parse_rfc3339), as an aware UTC
    datetime."""

    def to_internal_value(self, data: Any) -> datetime:  # type: ignore[override]
        text = super().to_internal_value(data)
        try:
            value = parse_rfc3339(text)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        try:
            return value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+04:00 is before year 1 UTC
            raise serializers.ValidationError(
                "is not a valid date and time (out of range in UTC)"
            ) from None


class ReleasePublishSerializer(serializers.Serializer):
    release_id = StrictCharField(max_length=MAX_ID_CHARS)
    channel = StrictCharField(max_length=MAX_ID_CHARS, required=False, default="stable")
    policy_ref = StrictCharField(
        max_length=1024, required=False, allow_null=True, allow_blank=True, default=None
    )
    lock_fingerprint = StrictCharField(
        max_length=256, required=False, allow_null=True, allow_blank=True, default=None
    )
    artifact_ref = StrictCharField(
        max_length=2048, required=False, allow_null=True, allow_blank=True, default=None
    )
    metadata = serializers.DictField(required=False, allow_null=True, default=dict)
    # Checked by the service (releases.release_signing), required under --release-trust-key.
    release_signature = serializers.DictField(required=False, allow_null=True, default=None)


class NodeAckSerializer(serializers.Serializer):
    release_id = StrictCharField(max_length=MAX_ID_CHARS)
    status = serializers.ChoiceField(choices=NodeAck.Status.choices)
    lock_fingerprint = StrictCharField(
        max_length=256, required=False, allow_null=True, allow_blank=True, default=None
    )
    message = StrictCharField(
        max_length=65536, required=False, allow_null=True, allow_blank=True, default=None
    )
    acked_at = Rfc3339Field(required=False, allow_null=True, default=None)

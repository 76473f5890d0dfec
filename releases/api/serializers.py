"""Input serializers for the releases routes (low-rate writes: DRF is fine here).

Strings must be JSON strings (DRF's CharField would turn 5 into "5"); errors become
`{"error": "invalid field 'x': ...", "field": "x"}` through the project's exception handler.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from rest_framework import serializers

from releases.models import NodeAck
from releases.params import MAX_ID_CHARS

# RFC 3339 date-time with a mandatory offset (`Z` or ±hh:mm).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


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
    """An RFC 3339 timestamp with an offset, returned as an aware UTC datetime."""

    default_error_messages = {
        "format": "must be an RFC 3339 timestamp with an offset, e.g. 2026-04-07T10:00:00Z",
    }

    def to_internal_value(self, data: Any) -> datetime:  # type: ignore[override]
        text = super().to_internal_value(data)
        if len(text) > 64 or not _RFC3339.fullmatch(text):
            self.fail("format")
        fraction = re.search(r"\.(\d+)", text)
        if fraction and len(fraction.group(1)) > 6:  # datetime holds microseconds
            text = text.replace(fraction.group(0), "." + fraction.group(1)[:6], 1)
        try:
            value = datetime.fromisoformat(text)
            return value.astimezone(UTC)
        except (ValueError, OverflowError):  # e.g. 0001-01-01T00:00:00+04:00 is before year 1 UTC
            self.fail("format")


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

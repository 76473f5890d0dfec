"""The rollouts' clock. Gate evaluation and transitions read the time through `now()` so tests
can replace it (`monkeypatch.setattr(rollouts.clock, "now", ...)`)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils import timezone


def now() -> datetime:
    return timezone.now()


def rfc3339(value: datetime | None) -> str | None:
    """`2026-04-07T10:00:00.123456Z` (RFC 3339, UTC, microseconds so that every change shows)."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

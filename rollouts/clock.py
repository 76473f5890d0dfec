"""The rollouts' clock. Gate evaluation and transitions read the time through `now()` so tests
can replace it (`monkeypatch.setattr(rollouts.clock, "now", ...)`)."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone


def now() -> datetime:
    return timezone.now()

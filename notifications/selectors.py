"""Reads of the notifications app: endpoints, due deliveries, the outbox gauge."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q

from notifications.models import WebhookDelivery, WebhookEndpoint


def endpoint_list() -> list[WebhookEndpoint]:
    return list(WebhookEndpoint.objects.order_by("id"))


def endpoint_get(ref: str) -> WebhookEndpoint | None:
    """By id (digits) or by URL."""
    value = (ref or "").strip()
    if value.isdigit():
        return WebhookEndpoint.objects.filter(pk=int(value)).first()
    return WebhookEndpoint.objects.filter(url=value).first()


def subscribers(name: str) -> list[WebhookEndpoint]:
    """The enabled endpoints subscribed to event `name` (a few rows: read them all)."""
    from notifications.services import subscribed

    return [
        e
        for e in WebhookEndpoint.objects.filter(enabled=True).only("id", "events")
        if subscribed(e.events, name)
    ]


def _due(now: datetime) -> Q:
    return Q(
        state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now, endpoint__enabled=True
    ) & (Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))


def due_endpoint_ids(*, now: datetime, limit: int = 1000) -> list[int]:
    """Endpoints with at least one delivery to try now (however many one of them has)."""
    rows = (
        WebhookDelivery.objects.filter(_due(now))
        .order_by()
        .values_list("endpoint_id", flat=True)
        .distinct()[:limit]
    )
    return sorted(rows)


def due_deliveries(*, endpoint_id: int, now: datetime, limit: int) -> list[int]:
    """The ids of one endpoint's deliveries to try now, oldest first."""
    return list(
        WebhookDelivery.objects.filter(_due(now), endpoint_id=endpoint_id)
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )


def outbox_pending_count() -> int:
    """Deliveries not yet delivered nor given up (`cp_webhook_outbox_pending`)."""
    return WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING).count()


def pending_by_endpoint() -> dict[int, int]:
    from django.db.models import Count

    rows = (
        WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING)
        .values("endpoint_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {row["endpoint_id"]: row["n"] for row in rows}

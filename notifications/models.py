"""Webhook endpoints, the outbox of events and its delivery log (docs/operating.md "Webhooks").

An emitted event is one `WebhookEvent` (its exact JSON body) plus one `WebhookDelivery` per
subscribed endpoint, written in the transaction of the change it reports. The dispatcher
(`notifications.dispatcher`) sends each delivery until the endpoint answers 2xx or the attempts
run out; every try is a `WebhookAttempt` (the delivery log, read-only in the admin).
"""

from __future__ import annotations

from django.db import models


class WebhookEndpoint(models.Model):
    """Where events are POSTed. `secret` is stored as given: it signs every delivery (HMAC), so
    it must be readable; it is never logged and never shown again after it is set."""

    url = models.CharField(max_length=2000, unique=True)
    secret = models.CharField(max_length=256)
    events = models.JSONField(default=list, help_text='event names, or ["*"] for every event')
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField()
    created_by = models.CharField(max_length=256, blank=True, default="")
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ("id",)
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        from notifications.signing import redact_url

        return redact_url(self.url)


class WebhookEvent(models.Model):
    """One emitted event: its id and the exact body every endpoint receives. `dedup_key` makes
    an event that must be sent once (a stuck episode, a stage awaiting approval) unique."""

    event_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=64)
    body = models.TextField()
    dedup_key = models.CharField(max_length=400, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ("-id",)
        verbose_name = "webhook event"

    def __str__(self) -> str:
        return f"{self.name} {self.event_id}"


class WebhookDelivery(models.Model):
    """The outbox row of one event for one endpoint: pending until delivered or given up."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # gave up after the last attempt

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # A replica that sends holds the row until then (a crash mid-send frees it at this time).
    claimed_until = models.DateTimeField(null=True, blank=True)
    claim_token = models.CharField(max_length=64, blank=True, default="")
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-id",)
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="webhook_delivery_once"),
        ]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="webhook_delivery_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event.name} -> endpoint {self.endpoint_id} ({self.state})"


class WebhookAttempt(models.Model):
    """One try of a delivery: the delivery log."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered"
        RETRYING = "retrying"
        GAVE_UP = "gave_up"

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField()
    at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    duration_ms = models.PositiveIntegerField(default=0)
    retry_in_ms = models.PositiveBigIntegerField(null=True, blank=True)
    replica = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.outcome}"

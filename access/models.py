"""Bearer tokens and the append-only audit log (API.md §6)."""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models

ROLE_CHOICES = [(r, r) for r in ("node", "viewer", "operator", "admin")]


class ApiToken(models.Model):
    """A bearer token. Only a SHA-256 of the secret is stored; `public_id` (part of the token
    itself, `aot_<public_id>_<secret>`) finds the row, the hash is compared in constant time."""

    name = models.CharField(max_length=128, unique=True)
    role = models.CharField(max_length=16, choices=ROLE_CHOICES)
    node_id = models.CharField(max_length=256, null=True, blank=True)
    public_id = models.CharField(max_length=32, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(role="node") | models.Q(node_id__isnull=False),
                name="apitoken_node_needs_node_id",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.role})"


class AppendOnlyError(Exception):
    """Audit records are never changed or deleted (also refused by database triggers)."""


class AuditQuerySet(models.QuerySet["AuditRecord"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("audit records are append-only")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("audit records are append-only")


class AuditRecord(models.Model):
    """One audit event: a change (success or failure), a denial, or an automatic transition."""

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILURE = "failure"
        DENIED = "denied"

    at = models.DateTimeField(db_index=True)
    event_name = models.CharField(max_length=128, db_index=True)
    category = models.CharField(max_length=64)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    principal = models.CharField(max_length=256, db_index=True)
    principal_kind = models.CharField(max_length=16)
    role = models.CharField(max_length=16, blank=True, default="")
    source_ip = models.CharField(max_length=64, blank=True, default="")
    route = models.CharField(max_length=512, blank=True, default="")
    target = models.CharField(max_length=512, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%dT%H:%M:%SZ} {self.event_name} {self.outcome} by {self.principal}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit records are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("audit records are append-only")

"""Reads of tokens and the audit log."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from access.models import ApiToken, AuditRecord

AUDIT_DEFAULT_LIMIT = 100
AUDIT_MAX_LIMIT = 1000


def token_list() -> QuerySet[ApiToken]:
    """Every token, oldest first (revoked ones too; never the secrets, which are not stored)."""
    return ApiToken.objects.order_by("created_at", "id")


def any_token_exists() -> bool:
    """For `serve --auth auto`: an unrevoked, unexpired token makes auth enforced (§6)."""
    from django.db.models import Q
    from django.utils import timezone

    return (
        ApiToken.objects.filter(revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
        .exists()
    )


def audit_list(
    *,
    since: datetime | None = None,
    event_name: str | None = None,
    principal: str | None = None,
    limit: int = AUDIT_DEFAULT_LIMIT,
    before: int | None = None,
) -> list[AuditRecord]:
    """Audit records newest first (by id: the order they were written). `before` is the id of the
    last record of the previous page (the cursor)."""
    rows = AuditRecord.objects.order_by("-id")
    if since is not None:
        rows = rows.filter(at__gte=since)
    if event_name:
        rows = rows.filter(event_name=event_name)
    if principal:
        rows = rows.filter(principal=principal)
    if before is not None:
        rows = rows.filter(id__lt=before)
    return list(rows[: max(1, min(limit, AUDIT_MAX_LIMIT))])


def audit_since(since: datetime | None) -> QuerySet[AuditRecord]:
    """For `audit export`: oldest first, streamed."""
    rows = AuditRecord.objects.order_by("id")
    if since is not None:
        rows = rows.filter(at__gte=since)
    return rows

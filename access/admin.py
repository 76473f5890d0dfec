"""Read-only admin pages: the audit log (append-only, also for superusers) and the token list
(tokens are created and revoked with `autonomy-orchestrator token …`, which prints the secret)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from access.models import ApiToken, AuditRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    actions = None

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditRecord)
class AuditRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "at",
        "event_name",
        "outcome",
        "principal",
        "principal_kind",
        "role",
        "route",
        "target",
        "source_ip",
    )
    list_filter = ("outcome", "category", "principal_kind")
    search_fields = ("event_name", "principal", "target", "route")
    date_hierarchy = "at"
    fields = (
        "at",
        "event_name",
        "category",
        "outcome",
        "principal",
        "principal_kind",
        "role",
        "source_ip",
        "route",
        "target",
        "detail",
    )
    readonly_fields = fields


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "role",
        "node_id",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("role",)
    search_fields = ("name", "node_id")
    fields = (
        "name",
        "role",
        "node_id",
        "public_id",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = fields

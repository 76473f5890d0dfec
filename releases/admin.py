"""Releases and node acks in the Django admin: browse, filter, search; read-only.

Releases are published through `POST /v1/releases` (the server assigns the sequence and a
release never changes or disappears, so sequences are never reused); acks come from nodes.
The admin shows them and lets nobody edit them.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from releases.models import NodeAck, Release


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class NodeAckInline(admin.TabularInline):
    model = NodeAck
    fields = ("node_id", "status", "lock_fingerprint", "message", "acked_at", "updated_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    max_num = 0
    ordering = ("node_id",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Release)
class ReleaseAdmin(ReadOnlyAdmin):
    list_display = (
        "release_id",
        "channel",
        "sequence",
        "policy_ref",
        "lock_fingerprint",
        "artifact_ref",
        "created_at",
    )
    list_filter = ("channel",)
    search_fields = ("release_id", "policy_ref", "artifact_ref")
    ordering = ("-id",)
    date_hierarchy = "created_at"
    inlines = (NodeAckInline,)


@admin.register(NodeAck)
class NodeAckAdmin(ReadOnlyAdmin):
    list_display = (
        "node_id",
        "release",
        "status",
        "lock_fingerprint",
        "acked_at",
        "updated_at",
    )
    list_filter = ("status", "release__channel")
    search_fields = ("node_id", "release__release_id")
    list_select_related = ("release",)
    ordering = ("-updated_at", "-id")
    date_hierarchy = "updated_at"

"""Events in the Django admin: readable, searchable, never editable (events are stored exactly
as received and never change)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import ReadOnlyAdminMixin
from events.models import Event
from events.retention import shown


@admin.register(Event)
class EventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "event_id", "event_type", "node_id", "timestamp", "received_at")
    search_fields = ("=event_id", "=node_id")  # exact, indexed: no scan of millions of rows
    ordering = ("-id",)
    show_full_result_count = False  # COUNT(*) over millions of events costs more than the page
    fields = (
        "event_id",
        "event_type",
        "node_id",
        "timestamp",
        "lock_fingerprint",
        "release_id",
        "received_at",
        "payload",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        return shown(super().get_queryset(request))  # never one out of the retention window

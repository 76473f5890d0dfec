"""Read-only Django admin for rollouts. Changes go through `rollouts.services` (the rollouts
admin UI calls those; no admin save path writes plan state directly)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from rollouts.models import RolloutPlan, RolloutTransition, StageStatus


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StageStatusInline(_ReadOnly, admin.TabularInline):
    model = StageStatus
    extra = 0
    fields = (
        "position",
        "stage_id",
        "phase",
        "percent",
        "opened_at",
        "promoted_at",
        "manual_approved",
        "manual_approved_by",
        "halt_reason",
    )
    readonly_fields = fields


class RolloutTransitionInline(_ReadOnly, admin.TabularInline):
    model = RolloutTransition
    extra = 0
    fields = ("at", "action", "from_phase", "to_phase", "stage_id", "operator", "reason")
    readonly_fields = fields


@admin.register(RolloutPlan)
class RolloutPlanAdmin(_ReadOnly, admin.ModelAdmin):
    list_display = ("plan_id", "release", "channel", "phase", "current_stage_id", "updated_at")
    list_filter = ("phase", "channel")
    search_fields = ("plan_id", "release__release_id")
    exclude = ("spec",)
    readonly_fields = (
        "plan_id",
        "release",
        "channel",
        "description",
        "created_by",
        "digest",
        "signature",
        "key_id",
        "phase",
        "current_stage_id",
        "version",
        "created_at",
        "updated_at",
    )
    inlines = (StageStatusInline, RolloutTransitionInline)

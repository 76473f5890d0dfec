"""Admin building blocks shared by the apps (Django only; nothing of this repo)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


class ReadOnlyAdminMixin:
    """For a `ModelAdmin` whose records are shown but never added, edited or deleted through
    the admin (they are written by the API, by nodes or by a command). Put it first:
    `class EventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin)`."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

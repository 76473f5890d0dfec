"""Releases and node acks in the Django admin: browse, filter, search; read-only.

Releases are published through `POST /v1/releases` (the server assigns the sequence and a
release never changes or disappears, so sequences are never reused); acks come from nodes.
The admin shows them and lets nobody edit them.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from core.admin import ReadOnlyAdminMixin
from releases.models import NodeAck, Release

ADOPTION_ORDER = ("active", "acknowledged", "pending", "failed", "rejected")


@admin.register(Release)
class ReleaseAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "release_id",
        "channel",
        "sequence",
        "policy_ref",
        "lock_fingerprint",
        "artifact_ref",
        "adoption",
        "created_at",
    )
    list_filter = ("channel",)
    search_fields = ("release_id", "policy_ref", "artifact_ref")
    ordering = ("-id",)
    date_hierarchy = "created_at"
    readonly_fields = ("adoption", "acks_by_status")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Release]:
        # Adoption per ack status for every row of the list, in the list's one query.
        return (
            super()
            .get_queryset(request)
            .annotate(
                **{
                    f"acks_{status}": Count("acks", filter=Q(acks__status=status))
                    for status in ADOPTION_ORDER
                }
            )
        )

    @admin.display(description="adoption (acks per status)")
    def adoption(self, obj: Release) -> str:
        """Nodes per ack status of this release, each linking to those acks."""
        counts = {status: getattr(obj, f"acks_{status}", None) for status in ADOPTION_ORDER}
        if any(value is None for value in counts.values()):  # not from the annotated list
            counts = dict.fromkeys(ADOPTION_ORDER, 0)
            counts.update(obj.acks.values_list("status").annotate(n=Count("id")).order_by())
        if not any(counts.values()):
            return "no ack yet"
        base = reverse("admin:releases_nodeack_changelist")
        return format_html_join(
            " ",
            '<a class="adoption-{}" href="{}">{} {}</a>',
            (
                (
                    status,
                    base
                    + "?"
                    + urlencode({"release__release_id": obj.release_id, "status": status}),
                    counts[status],
                    status,
                )
                for status in ADOPTION_ORDER
                if counts[status]
            ),
        )

    @admin.display(description="Acks")
    def acks_by_status(self, obj: Release) -> str:
        """Counts per status, linking to the release's acks (a release may have thousands)."""
        counts = dict(obj.acks.values_list("status").annotate(n=Count("id")).order_by("status"))
        if not counts:
            return "none yet"
        url = (
            reverse("admin:releases_nodeack_changelist")
            + "?"
            + urlencode({"release__release_id": obj.release_id})
        )
        summary = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
        return format_html('<a href="{}">{} acks</a> ({})', url, sum(counts.values()), summary)


@admin.register(NodeAck)
class NodeAckAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
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

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # the link from a release's page: its acks
        return lookup == "release__release_id" or super().lookup_allowed(lookup, value, request)

    ordering = ("-updated_at", "-id")
    date_hierarchy = "updated_at"

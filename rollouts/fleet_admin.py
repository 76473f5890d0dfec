"""The admin's fleet page (`/admin/fleet/`) and node page (`/admin/fleet/nodes/<node_id>/`):
custom admin views, staff-only through `admin.site.admin_view` like every admin page, and
readable by whoever may view node acks (`releases.view_nodeack`; superusers may). Mounted by
the URLconf (orchestrator_site/urls.py) in front of the admin's own URLs."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path

from releases.models import NodeAck, Release
from rollouts import fleet

PAGE_SIZE = 100
VIEW_PERMISSION = "releases.view_nodeack"


def _check(request: HttpRequest) -> None:
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied


def _choice(request: HttpRequest, name: str, allowed: tuple[str, ...] | list[str]) -> str:
    value = (request.GET.get(name) or "").strip()
    return value if value in allowed else ""


def fleet_view(request: HttpRequest) -> HttpResponse:
    """Every known node, filtered by status, channel, release and ack status; 100 a page."""
    _check(request)
    channels = sorted(set(Release.objects.values_list("channel", flat=True)))
    releases = list(Release.objects.order_by("-id").values_list("release_id", flat=True)[:200])
    filters = {
        "status": _choice(request, "status", fleet.NODE_STATUSES),
        "channel": _choice(request, "channel", channels),
        "release": (request.GET.get("release") or "").strip()[:256],
        "ack_status": _choice(request, "ack_status", list(NodeAck.Status.values)),
    }
    rows = fleet.fleet_rows(
        status=filters["status"] or None,
        channel=filters["channel"] or None,
        release_id=filters["release"] or None,
        ack_status=filters["ack_status"] or None,
    )
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("p"))
    query = {k: v for k, v in filters.items() if v}

    def page_url(number: int) -> str:
        return "?" + urlencode({**query, "p": number})

    context = {
        **admin.site.each_context(request),
        "title": "Fleet",
        "filters": filters,
        "choices": {
            "status": fleet.NODE_STATUSES,
            "channel": channels,
            "release": releases,
            "ack_status": NodeAck.Status.values,
        },
        "page": page,
        "total": len(rows),
        "previous_url": page_url(page.previous_page_number()) if page.has_previous() else "",
        "next_url": page_url(page.next_page_number()) if page.has_next() else "",
        "stale_seconds": fleet.DEFAULT_STALE_SECONDS,
    }
    return render(request, "admin/fleet/fleet.html", context)


def node_view(request: HttpRequest, node_id: str) -> HttpResponse:
    """One node: its acks over time, its latest events, its place in every live plan."""
    _check(request)
    detail = fleet.node_detail(node_id=node_id)
    context = {
        **admin.site.each_context(request),
        "title": f"Node {node_id}",
        "node": detail,
        "stale_seconds": fleet.DEFAULT_STALE_SECONDS,
    }
    return render(request, "admin/fleet/node.html", context, status=200 if detail["known"] else 404)


urlpatterns: list[URLPattern] = [
    path("", admin.site.admin_view(fleet_view), name="admin-fleet"),
    path("nodes/<path:node_id>/", admin.site.admin_view(node_view), name="admin-fleet-node"),
]

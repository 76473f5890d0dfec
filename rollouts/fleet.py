"""Reads behind the admin's fleet and node pages (docs/operating.md "Pages").

The fleet: every known node (the fleet view's tables, `releases.models.FleetNode` and
`FleetNodeAck`, filtered and paged in the database) with its status (`up` within the stale
threshold of its newest event, `stale` older, `unknown`: acks only) and its newest ack (of a
release of `channel` when one is given, as `GET /v1/fleet` does). A node: its acks over
time, its latest events, and where it stands in every live rollout plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, overload

from django.db.models import OuterRef, Subquery
from django.utils import timezone

from events.models import Event
from events.retention import shown
from releases.models import FleetNode, FleetNodeAck, NodeAck
from rollouts import progress
from rollouts.cohort import snapshot_of
from rollouts.models import LIVE_PHASES, RolloutPlan

NODE_STATUSES = ("up", "stale", "unknown")
DEFAULT_STALE_SECONDS = 60
NODE_EVENTS_SHOWN = 20


class FleetRow(NamedTuple):
    node_id: str
    status: str
    last_seen: datetime | None
    release_id: str | None
    channel: str | None
    ack_status: str | None
    ack_updated_at: datetime | None


def node_status(last_seen: datetime | None, now: datetime, stale_seconds: int) -> str:
    if last_seen is None:
        return "unknown"
    return "up" if (now - last_seen).total_seconds() <= stale_seconds else "stale"


class FleetRows(Sequence[FleetRow]):
    """The fleet page's rows, read from the fleet view's tables (`FleetNode`, `FleetNodeAck`) in
    the database, a page at a time: `len()` is one COUNT, a slice one query of that page
    (`django.core.paginator.Paginator` takes it as is). Ordered by node_id."""

    def __init__(self, queryset: Any, now: datetime, stale_seconds: int) -> None:
        self._qs = queryset
        self._now = now
        self._stale = stale_seconds
        self._count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            self._count = self._qs.count()
        return self._count

    @overload
    def __getitem__(self, index: int) -> FleetRow: ...

    @overload
    def __getitem__(self, index: slice) -> list[FleetRow]: ...

    def __getitem__(self, index: int | slice) -> FleetRow | list[FleetRow]:
        if isinstance(index, int):
            return self[index : index + 1][0]
        rows = self._qs.values_list(
            "node_id", "last_seen", "ack_release", "ack_channel", "ack_status", "ack_updated_at"
        )[index]
        return [
            FleetRow(
                node_id=node_id,
                status=node_status(last_seen, self._now, self._stale),
                last_seen=last_seen,
                release_id=release,
                channel=channel,
                ack_status=state,
                ack_updated_at=updated,
            )
            for node_id, last_seen, release, channel, state, updated in rows
        ]


def fleet_rows(
    *,
    status: str | None = None,
    channel: str | None = None,
    release_id: str | None = None,
    ack_status: str | None = None,
    stale_seconds: int = DEFAULT_STALE_SECONDS,
) -> FleetRows:
    """Known nodes by node_id, filtered: a node's newest ack (of `channel` when given, else of
    any channel) from the fleet view's newest-ack table; with any ack filter (or a channel),
    nodes without such an ack are left out."""
    now = timezone.now()
    newest = FleetNodeAck.objects.filter(node=OuterRef("pk"))
    if channel:
        newest = newest.filter(channel=channel)
    newest = newest.order_by("-updated_at", "-ack_pk")
    qs = FleetNode.objects.annotate(
        ack_release=Subquery(newest.values("release__release_id")[:1]),
        ack_channel=Subquery(newest.values("channel")[:1]),
        ack_status=Subquery(newest.values("status")[:1]),
        ack_updated_at=Subquery(newest.values("updated_at")[:1]),
    )
    fresh_since = now - timedelta(seconds=stale_seconds)
    if status == "up":
        qs = qs.filter(last_seen__gte=fresh_since)
    elif status == "stale":
        qs = qs.filter(last_seen__lt=fresh_since)
    elif status == "unknown":
        qs = qs.filter(last_seen__isnull=True)
    if channel or release_id or ack_status:
        qs = qs.filter(ack_status__isnull=False)
    if release_id:
        qs = qs.filter(ack_release=release_id)
    if ack_status:
        qs = qs.filter(ack_status=ack_status)
    return FleetRows(qs.order_by("node_id"), now, stale_seconds)


def node_detail(*, node_id: str, stale_seconds: int = DEFAULT_STALE_SECONDS) -> dict[str, Any]:
    """One node: status, acks (newest first), latest events, its place in every live plan.
    A node nobody knows has no acks and no events (the page says so)."""
    acks = list(
        NodeAck.objects.filter(node_id=node_id)
        .select_related("release")
        .order_by("-updated_at", "-id")
    )
    events = list(
        shown(Event.objects.filter(node_id=node_id))  # never one out of the retention window
        .order_by("-id")
        .only("id", "event_id", "event_type", "timestamp", "release_id", "received_at")[
            :NODE_EVENTS_SHOWN
        ]
    )
    last_seen = events[0].received_at if events else None
    by_release = {ack.release_id: ack.status for ack in acks}
    plans = []
    for plan in (
        RolloutPlan.objects.filter(phase__in=LIVE_PHASES).select_related("release").order_by("id")
    ):
        snap = snapshot_of(plan)
        placed = progress.node_in_plan(snap, node_id, by_release.get(plan.release_id))
        plans.append(
            {
                "plan": plan,
                "release_id": plan.release.release_id,
                "entry_stage_id": placed[0] if placed else None,
                "state": placed[1] if placed else None,
            }
        )
    return {
        "node_id": node_id,
        "known": bool(acks or events),
        "status": node_status(last_seen, timezone.now(), stale_seconds),
        "last_seen": last_seen,
        "acks": acks,
        "events": events,
        "plans": plans,
    }

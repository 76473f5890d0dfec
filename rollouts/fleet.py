"""Reads behind the admin's fleet and node pages (docs/operating.md "Pages").

The fleet: every known node (`rollouts.progress.known_nodes`) with its status (`up` within the
stale threshold of its newest event, `stale` older, `unknown`: acks only) and its newest ack
(of a release of `channel` when one is given, as `GET /v1/fleet` does). A node: its acks over
time, its latest events, and where it stands in every live rollout plan.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from django.utils import timezone

from events.models import Event
from releases.models import NodeAck
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


def fleet_rows(
    *,
    status: str | None = None,
    channel: str | None = None,
    release_id: str | None = None,
    ack_status: str | None = None,
    stale_seconds: int = DEFAULT_STALE_SECONDS,
) -> list[FleetRow]:
    """Known nodes by node_id, filtered; one pass over the known nodes and the acks."""
    now = timezone.now()
    acks = NodeAck.objects.order_by("updated_at", "id")
    if channel:
        acks = acks.filter(release__channel=channel)
    newest: dict[str, tuple[str, str, str, datetime]] = {}
    for node, rel, chan, state, updated in acks.values_list(
        "node_id", "release__release_id", "release__channel", "status", "updated_at"
    ):
        newest[node] = (rel, chan, state, updated)
    rows = []
    for node_id, last_seen in sorted(progress.known_nodes().items()):
        state = node_status(last_seen, now, stale_seconds)
        ack = newest.get(node_id)
        if status and state != status:
            continue
        if (channel or release_id or ack_status) and ack is None:
            continue
        if release_id and ack is not None and ack[0] != release_id:
            continue
        if ack_status and ack is not None and ack[2] != ack_status:
            continue
        rows.append(
            FleetRow(
                node_id=node_id,
                status=state,
                last_seen=last_seen,
                release_id=ack[0] if ack else None,
                channel=ack[1] if ack else None,
                ack_status=ack[2] if ack else None,
                ack_updated_at=ack[3] if ack else None,
            )
        )
    return rows


def node_detail(*, node_id: str, stale_seconds: int = DEFAULT_STALE_SECONDS) -> dict[str, Any]:
    """One node: status, acks (newest first), latest events, its place in every live plan.
    A node nobody knows has no acks and no events (the page says so)."""
    acks = list(
        NodeAck.objects.filter(node_id=node_id)
        .select_related("release")
        .order_by("-updated_at", "-id")
    )
    events = list(
        Event.objects.filter(node_id=node_id)
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

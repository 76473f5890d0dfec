"""Reads for releases, acks and the fleet view; the desired-state answer for a node.

`release_latest_answer` is the node poll path (`GET /v1/releases/latest`): both the lean fast
path (`releases.fast`) and the DRF view call it. On SQLite the latest release of each channel is
cached in this process (see `_LatestCache`); on PostgreSQL, where several processes may serve, it
is one indexed query per request.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from django.db import connection
from django.db.models import Count, F, FilteredRelation, Q, Window
from django.db.models.functions import RowNumber
from django.db.models.signals import post_delete, post_migrate, post_save
from django.utils import timezone

from core import jsonvalues, sharedstate
from core.errors import ApiError
from core.params import format_rfc3339, param_error, seconds_before
from releases.ackbook import ack_book as ack_book  # for rollouts: the in-process ack book
from releases.models import FleetNode, FleetNodeAck, NodeAck, Release

if TYPE_CHECKING:
    from releases.services import StoredAck

RELEASE_FIELDS = (
    "release_id",
    "channel",
    "sequence",
    "policy_ref",
    "lock_fingerprint",
    "artifact_ref",
    "metadata",
    "created_at",
    "release_signature",
)


def release_as_dict(release: Release) -> dict[str, Any]:
    return {
        "release_id": release.release_id,
        "channel": release.channel,
        "sequence": release.sequence,
        "policy_ref": release.policy_ref,
        "lock_fingerprint": release.lock_fingerprint,
        "artifact_ref": release.artifact_ref,
        "metadata": jsonvalues.from_store(release.metadata),
        "created_at": format_rfc3339(release.created_at),
        "release_signature": release.release_signature,
    }


def ack_as_dict(ack: NodeAck | StoredAck, *, release_id: str | None = None) -> dict[str, Any]:
    return {
        "node_id": ack.node_id,
        "release_id": release_id if release_id is not None else ack.release.release_id,
        "status": ack.status,
        "lock_fingerprint": ack.lock_fingerprint,
        "message": ack.message,
        "acked_at": format_rfc3339(ack.acked_at),
        "updated_at": format_rfc3339(ack.updated_at),
    }


def release_get(*, release_id: str) -> Release:
    """The release, or ApiError 404."""
    try:
        return Release.objects.get(release_id=release_id)
    except Release.DoesNotExist:
        raise ApiError(404, f"release '{release_id}' not found", release_id=release_id) from None


@dataclass(frozen=True)
class ReleasePage:
    releases: list[Release]
    limit: int
    offset: int
    has_more: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "releases": [release_as_dict(r) for r in self.releases],
            "count": len(self.releases),
            "limit": self.limit,
            "offset": self.offset,
            "next_offset": self.offset + len(self.releases) if self.has_more else None,
        }


def release_list(*, channel: str | None, limit: int, offset: int) -> ReleasePage:
    """Newest first (last published first), optionally one channel; one query."""
    qs = Release.objects.order_by("-id")
    if channel is not None:
        qs = qs.filter(channel=channel)
    rows = list(qs[offset : offset + limit + 1])
    return ReleasePage(
        releases=rows[:limit], limit=limit, offset=offset, has_more=len(rows) > limit
    )


def release_acks(*, release_id: str, limit: int = 1000, after: str | None = None) -> dict[str, Any]:
    """`{"release_id", "acks": [...], "count", "limit", "next_cursor"}`: acks ordered by
    node_id, one page (after the node_id `after`); `count` is the release's total; 404 for no
    release."""
    release = release_get(release_id=release_id)
    acks_qs = NodeAck.objects.filter(release=release)
    page_qs = acks_qs if after is None else acks_qs.filter(node_id__gt=after)
    rows = list(page_qs.order_by("node_id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    total = len(rows) if after is None and not more else acks_qs.count()
    return {
        "release_id": release.release_id,
        "acks": [ack_as_dict(ack, release_id=release.release_id) for ack in rows],
        "count": total,
        "limit": limit,
        "next_cursor": encode_cursor(rows[-1].node_id) if more else None,
    }


def node_acks(*, node_id: str, limit: int = 1000, after: str | None = None) -> dict[str, Any]:
    """`{"node_id", "acks": [...], "count", "limit", "next_cursor"}`, most recently updated
    first (then newest insertion), one page after the cursor key `after`; `count` is the node's
    total."""
    acks_qs = NodeAck.objects.filter(node_id=node_id)
    page_qs = acks_qs
    if after is not None:
        updated_at, pk = _node_ack_key(after)
        page_qs = page_qs.filter(Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, id__lt=pk))
    rows = list(page_qs.select_related("release").order_by("-updated_at", "-id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    total = len(rows) if after is None and not more else acks_qs.count()
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = node_ack_cursor(last)
    return {
        "node_id": node_id,
        "acks": [ack_as_dict(ack) for ack in rows],
        "count": total,
        "limit": limit,
        "next_cursor": next_cursor,
    }


_NODE_ACK_CURSOR = re.compile(r"([0-9]{1,18})\.([0-9]{1,18})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MICROS = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)


def node_ack_cursor(ack: NodeAck) -> str:
    """`<updated_at in µs since 1970>.<row id>` of the last ack of a page."""
    return f"{(ack.updated_at - _EPOCH) // timedelta(microseconds=1)}.{ack.pk}"


def _node_ack_key(key: str) -> tuple[datetime, int]:
    match = _NODE_ACK_CURSOR.fullmatch(key)
    if match is None:
        raise param_error("cursor", CURSOR_MESSAGE)
    micros = min(int(match.group(1)), _MAX_MICROS)
    return _EPOCH + timedelta(microseconds=micros), int(match.group(2))


# --- the latest release of a channel (the node poll path) ---------------------------------


class _LatestCache:
    """channel -> (latest Release or None, its JSON body), for the SQLite store only.

    With SQLite one `serve` process owns the store, so every write of a release passes through
    this process; `invalidate()` runs on every Release save/delete (signals below) and after each
    publish commits. A generation counter makes a read that raced with a publish drop its result
    instead of caching a stale answer. Reads inside a transaction (tests, admin actions) neither
    use nor fill the cache: what they see may be rolled back. Under `serve --workers N` a publish
    in one worker reaches the others through a shared change counter (`core.sharedstate`),
    checked before every read of the cache.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._entries: dict[str, tuple[Release | None, bytes | None]] = {}
        self._others = sharedstate.Watch(sharedstate.RELEASES)

    def usable(self) -> bool:
        return connection.vendor == "sqlite" and not connection.in_atomic_block

    def _sync(self) -> None:
        if self._others.moved():  # another worker published or changed a release
            self._drop()

    def get(self, channel: str) -> tuple[Release | None, bytes | None] | None:
        self._sync()
        return self._entries.get(channel)

    def generation(self) -> int:
        self._sync()
        return self._generation

    def put(
        self, channel: str, generation: int, entry: tuple[Release | None, bytes | None]
    ) -> None:
        with self._lock:
            if generation == self._generation:
                if len(self._entries) >= MAX_CACHED_CHANNELS:  # polls may name any channel
                    self._entries.clear()
                self._entries[channel] = entry

    def _drop(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def invalidate(self) -> None:
        """A release changed in this process: empty the cache here and in the other workers."""
        self._drop()
        sharedstate.bump(sharedstate.RELEASES)


MAX_CACHED_CHANNELS = 1024

latest_cache = _LatestCache()


def _invalidate_latest(**_: Any) -> None:
    latest_cache.invalidate()
    if connection.in_atomic_block:  # readers outside the transaction may refill before commit
        connection.on_commit(latest_cache.invalidate)


post_save.connect(_invalidate_latest, sender=Release, dispatch_uid="releases.latest_cache.save")
post_delete.connect(_invalidate_latest, sender=Release, dispatch_uid="releases.latest_cache.del")
# `flush` (and test teardown) empties tables without model signals, then emits post_migrate.
post_migrate.connect(_invalidate_latest, dispatch_uid="releases.latest_cache.migrate")


def _release_body(release: Release) -> bytes:
    return orjson.dumps(release_as_dict(release))


def release_latest(*, channel: str) -> tuple[Release | None, bytes | None]:
    """The channel's release with the highest sequence and its JSON body (None, None: no release).

    One indexed query (the (channel, sequence) unique index), or none when cached.
    """
    use_cache = latest_cache.usable()
    if use_cache:
        entry = latest_cache.get(channel)
        if entry is not None:
            return entry
        generation = latest_cache.generation()
    release = Release.objects.filter(channel=channel).order_by("-sequence").first()
    entry = (release, _release_body(release) if release is not None else None)
    if use_cache:
        latest_cache.put(channel, generation, entry)
    return entry


def no_release_body(channel: str) -> bytes:
    return orjson.dumps({"error": f"channel '{channel}' has no release", "channel": channel})


def _node_answer(channel: str, node_id: str, chosen: Release | None, latest: Release) -> bytes:
    if chosen is None:
        return orjson.dumps(
            {
                "error": f"no release of channel '{channel}' for node '{node_id}' yet",
                "channel": channel,
                "node_id": node_id,
            }
        )
    return _release_body(chosen)


def release_latest_answer(*, channel: str, node_id: str | None) -> tuple[int, bytes]:
    """`GET /v1/releases/latest`: (200, release JSON) or (404, error JSON).

    Without `node_id`: the channel's latest release. With it: the release that node should run,
    as decided by `rollouts.selectors.desired_release_for_node` (API.md §4).
    """
    status, body, _plan = release_latest_decision(channel=channel, node_id=node_id)
    return status, body


def release_latest_decision(
    *, channel: str, node_id: str | None
) -> tuple[int, bytes, tuple[str, str] | None]:
    """`release_latest_answer`, and (plan_id, spec digest) of the rollout plan that decided it
    (None when no plan did): what the signed desired state binds (releases.desired_state)."""
    latest, body = release_latest(channel=channel)
    if latest is None:
        return 404, no_release_body(channel), None
    if node_id is None:
        return 200, body, None  # type: ignore[return-value]
    from rollouts.selectors import desired_for_node

    chosen, snap = desired_for_node(latest=latest, node_id=node_id)
    plan = None if snap is None else (snap.plan_id, snap.digest)
    if chosen is not None and chosen.pk == latest.pk:
        return 200, body, plan  # type: ignore[return-value]
    return (404 if chosen is None else 200), _node_answer(channel, node_id, chosen, latest), plan


_bodies: dict[tuple[int, str], bytes] = {}  # (pk, release_id) -> JSON body (never changes)


def release_latest_decision_cached(
    *, channel: str, node_id: str
) -> tuple[int, bytes, tuple[str, str] | None] | None:
    """`release_latest_decision` for a node from this process's caches only (latest release,
    plan head, plan snapshot, ack book, previous release), or None when any piece is not cached:
    then call `release_latest_decision` on a database thread. Never touches a database
    connection, so the fast path calls it on the event loop. The caches fill only on SQLite."""
    entry = latest_cache.get(channel)
    if entry is None:
        return None
    latest, body = entry
    if latest is None:
        return 404, no_release_body(channel), None
    from rollouts.selectors import MISSING, desired_release_cached

    decided = desired_release_cached(latest=latest, node_id=node_id)
    if decided is MISSING:
        return None
    chosen, snap = decided
    plan = None if snap is None else (snap.plan_id, snap.digest)
    if chosen is not None and chosen.pk == latest.pk:
        return 200, body, plan  # type: ignore[return-value]
    if chosen is None:
        return 404, _node_answer(channel, node_id, None, latest), plan
    cached = _bodies.get((chosen.pk, chosen.release_id))
    if cached is None:
        if len(_bodies) >= MAX_CACHED_CHANNELS:
            _bodies.clear()
        cached = _bodies[(chosen.pk, chosen.release_id)] = _release_body(chosen)
    return 200, cached, plan


def release_latest_answer_cached(*, channel: str, node_id: str) -> tuple[int, bytes] | None:
    """`release_latest_decision_cached` without the plan."""
    decided = release_latest_decision_cached(channel=channel, node_id=node_id)
    return None if decided is None else decided[:2]


# --- the fleet view -----------------------------------------------------------------------

NODE_STATUSES = ("up", "stale", "unknown")
CURSOR_MESSAGE = "must be the next_cursor of a previous page"
NO_ACK = "none"  # the `ack_status` filter value of nodes without an ack in the channel


@dataclass(frozen=True)
class FleetQuery:
    """What `GET /v1/fleet` asks for, parsed (releases.params.parse_fleet_query)."""

    channel: str
    stale_threshold: int
    limit: int = 1000
    after: str | None = None  # the cursor: page after this node_id
    node_status: str | None = None
    release_id: str | None = None
    ack_status: str | None = None
    summary: bool = False


def encode_cursor(key: str) -> str:
    """The cursor after a page: opaque to clients; today the page's last key (a node_id)."""
    return key


def decode_cursor(cursor: str) -> str:
    """The key inside a cursor (1-256 characters, no NUL), or ApiError 400 naming `cursor`.
    Any such string is a position: the page starts after it."""
    if not cursor or len(cursor) > MAX_CURSOR_CHARS or "\x00" in cursor:
        raise param_error("cursor", CURSOR_MESSAGE)
    return cursor


MAX_CURSOR_CHARS = 256


def _forget_after() -> float:
    from django.conf import settings

    return float(getattr(settings, "FLEET_FORGET_AFTER_SECONDS", 0) or 0)


def _fleet_nodes(query: FleetQuery, now: datetime) -> Any:
    """The node rows the query selects (before paging), with the channel's ack joined."""
    qs = FleetNode.objects.annotate(
        ack=FilteredRelation("channel_acks", condition=Q(channel_acks__channel=query.channel))
    )
    forget = _forget_after()
    if forget:
        qs = qs.filter(last_heard__gte=seconds_before(now, forget))
    fresh_since = seconds_before(now, query.stale_threshold)
    if query.node_status == "up":
        qs = qs.filter(last_seen__gte=fresh_since)
    elif query.node_status == "stale":
        qs = qs.filter(last_seen__lt=fresh_since)
    elif query.node_status == "unknown":
        qs = qs.filter(last_seen__isnull=True)
    if query.release_id is not None:
        qs = qs.filter(ack__release__release_id=query.release_id)
    if query.ack_status == NO_ACK:
        qs = qs.filter(ack__isnull=True)
    elif query.ack_status is not None:
        qs = qs.filter(ack__status=query.ack_status)
    return qs, fresh_since


def _by_release(query: FleetQuery, now: datetime, fresh_since: datetime) -> list[dict[str, Any]]:
    """Selected nodes per (release, ack status) of their newest ack in the channel: grouped on
    the ack table's (channel, release, status) index; joined to the node table only when a
    node-level condition (forget-after, node_status) asks for it."""
    acks = FleetNodeAck.objects.filter(channel=query.channel)
    forget = _forget_after()
    if forget:
        acks = acks.filter(node__last_heard__gte=seconds_before(now, forget))
    if query.node_status == "up":
        acks = acks.filter(node__last_seen__gte=fresh_since)
    elif query.node_status == "stale":
        acks = acks.filter(node__last_seen__lt=fresh_since)
    elif query.node_status == "unknown":
        acks = acks.filter(node__last_seen__isnull=True)
    if query.ack_status == NO_ACK:
        return []
    if query.ack_status is not None:
        acks = acks.filter(status=query.ack_status)
    if query.release_id is not None:
        acks = acks.filter(release__release_id=query.release_id)
    grouped, params = (
        acks.order_by()
        .values_list("release_id", "status")
        .annotate(nodes=Count("release_id"))
        .query.sql_with_params()
    )
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        # the few groups joined to their release afterwards, not every ack row
        cursor.execute(
            f"SELECT r.{qn('release_id')}, r.{qn('sequence')}, g.{qn('status')}, "
            f"g.{qn('nodes')} FROM ({grouped}) g JOIN {qn(Release._meta.db_table)} r "
            f"ON r.{qn('id')} = g.{qn('release_id')}",
            params,
        )
        groups = cursor.fetchall()
    rows = [
        {"release_id": release_id, "sequence": sequence, "ack_status": status, "nodes": nodes}
        for release_id, sequence, status, nodes in groups
    ]
    rows.sort(key=lambda row: (-row["sequence"], row["ack_status"]))
    return rows


def fleet_summary(
    *, channel: str, stale_threshold: int, query: FleetQuery | None = None
) -> dict[str, Any]:
    """`GET /v1/fleet`, read from the maintained per-node tables (`FleetNode`, `FleetNodeAck`):
    a few indexed queries whatever the fleet size, and one page of nodes at most.

    - nodes: every node_id with an event or an ack (any channel), ordered by node_id, paged
      (`limit`, `cursor`); a node not heard of (event or ack) for `--fleet-forget-after` is left
      out (its acks are kept);
    - last_seen: `received_at` of the node's newest event;
    - node_status: `up` when last_seen is at most `stale_threshold` seconds ago, `stale` when
      older, `unknown` when the node never sent an event;
    - release_id / ack_status / sequence: the node's most recently updated ack (`updated_at`,
      then insertion order) for a release of `channel`; null when none;
    - total/up/stale/unknown and `by_release` count every node the filters select (all pages).
    """
    if query is None:
        query = FleetQuery(channel=channel, stale_threshold=stale_threshold)
    now = timezone.now()
    _latest, latest_body = release_latest(channel=channel)
    qs, fresh_since = _fleet_nodes(query, now)

    if query.release_id is None and query.ack_status is None:
        # Three index-only counts (last_seen index) in one statement: far cheaper than one
        # pass over the rows.
        parts = [
            qs.values("pk").query.sql_with_params(),
            qs.filter(last_seen__isnull=True).values("pk").query.sql_with_params(),
            qs.filter(last_seen__gte=fresh_since).values("pk").query.sql_with_params(),
        ]
        sql = "SELECT " + ", ".join(
            f"(SELECT COUNT(*) FROM ({part}) c{index})" for index, (part, _) in enumerate(parts)
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [param for _, params in parts for param in params])
            total, unknown, up = cursor.fetchone()
    else:
        counts = qs.aggregate(
            total=Count("pk"),
            unknown=Count("pk", filter=Q(last_seen__isnull=True)),
            up=Count("pk", filter=Q(last_seen__gte=fresh_since)),
        )
        total, up, unknown = counts["total"] or 0, counts["up"] or 0, counts["unknown"] or 0
    by_release = _by_release(query, now, fresh_since)
    answer: dict[str, Any] = {
        "channel": channel,
        "generated_at": format_rfc3339(now),
        "stale_threshold": stale_threshold,
        "total": total,
        "up": up,
        "stale": total - up - unknown,
        "unknown": unknown,
        "latest_release": orjson.loads(latest_body) if latest_body is not None else None,
        "by_release": by_release,
    }
    if query.summary:
        return answer

    page_qs = qs
    if query.after is not None:
        page_qs = page_qs.filter(node_id__gt=query.after)
    rows = list(
        page_qs.order_by("node_id").values_list(
            "node_id", "last_seen", "ack__release__release_id", "ack__status", "ack__sequence"
        )[: query.limit + 1]
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    nodes = []
    for node_id, seen, release_id, ack_status, sequence in rows:
        if seen is None:
            status = "unknown"
        elif seen >= fresh_since:
            status = "up"
        else:
            status = "stale"
        nodes.append(
            {
                "node_id": node_id,
                "node_status": status,
                "last_seen": format_rfc3339(seen),
                "release_id": release_id,
                "ack_status": ack_status,
                "sequence": sequence,
            }
        )
    answer["nodes"] = nodes
    answer["limit"] = query.limit
    answer["next_cursor"] = encode_cursor(rows[-1][0]) if more else None
    return answer


# --- counts for /metrics (releases.metrics) ---------------------------------------------------


def fleet_status_counts(*, stale_threshold: int) -> dict[str, int]:
    """Nodes per status across all channels, as `GET /v1/fleet` tells them: `up` (an event within
    `stale_threshold` seconds), `stale` (older), `unknown` (acks but never an event); nodes
    forgotten by `--fleet-forget-after` are left out. Index-only counts on the fleet node table
    (`FleetNode`), whatever the fleet size."""
    now = timezone.now()
    nodes = FleetNode.objects.all()
    forget = _forget_after()
    if forget:
        nodes = nodes.filter(last_heard__gte=seconds_before(now, forget))
    fresh_since = seconds_before(now, stale_threshold)
    total = nodes.count()
    unknown = nodes.filter(last_seen__isnull=True).count()
    up = nodes.filter(last_seen__gte=fresh_since).count()
    return {"up": up, "stale": total - unknown - up, "unknown": unknown}


def release_ack_counts(*, per_channel: int) -> list[tuple[str, str, str, int]]:
    """(channel, release_id, ack_status, nodes) for the newest `per_channel` releases of every
    channel, every ack status present (0 when none). Two queries; the count uses the
    (release, status) index."""
    newest = list(
        Release.objects.annotate(
            rank=Window(RowNumber(), partition_by=[F("channel")], order_by=[F("sequence").desc()])
        )
        .filter(rank__lte=per_channel)
        .values_list("pk", "channel", "release_id")
    )
    if not newest:
        return []
    counts: dict[tuple[int, str], int] = {}
    rows = (
        NodeAck.objects.filter(release_id__in=[pk for pk, _c, _r in newest])
        .values_list("release_id", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for release_pk, status, n in rows:
        counts[(release_pk, status)] = n
    return [
        (channel, release_id, status, counts.get((pk, status), 0))
        for pk, channel, release_id in sorted(newest, key=lambda r: (r[1], r[2]))
        for status in NodeAck.Status.values
    ]

"""Reads for releases, acks and the fleet view; the desired-state answer for a node.

`release_latest_answer` is the node poll path (`GET /v1/releases/latest`): both the lean fast
path (`releases.fast`) and the DRF view call it. On SQLite the latest release of each channel is
cached in this process (see `_LatestCache`); on PostgreSQL, where several processes may serve, it
is one indexed query per request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.db import connection
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.db.models.signals import post_delete, post_migrate, post_save
from django.utils import timezone

from core import jsonvalues
from core.errors import ApiError
from core.params import format_rfc3339
from events.models import Event
from releases.models import NodeAck, Release

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


def ack_as_dict(ack: NodeAck, *, release_id: str | None = None) -> dict[str, Any]:
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


def release_acks(*, release_id: str) -> dict[str, Any]:
    """`{"release_id", "acks": [...], "count"}`, acks ordered by node_id; 404 for no release."""
    release = release_get(release_id=release_id)
    acks = [
        ack_as_dict(ack, release_id=release.release_id)
        for ack in NodeAck.objects.filter(release=release).order_by("node_id")
    ]
    return {"release_id": release.release_id, "acks": acks, "count": len(acks)}


def node_acks(*, node_id: str) -> dict[str, Any]:
    """`{"node_id", "acks": [...], "count"}`, most recently updated first; one query."""
    acks = [
        ack_as_dict(ack)
        for ack in NodeAck.objects.filter(node_id=node_id)
        .select_related("release")
        .order_by("-updated_at", "-id")
    ]
    return {"node_id": node_id, "acks": acks, "count": len(acks)}


# --- the latest release of a channel (the node poll path) ---------------------------------


class _LatestCache:
    """channel -> (latest Release or None, its JSON body), for the SQLite store only.

    With SQLite one `serve` process owns the store, so every write of a release passes through
    this process; `invalidate()` runs on every Release save/delete (signals below) and after each
    publish commits. A generation counter makes a read that raced with a publish drop its result
    instead of caching a stale answer. Reads inside a transaction (tests, admin actions) neither
    use nor fill the cache: what they see may be rolled back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._entries: dict[str, tuple[Release | None, bytes | None]] = {}

    def usable(self) -> bool:
        return connection.vendor == "sqlite" and not connection.in_atomic_block

    def get(self, channel: str) -> tuple[Release | None, bytes | None] | None:
        return self._entries.get(channel)

    def generation(self) -> int:
        return self._generation

    def put(
        self, channel: str, generation: int, entry: tuple[Release | None, bytes | None]
    ) -> None:
        with self._lock:
            if generation == self._generation:
                if len(self._entries) >= MAX_CACHED_CHANNELS:  # polls may name any channel
                    self._entries.clear()
                self._entries[channel] = entry

    def invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()


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


def release_latest_answer(*, channel: str, node_id: str | None) -> tuple[int, bytes]:
    """`GET /v1/releases/latest`: (200, release JSON) or (404, error JSON).

    Without `node_id`: the channel's latest release. With it: the release that node should run,
    as decided by `rollouts.selectors.desired_release_for_node` (API.md §4).
    """
    status, body, _plan = release_latest_decision(channel=channel, node_id=node_id)
    return status, body


def release_latest_decision(
    *, channel: str, node_id: str | None
) -> tuple[int, bytes, tuple[int, str] | None]:
    """`release_latest_answer`, and (plan pk, spec digest) of the rollout plan that decided it
    (None when no plan did): what the signed desired state binds (releases.desired_state)."""
    latest, body = release_latest(channel=channel)
    if latest is None:
        return 404, no_release_body(channel), None
    if node_id is None:
        return 200, body, None  # type: ignore[return-value]
    from rollouts.selectors import desired_for_node

    chosen, snap = desired_for_node(latest=latest, node_id=node_id)
    plan = None if snap is None else (snap.pk, snap.digest)
    if chosen is None:
        return (
            404,
            orjson.dumps(
                {
                    "error": f"no release of channel '{channel}' for node '{node_id}' yet",
                    "channel": channel,
                    "node_id": node_id,
                }
            ),
            plan,
        )
    if chosen.pk == latest.pk:
        return 200, body, plan  # type: ignore[return-value]
    return 200, _release_body(chosen), plan


# --- the fleet view -----------------------------------------------------------------------


def _last_seen_by_node() -> dict[str, datetime]:
    """node_id -> `received_at` of its newest (highest id) event, in one query.

    A loose index scan over the (node_id, id) index: the recursive CTE hops from one node_id to
    the next, then takes each node's MAX(id). It costs O(nodes x log events) where a plain
    `GROUP BY node_id` reads the whole index (measured on 1M events / 1,000 nodes: 24 ms vs
    343 ms). Plain SQL that SQLite and PostgreSQL both run.
    """
    qn = connection.ops.quote_name
    table = qn(Event._meta.db_table)
    node, ident, received = qn("node_id"), qn("id"), qn("received_at")
    sql = (
        f"WITH RECURSIVE nodes(node) AS ("
        f"SELECT MIN({node}) FROM {table} "
        f"UNION ALL SELECT (SELECT MIN({node}) FROM {table} WHERE {node} > nodes.node) "
        f"FROM nodes WHERE nodes.node IS NOT NULL) "
        f"SELECT e.{node}, e.{received} FROM nodes JOIN {table} e ON e.{ident} = "
        f"(SELECT MAX({ident}) FROM {table} WHERE {node} = nodes.node) "
        f"WHERE nodes.node IS NOT NULL"
    )
    field = Event._meta.get_field("received_at")
    with connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall()
    column = field.get_col(Event._meta.db_table)
    converters = connection.ops.get_db_converters(column)
    result = {}
    for node_id, value in rows:
        for converter in converters:
            value = converter(value, column, connection)
        result[node_id] = value
    return result


def _acking_node_ids() -> list[str]:
    """Distinct node_ids with an ack: the same loose index scan, on the (node_id, release)
    unique index, so it grows with nodes, not with nodes x releases."""
    qn = connection.ops.quote_name
    table, node = qn(NodeAck._meta.db_table), qn("node_id")
    sql = (
        f"WITH RECURSIVE nodes(node) AS ("
        f"SELECT MIN({node}) FROM {table} "
        f"UNION ALL SELECT (SELECT MIN({node}) FROM {table} WHERE {node} > nodes.node) "
        f"FROM nodes WHERE nodes.node IS NOT NULL) "
        f"SELECT node FROM nodes WHERE node IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


def fleet_summary(*, channel: str, stale_threshold: int) -> dict[str, Any]:
    """`GET /v1/fleet`, computed now from events and acks in four queries whatever the fleet size.

    - nodes: every node_id with an event or an ack (any channel), ordered by node_id;
    - last_seen: `received_at` of the node's newest (last inserted) event;
    - node_status: `up` when last_seen is at most `stale_threshold` seconds ago, `stale` when
      older, `unknown` when the node never sent an event;
    - release_id / ack_status / sequence: the node's most recently updated ack (`updated_at`,
      then insertion order) for a release of `channel`; null when none.
    """
    now = timezone.now()
    _latest, latest_body = release_latest(channel=channel)

    last_seen = _last_seen_by_node()

    ack_rows = (
        NodeAck.objects.filter(release__channel=channel)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("node_id")],
                order_by=[F("updated_at").desc(), F("id").desc()],
            )
        )
        .filter(rank=1)
        .values_list("node_id", "release__release_id", "status", "release__sequence")
    )
    newest_ack = {row[0]: row[1:] for row in ack_rows}

    node_ids = set(last_seen)
    node_ids.update(_acking_node_ids())

    counts = {"up": 0, "stale": 0, "unknown": 0}
    nodes = []
    for node_id in sorted(node_ids):
        seen = last_seen.get(node_id)
        if seen is None:
            status = "unknown"
        elif (now - seen).total_seconds() <= stale_threshold:
            status = "up"
        else:
            status = "stale"
        counts[status] += 1
        release_id, ack_status, sequence = newest_ack.get(node_id, (None, None, None))
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
    return {
        "channel": channel,
        "generated_at": format_rfc3339(now),
        "stale_threshold": stale_threshold,
        "total": len(nodes),
        **counts,
        "latest_release": orjson.loads(latest_body) if latest_body is not None else None,
        "nodes": nodes,
    }

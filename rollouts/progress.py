"""Where a rollout stands, node by node: per stage and per plan, how many known nodes it targets
and what they acked for the plan's release (docs/operating.md "What each number means").

A stage's nodes are the known nodes in its cohort (API.md §4 "The stage's nodes", cumulative: a
node of stage 1 is also one of stage 2), plus the nodes that already acked the release `active`,
exactly as the gates count them. Each targeted node is in one state:

- its ack status for the plan's release (`pending`, `acknowledged`, `active`, `failed`,
  `rejected`) when it sent one;
- `silent`: no ack for this release although the stage that took it in (its entry stage) opened
  at least `silent_after` seconds ago (`serve --silent-after`);
- `waiting`: no ack yet, and not silent (its stage opened recently or has not opened).

The counts of a plan are those of its current stage (the furthest stage it reached).

Cost: one pass over the known nodes (one sha256 each for the bucket, a binary search over the
stage percents) and the release's acks: O(nodes + acks), ~0.3 s on SQLite at 50,000 nodes
(bench/rollout_status.py). The result is cached per plan, keyed by (plan version, the release's
ack count and newest ack update, silent_after) and at most `CACHE_TTL_SECONDS` old (new nodes and
nodes turning silent show within that time); a cache hit costs one small aggregate query.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, Max

from releases import selectors as release_selectors
from releases.models import NodeAck
from rollouts import clock
from rollouts.cohort import PlanSnapshot, bucket, snapshot_of
from rollouts.models import RolloutPlan

ACK_STATES = ("pending", "acknowledged", "active", "failed", "rejected")
STATES = (*ACK_STATES, "silent", "waiting")
COUNT_KEYS = ("targeted", *STATES)  # the keys of every counts object, in this order
DEFAULT_SILENT_AFTER_SECONDS = 600.0
CACHE_TTL_SECONDS = 10.0


def known_nodes() -> dict[str, datetime | None]:
    """THE known nodes of the fleet for rollout status: node_id -> last_seen (the arrival time
    of its newest event; None for a node known only by its acks).

    Today: every node with an event or an ack (the same two index scans as `GET /v1/fleet`).
    This is the one place to switch to a maintained per-node fleet table.
    """
    nodes: dict[str, datetime | None] = dict(release_selectors._last_seen_by_node())
    for node_id in release_selectors._acking_node_ids():
        nodes.setdefault(node_id, None)
    return nodes


def silent_after_seconds() -> float:
    return float(getattr(settings, "ROLLOUT_SILENT_AFTER_SECONDS", DEFAULT_SILENT_AFTER_SECONDS))


@dataclass(frozen=True)
class NodeState:
    node_id: str
    entry: int  # position of the first stage whose nodes include it
    state: str
    ack_status: str | None
    acked_at: datetime | None
    ack_updated_at: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True)
class PlanProgress:
    plan_id: str
    version: int
    stage_ids: tuple[str, ...]
    current_position: int
    generated_at: datetime
    silent_after: float
    known: int
    nodes: tuple[NodeState, ...]  # targeted nodes, by node_id
    stage_counts: tuple[dict[str, int], ...]  # per stage position, cumulative
    node_ids: list[str] = field(default_factory=list, repr=False)  # for bisect

    @property
    def plan_counts(self) -> dict[str, int]:
        return self.stage_counts[self.current_position]

    def position(self, stage_id: str) -> int | None:
        try:
            return self.stage_ids.index(stage_id)
        except ValueError:
            return None

    def page(
        self, *, position: int, state: str, after: str | None, limit: int
    ) -> tuple[list[NodeState], str | None]:
        """Targeted nodes of stage `position` in `state` (`targeted`: all), by node_id after
        `after`; (rows, the cursor of the next page or None)."""
        start = bisect.bisect_right(self.node_ids, after) if after is not None else 0
        rows: list[NodeState] = []
        for node in self.nodes[start:]:
            if node.entry > position or (state != "targeted" and node.state != state):
                continue
            if len(rows) == limit:
                return rows, rows[-1].node_id
            rows.append(node)
        return rows, None


def _ack_rows(release_pk: int) -> dict[str, tuple[str, datetime, datetime]]:
    rows = NodeAck.objects.filter(release_id=release_pk).values_list(
        "node_id", "status", "acked_at", "updated_at"
    )
    return {node: (status, acked, updated) for node, status, acked, updated in rows}


class _Cohort:
    """What placing a node in a plan's stages needs, computed once per plan."""

    def __init__(self, snap: PlanSnapshot, now: datetime, silent_after: float) -> None:
        self.plan_id = snap.plan_id
        self.count = len(snap.stages)
        self.percents = [stage.percent for stage in snap.stages]
        self.first_listed: dict[str, int] = {}
        for stage in snap.stages:
            for node in stage.nodes:
                self.first_listed.setdefault(node, stage.position)
        cutoff = now - timedelta(seconds=silent_after)
        self.silent_from = [s.opened_at is not None and s.opened_at <= cutoff for s in snap.stages]

    def place(self, node_id: str, ack_status: str | None) -> tuple[int, str] | None:
        """(entry stage position, state) of a node, or None when no stage targets it."""
        if ack_status == NodeAck.Status.ACTIVE:
            entry = 0
        else:
            entry = min(
                bisect.bisect_right(self.percents, bucket(self.plan_id, node_id)),
                self.first_listed.get(node_id, self.count),
            )
            if entry >= self.count:
                return None
        if ack_status is not None:
            return entry, ack_status
        return entry, "silent" if self.silent_from[entry] else "waiting"


def node_in_plan(
    snap: PlanSnapshot, node_id: str, ack_status: str | None
) -> tuple[str, str] | None:
    """(entry stage_id, state) of one node in a plan, or None when no stage targets it."""
    placed = _Cohort(snap, clock.now(), silent_after_seconds()).place(node_id, ack_status)
    return None if placed is None else (snap.stages[placed[0]].stage_id, placed[1])


def compute(
    snap: PlanSnapshot,
    *,
    known: dict[str, datetime | None],
    acks: dict[str, tuple[str, datetime, datetime]],
    now: datetime,
    silent_after: float,
) -> PlanProgress:
    """The progress of `snap` over `known` nodes and the release's `acks`: one pass."""
    cohort = _Cohort(snap, now, silent_after)
    stages = snap.stages
    by_entry = [dict.fromkeys(STATES, 0) for _ in stages]
    rows: list[NodeState] = []
    for node_id in sorted(known):
        ack = acks.get(node_id)
        placed = cohort.place(node_id, ack[0] if ack is not None else None)
        if placed is None:
            continue
        entry, state = placed
        by_entry[entry][state] = by_entry[entry].get(state, 0) + 1
        rows.append(
            NodeState(
                node_id=node_id,
                entry=entry,
                state=state,
                ack_status=ack[0] if ack is not None else None,
                acked_at=ack[1] if ack is not None else None,
                ack_updated_at=ack[2] if ack is not None else None,
                last_seen=known[node_id],
            )
        )
    stage_counts = []
    running = dict.fromkeys(STATES, 0)
    for entered in by_entry:
        for key, value in entered.items():
            running[key] = running.get(key, 0) + value
        stage_counts.append({"targeted": sum(running.values()), **running})
    position = next(
        (s.position for s in stages if s.stage_id == snap.current_stage_id), len(stages) - 1
    )
    return PlanProgress(
        plan_id=snap.plan_id,
        version=snap.version,
        stage_ids=tuple(stage.stage_id for stage in stages),
        current_position=position,
        generated_at=now,
        silent_after=silent_after,
        known=len(known),
        nodes=tuple(rows),
        stage_counts=tuple(stage_counts),
        node_ids=[row.node_id for row in rows],
    )


# plan pk -> (key, monotonic time built, progress)
_cache: dict[int, tuple[tuple[object, ...], float, PlanProgress]] = {}
_cache_lock = threading.Lock()
_build_lock = threading.Lock()
_CACHE_MAX = 256


def _ack_fingerprint(release_pk: int) -> tuple[int, datetime | None]:
    row = NodeAck.objects.filter(release_id=release_pk).aggregate(
        n=Count("id"), at=Max("updated_at")
    )
    return int(row["n"] or 0), row["at"]


def plan_progress(
    plan: RolloutPlan, *, max_age: float = CACHE_TTL_SECONDS, snap: PlanSnapshot | None = None
) -> PlanProgress:
    """The plan's progress now, from the cache when it is still true (see the module doc).
    `snap`: the plan's snapshot when the caller has it already."""
    silent_after = silent_after_seconds()
    if snap is None or snap.version != plan.version:
        snap = snapshot_of(plan)
    if connection.in_atomic_block:  # what a transaction sees may roll back: never cached
        return _build(snap, silent_after)
    key = (plan.version, _ack_fingerprint(snap.release_pk), silent_after)
    entry = _cache.get(plan.pk)
    if entry is not None and entry[0] == key and time.monotonic() - entry[1] < max_age:
        return entry[2]
    with _build_lock:  # one build at a time: concurrent readers of a cold plan wait for it
        entry = _cache.get(plan.pk)
        if entry is not None and entry[0] == key and time.monotonic() - entry[1] < max_age:
            return entry[2]
        built_at = time.monotonic()
        progress = _build(snap, silent_after)
        with _cache_lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[plan.pk] = (key, built_at, progress)
    return progress


def _build(snap: PlanSnapshot, silent_after: float) -> PlanProgress:
    return compute(
        snap,
        known=known_nodes(),
        acks=_ack_rows(snap.release_pk),
        now=clock.now(),
        silent_after=silent_after,
    )


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def counts_dict(counts: dict[str, int]) -> dict[str, int]:
    return {key: counts.get(key, 0) for key in COUNT_KEYS}


def live_plans() -> Iterable[RolloutPlan]:
    from rollouts.models import LIVE_PHASES

    return RolloutPlan.objects.filter(phase__in=LIVE_PHASES).defer("spec").order_by("id")

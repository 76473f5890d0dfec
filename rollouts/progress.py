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

Cost: one pass over the known node ids (a bucket each, hashed once per plan and process, and a
binary search over the stage percents) and the release's acks: O(nodes + acks), ~0.2-0.3 s on
SQLite at 50,000 nodes when both are read from the database (bench/rollout_status.py,
docs/operating.md). On SQLite the acks come from the in-process ack book (a dict copy) and the
sorted node ids from a copy kept while the fleet table's (newest rowid, row count) is unchanged,
which leaves mostly the pass itself; and when only acks changed since the last count (the same
plan version, known nodes and silent stages), the book's list of the acks that changed since is
applied to that count instead (`_updated`: O(changed acks x log nodes), milliseconds). The
result is cached per plan, keyed by (plan version, the release's ack count and newest ack
update, silent_after) and at most `CACHE_TTL_SECONDS` old (new nodes and nodes turning silent
show within that time); a cache hit costs one small aggregate query. New acks alone rebuild the
counts at most every `REBUILD_COST_FACTOR` (10) x the last build's duration, and at most every
`MIN_REBUILD_SECONDS` (5 s): counting costs at most ~10 % of a core; the counts of a large fleet
may lag its acks by a few seconds (a small fleet's by milliseconds), never a plan's change. When
a build takes long (`BACKGROUND_BUILD_SECONDS`, a large fleet), the recount for new acks runs on
a thread of its own and readers get the previous counts meanwhile, so no status read waits for a
recount; and a plan's change (a promotion, an action) that leaves every node where it was (the
same stages, the same stages counting silent nodes: `_for_new_version`) is answered from the
last count under the new version and current stage at once, instead of recounting the fleet in
the request. A large fleet's plan (live or finished) read in the last `KEEP_WARM_SECONDS` is
recounted by a thread of its own (`_warm_once`) shortly before its counts reach
`CACHE_TTL_SECONDS`, so no reader finds them too old (under `serve --workers` a worker may go
longer than the TTL without a read);
on a fleet of `LARGE_FLEET_NODES` or more it also counts each live plan the process has not
counted yet, so a plan's first read in each process does not count the fleet either. Moved
counts trust the ack book; the fleet is counted in full at least every `FULL_COUNT_SECONDS`,
on a large fleet by the warmer a little before that falls due (`_due`).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, Max

from releases.models import FleetNode, NodeAck
from rollouts import clock
from rollouts.cohort import PlanSnapshot, bucket, snapshot_of
from rollouts.models import RolloutPlan

logger = logging.getLogger("orchestrator.rollouts")

ACK_STATES = ("pending", "acknowledged", "active", "failed", "rejected")
STATES = (*ACK_STATES, "silent", "waiting")
COUNT_KEYS = ("targeted", *STATES)  # the keys of every counts object, in this order
DEFAULT_SILENT_AFTER_SECONDS = 600.0
CACHE_TTL_SECONDS = 10.0
# A plan's counts are rebuilt at most this often for acks alone (a new plan version, e.g. an
# action, always rebuilds): the counts lag the acks by at most this long.
MIN_REBUILD_SECONDS = 5.0
# ... and at most every REBUILD_COST_FACTOR x what the last build took, so counting costs at most
# ~10 % of a core however large the fleet: a small fleet (a build of a few ms) sees every ack
# at once, 50,000 nodes (~0.3 s a build) within ~3 s.
REBUILD_COST_FACTOR = 10.0
# A plan whose last build took at least this long is recounted for new acks on a thread of its
# own while readers get the counts they had (at most CACHE_TTL_SECONDS old); a quicker build
# (a small fleet) is done in the reader's request, so small fleets see each ack at once.
BACKGROUND_BUILD_SECONDS = 0.05
_build_seconds: dict[int, float] = {}  # plan pk -> seconds its last build took
# A large fleet's plan (a build of at least BACKGROUND_BUILD_SECONDS) that was read in the last
# KEEP_WARM_SECONDS is recounted by a thread of this process before its counts reach
# CACHE_TTL_SECONDS (`_warm_once`, every WARM_TICK_SECONDS), so a reader never finds them too
# old and recounts in its request: the operator's reads spread over `serve --workers`, and a
# worker may go longer than the TTL without one.
KEEP_WARM_SECONDS = 60.0
WARM_TICK_SECONDS = 1.0
# A plan that counted at least LARGE_FLEET_NODES known nodes is a large fleet's whatever its
# last count took (`_large`: that time varies with the machine's load). On such a fleet the
# warmer also counts each live plan this process has no count of yet (a plan just published, a
# worker just started), so the first status read of a plan in each process does not count the
# fleet in its request either.
LARGE_FLEET_NODES = 5_000
# Moving acks in the last count (`_update`) trusts the ack book; a full count at least this
# often bounds what a write the book could not see (raw SQL, a bulk insert) would leave wrong.
FULL_COUNT_SECONDS = 60.0
_full_at: dict[int, float] = {}  # plan pk -> monotonic time of its last full count
_read_at: dict[int, float] = {}  # plan pk -> monotonic time of its last cached read
_warmer: threading.Thread | None = None


def _large(plan_pk: int) -> bool:
    """Whether the plan's counts are a large fleet's: its last full count took
    BACKGROUND_BUILD_SECONDS or more, or counted LARGE_FLEET_NODES known nodes or more."""
    entry = _cache.get(plan_pk)
    return _build_seconds.get(plan_pk, 0.0) >= BACKGROUND_BUILD_SECONDS or (
        entry is not None and entry[2].known >= LARGE_FLEET_NODES
    )


def known_node_ids() -> set[str]:
    """THE nodes known to the fleet, for rollout status: every node with an event or an ack,
    from the maintained fleet node table (`releases.models.FleetNode`, one index-only scan).
    This module's reads of "the fleet" go through here, `last_seen_of` and `known_nodes`."""
    return set(FleetNode.objects.values_list("node_id", flat=True))


# SQLite: (the fleet table's newest rowid, its row count) -> its node ids, sorted. A node that
# joins takes a new rowid and a forgotten one lowers the count, so the key moves with every
# change; reading the key costs two index lookups instead of a 50,000-row read and sort.
_known_sorted: tuple[tuple[int, int], list[str]] | None = None
_KNOWN_KEY_SQL = f"SELECT COALESCE(MAX(rowid), 0), COUNT(*) FROM {FleetNode._meta.db_table}"


def known_node_ids_sorted() -> list[str]:
    """`known_node_ids()` as a sorted list (do not change it), kept between builds on SQLite
    while the fleet table is unchanged."""
    global _known_sorted
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return sorted(known_node_ids())
    with connection.cursor() as cursor:
        cursor.execute(_KNOWN_KEY_SQL)
        top, count = cursor.fetchone()
    key = (int(top), int(count))
    cached = _known_sorted
    if cached is not None and cached[0] == key:
        return cached[1]
    nodes = sorted(FleetNode.objects.values_list("node_id", flat=True))
    if len(nodes) == key[1]:  # nothing joined between the two reads
        _known_sorted = (key, nodes)
    return nodes


def last_seen_of(node_ids: Iterable[str]) -> dict[str, datetime]:
    """node_id -> arrival time of its newest event, for a page of nodes (one query)."""
    ids = list(node_ids)
    if not ids:
        return {}
    return {
        node_id: seen
        for node_id, seen in FleetNode.objects.filter(node_id__in=ids).values_list(
            "node_id", "last_seen"
        )
        if seen is not None
    }


def known_nodes() -> dict[str, datetime | None]:
    """Every known node -> its last_seen (None: known by its acks only), for the fleet page."""
    return dict(FleetNode.objects.values_list("node_id", "last_seen"))


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
    release_pk: int
    version: int
    stage_ids: tuple[str, ...]
    current_position: int
    generated_at: datetime
    silent_after: float
    known: int
    stage_counts: tuple[dict[str, int], ...]  # per stage position, cumulative
    # The targeted nodes by node_id, with their entry stage and state (parallel lists).
    node_ids: list[str] = field(repr=False)
    entries: list[int] = field(repr=False)
    states: list[str] = field(repr=False)
    # What every node's stage and state were derived from besides its ack (`_shape`): a later
    # version of the plan with the same shape places every node the same way.
    shape: tuple[object, ...] = field(default=(), repr=False, compare=False)
    # The known node ids it counted over, sorted (`_updated` applies to the same ones only).
    known_ids: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def plan_counts(self) -> dict[str, int]:
        return self.stage_counts[self.current_position]

    def position(self, stage_id: str) -> int | None:
        try:
            return self.stage_ids.index(stage_id)
        except ValueError:
            return None

    def _pick(
        self, *, position: int, state: str, after: str | None, limit: int
    ) -> tuple[list[int], bool]:
        """Indexes of up to `limit` matching nodes after `after`, and whether more follow."""
        start = bisect.bisect_right(self.node_ids, after) if after is not None else 0
        picked: list[int] = []
        for index in range(start, len(self.node_ids)):
            if self.entries[index] > position or (
                state != "targeted" and self.states[index] != state
            ):
                continue
            if len(picked) == limit:
                return picked, True
            picked.append(index)
        return picked, False

    def first_ids(self, *, position: int, state: str, limit: int) -> list[str]:
        """The first `limit` node ids of stage `position` in `state` (no query)."""
        picked, _ = self._pick(position=position, state=state, after=None, limit=limit)
        return [self.node_ids[index] for index in picked]

    def page(
        self, *, position: int, state: str, after: str | None, limit: int
    ) -> tuple[list[NodeState], str | None]:
        """Targeted nodes of stage `position` in `state` (`targeted`: all), by node_id after
        `after`, with their ack and last-seen times read now; (rows, next cursor or None)."""
        picked, more = self._pick(position=position, state=state, after=after, limit=limit)
        ids = [self.node_ids[index] for index in picked]
        acks = (
            {
                node: (status, acked, updated)
                for node, status, acked, updated in NodeAck.objects.filter(
                    release_id=self.release_pk, node_id__in=ids
                ).values_list("node_id", "status", "acked_at", "updated_at")
            }
            if ids
            else {}
        )
        seen = last_seen_of(ids)
        rows = []
        for index in picked:
            node_id = self.node_ids[index]
            ack = acks.get(node_id)
            rows.append(
                NodeState(
                    node_id=node_id,
                    entry=self.entries[index],
                    state=self.states[index],
                    ack_status=ack[0] if ack else None,
                    acked_at=ack[1] if ack else None,
                    ack_updated_at=ack[2] if ack else None,
                    last_seen=seen.get(node_id),
                )
            )
        return rows, (ids[-1] if more and ids else None)


# plan_id -> {node_id: bucket}: a node's bucket in a plan never changes, so a recount hashes
# only the nodes it has not seen (bounded: cleared beyond _BUCKETS_MAX plans).
_buckets: dict[str, dict[str, float]] = {}
_BUCKETS_MAX = 64


def _buckets_of(plan_id: str) -> dict[str, float]:
    known = _buckets.get(plan_id)
    if known is None:
        if len(_buckets) >= _BUCKETS_MAX:
            _buckets.clear()
        known = _buckets[plan_id] = {}
    return known


def _silent_from(snap: PlanSnapshot, now: datetime, silent_after: float) -> list[bool]:
    """Per stage: whether its nodes without an ack count as silent now (it opened at least
    `silent_after` seconds ago)."""
    cutoff = now - timedelta(seconds=silent_after)
    return [s.opened_at is not None and s.opened_at <= cutoff for s in snap.stages]


def _shape(snap: PlanSnapshot, silent_from: list[bool]) -> tuple[object, ...]:
    """Everything besides the acks that places a node: the stages' ids, percents and listed
    nodes, and which stages count unacked nodes as silent."""
    return (
        snap.plan_id,
        snap.release_pk,
        tuple((stage.stage_id, stage.percent, stage.nodes) for stage in snap.stages),
        tuple(silent_from),
    )


def _position(snap: PlanSnapshot) -> int:
    return next(
        (s.position for s in snap.stages if s.stage_id == snap.current_stage_id),
        len(snap.stages) - 1,
    )


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
        self.silent_from = _silent_from(snap, now, silent_after)
        self.buckets = _buckets_of(snap.plan_id)

    def place(self, node_id: str, ack_status: str | None) -> tuple[int, str] | None:
        """(entry stage position, state) of a node, or None when no stage targets it."""
        if ack_status == NodeAck.Status.ACTIVE:
            entry = 0
        else:
            share = self.buckets.get(node_id)
            if share is None:
                share = self.buckets[node_id] = bucket(self.plan_id, node_id)
            entry = min(
                bisect.bisect_right(self.percents, share),
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
    known: Iterable[str],
    acks: dict[str, str],
    now: datetime,
    silent_after: float,
) -> PlanProgress:
    """The progress of `snap` over the `known` node ids and the release's `acks` (node_id ->
    status): one pass."""
    cohort = _Cohort(snap, now, silent_after)
    stages = snap.stages
    by_entry = [dict.fromkeys(STATES, 0) for _ in stages]
    node_ids: list[str] = []
    entries: list[int] = []
    states: list[str] = []
    known_count = 0
    ordered = sorted(known)
    for node_id in ordered:
        known_count += 1
        placed = cohort.place(node_id, acks.get(node_id))
        if placed is None:
            continue
        entry, state = placed
        by_entry[entry][state] = by_entry[entry].get(state, 0) + 1
        node_ids.append(node_id)
        entries.append(entry)
        states.append(state)
    return PlanProgress(
        plan_id=snap.plan_id,
        release_pk=snap.release_pk,
        version=snap.version,
        stage_ids=tuple(stage.stage_id for stage in stages),
        current_position=_position(snap),
        generated_at=now,
        silent_after=silent_after,
        known=known_count,
        stage_counts=_cumulative(by_entry),
        node_ids=node_ids,
        entries=entries,
        states=states,
        shape=_shape(snap, cohort.silent_from),
        known_ids=ordered,
    )


def _cumulative(by_entry: list[dict[str, int]]) -> tuple[dict[str, int], ...]:
    """Per stage: the counts of the nodes that entered at it or before (a prefix sum)."""
    stage_counts = []
    running = dict.fromkeys(STATES, 0)
    for entered in by_entry:
        for key, value in entered.items():
            running[key] = running.get(key, 0) + value
        stage_counts.append({"targeted": sum(running.values()), **running})
    return tuple(stage_counts)


def _updated(
    previous: PlanProgress,
    snap: PlanSnapshot,
    changed: dict[str, str],
    *,
    now: datetime,
    silent_after: float,
) -> PlanProgress:
    """`previous` with the acks in `changed` (node_id -> new status) moved: what `compute`
    would count over the same known nodes, the same plan version and shape, and the acks of
    `previous` updated by `changed`, in O(changed x log nodes) instead of a pass over the fleet
    (the lists are copied, as readers may be paging through `previous`)."""
    cohort = _Cohort(snap, now, silent_after)
    known = previous.known_ids
    node_ids, entries, states = (
        list(previous.node_ids),
        list(previous.entries),
        list(previous.states),
    )
    by_entry = [dict.fromkeys(STATES, 0) for _ in snap.stages]
    before: dict[str, int] = {}
    for position, stage in enumerate(previous.stage_counts):
        for state in STATES:
            by_entry[position][state] = stage[state] - before.get(state, 0)
        before = stage
    for node_id, status in changed.items():
        at = bisect.bisect_left(known, node_id)
        if at == len(known) or known[at] != node_id:
            continue  # not a known node (yet): `compute` does not count it either
        index = bisect.bisect_left(node_ids, node_id)
        present = index < len(node_ids) and node_ids[index] == node_id
        if present:
            by_entry[entries[index]][states[index]] -= 1
        placed = cohort.place(node_id, status)
        if placed is None:
            if present:
                del node_ids[index], entries[index], states[index]
            continue
        entry, state = placed
        by_entry[entry][state] += 1
        if present:
            entries[index], states[index] = entry, state
        else:
            node_ids.insert(index, node_id)
            entries.insert(index, entry)
            states.insert(index, state)
    return dataclasses.replace(
        previous,
        generated_at=now,
        stage_counts=_cumulative(by_entry),
        node_ids=node_ids,
        entries=entries,
        states=states,
    )


# plan pk -> (key, monotonic time built, progress)
_cache: dict[int, tuple[tuple[object, ...], float, PlanProgress]] = {}
_cache_lock = threading.Lock()
_build_lock = threading.Lock()
_CACHE_MAX = 256


def _cacheable() -> bool:
    """Not inside a transaction: what it sees may roll back (as every test's does)."""
    return not connection.in_atomic_block


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
    if not _cacheable():
        return _build(snap, silent_after)
    if max_age <= CACHE_TTL_SECONDS:  # a status read, not a scrape (counts up to 30 s old)
        _read_at[plan.pk] = time.monotonic()
    entry = _cache.get(plan.pk)
    if (
        entry is not None
        and entry[0][0] == plan.version
        and entry[0][2] == silent_after
        and time.monotonic() - entry[1]
        < min(max_age, MIN_REBUILD_SECONDS, REBUILD_COST_FACTOR * _build_seconds.get(plan.pk, 0.0))
    ):
        # Young enough: acks that arrived since show at the next rebuild. Under a fleet's acks
        # every read would otherwise recount (O(nodes), ~0.3 s at 50,000 nodes).
        return entry[2]
    if entry is not None and entry[0][0] != plan.version:
        reused = _for_new_version(plan.pk, entry, snap, silent_after, max_age)
        if reused is not None:
            return reused
    key = (plan.version, _ack_fingerprint(snap.release_pk), silent_after)
    if entry is not None and entry[0] == key and time.monotonic() - entry[1] < max_age:
        return entry[2]
    if (
        entry is not None
        and entry[0][0] == plan.version
        and entry[0][2] == silent_after
        and time.monotonic() - entry[1] < max_age
        and _large(plan.pk)
    ):
        # A large fleet and only new acks: answer with the counts we have (at most max_age
        # old) and recount on a thread of its own, instead of holding this reader for the
        # build (~0.3 s at 50,000 nodes, the operator's p99). A plan's change never waits here.
        _rebuild_in_background(plan.pk, key, snap, silent_after)
        return entry[2]
    return _rebuild(plan.pk, key, snap, silent_after, max_age)


def _for_new_version(
    plan_pk: int,
    entry: tuple[tuple[object, ...], float, PlanProgress],
    snap: PlanSnapshot,
    silent_after: float,
    max_age: float,
) -> PlanProgress | None:
    """A plan's change (an operator's action, a promotion) on a large fleet, answered without
    recounting the fleet in the request (~0.3 s at 50,000 nodes, the operator's p99): when the
    last count is young and used the same shape (`_shape`: the same stages, and the same
    stages count unacked nodes as silent), every node has the same stage and state, so the
    counts are that count's, under the new version and current stage. Acks that arrived since
    show as for acks alone (the next rebuild). None: recount as before (a small fleet, whose
    counts are cheap and exact; another shape; counts too old)."""
    key, built_at, previous = entry
    if (
        key[2] != silent_after
        or time.monotonic() - built_at >= max_age
        or not _large(plan_pk)
        or _shape(snap, _silent_from(snap, clock.now(), silent_after)) != previous.shape
    ):
        return None
    progress = dataclasses.replace(previous, version=snap.version, current_position=_position(snap))
    with _cache_lock:
        _cache[plan_pk] = ((snap.version, key[1], silent_after), built_at, progress)
    return progress


def _rebuild(
    plan_pk: int,
    key: tuple[object, ...],
    snap: PlanSnapshot,
    silent_after: float,
    max_age: float = CACHE_TTL_SECONDS,
    *,
    full: bool = False,
) -> PlanProgress:
    """Count the plan (under the build lock; `full`: over the whole fleet, never by moving the
    acks of the last count) and cache it, unless a count of `key` younger than `max_age` is
    there already."""
    with _build_lock:  # one build at a time: concurrent readers of a cold plan wait for it
        entry = _cache.get(plan_pk)
        if entry is not None and entry[0] == key and time.monotonic() - entry[1] < max_age:
            return entry[2]
        built_at = time.monotonic()
        fingerprint = key[1]
        expected = fingerprint[0] if isinstance(fingerprint, tuple) else None
        progress = (
            None
            if full
            else _update(plan_pk, entry[2] if entry else None, snap, silent_after, expected)
        )
        if progress is None:  # a count over the whole fleet: its time sizes the next decisions
            progress = _build(snap, silent_after, expected)
            _build_seconds[plan_pk] = time.monotonic() - built_at
            _full_at[plan_pk] = built_at
        with _cache_lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[plan_pk] = (key, built_at, progress)
    if _large(plan_pk):
        start_warmer()
    return progress


def _update(
    plan_pk: int,
    previous: PlanProgress | None,
    snap: PlanSnapshot,
    silent_after: float,
    expected: int | None,
) -> PlanProgress | None:
    """The last count with the acks that changed since moved (`_updated`, SQLite: the ack book
    keeps the changes), when nothing else moved: the same plan version and `--silent-after`,
    no stage's nodes turned silent, the same known nodes, the book holds at least as many acks
    as the database counted when the caller asked (`expected`; more: acks committed since),
    and the last full count is less than FULL_COUNT_SECONDS old. None: count the whole fleet."""
    from releases.ackbook import ack_book

    if (
        previous is None
        or previous.version != snap.version
        or previous.silent_after != silent_after
        or time.monotonic() - _full_at.get(plan_pk, 0.0) >= FULL_COUNT_SECONDS
    ):
        return None
    now = clock.now()
    if _shape(snap, _silent_from(snap, now, silent_after)) != previous.shape:
        return None
    got = ack_book.changes(snap.release_pk, _watch_key(snap))
    if got is None or (expected is not None and got[1] < expected):
        return None
    if known_node_ids_sorted() != previous.known_ids:
        return None
    return _updated(previous, snap, got[0], now=now, silent_after=silent_after)


def _watch_key(snap: PlanSnapshot) -> tuple[str, str]:
    return ("rollouts.progress", snap.plan_id)


_background: set[int] = set()  # plans being recounted on a thread now


def _rebuild_in_background(
    plan_pk: int, key: tuple[object, ...], snap: PlanSnapshot, silent_after: float
) -> None:
    with _cache_lock:
        if plan_pk in _background:
            return
        _background.add(plan_pk)

    def run() -> None:
        try:
            _rebuild(plan_pk, key, snap, silent_after)
        except Exception:  # the next read tries again (inline once the entry is too old)
            logger.debug("background recount of plan %s failed", plan_pk, exc_info=True)
        finally:
            with _cache_lock:
                _background.discard(plan_pk)
            connection.close()

    threading.Thread(target=run, name="rollout-progress", daemon=True).start()


def _due(plan_pk: int, now: float) -> str | None:
    """What the warmer should do for a plan now: "full" when its once-a-minute full count
    (FULL_COUNT_SECONDS) would fall due before the next tick and a count are done, so no reader
    pays for it; "moved" when it was read in the last KEEP_WARM_SECONDS and its counts would
    reach CACHE_TTL_SECONDS by then; None otherwise, and for a small fleet's plan (its readers
    count cheaply themselves)."""
    if not _large(plan_pk):
        return None
    margin = 2 * _build_seconds.get(plan_pk, 0.0) + WARM_TICK_SECONDS
    if now - _full_at.get(plan_pk, 0.0) + margin >= FULL_COUNT_SECONDS:
        return "full"
    entry = _cache.get(plan_pk)
    if plan_pk in _read_at and (entry is None or now - entry[1] + margin >= CACHE_TTL_SECONDS):
        return "moved"
    return None


def _warm_once() -> list[int]:
    """One pass of the warmer over the live plans and the plans read lately (a finished plan's
    counts still move as its nodes ack, and an operator's dashboard keeps reading it): count
    each live one this process has no count of when the fleet is large (LARGE_FLEET_NODES),
    and each one `_due` names; forget reads older than KEEP_WARM_SECONDS. The plans counted."""
    from rollouts.models import LIVE_PHASES

    now = time.monotonic()
    live = sorted(RolloutPlan.objects.filter(phase__in=LIVE_PHASES).values_list("pk", flat=True))
    for plan_pk, read_at in list(_read_at.items()):
        if now - read_at > KEEP_WARM_SECONDS:
            _read_at.pop(plan_pk, None)
    uncounted = [pk for pk in live if pk not in _cache]
    large_fleet = bool(uncounted) and FleetNode.objects.count() >= LARGE_FLEET_NODES
    warmed = []
    for plan_pk in sorted({*live, *_read_at}):
        reason = ("full" if large_fleet else None) if plan_pk in uncounted else _due(plan_pk, now)
        if reason is not None and _count_now(plan_pk, full=reason == "full"):
            warmed.append(plan_pk)
    return warmed


def _count_now(plan_pk: int, *, full: bool) -> bool:
    """Count the plan from the store now (`full`: over the whole fleet, not by moving acks);
    False when it is gone."""
    plan = RolloutPlan.objects.filter(pk=plan_pk).first()
    if plan is None:
        return False
    snap = snapshot_of(plan)
    silent_after = silent_after_seconds()
    key = (plan.version, _ack_fingerprint(snap.release_pk), silent_after)
    # A max_age of 0: count even when nothing moved (nodes turn silent, nodes join).
    _rebuild(plan_pk, key, snap, silent_after, max_age=0.0, full=full)
    return True


def start_warmer() -> None:
    """Start this process's warmer thread (once; a fork's child starts its own): `serve` in
    each worker, and the first slow count of a process that did not."""
    global _warmer
    with _cache_lock:
        if _warmer is not None and _warmer.is_alive():
            return
        _warmer = threading.Thread(target=_warm_forever, name="rollout-progress-warm", daemon=True)
        _warmer.start()


def _warm_forever() -> None:
    while True:
        time.sleep(WARM_TICK_SECONDS)
        try:
            _warm_once()
        except Exception:  # a lost database: readers count as before, the next tick retries
            logger.debug("warming rollout counts failed", exc_info=True)
            connection.close()


def _ack_statuses(snap: PlanSnapshot, expected: int | None = None) -> dict[str, str]:
    """node_id -> status of the release's acks: from the in-process ack book when it holds
    them (SQLite; a copy of a dict instead of reading 50,000 rows) and holds as many as the
    database counted (`expected`, the cache key's count: a book that missed a write made
    around the ack writer is not trusted), else the database. The book keeps the acks that
    change from now on for the next count (`_update`)."""
    from releases.ackbook import ack_book

    release_pk = snap.release_pk
    statuses = ack_book.watch(release_pk, _watch_key(snap))
    if statuses is not None and (expected is None or len(statuses) == expected):
        return statuses
    return dict(NodeAck.objects.filter(release_id=release_pk).values_list("node_id", "status"))


def _build(
    snap: PlanSnapshot, silent_after: float, expected_acks: int | None = None
) -> PlanProgress:
    return compute(
        snap,
        known=known_node_ids_sorted(),
        acks=_ack_statuses(snap, expected_acks),
        now=clock.now(),
        silent_after=silent_after,
    )


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _buckets.clear()
        _build_seconds.clear()
        _full_at.clear()
        _read_at.clear()


def counts_dict(counts: dict[str, int]) -> dict[str, int]:
    return {key: counts.get(key, 0) for key in COUNT_KEYS}


def live_plans() -> Iterable[RolloutPlan]:
    from rollouts.models import LIVE_PHASES

    return RolloutPlan.objects.filter(phase__in=LIVE_PHASES).defer("spec").order_by("id")

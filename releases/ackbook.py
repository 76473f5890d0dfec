"""The acks of recent releases, kept in this process: who acked what, and running counts.

The node poll (`rollouts.selectors.desired_release_for_node`: "has this node acked the release
`active`?") and the gate evaluator (`rollouts.gates`: how many of a stage's acks are `active`,
`failed`, ...) ask about the acks of the one release a plan rolls out, thousands of times a
second at fleet scale. Asking the database each time costs a query per poll and a scan of every
ack of the release per evaluation pass. The book answers both from memory:

- per release (at most MAX_RELEASES, the most recently used): node_id -> ack status, loaded with
  one query the first time it is asked, then kept current by the ack writer
  (`releases.writer`), which calls `ack_book.apply` with every ack it committed before it
  answers the request (so a poll right after an ack's 200 sees it);
- per (release, tracker key): the count of each status among the acks a membership rule counts
  (`counts`), computed once from the statuses and then moved by each applied ack;
- per (release, watcher key): the acks that changed since the watcher last asked (`watch`,
  `changes`), so the rollout status counts (`rollouts.progress`) move those nodes instead of
  recounting the fleet.

Only for the SQLite store, where one `serve` owns the database, so every ack passes through it.
Under `serve --workers N` each worker has its own book, and the acks committed by any worker
reach every book through the shared ack ring (`core.sharedstate`): the ack writer appends each
committed group to the ring while it holds the cross-process write lock (so the ring is in
commit order), and every book replays the ring's new records before it answers (`sync`); the
writer's own worker replays them the same way instead of applying its group directly, so every
book sees the acks in one order. A book that fell a whole ring behind forgets everything and
reloads. On PostgreSQL several processes may serve one database; `usable()` is
False there and callers query the database as before. Reads inside a transaction (tests, admin
actions) never use the book either: what they see may be rolled back.

Writes that bypass the writer (the admin, the ORM in tests, a cascade when a release is deleted,
`flush`) reach `invalidate()` through model signals: the book forgets everything and reloads on
the next question. A load races with the writer safely: acks applied while a load's query runs
are kept and replayed onto its result, in commit order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

from django.db import connection
from django.db.models.signals import post_delete, post_migrate, post_save

from core import sharedstate
from releases.models import NodeAck, Release

MAX_RELEASES = 16
ACTIVE = NodeAck.Status.ACTIVE.value

_LOAD_SQL = f"SELECT node_id, status FROM {NodeAck._meta.db_table} WHERE release_id = %s"


class _Tracker:
    """Counts of each status among the acks `member` counts (an `active` ack always counts)."""

    def __init__(self, member: Callable[[str], bool], statuses: dict[str, str]) -> None:
        self.member = member
        self.by_status: dict[str, int] = {}
        for node, status in statuses.items():
            if status == ACTIVE or member(node):
                self.by_status[status] = self.by_status.get(status, 0) + 1

    def move(self, node: str, old: str | None, new: str) -> None:
        if old == new:
            return
        is_member: bool | None = None
        if old is not None:
            is_member = member = self.member(node)
            if old == ACTIVE or member:
                self.by_status[old] -= 1
        if new == ACTIVE or (is_member if is_member is not None else self.member(node)):
            self.by_status[new] = self.by_status.get(new, 0) + 1


class _Entry:
    def __init__(self) -> None:
        self.ready = False
        self.pending: list[tuple[str, str]] = []  # acks applied while loading, in commit order
        self.statuses: dict[str, str] = {}
        self.trackers: dict[Hashable, _Tracker] = {}
        # key -> node_id -> status of the acks that changed since the watcher last looked
        self.watchers: dict[Hashable, dict[str, str]] = {}

    def set(self, node: str, status: str) -> None:
        old = self.statuses.get(node)
        self.statuses[node] = status
        for tracker in self.trackers.values():
            tracker.move(node, old, status)
        for changed in self.watchers.values():
            changed[node] = status


class AckBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self.loads = 0  # how many times a release's acks were read from the database
        self._ring_at: int | None = None  # the next ring record to replay (serve --workers)
        self._resets = sharedstate.Watch(sharedstate.ACKS_RESET)

    def sync(self) -> None:
        """Replay the acks other workers (and this one) committed since the last look; forget
        everything when another worker wrote acks around the writer or the ring moved on."""
        shared = sharedstate.state()
        if shared is None:
            return
        if self._resets.moved():
            self._forget(shared.head())
        if shared.head() == self._ring_at:
            return
        with self._lock:
            if self._ring_at is None:
                self._entries.clear()
                self._ring_at = shared.head()
                return
            got = shared.read_acks(self._ring_at)
            if got is None:  # overwritten before this worker looked: start again
                self._entries.clear()
                self._ring_at = shared.head()
                return
            acks, self._ring_at = got
            self._apply_locked(acks)

    def _forget(self, ring_at: int | None) -> None:
        with self._lock:
            self._entries.clear()
            self._ring_at = ring_at

    @staticmethod
    def usable() -> bool:
        return connection.vendor == "sqlite" and not connection.in_atomic_block

    def _entry(self, release_pk: int) -> _Entry | None:
        """The release's loaded entry (loading it now if needed), or None: not usable here, or
        another thread is loading it (the caller asks the database this once)."""
        if not self.usable():
            return None
        self.sync()
        entry = self._entries.get(release_pk)
        if entry is not None:
            return entry if entry.ready else None
        with self._lock:
            entry = self._entries.get(release_pk)
            if entry is not None:
                return entry if entry.ready else None
            if len(self._entries) >= MAX_RELEASES:
                del self._entries[next(iter(self._entries))]  # the oldest
            entry = self._entries[release_pk] = _Entry()
        with connection.cursor() as cursor:
            cursor.execute(_LOAD_SQL, [release_pk])
            rows = cursor.fetchall()
        with self._lock:
            if self._entries.get(release_pk) is not entry:  # invalidated meanwhile
                return None
            entry.statuses = dict(rows)
            for node, status in entry.pending:
                entry.statuses[node] = status
            entry.pending = []
            entry.ready = True
            self.loads += 1
        return entry

    def is_active(self, release_pk: int, node_id: str) -> bool | None:
        """Whether the node acked the release `active`; None: ask the database."""
        entry = self._entry(release_pk)
        if entry is None:
            return None
        return entry.statuses.get(node_id) == ACTIVE

    def is_active_cached(self, release_pk: int, node_id: str) -> bool | None:
        """`is_active` without ever touching the database (None when not loaded); safe on the
        event loop."""
        self.sync()
        entry = self._entries.get(release_pk)
        if entry is None or not entry.ready:
            return None
        return entry.statuses.get(node_id) == ACTIVE

    def watch(self, release_pk: int, key: Hashable) -> dict[str, str] | None:
        """node_id -> ack status of every ack of the release (a copy), and from now on the
        book keeps each of its acks that changes for `changes(release_pk, key)`; None: ask the
        database."""
        entry = self._entry(release_pk)
        if entry is None:
            return None
        with self._lock:
            entry.watchers[key] = {}
            return dict(entry.statuses)

    def changes(self, release_pk: int, key: Hashable) -> tuple[dict[str, str], int] | None:
        """(node_id -> status of the release's acks that changed since `watch` or the last
        `changes` with this key, how many acks the release has now); None: the book cannot
        tell (not usable here, or it forgot the release since: `watch` again)."""
        if not self.usable():
            return None
        self.sync()
        entry = self._entries.get(release_pk)
        if entry is None or not entry.ready:
            return None
        with self._lock:
            changed = entry.watchers.get(key)
            if changed is None:
                return None
            entry.watchers[key] = {}
            return changed, len(entry.statuses)

    def counts(
        self,
        release_pk: int,
        key: Hashable,
        member: Callable[[str], bool],
        *,
        active_nodes: bool = False,
    ) -> tuple[dict[str, int], list[str]] | None:
        """(acks per status among those `member` counts plus every `active` one, the nodes that
        acked `active` when `active_nodes` else []) for the release, kept current by each ack;
        None: ask the database.

        `key` names the membership rule (the same key must always mean the same `member`)."""
        entry = self._entry(release_pk)
        if entry is None:
            return None
        with self._lock:
            tracker = entry.trackers.get(key)
            if tracker is None:
                tracker = entry.trackers[key] = _Tracker(member, entry.statuses)
            active = (
                [node for node, status in entry.statuses.items() if status == ACTIVE]
                if active_nodes
                else []
            )
            return dict(tracker.by_status), active

    def committed(self, acks: list[tuple[int, str, str]]) -> None:
        """The ack writer's group just committed (and, under --workers, went to the ring)."""
        if sharedstate.state() is not None:
            self.sync()
        else:
            self.apply(acks)

    def apply(self, acks: list[tuple[int, str, str]]) -> None:
        """(release pk, node_id, status) of acks just committed, in commit order. Under
        --workers only the ring knows the commit order across workers: forget everything here
        and in the other workers instead (a rare path: acks stored inside a caller's
        transaction)."""
        if sharedstate.state() is not None:
            self.invalidate()
            return
        with self._lock:
            self._apply_locked(acks)

    def _apply_locked(self, acks: list[tuple[int, str, str]]) -> None:
        for release_pk, node, status in acks:
            entry = self._entries.get(release_pk)
            if entry is None:
                continue
            if entry.ready:
                entry.set(node, status)
            else:
                entry.pending.append((node, status))

    def invalidate(self) -> None:
        """Acks changed around the writer: forget them here and in the other workers."""
        with self._lock:
            self._entries.clear()
        sharedstate.bump(sharedstate.ACKS_RESET)


ack_book = AckBook()


def _invalidate(**_: Any) -> None:
    ack_book.invalidate()
    if connection.in_atomic_block:  # readers outside the transaction may reload before commit
        connection.on_commit(ack_book.invalidate)


post_save.connect(_invalidate, sender=NodeAck, dispatch_uid="releases.ackbook.save")
post_delete.connect(_invalidate, sender=NodeAck, dispatch_uid="releases.ackbook.delete")
post_delete.connect(_invalidate, sender=Release, dispatch_uid="releases.ackbook.release_delete")
post_migrate.connect(_invalidate, dispatch_uid="releases.ackbook.migrate")

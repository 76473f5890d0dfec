"""Events retention: delete events the server received longer ago than `--events-retention`.

Measured by `received_at` (when this server stored the event), never by the event's own
`timestamp`: a node with a wrong clock can neither keep its events forever nor have them
deleted on arrival.

A background thread (`start_pruner`, started by `serve`) prunes every PRUNE_INTERVAL_SECONDS:
- the cutoff is `now - retention`, moved back to the oldest window a rollout's
  `event_threshold` gate still reads (`rollouts.selectors.event_gate_windows_start`): an event
  such a gate may count is never deleted;
- it deletes in batches of the oldest events (the received_at index), each batch its own
  short transaction sized to take ~25 ms (BATCH_SECONDS), with a pause between batches. On
  SQLite every batch runs on the events writer thread (`events.writer.run_on_writer`) between
  two ingest groups, so a prune never queues ingest behind SQLite's write lock for longer than
  one batch; after a round, free pages go back to the file system in `PRAGMA
  incremental_vacuum` steps of ~20 ms each, also on the writer, at most 10 % of its time
  (`vacuum_round`);
- with several replicas of one PostgreSQL database only the leader prunes (`core.leader`);
- on PostgreSQL the table is partitioned by day (events/partitions.py): a round drops the days
  wholly before the cutoff instead of deleting rows, and makes the days ahead.

Readers (`visible_after`) never show an event received before `now - retention`, on both
stores, whether or not it is physically gone yet.

The fleet view keeps its nodes: their rows (`releases.FleetNode`) do not depend on the events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import close_old_connections, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from core import dberrors, leader
from core.params import seconds_before
from events.models import RECEIVED_AT_INDEX, Event

logger = logging.getLogger("orchestrator.events")

PRUNE_INTERVAL_SECONDS = 60.0
# A delete batch starts at BATCH_ROWS rows and is resized (halved or doubled, within
# BATCH_MIN_ROWS..BATCH_MAX_ROWS) to hold the writer about BATCH_SECONDS: ingest waits for at
# most about one batch, whatever a row costs in this store (more in a 7.8 GB one than in a
# small one: a prune of 10,000,000 events quadrupled a saturating ingest's p99 with fixed
# 1,000-row batches).
BATCH_ROWS = 1000
BATCH_MIN_ROWS = 50
BATCH_MAX_ROWS = 5000
BATCH_SECONDS = 0.025
# Between two batches. On SQLite ingest does not need it to go first (the batches queue on the
# writer behind the ingest groups that arrived meanwhile); it leaves the event loop some CPU.
PAUSE_SECONDS = 0.005
# Free pages go back to the file system (SQLite, 4 KiB each) in steps sized to hold the writer
# about VACUUM_STEP_SECONDS: a step moves live pages from the end of the file into free ones,
# and after a large prune (the free pages at the start of the file, the live ones at its end)
# that costs ~5 ms a page (measured after a 10M-event prune: 512 pages held ingest for 3 s).
# The step size adapts (VACUUM_MIN_PAGES..VACUUM_MAX_PAGES), the pause after a step makes the
# vacuum at most VACUUM_SHARE of the writer's time, and a round vacuums for at most
# VACUUM_ROUND_SECONDS, the rest in later rounds. Ingest never needs it: SQLite reuses free
# pages for new rows, so the file stops growing without it; it only shrinks a file that a
# shorter retention (or a first prune) left mostly empty.
VACUUM_MIN_PAGES = 1
VACUUM_MAX_PAGES = 512
VACUUM_FIRST_PAGES = 16
VACUUM_STEP_SECONDS = 0.02
VACUUM_SHARE = 0.1
VACUUM_ROUND_SECONDS = 30.0
WRITER_TIMEOUT_SECONDS = 60.0
FIRST_ROUND_SECONDS = 5.0


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime | None
    deleted: int
    held_back_by_gate: bool = False
    vacuumed_pages: int = 0
    dropped: tuple[str, ...] = ()  # PostgreSQL: the day partitions dropped


# The retention `serve` runs with, in every process: readers never show an event received
# before `now - retention`, whether or not it is physically gone yet (on PostgreSQL a day goes
# as a whole once all of it is out of the window, events/partitions.py).
_visible_seconds = 0.0


def configure_visibility(retention_seconds: float) -> None:
    global _visible_seconds
    _visible_seconds = max(0.0, float(retention_seconds))


def visible_after(now: datetime | None = None) -> datetime | None:
    """The arrival time before which events are not shown (None: retention off)."""
    if _visible_seconds <= 0:
        return None
    return seconds_before(now or timezone.now(), _visible_seconds)


def shown(events: QuerySet[Event]) -> QuerySet[Event]:
    """`events` without those out of the retention window (the ORM readers: admin, node page)."""
    shown_from = visible_after()
    return events if shown_from is None else events.filter(received_at__gte=shown_from)


def prune_cutoff(*, retention_seconds: float, now: datetime | None = None) -> tuple[datetime, bool]:
    """(The arrival time before which events may go, whether a gate's window moved it back)."""
    from rollouts.selectors import event_gate_windows_start

    now = now or timezone.now()
    cutoff = seconds_before(now, retention_seconds)
    window = event_gate_windows_start()
    if window is not None and window < cutoff:
        return window, True
    return cutoff, False


def delete_batch(*, cutoff: datetime, rows: int = BATCH_ROWS) -> int:
    """Delete up to `rows` of the oldest events received before `cutoff`, in one short
    transaction; returns how many."""
    qn = connection.ops.quote_name
    table = qn(Event._meta.db_table)
    received, ident = qn("received_at"), qn("id")
    # SQLite: INDEXED BY, whatever the statistics say (a batch must stay a short statement).
    indexed = f" INDEXED BY {qn(RECEIVED_AT_INDEX)}" if connection.vendor == "sqlite" else ""
    sql = (
        f"DELETE FROM {table} WHERE {ident} IN (SELECT {ident} FROM {table}{indexed} "
        f"WHERE {received} < %s ORDER BY {received} LIMIT %s)"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [connection.ops.adapt_datetimefield_value(cutoff), rows])
        return max(cursor.rowcount, 0)


def vacuum_step(pages: int = VACUUM_FIRST_PAGES) -> int:
    """SQLite: give up to `pages` free pages back to the file system (incremental auto-vacuum);
    returns how many were free before. Nothing on a store without incremental auto-vacuum (see
    `ensure_incremental_vacuum`) or on PostgreSQL (autovacuum reuses the space)."""
    if connection.vendor != "sqlite":
        return 0
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA auto_vacuum")
        if cursor.fetchone()[0] != 2:
            return 0
        cursor.execute("PRAGMA freelist_count")
        free = int(cursor.fetchone()[0])
    if free:
        # executescript steps the pragma to its end; a plain execute steps it once, and each
        # step frees ONE page.
        connection.connection.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    return free


def _on_writer(task: Callable[[], Any]) -> Any:
    """SQLite: run on the events writer thread (no contention with ingest); PostgreSQL: here."""
    if connection.vendor != "sqlite":
        return task()
    from events.writer import run_on_writer

    return run_on_writer(task).result(timeout=WRITER_TIMEOUT_SECONDS)


def events_prune(
    *,
    retention_seconds: float,
    now: datetime | None = None,
    rows: int = BATCH_ROWS,
    pause: float = PAUSE_SECONDS,
    max_batches: int | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    run: Callable[[Callable[[], Any]], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PruneResult:
    """One prune round: batches (the first of `rows` rows, then sized to take about
    BATCH_SECONDS each) until nothing older than the cutoff is left (or `max_batches`, or
    `keep_going()` turns false), then give free pages back (SQLite). `run` executes each batch
    (default: on the events writer thread on SQLite, here on PostgreSQL)."""
    run = run or _on_writer
    if retention_seconds <= 0:
        return PruneResult(cutoff=None, deleted=0)
    cutoff, held = prune_cutoff(retention_seconds=retention_seconds, now=now)
    if connection.vendor == "postgresql":
        from events import partitions

        with connection.cursor() as cursor:
            by_day = partitions.is_partitioned(cursor)
        if by_day:  # whole days go; none is deleted row by row
            dropped = partitions.drop_expired(cutoff=cutoff)
            return PruneResult(
                cutoff=cutoff, deleted=0, held_back_by_gate=held, dropped=tuple(dropped)
            )
    deleted = batches = 0
    smallest = min(rows, BATCH_MIN_ROWS)
    while keep_going() and (max_batches is None or batches < max_batches):

        def batch(size: int = rows) -> tuple[int, float]:
            started = clock()
            return delete_batch(cutoff=cutoff, rows=size), clock() - started

        count, took = run(batch)
        deleted += count
        batches += 1
        if count < rows:
            break
        rows = resized(rows, took, BATCH_SECONDS, smallest, BATCH_MAX_ROWS)
        sleep(pause)
    vacuumed = 0
    if connection.vendor == "sqlite":
        vacuumed = vacuum_round(
            run=run, keep_going=keep_going, pause=pause, clock=clock, sleep=sleep
        )
    return PruneResult(
        cutoff=cutoff, deleted=deleted, held_back_by_gate=held, vacuumed_pages=vacuumed
    )


def resized(size: int, took: float, target: float, smallest: int, largest: int) -> int:
    """The next step's size: halved when the last took over twice `target`, doubled when it
    took under half of it, within smallest..largest."""
    if took > 2 * target:
        return max(smallest, size // 2)
    if took < target / 2:
        return min(largest, size * 2)
    return size


def vacuum_round(
    *,
    run: Callable[[Callable[[], Any]], Any],
    keep_going: Callable[[], bool] = lambda: True,
    pause: float = PAUSE_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Give free pages back in steps of about VACUUM_STEP_SECONDS each, at most VACUUM_SHARE of
    the time and VACUUM_ROUND_SECONDS in all (see VACUUM_STEP_SECONDS); the pages returned."""
    pages = VACUUM_FIRST_PAGES
    vacuumed = 0
    before: int | None = None
    ends = clock() + VACUUM_ROUND_SECONDS
    while keep_going() and clock() < ends:

        def step(size: int = pages) -> tuple[int, float]:
            started = clock()
            return vacuum_step(size), clock() - started

        free, took = run(step)
        if free == 0 or (before is not None and free >= before):
            break  # done, or nothing shrinks (never loop on a store that cannot)
        vacuumed += min(free, pages)
        if free <= pages:
            break
        before = free
        pages = resized(pages, took, VACUUM_STEP_SECONDS, VACUUM_MIN_PAGES, VACUUM_MAX_PAGES)
        sleep(max(pause, took * (1 - VACUUM_SHARE) / VACUUM_SHARE))
    return vacuumed


def prepare_new_store() -> None:
    """SQLite, before `migrate`: a store without tables yet gets incremental auto-vacuum (it
    can only be chosen before the first table, or by a full VACUUM later)."""
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM sqlite_master")
        if cursor.fetchone()[0] == 0:
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
            # The connection already wrote the file's header (journal_mode=WAL), so the mode
            # only takes hold through a VACUUM: instant on a store without tables.
            cursor.execute("VACUUM")


def ensure_incremental_vacuum(*, max_bytes: int) -> str | None:
    """SQLite: make the store use incremental auto-vacuum, so pruned space can go back to the
    file system. New stores have it from their first table on (`prepare_new_store` before
    `migrate`); an existing store made before needs ONE full VACUUM, done here when the file is
    at most `max_bytes`. Returns a line for the log, or None."""
    if connection.vendor != "sqlite":
        return None
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA auto_vacuum")
        if cursor.fetchone()[0] == 2:
            return None
        cursor.execute("PRAGMA page_count")
        pages = int(cursor.fetchone()[0])
        cursor.execute("PRAGMA page_size")
        size = pages * int(cursor.fetchone()[0])
        if size > max_bytes:
            return (
                f"the SQLite store ({size // 2**20} MiB) predates incremental auto-vacuum: "
                "pruned events leave free pages that new events reuse, but the file never "
                "shrinks; to convert it, stop the server and run "
                f"`sqlite3 {connection.settings_dict['NAME']} "
                "'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'` (needs free disk space the size of "
                "the file)"
            )
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("VACUUM")
    return (
        f"converted the SQLite store ({size // 2**20} MiB) to incremental auto-vacuum (one VACUUM)"
    )


class Pruner:
    """The background thread: one `events_prune` round every `interval` seconds, on the leader."""

    def __init__(self, *, retention_seconds: float, interval: float = PRUNE_INTERVAL_SECONDS):
        self.retention_seconds = retention_seconds
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        wait = min(self.interval, FIRST_ROUND_SECONDS)  # a backlog starts going soon after start
        while not self._stop.wait(wait):
            wait = self.interval
            if not leader.elector.is_leader():
                continue  # followers leave background work to the leader
            close_old_connections()
            try:
                from events.partitions import ensure_partitions

                if connection.vendor == "postgresql":
                    ensure_partitions()  # the days ahead, made by the leader every round
                result = events_prune(
                    retention_seconds=self.retention_seconds,
                    keep_going=lambda: not self._stop.is_set() and leader.elector.is_leader(),
                )
                if result.deleted or result.dropped:
                    logger.info(
                        "events retention: %s received before %s%s",
                        f"dropped {len(result.dropped)} day partitions of events"
                        if result.dropped
                        else f"deleted {result.deleted} events",
                        result.cutoff.isoformat() if result.cutoff else "-",
                        " (held back by a rollout's event_threshold window)"
                        if result.held_back_by_gate
                        else "",
                        extra={"deleted": result.deleted, "dropped": len(result.dropped)},
                    )
            except Exception:  # keep the thread alive; the next round retries
                dberrors.log_background_failure(
                    logger, "events retention failed; retrying in %ss", self.interval
                )
            finally:
                close_old_connections()


def start_pruner(*, retention_seconds: float, interval: float | None = None) -> Pruner | None:
    """Start the retention thread (`serve`); None when retention is off (0)."""
    if retention_seconds <= 0:
        return None
    if interval is None:
        # A short retention (tests, benches) is enforced within a fraction of itself.
        interval = min(PRUNE_INTERVAL_SECONDS, max(1.0, retention_seconds / 4))
    pruner = Pruner(retention_seconds=retention_seconds, interval=interval)
    pruner.start()
    return pruner

"""Writes for events: `events_ingest` (validate + store one batch) and `events_store` (the
insert itself, used directly by the in-process writer thread of the fast path).

One short transaction per call (`BEGIN IMMEDIATE` on SQLite, set in settings), a raw
`INSERT ... ON CONFLICT (node_id, event_id) DO NOTHING`, and the inserted count taken from the
insert itself (`rowcount`). On SQLite the whole group goes in as multi-row statements of up to
`CHUNK_ROWS` rows: when every event was new (the common case) each batch's count is its length;
otherwise (a node resent events) the transaction is rolled back and the group inserted again
one batch per `executemany`, which counts each batch. Few statements matter more than they seem:
sqlite3 lets go of the GIL for every statement step (every row of an `executemany`), and while
the event loop is busy each step waits to get it back, holding the write turn meanwhile
(docs/performance.md, "The write turn under a busy loop"). On PostgreSQL one
`INSERT ... SELECT FROM unnest(...) ... RETURNING node_id, event_id` per group instead, into
the table partitioned by day (events/partitions.py): it skips keys stored in any partition
(`NOT EXISTS`) and `ON CONFLICT DO NOTHING` the ones stored the same day meanwhile. The
idempotency key is (node_id, event_id) (API.md §6: one node can never shadow another node's
event). Duplicates, against stored events or inside the batch, are simply not inserted: the
first copy wins and a stored event never changes. On PostgreSQL the events of a group are
inserted sorted by (node_id, event_id) (one lock order for every replica: no deadlocks between
concurrent ingests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.utils import DatabaseError
from django.utils import timezone

from core.dbthreads import execute
from events.models import Event
from events.validation import EventRow, validate_events

logger = logging.getLogger("orchestrator.events")


@dataclass(frozen=True)
class IngestResult:
    received: int
    inserted: int

    @property
    def deduped(self) -> int:
        return self.received - self.inserted

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "inserted": self.inserted, "deduped": self.deduped}

    def as_json(self) -> bytes:
        return b'{"received":%d,"inserted":%d,"deduped":%d}' % (
            self.received,
            self.inserted,
            self.deduped,
        )


# Called as hook(inserted, deduped) after every committed batch (metrics register one).
_ingest_hooks: list[Callable[[int, int], None]] = []


def add_ingest_hook(hook: Callable[[int, int], None]) -> None:
    if hook not in _ingest_hooks:
        _ingest_hooks.append(hook)


_INSERT_SQL: str | None = None
# SQLite: rows per multi-row INSERT (8 parameters each; SQLite allows 32,766 per statement)
CHUNK_ROWS = 250
_chunk_sql: dict[int, str] = {}
# The columns of an EventRow, in its order (received_at is added at insert time).
_ROW_COLUMNS = (
    "event_id",
    "event_type",
    "node_id",
    "timestamp",
    "lock_fingerprint",
    "release_id",
    "payload",
)


def _insert_sql() -> str:
    global _INSERT_SQL
    if _INSERT_SQL is None:
        qn = connection.ops.quote_name
        columns = (*_ROW_COLUMNS, "received_at")
        _INSERT_SQL = (
            f"INSERT INTO {qn(Event._meta.db_table)} ({', '.join(qn(c) for c in columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({qn('node_id')}, {qn('event_id')}) DO NOTHING"
        )
    return _INSERT_SQL


def _chunk_insert_sql(rows: int) -> str:
    """SQLite: the insert of `_insert_sql()` with `rows` rows of values (cached per count)."""
    sql = _chunk_sql.get(rows)
    if sql is None:
        head, _, tail = _insert_sql().partition(" VALUES ")
        values, _, conflict = tail.partition(" ON CONFLICT ")
        sql = f"{head} VALUES {', '.join([values] * rows)} ON CONFLICT {conflict}"
        if len(_chunk_sql) < 64:
            _chunk_sql[rows] = sql
    return sql


class _SomeStoredAlready(Exception):
    """The group's multi-row insert stored fewer events than it carried."""


def _insert_group(cursor: Any, batches: list[list[EventRow]], received_at: Any) -> None:
    """SQLite: insert every event of the group in multi-row statements; raises
    `_SomeStoredAlready` (the caller rolls the transaction back) unless every one was new."""
    rows = [(*row, received_at) for batch in batches for row in batch]
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        execute(cursor, _chunk_insert_sql(len(chunk)), [value for row in chunk for value in row])
        if cursor.rowcount != len(chunk):
            raise _SomeStoredAlready


def events_ingest(*, events: list[Any]) -> IngestResult:
    """Validate a batch (400 naming index and field on the first bad event) and store it."""
    rows = validate_events(events)
    return events_store(batches=[rows])[0]


def events_store(*, batches: list[list[EventRow]]) -> list[IngestResult]:
    """Insert already validated batches in ONE transaction; one result per batch.

    When this returns, the transaction is committed (with `synchronous=FULL` on SQLite, on
    disk). Several batches in one call is the writer thread's group commit: each batch keeps its
    own counts, and a later batch sees an earlier one's events as already stored.
    """
    received_at = connection.ops.adapt_datetimefield_value(timezone.now())
    if connection.vendor == "postgresql":
        return _store_in_key_order(batches, received_at)
    from releases.services import fleet_nodes_seen_at

    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _insert_group(cursor, batches, received_at)
            results = [IngestResult(received=len(rows), inserted=len(rows)) for rows in batches]
            if any(result.inserted for result in results):
                # The fleet view's last_seen of the nodes stored now (one statement).
                fleet_nodes_seen_at(received_at=received_at)
    except _SomeStoredAlready:  # rolled back: count batch by batch
        sql = _insert_sql()
        results = []
        with transaction.atomic(), connection.cursor() as cursor:
            for rows in batches:
                if not rows:
                    results.append(IngestResult(received=0, inserted=0))
                    continue
                cursor.executemany(sql, [(*row, received_at) for row in rows])
                inserted = max(cursor.rowcount, 0)
                results.append(IngestResult(received=len(rows), inserted=inserted))
            if any(result.inserted for result in results):
                fleet_nodes_seen_at(received_at=received_at)
    _after_commit(results)
    return results


def _store_in_key_order(batches: list[list[EventRow]], received_at: Any) -> list[IngestResult]:
    """PostgreSQL: insert the whole group's events in ONE statement, sorted by the key (node_id,
    event_id), so that every transaction (of every replica) takes the unique index's locks in one
    order and two ingests can never deadlock. Each batch keeps its own counts: an event counts as
    inserted for the first batch of the group that carries it, when the insert stored it
    (`RETURNING`)."""
    owner: dict[tuple[str, str], int] = {}
    unique: list[EventRow] = []
    for index, rows in enumerate(batches):
        for row in rows:
            key = (row[2], row[0])  # (node_id, event_id)
            if key not in owner:
                owner[key] = index
                unique.append(row)
    unique.sort(key=lambda row: (row[2], row[0]))
    inserted = [0] * len(batches)
    if unique:
        from releases.services import fleet_nodes_seen

        columns = [list(column) for column in zip(*unique, strict=True)]
        try:
            found = _insert_sorted(received_at, columns, fleet_nodes_seen)
        except DatabaseError as exc:
            if "no partition of relation" not in str(exc):
                raise
            # No partition for today yet (none was made ahead): make it and insert again.
            from events.partitions import ensure_partitions

            ensure_partitions(now=received_at)
            found = _insert_sorted(received_at, columns, fleet_nodes_seen)
        for node_id, event_id in found:
            inserted[owner[(node_id, event_id)]] += 1
    results = [
        IngestResult(received=len(rows), inserted=inserted[index])
        for index, rows in enumerate(batches)
    ]
    _after_commit(results)
    return results


def _insert_sorted(
    received_at: Any, columns: list[list[Any]], seen_hook: Callable[..., None]
) -> list[tuple[str, str]]:
    """PostgreSQL: one transaction: the insert, then the fleet view's last_seen of the nodes
    stored (one statement); the (node_id, event_id) keys stored."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_sorted_insert_sql(), [received_at, *columns])
        found = [(node_id, event_id) for node_id, event_id in cursor.fetchall()]
        seen_hook(node_ids={node_id for node_id, _ in found}, received_at=received_at)
    return found


_SORTED_INSERT_SQL: str | None = None


def _sorted_insert_sql() -> str:
    """INSERT … SELECT FROM unnest(one array per column) in the arrays' (sorted) order."""
    global _SORTED_INSERT_SQL
    if _SORTED_INSERT_SQL is None:
        qn = connection.ops.quote_name
        columns = _ROW_COLUMNS
        arrays = ", ".join(["%s::text[]"] * len(columns))
        _SORTED_INSERT_SQL = (
            f"INSERT INTO {qn(Event._meta.db_table)} "
            f"({', '.join(qn(c) for c in (*columns, 'received_at'))}) "
            f"SELECT {', '.join('u.' + qn(c) for c in columns)}, %s::timestamptz "
            f"FROM unnest({arrays}) WITH ORDINALITY "
            f"AS u({', '.join(qn(c) for c in columns)}, ord) "
            # Partitioned by day (events/partitions.py), the key is a unique index per
            # partition: skip keys stored in any partition, and let `ON CONFLICT` (no target:
            # the partition's own index) skip the ones a concurrent insert stores today.
            f"WHERE NOT EXISTS (SELECT 1 FROM {qn(Event._meta.db_table)} s "
            f"WHERE s.{qn('event_id')} = u.{qn('event_id')} "
            f"AND s.{qn('node_id')} = u.{qn('node_id')}) "
            f"ORDER BY u.ord ON CONFLICT DO NOTHING "
            f"RETURNING {qn('node_id')}, {qn('event_id')}"
        )
    return _SORTED_INSERT_SQL


def _after_commit(results: list[IngestResult]) -> None:
    """Metrics hooks and a nudge to the rollout evaluator; never fails the (committed) write."""
    inserted = sum(r.inserted for r in results)
    deduped = sum(r.deduped for r in results)
    for hook in _ingest_hooks:
        try:
            hook(inserted, deduped)
        except Exception:
            logger.exception("ingest hook failed")
    if inserted:
        try:
            from rollouts.evaluator import poke

            poke()
        except Exception:
            logger.exception("could not poke the rollout evaluator")

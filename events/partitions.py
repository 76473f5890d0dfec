"""PostgreSQL: the events table partitioned by day of arrival, so retention drops whole days.

On PostgreSQL `events_event` is `PARTITION BY RANGE (received_at)` (migration 0005):
- one partition per UTC day, `events_event_pYYYYMMDD` for [day, day + 1), made DAYS_AHEAD days
  ahead (`ensure_partitions`: at `serve` start in every process, in every retention round of the
  leader, and by an insert that finds no partition for its day, see events.services);
- `events_event_legacy`: the table as it was before the conversion, attached as the partition of
  everything before the first day boundary after the conversion (on a new store it is empty);
- the idempotency key (node_id, event_id) (API.md §6) cannot be a unique index of the parent (a
  partitioned table's unique indexes must hold the partition key): each partition has its own
  unique index on it, and the insert skips keys stored in any partition (`NOT EXISTS`, one index
  probe per partition) and, with `ON CONFLICT DO NOTHING`, keys inserted concurrently into the
  same day. Two replicas storing the same new key at the same moment on either side of midnight
  UTC could both store it: the one window where a duplicate can get in;
- retention (events.retention) detaches a day partition once all of it is older than the cutoff
  (`DETACH PARTITION … CONCURRENTLY`, which never blocks ingest or reads) and drops it: removing
  a day costs the same whatever it holds, and no row is deleted one by one. Readers never see
  an event older than the window in the meantime (`events.retention.visible_after`).

SQLite keeps one table: nothing here runs there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.utils import DatabaseError

logger = logging.getLogger("orchestrator.events")

TABLE = "events_event"
LEGACY = "events_event_legacy"
SEQUENCE = "events_event_id_seq"
DAYS_AHEAD = 3
# DDL waits at most this long for a lock (a queued lock request makes later statements wait too)
LOCK_TIMEOUT = "2s"
_TO = re.compile(r"TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    ends: datetime | None  # exclusive upper bound; None: MAXVALUE (never for ours)
    detaching: bool = False


def is_partitioned(cursor: Any) -> bool:
    """Whether `events_event` is a partitioned table (PostgreSQL after migration 0005)."""
    if cursor.db.vendor != "postgresql":
        return False
    cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
    row = cursor.fetchone()
    return row is not None and row[0] == "p"


def day_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def partitions(cursor: Any) -> list[Partition]:
    """The partitions of the events table with their upper bounds, oldest first."""
    cursor.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s)",
        [TABLE],
    )
    found = []
    for name, bound, pending in cursor.fetchall():
        match = _TO.search(bound or "")
        ends = datetime.fromisoformat(match.group(1)).astimezone(UTC) if match else None
        found.append(Partition(name=name, ends=ends, detaching=bool(pending)))
    return sorted(found, key=lambda p: (p.ends is None, p.ends or datetime.max.replace(tzinfo=UTC)))


def _ddl(cursor: Any, sql: str, params: Iterable[Any] = ()) -> None:
    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    cursor.execute(sql, list(params))


def create_day(day: date, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Make the partition of `day` (UTC) unless one covers it; True when made. Made as a table of
    its own, then attached: attaching takes a lock that neither ingest nor reads wait for."""
    name = day_name(day)
    start, end = _midnight(day), _midnight(day + timedelta(days=1))
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
            if cursor.fetchone()[0]:
                return False
            cursor.execute(f'CREATE TABLE "{name}" (LIKE "{TABLE}" INCLUDING DEFAULTS)')
            cursor.execute(f'CREATE UNIQUE INDEX "{name}_key" ON "{name}" (event_id, node_id)')
            _ddl(
                cursor,
                f'ALTER TABLE "{TABLE}" ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)',
                [start, end],
            )
    except DatabaseError as exc:
        if "would overlap" in str(exc):
            return False  # an older layout's partition (the legacy one) covers the day
        if any(s in str(exc) for s in ("already exists", "already a partition", "duplicate key")):
            return False  # another process made it at the same moment
        raise
    return True


def ensure_partitions(*, now: datetime | None = None, days: int = DAYS_AHEAD) -> list[str]:
    """Make today's partition and the next `days` days' (UTC) where missing; the names made."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return []
    made = []
    for offset in range(days + 1):
        day = today + timedelta(days=offset)
        if create_day(day):
            made.append(day_name(day))
    if made:
        logger.info("events: made the partitions %s", ", ".join(made))
    return made


def drop_expired(*, cutoff: datetime) -> list[str]:
    """Detach (concurrently) and drop every partition that ends at or before `cutoff`, oldest
    first; the names dropped. A detach left half done (a crash) is finished first."""
    with connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return []
        expired = [p for p in partitions(cursor) if p.ends is not None and p.ends <= cutoff]
    dropped = []
    for part in expired:
        with connection.cursor() as cursor:
            mode = "FINALIZE" if part.detaching else "CONCURRENTLY"
            # Not in a transaction: DETACH … CONCURRENTLY runs two of its own.
            cursor.execute(f'ALTER TABLE "{TABLE}" DETACH PARTITION "{part.name}" {mode}')
        with transaction.atomic(), connection.cursor() as cursor:
            _ddl(cursor, f'DROP TABLE "{part.name}"')
        dropped.append(part.name)
    return dropped


def convert(schema_editor: Any, model: Any, *, now: datetime | None = None) -> None:
    """Migration 0005 forward: make the events table partitioned, keeping every stored row.

    The table as it is becomes `events_event_legacy` (its indexes renamed), attached as the
    partition of everything before the first UTC midnight after both `now` and its newest row;
    day partitions follow. Costs one scan of the old table (the bound is checked) and one index
    build (the parent's primary key (id, received_at)), under `migrate`'s lock.
    """
    now = now or datetime.now(UTC)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{LEGACY}"')
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = %s",
            [LEGACY],
        )
        for (index,) in cursor.fetchall():
            cursor.execute(f'ALTER INDEX "{index}" RENAME TO "{LEGACY}_{index}"')
        cursor.execute(f'SELECT COALESCE(MAX(id), 0), MAX(received_at) FROM "{LEGACY}"')
        largest, newest = cursor.fetchone()
        cursor.execute(f'ALTER TABLE "{LEGACY}" ALTER COLUMN id DROP IDENTITY IF EXISTS')
        # the parent's primary key (id, received_at) takes the place of the old one (id)
        cursor.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'",
            [LEGACY],
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f'ALTER TABLE "{LEGACY}" DROP CONSTRAINT "{name}"')
        cursor.execute(f'ALTER TABLE "{LEGACY}" ALTER COLUMN id DROP DEFAULT')
        cursor.execute(
            f'CREATE TABLE "{TABLE}" (LIKE "{LEGACY}", PRIMARY KEY (id, received_at)) '
            "PARTITION BY RANGE (received_at)"
        )
        cursor.execute(f'CREATE SEQUENCE "{SEQUENCE}" OWNED BY "{TABLE}".id')
        cursor.execute("SELECT setval(%s, %s, %s)", [SEQUENCE, max(largest, 1), largest > 0])
        cursor.execute(
            f'ALTER TABLE "{TABLE}" ALTER COLUMN id SET DEFAULT nextval(\'"{SEQUENCE}"\')'
        )
    for index in model._meta.indexes:
        schema_editor.add_index(model, index)
    latest = max(now, newest) if newest is not None else now
    bound = _midnight(latest.astimezone(UTC).date() + timedelta(days=1))
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f'ALTER TABLE "{TABLE}" ATTACH PARTITION "{LEGACY}" FOR VALUES FROM (MINVALUE) TO (%s)',
            [bound],
        )
    for offset in range(DAYS_AHEAD + 1):
        create_day(bound.date() + timedelta(days=offset), using=schema_editor.connection.alias)


def unconvert(schema_editor: Any, model: Any) -> None:
    """Migration 0005 backward: one plain table again with every row still stored (a copy)."""
    plain = f"{TABLE}_plain"
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f'CREATE TABLE "{plain}" (LIKE "{TABLE}")')
        cursor.execute(f'INSERT INTO "{plain}" SELECT * FROM "{TABLE}"')
        cursor.execute(f'SELECT COALESCE(MAX(id), 0) FROM "{plain}"')
        largest = cursor.fetchone()[0]
        cursor.execute(f'DROP TABLE "{TABLE}"')  # its partitions and its sequence with it
        cursor.execute(f'ALTER TABLE "{plain}" RENAME TO "{TABLE}"')
        cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY (id)')
        cursor.execute(
            f'ALTER TABLE "{TABLE}" ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY '
            f"(RESTART {largest + 1})"
        )
    for index in model._meta.indexes:
        schema_editor.add_index(model, index)
    for constraint in model._meta.constraints:
        schema_editor.add_constraint(model, constraint)

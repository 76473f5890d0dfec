"""Reads for events: `event_list`, newest first (highest `id` first), without decoding payloads."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from django.db import connection

from events.models import Event
from events.retention import visible_after


@dataclass(frozen=True)
class EventPage:
    """One page of events: each payload is the event's JSON text exactly as stored (str, or the
    stored UTF-8 bytes when read through the fast path's sqlite3 connection)."""

    payloads: list[str] | list[bytes]
    next_before: str | None

    def as_json(self) -> bytes:
        """`{"events":[...],"count":N,"next_before":...}` built from the stored JSON text."""
        cursor = b"null" if self.next_before is None else b'"%s"' % self.next_before.encode()
        payloads = self.payloads
        if payloads and isinstance(payloads[0], bytes):
            joined = b",".join(payloads)
        else:
            joined = ",".join(payloads).encode()  # type: ignore[arg-type]
        return b'{"events":[%s],"count":%d,"next_before":%s}' % (
            joined,
            len(self.payloads),
            cursor,
        )

    def as_data(self) -> dict[str, Any]:
        """The same page as Python data (the DRF path renders it; the stdlib keeps big ints)."""
        return {
            "events": [json.loads(p) for p in self.payloads],
            "count": len(self.payloads),
            "next_before": self.next_before,
        }


_SELECT: str | None = None


def _event_list_sql(
    node_id: str | None, event_type: str | None, limit: int, before: int | None
) -> tuple[str, list[Any]]:
    """The query, with `%s` placeholders, for Django's cursor or (after replacing) sqlite3."""
    global _SELECT
    if _SELECT is None:
        qn = connection.ops.quote_name
        _SELECT = f"SELECT {qn('id')}, {qn('payload')} FROM {qn(Event._meta.db_table)}"
    clauses: list[str] = []
    params: list[Any] = []
    if node_id is not None:
        clauses.append('"node_id" = %s')
        params.append(node_id)
    if event_type is not None:
        clauses.append('"event_type" = %s')
        params.append(event_type)
    if before is not None:
        clauses.append('"id" < %s')
        params.append(before)
    shown_from = visible_after()
    if shown_from is not None:  # retention: an event out of the window is never shown
        clauses.append('"received_at" >= %s')
        params.append(connection.ops.adapt_datetimefield_value(shown_from))
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    return f'{_SELECT}{where} ORDER BY "id" DESC LIMIT %s', params


def _page(rows: list[Any], limit: int) -> EventPage:
    next_before = str(rows[-1][0]) if len(rows) == limit else None
    return EventPage(payloads=[row[1] for row in rows], next_before=next_before)


def event_list(
    *, node_id: str | None, event_type: str | None, limit: int, before: int | None
) -> EventPage:
    """Newest first. Uses the (node_id, id), (event_type, id) or (node_id, event_type, id) index."""
    sql, params = _event_list_sql(node_id, event_type, limit, before)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return _page(rows, limit)


def event_list_sqlite(
    conn: sqlite3.Connection,
    *,
    node_id: str | None,
    event_type: str | None,
    limit: int,
    before: int | None,
) -> EventPage:
    """`event_list` through a plain sqlite3 connection (the fast path's read on the loop thread,
    see core.dbthreads.inline_sqlite)."""
    sql, params = _event_list_sql(node_id, event_type, limit, before)
    return _page(conn.execute(sql.replace("%s", "?"), params).fetchall(), limit)

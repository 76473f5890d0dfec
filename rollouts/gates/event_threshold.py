"""`event_threshold`: halts the plan when too many of the stage's nodes on the new release sent an
event of one type since the stage opened.

One aggregate read: the distinct nodes that sent an event of the type since the stage opened, on
the (event_type, id) index, intersected in Python with the nodes on the new release. On SQLite
the read starts at the first event id the window can hold (`_first_id_after`), so it never walks
older events of the type: the gate's types are rare events (failures, crashes) and the stage's
events are a small tail of the table. There is no (node_id, event_type, id) index: every stored
event would pay for it at ingest (docs/performance.md, "The write turn under a busy loop").
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connection

from core.jsonvalues import MAX_INT  # the JSON-values rule (docs/api.md)
from events.models import RECEIVED_AT_INDEX, TYPE_INDEX, Event
from rollouts.gates.base import (
    AckCounts,
    GateKind,
    GateResult,
    check_ratio,
    invalid_field,
    is_int,
    ratio_schema,
    share,
)

if TYPE_CHECKING:
    from rollouts.cohort import StageSnap

# SQLite: window start -> (the smallest event id that can have arrived after it, the largest id
# when that was read, that row's key). Ids only grow (AUTOINCREMENT: never reused once committed,
# every later insert gets a larger one), so a bound taken once stays true for every later pass
# of the stage, whatever the clock did. It is used while the row it was read beside is still
# there unchanged; a store rolled back or flushed since (tests) reads it again.
_first_ids: dict[tuple[str, datetime], tuple[int, int, tuple[str, str] | None]] = {}
_FIRST_IDS_MAX = 256


def _first_id_after(since: datetime) -> int:
    """SQLite: the smallest id of an event received after `since`, or, when there is none yet,
    one more than the largest id (every event stored later has a larger id)."""
    qn = connection.ops.quote_name
    table, ident = qn(Event._meta.db_table), qn("id")
    key_of_row = f"SELECT {qn('node_id')}, {qn('event_id')} FROM {table} WHERE {ident} = %s"
    key = (str(connection.settings_dict.get("NAME")), since)
    with connection.cursor() as cursor:
        known = _first_ids.get(key)
        if known is not None:
            bound, largest, marker = known
            cursor.execute(key_of_row, [largest])
            row = cursor.fetchone()
            if (tuple(row) if row else None) == marker:
                return bound
        # the largest id, its key, and the window's first id, in one read
        cursor.execute(
            f"SELECT {ident}, {qn('node_id')}, {qn('event_id')}, (SELECT min({ident}) FROM "
            f"{table} INDEXED BY {qn(RECEIVED_AT_INDEX)} WHERE {qn('received_at')} > %s) "
            f"FROM {table} ORDER BY {ident} DESC LIMIT 1",
            [connection.ops.adapt_datetimefield_value(since)],
        )
        row = cursor.fetchone()
    if row is None:  # no event yet: the first one stored will have an id of at least 1
        largest, first, marker = 0, None, None
    else:
        largest, first, marker = int(row[0]), row[3], (row[1], row[2])
    bound = largest + 1 if first is None else int(first)
    if len(_first_ids) >= _FIRST_IDS_MAX:
        _first_ids.clear()
    _first_ids[key] = (bound, largest, marker)
    return bound


def _nodes_reporting(node_ids: Iterable[str], event_type: str, since: datetime) -> set[str]:
    """The nodes among `node_ids` that sent an `event_type` event received after `since`."""
    wanted = set(node_ids)
    if not wanted:
        return set()
    qn = connection.ops.quote_name
    node, kind, received = qn("node_id"), qn("event_type"), qn("received_at")
    sql = f"SELECT DISTINCT {node} FROM {qn(Event._meta.db_table)}"
    params: list[Any] = [event_type, connection.ops.adapt_datetimefield_value(since)]
    if connection.vendor == "sqlite":
        # the type's index from the window's first id on, whatever the statistics say
        sql += f" INDEXED BY {qn(TYPE_INDEX)}"
        where = f" WHERE {kind} = %s AND {received} > %s AND {qn('id')} >= %s"
        params.append(_first_id_after(since))
    else:  # PostgreSQL: ids are taken before commit, so no id bound; the planner picks
        where = f" WHERE {kind} = %s AND {received} > %s"
    with connection.cursor() as cursor:
        cursor.execute(sql + where, params)
        return {row[0] for row in cursor.fetchall() if row[0] in wanted}


class EventThreshold(GateKind):
    kind = "event_threshold"
    description = (
        "Halts the plan when more than `max_ratio` of the stage's nodes on the new release "
        "sent an `event_type` event since the stage opened (once `min_nodes` are on it)."
    )
    required = ("event_type", "max_ratio")
    defaults = {"min_nodes": 1}
    properties = {
        "event_type": {"type": "string", "minLength": 1, "maxLength": 256},
        "max_ratio": ratio_schema("Tolerated share of nodes sending the event."),
        "min_nodes": {"type": "integer", "minimum": 1, "maximum": MAX_INT, "default": 1},
    }
    halts = True
    needs_acks = True
    needs_active_nodes = True

    def validate(self, params: dict[str, Any], where: str) -> None:
        event_type = params["event_type"]
        if not isinstance(event_type, str) or not event_type or len(event_type) > 256:
            raise invalid_field(
                f"{where}.event_type", "must be a non-empty string of at most 256 chars"
            )
        check_ratio(params, "max_ratio", where)
        if not is_int(params["min_nodes"]) or params["min_nodes"] < 1:
            raise invalid_field(f"{where}.min_nodes", "must be an integer >= 1")

    def evaluate(
        self,
        params: dict[str, Any],
        stage: StageSnap,
        acks: AckCounts | None,
        now: datetime,
    ) -> GateResult:
        assert acks is not None
        event_type, max_ratio = str(params["event_type"]), float(params["max_ratio"])
        min_nodes = int(params["min_nodes"])
        on_new = acks.active_nodes
        if len(on_new) < min_nodes:
            return GateResult(
                self.kind,
                True,
                f"{len(on_new)} stage nodes on the new release; "
                f"{event_type} is counted from {min_nodes}",
            )
        if stage.opened_at is None:
            return GateResult(self.kind, True, "the stage is not open yet")
        reporting = _nodes_reporting(on_new, event_type, stage.opened_at)
        ratio = share(len(reporting), len(on_new))
        tripped = ratio > max_ratio
        return GateResult(
            self.kind,
            not tripped,
            f"{len(reporting)} of {len(on_new)} stage nodes on "
            f"the new release reported {event_type} since the stage opened "
            f"(ratio {ratio:.3f}, limit {max_ratio:g})",
            tripped,
        )

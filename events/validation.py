"""Single-pass validation of event batches and of the list query (API.md §3 "Events").

Used by both request paths (the DRF views and `events/fast.py`), so both answer with
the same error bodies. No DRF serializers per event: the measured cost of
`Serializer(many=True)` is 35 µs per event against about 1 µs here (docs/performance.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core import jsonvalues
from core.errors import ApiError
from core.params import MAX_ID_CHARS, parse_before, parse_limit, parse_rfc3339

MAX_BATCH_EVENTS = 10_000

REQUIRED_FIELDS = ("event_id", "event_type", "node_id")
OPTIONAL_FIELDS = ("lock_fingerprint", "release_id")

# A validated event ready to insert: (event_id, event_type, node_id, timestamp,
# lock_fingerprint, release_id, payload JSON text). `received_at` is added by the writer.
EventRow = tuple[str, str, str, str, str | None, str | None, str]


class BodyError(ApiError):
    """A 400 answer about the request body or query string."""

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(400, message, **detail)


def field_error(field: str, message: str) -> BodyError:
    """The same shape DRF's exception handler gives a serializer error on `field`."""
    return BodyError(f"invalid field '{field}': {message}", field=field)


def parse_json_body(body: bytes) -> Any:
    """Parse a request body under the JSON-values rule (core.jsonvalues: 64-bit integers,
    finite numbers, bounded nesting); a value breaking it is a 400 naming the event and field."""
    try:
        return jsonvalues.loads(body)
    except jsonvalues.MalformedJson as exc:
        raise BodyError(exc.message) from None
    except jsonvalues.JsonValueError as exc:
        raise event_value_error(exc) from None


_EVENT_PATH = re.compile(r"events\[(\d+)\](?:\.(.*))?", re.DOTALL)


def event_value_error(exc: jsonvalues.JsonValueError) -> BodyError:
    """The rule's error in the shape of the other event errors: `index` and the field inside
    the event (`{"error": "event 3: invalid field 'extra.n': ...", "index": 3, ...}`)."""
    match = _EVENT_PATH.fullmatch(exc.path)
    if match is None:
        return BodyError(exc.message, **exc.extra)
    index, field = int(match.group(1)), match.group(2) or "events"
    return _event_error(index, field, f"invalid field '{field}': {exc.reason}")


def _dump(event: dict[str, Any], index: int) -> str:
    try:
        return orjson.dumps(event).decode()
    except TypeError:  # a caller that did not parse through jsonvalues (an over-large integer)
        field, reason = jsonvalues.problem(event) or ("events", "is not serializable as JSON")
        raise _event_error(index, field or "events", f"invalid field '{field}': {reason}") from None


def _event_error(index: int, field: str, message: str) -> BodyError:
    return BodyError(f"event {index}: {message}", index=index, field=field)


def _check_timestamp(value: Any) -> str | None:
    """None when `value` is a valid RFC 3339 timestamp with an offset, else the reason. The text
    is stored as sent (a leap second too: core.params.parse_rfc3339)."""
    try:
        parse_rfc3339(value)
    except ValueError as exc:
        return str(exc)
    return None


def validate_body(body: Any) -> list[EventRow]:
    """Check a parsed `{"events": [...]}` request body; return insert rows in batch order."""
    if not isinstance(body, dict):
        raise field_error("events", 'the body must be a JSON object {"events": [...]}')
    events = body.get("events")
    if not isinstance(events, list):
        raise field_error("events", "this field is required and must be a list of events")
    return validate_events(events)


def parse_body(body: bytes) -> list[EventRow]:
    """A raw `POST /v1/events` body -> insert rows (an empty body is `{}`: "events" missing)."""
    return validate_body(parse_json_body(body) if body.strip() else {})


def validate_events(events: list[Any]) -> list[EventRow]:
    """Check every event of a batch in one pass; return insert rows in batch order.

    Raises BodyError (400) naming the index and field of the first invalid event; nothing is
    stored for a batch with any invalid event.
    """
    if len(events) > MAX_BATCH_EVENTS:
        raise field_error("events", f"a batch holds at most {MAX_BATCH_EVENTS} events")
    rows: list[EventRow] = []
    append = rows.append
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise _event_error(
                index, "events", "invalid field 'events': each event must be a JSON object"
            )
        values: list[Any] = []
        for field in REQUIRED_FIELDS:
            value = event.get(field)
            if type(value) is not str or not value or len(value) > MAX_ID_CHARS or "\x00" in value:
                if field not in event:
                    reason = "this field is required"
                else:
                    reason = f"must be a non-empty string of at most {MAX_ID_CHARS} characters"
                raise _event_error(index, field, f"invalid field '{field}': {reason}")
            values.append(value)
        timestamp = event.get("timestamp")
        if "timestamp" not in event:
            raise _event_error(
                index, "timestamp", "invalid field 'timestamp': this field is required"
            )
        problem = _check_timestamp(timestamp)
        if problem is not None:
            raise _event_error(index, "timestamp", f"invalid field 'timestamp': {problem}")
        values.append(timestamp)
        for field in OPTIONAL_FIELDS:
            value = event.get(field)
            if value is not None and (
                type(value) is not str or len(value) > MAX_ID_CHARS or "\x00" in value
            ):
                raise _event_error(
                    index,
                    field,
                    f"invalid field '{field}': must be a string of at most {MAX_ID_CHARS} "
                    "characters, or null",
                )
            values.append(value)
        values.append(_dump(event, index))
        append(tuple(values))
    return rows


@dataclass(frozen=True)
class ListQuery:
    node_id: str | None
    event_type: str | None
    limit: int
    before: int | None


def parse_filter(value: str | None) -> str | None:
    return value if value else None


def parse_list_query(params: Mapping[str, str]) -> ListQuery:
    """`GET /v1/events` query parameters; both request paths call it."""
    return ListQuery(
        node_id=parse_filter(params.get("node_id")),
        event_type=parse_filter(params.get("event_type")),
        limit=parse_limit(params),
        before=parse_before(params),
    )

"""Parameters and formats every app shares: ids, `limit`/`offset`/`before` and other integer query
parameters, RFC 3339 timestamps (parse and format), and their limits. One parser each, so every
route answers a bad value with the same 400 (`{"error": "invalid field 'limit': ...",
"field": "limit"}`), on both request paths (no DRF needed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from core.errors import ApiError

MAX_ID_CHARS = 256  # node_id, channel, release_id, event_id, event_type, ...
MAX_TIMESTAMP_CHARS = 64
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000  # a larger `limit` is clamped to this
MAX_CURSOR = 2**63 - 1  # `before` is a row id: a signed 64-bit integer
_MAX_DIGITS = 18  # integer parameters fit in 64 bits
MAX_PARSED_INT = 10**_MAX_DIGITS - 1  # the largest integer parameter parse_int reads

TIMESTAMP_FORMAT = "must be an RFC 3339 timestamp with an offset, e.g. 2026-04-07T10:00:00Z"

# RFC 3339 date-time: full date, `T` (or `t`/space, which RFC 3339 allows), time, optional
# fraction, and a mandatory offset (`Z` or ±hh:mm). datetime.fromisoformat then checks ranges.
RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)


def param_error(name: str, message: str) -> ApiError:
    """The 400 about one parameter or field: `invalid field '<name>': <message>`."""
    return ApiError(400, f"invalid field '{name}': {message}", field=name)


def check_identifier(name: str, value: str) -> str:
    """A non-empty string of at most 256 characters (node_id, channel, release_id)."""
    if not value:
        raise param_error(name, "must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise param_error(name, f"must be at most {MAX_ID_CHARS} characters")
    return value


def parse_int(
    name: str, value: str | None, *, default: int, minimum: int, maximum: int | None = None
) -> int:
    """An integer query parameter: absent -> `default`; otherwise decimal digits (surrounding
    spaces allowed) within [minimum, maximum], else a 400. An empty value is a 400 too."""
    if value is None:
        return default
    text = value.strip()
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS:
        raise param_error(name, f"must be an integer {bounds}")
    number = int(text)
    if number < minimum or (maximum is not None and number > maximum):
        raise param_error(name, f"must be an integer {bounds}")
    return number


def parse_limit(query: Mapping[str, str]) -> int:
    """`limit`: default 100, an integer >= 1, clamped at 1000."""
    return min(parse_int("limit", query.get("limit"), default=DEFAULT_LIMIT, minimum=1), MAX_LIMIT)


def parse_offset(query: Mapping[str, str]) -> int:
    """`offset`: default 0, an integer >= 0."""
    return parse_int("offset", query.get("offset"), default=0, minimum=0)


def parse_before(query: Mapping[str, str]) -> int | None:
    """`before`: the `next_before` cursor of a previous page (absent: the first page)."""
    value = query.get("before")
    if value is None:
        return None
    text = value.strip()
    if (
        not (text.isascii() and text.isdigit())
        or len(text) > 19
        or not 1 <= int(text) <= MAX_CURSOR
    ):
        raise param_error("before", "must be a cursor returned as next_before by a previous page")
    return int(text)


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 timestamp with an offset -> an aware datetime in that offset.

    A leap second (`:60`) is valid RFC 3339 but cannot be held by a datetime: it is read as `:59`
    of the same minute (with its fraction). Fractions beyond microseconds are cut. Raises
    ValueError(reason) with the reason a 400 names.
    """
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    if len(value) > MAX_TIMESTAMP_CHARS:
        raise ValueError(f"must be at most {MAX_TIMESTAMP_CHARS} characters")
    match = RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(TIMESTAMP_FORMAT)
    date, hours_minutes, seconds, fraction, offset = match.groups()
    seconds = "59" if seconds == "60" else seconds
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(
            f"{date}T{hours_minutes}:{seconds}{(fraction or '')[:7]}{offset}"
        )
    except ValueError as exc:
        raise ValueError(f"is not a valid date and time ({exc})") from None


def format_rfc3339(value: datetime | None) -> str | None:
    """`2026-04-07T10:00:00Z`: UTC with `Z`, a fraction (microseconds) only when there is one."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    timespec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def seconds_before(now: datetime, seconds: float) -> datetime:
    """`now - seconds`, never before 1970: a threshold of 10**17 s must not overflow."""
    return max(_EPOCH, now - timedelta(seconds=min(seconds, (now - _EPOCH).total_seconds())))

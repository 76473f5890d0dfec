"""Query-string and path parameters of the releases routes, checked by hand (no DRF needed, so
the fast path can use them too). Errors are 400 answers naming the parameter. The shared ones
(ids, `limit`, `offset`) are core.params'."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from core.params import check_identifier, param_error, parse_int

if TYPE_CHECKING:
    from releases.selectors import FleetQuery

DEFAULT_CHANNEL = "stable"
DEFAULT_STALE_THRESHOLD = 60


def parse_channel(query: Mapping[str, str]) -> str:
    value = query.get("channel")
    return DEFAULT_CHANNEL if value is None else check_identifier("channel", value)


def parse_optional_node_id(query: Mapping[str, str]) -> str | None:
    value = query.get("node_id")
    return None if value is None else check_identifier("node_id", value)


def parse_stale_threshold(query: Mapping[str, str]) -> int:
    return parse_int(
        "stale_threshold", query.get("stale_threshold"), default=DEFAULT_STALE_THRESHOLD, minimum=1
    )


FLEET_DEFAULT_LIMIT = 1000
FLEET_MAX_LIMIT = 10000  # a larger `limit` is clamped to this (as every `limit` of the API)
ACK_STATUSES = ("pending", "acknowledged", "active", "failed", "rejected")


def parse_page_limit(query: Mapping[str, str]) -> int:
    """`limit` of the fleet view and the ack lists: default 1000, at least 1, clamped at
    10000."""
    value = parse_int("limit", query.get("limit"), default=FLEET_DEFAULT_LIMIT, minimum=1)
    return min(value, FLEET_MAX_LIMIT)


def parse_cursor(query: Mapping[str, str]) -> str | None:
    """The key inside `cursor` (the `next_cursor` of the previous page), or None."""
    from releases.selectors import decode_cursor

    value = query.get("cursor")
    return None if value is None else decode_cursor(value)


def _choice(query: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is None:
        return None
    if value not in choices:
        raise param_error(name, f"must be one of {', '.join(choices)}")
    return value


def parse_bool(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise param_error(name, "must be true or false")


def parse_fleet_query(query: Mapping[str, str]) -> FleetQuery:
    """Every parameter of `GET /v1/fleet`, each a 400 naming it when bad."""
    from releases.selectors import NO_ACK, NODE_STATUSES, FleetQuery

    release_id = query.get("release_id")
    return FleetQuery(
        channel=parse_channel(query),
        stale_threshold=parse_stale_threshold(query),
        limit=parse_page_limit(query),
        after=parse_cursor(query),
        node_status=_choice(query, "node_status", NODE_STATUSES),
        release_id=None if release_id is None else check_identifier("release_id", release_id),
        ack_status=_choice(query, "ack_status", (*ACK_STATUSES, NO_ACK)),
        summary=parse_bool(query, "summary"),
    )

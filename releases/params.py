"""Query-string and path parameters of the releases routes, checked by hand (no DRF needed, so
the fast path can use them too). Errors are 400 answers naming the parameter. The shared ones
(ids, `limit`, `offset`) are core.params'."""

from __future__ import annotations

from collections.abc import Mapping

from core.params import check_identifier, parse_int

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

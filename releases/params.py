"""Query-string and path parameters of the releases routes, checked by hand (no DRF needed, so
the fast path can use them too). Errors are 400 answers naming the parameter."""

from __future__ import annotations

from collections.abc import Mapping

from core.errors import ApiError

MAX_ID_CHARS = 256
DEFAULT_CHANNEL = "stable"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_STALE_THRESHOLD = 60


def param_error(name: str, message: str) -> ApiError:
    return ApiError(400, f"invalid field '{name}': {message}", field=name)


def check_identifier(name: str, value: str) -> str:
    """A non-empty string of at most 256 characters (node_id, channel, release_id)."""
    if not value:
        raise param_error(name, "must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise param_error(name, f"must be at most {MAX_ID_CHARS} characters")
    return value


def parse_channel(query: Mapping[str, str]) -> str:
    value = query.get("channel")
    return DEFAULT_CHANNEL if value is None else check_identifier("channel", value)


def parse_optional_node_id(query: Mapping[str, str]) -> str | None:
    value = query.get("node_id")
    return None if value is None else check_identifier("node_id", value)


def _parse_int(name: str, value: str, *, minimum: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise param_error(name, f"must be an integer >= {minimum}")
    number = int(text)
    if number < minimum:
        raise param_error(name, f"must be an integer >= {minimum}")
    return number


def parse_limit(query: Mapping[str, str]) -> int:
    value = query.get("limit")
    if value is None:
        return DEFAULT_LIMIT
    return min(_parse_int("limit", value, minimum=1), MAX_LIMIT)


def parse_offset(query: Mapping[str, str]) -> int:
    value = query.get("offset")
    return 0 if value is None else _parse_int("offset", value, minimum=0)


def parse_stale_threshold(query: Mapping[str, str]) -> int:
    value = query.get("stale_threshold")
    if value is None:
        return DEFAULT_STALE_THRESHOLD
    return _parse_int("stale_threshold", value, minimum=1)

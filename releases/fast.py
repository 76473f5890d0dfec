"""The node poll path without Django's request machinery.

`latest` is the fast-path handler of `GET /v1/releases/latest` (routed by `core.fastpath`, table
in `orchestrator_site/urls.py`): the cached answer on the loop, else `latest_release_answer(query)`
on a database thread. The DRF view (`releases.api.views.LatestReleaseView`) gives the same status,
body and headers (tests/test_edge_parity.py). Every 200 carries the signed desired state
(`releases.desired_state`, three headers).
"""

from __future__ import annotations

from typing import Any

from core import dbthreads, edge
from core.errors import ApiError
from releases.desired_state import signed_headers
from releases.params import parse_channel, parse_optional_node_id
from releases.selectors import latest_cache, no_release_body, release_latest_decision


def latest_release_answer(query: dict[str, str]) -> tuple[int, bytes]:
    """(status, JSON body) for `GET /v1/releases/latest` with this query string (`channel`,
    optional `node_id`; other keys are ignored). Errors are JSON error bodies too."""
    status, body, _headers = latest_signed_answer(query)
    return status, body


def latest_signed_answer(query: dict[str, str]) -> edge.Answer:
    """`latest_release_answer` with its headers: the signed desired state on a 200."""
    try:
        channel = parse_channel(query)
        node_id = parse_optional_node_id(query)
    except ApiError as exc:
        return exc.status_code, edge.json_bytes(exc.message, **exc.extra), []
    status, body, plan = release_latest_decision(channel=channel, node_id=node_id)
    headers = signed_headers(channel=channel, node_id=node_id, status=status, body=body, plan=plan)
    return status, body, headers


def cached_latest_answer(query: dict[str, str]) -> tuple[int, bytes] | None:
    """The same answer as `latest_release_answer` when it needs no database, else None.

    Safe to call on the event loop (it never touches a database connection): invalid
    `channel`/`node_id` -> the 400 answer; a plain poll (no `node_id`) whose channel is in the
    SQLite in-process cache -> its 200/404 answer. Anything else (`node_id` given: the rollout
    rules read the database; cache miss; PostgreSQL) -> None: call `latest_release_answer` on a
    database thread. Lets the fast path skip the thread hop for most polls.
    """
    try:
        channel = parse_channel(query)
        node_id = parse_optional_node_id(query)
    except ApiError as exc:
        return exc.status_code, edge.json_bytes(exc.message, **exc.extra)
    if node_id is not None:
        return None
    entry = latest_cache.get(channel)
    if entry is None:
        return None
    release, body = entry
    if release is None:
        return 404, no_release_body(channel)
    return 200, body  # type: ignore[return-value]


async def latest(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> edge.Answer:
    """The fast-path handler of `GET /v1/releases/latest` (core.fastpath). Most polls are answered
    from the in-process cache on the loop itself (`cached_latest_answer`, no database); the rest
    go to a database thread."""
    query = edge.query_params(scope)
    cached = cached_latest_answer(query)
    if cached is None:
        return await dbthreads.run_read(latest_signed_answer, query)
    status, body = cached
    if status != 200:
        return status, body, []
    channel = parse_channel(query)  # valid: cached_latest_answer parsed it
    return (
        status,
        body,
        signed_headers(channel=channel, node_id=None, status=status, body=body, plan=None),
    )

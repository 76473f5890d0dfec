"""The node poll and ack paths without Django's request machinery.

`latest` is the fast-path handler of `GET /v1/releases/latest` (routed by `core.fastpath`, table
in `orchestrator_site/urls.py`): the cached answer on the loop, else `latest_release_answer(query)`
on a database thread. The DRF view (`releases.api.views.LatestReleaseView`) gives the same status,
body and headers (tests/test_edge_parity.py). Every 200 carries the signed desired state
(`releases.desired_state`, three headers).

`ack` is the fast-path handler of `POST /v1/nodes/{node_id}/ack`: a well-formed, valid ack goes
straight to the ack writer (`releases.writer`); anything else (a body DRF's serializer would
refuse or that needs a closer look, any other Content-Type) is left to the DRF view
(`core.fastpath.Delegate`), so every validation error keeps DRF's exact answer.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC
from typing import Any

from rest_framework.renderers import JSONRenderer

from core import dbthreads, edge, jsonvalues
from core.errors import ApiError
from core.fastpath import Delegate
from core.params import MAX_ID_CHARS, check_identifier, parse_rfc3339
from releases import writer
from releases.desired_state import signed_headers
from releases.models import NodeAck
from releases.params import parse_channel, parse_optional_node_id
from releases.selectors import (
    ack_as_dict,
    latest_cache,
    no_release_body,
    release_latest_decision,
    release_latest_decision_cached,
)


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


def cached_latest_decision(query: dict[str, str]) -> tuple[int, bytes, Any] | None:
    """(status, body, deciding plan) as `latest_signed_answer` computes them, when that needs no
    database, else None.

    Safe to call on the event loop (it never touches a database connection): invalid
    `channel`/`node_id` -> the 400 answer; a plain poll (no `node_id`) whose channel is in the
    SQLite in-process cache -> its 200/404 answer; a node's poll whose every piece (latest
    release, plan head and snapshot, the node's ack, previous release) is cached -> its
    answer. Anything else (cache miss; PostgreSQL) -> None: call `latest_signed_answer` on a
    database thread. Lets the fast path skip the thread hop for most polls.
    """
    try:
        channel = parse_channel(query)
        node_id = parse_optional_node_id(query)
    except ApiError as exc:
        return exc.status_code, edge.json_bytes(exc.message, **exc.extra), None
    if node_id is not None:
        return release_latest_decision_cached(channel=channel, node_id=node_id)
    entry = latest_cache.get(channel)
    if entry is None:
        return None
    release, body = entry
    if release is None:
        return 404, no_release_body(channel), None
    return 200, body, None  # type: ignore[return-value]


def cached_latest_answer(query: dict[str, str]) -> tuple[int, bytes] | None:
    """`cached_latest_decision` without the plan: the same (status, body) as
    `latest_release_answer` when that needs no database, else None."""
    decided = cached_latest_decision(query)
    return None if decided is None else (decided[0], decided[1])


async def latest(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> edge.Answer:
    """The fast-path handler of `GET /v1/releases/latest` (core.fastpath). Most polls are answered
    from the in-process cache on the loop itself (`cached_latest_decision`, no database); the
    rest go to a database thread."""
    query = edge.query_params(scope)
    cached = cached_latest_decision(query)
    if cached is None:
        return await dbthreads.run_read(latest_signed_answer, query)
    status, body, plan = cached
    if status != 200:
        return status, body, []
    channel = parse_channel(query)  # valid: cached_latest_decision parsed it
    node_id = parse_optional_node_id(query)
    return (
        status,
        body,
        signed_headers(channel=channel, node_id=node_id, status=status, body=body, plan=plan),
    )


# --- POST /v1/nodes/{node_id}/ack -------------------------------------------------------------

ACK_FIELDS = frozenset({"release_id", "status", "lock_fingerprint", "message", "acked_at"})
ACK_STATUSES = frozenset(NodeAck.Status.values)
# What DRF's CharField refuses in any string: NUL and surrogate code points.
_REFUSED_CHARS = re.compile("[\x00\ud800-\udfff]")
_OPTIONAL_LIMITS = (("lock_fingerprint", 256), ("message", 65536))
_renderer = JSONRenderer()


def _plain_string(value: Any, limit: int, *, blank: bool) -> bool:
    return (
        isinstance(value, str)
        and (blank or value != "")
        and len(value) <= limit
        and _REFUSED_CHARS.search(value) is None
    )


def fast_ack_fields(headers: dict[bytes, bytes], body: bytes) -> dict[str, Any] | None:
    """The validated fields of an ack body exactly as `NodeAckSerializer` would give them, or
    None when this body is not a plain valid ack (the DRF view answers it then)."""
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        return None
    try:
        data = jsonvalues.loads(body)
    except Exception:
        return None
    if not isinstance(data, dict) or not data.keys() <= ACK_FIELDS:
        return None
    release_id, status = data.get("release_id"), data.get("status")
    if not _plain_string(release_id, MAX_ID_CHARS, blank=False) or not (
        isinstance(status, str) and status in ACK_STATUSES
    ):
        return None
    fields: dict[str, Any] = {"release_id": release_id, "status": status}
    for name, limit in _OPTIONAL_LIMITS:
        value = data.get(name)
        if value is not None and not _plain_string(value, limit, blank=True):
            return None
        fields[name] = value
    acked_at = data.get("acked_at")
    if acked_at is not None:
        if not _plain_string(acked_at, 1 << 16, blank=False):
            return None
        try:
            acked_at = parse_rfc3339(acked_at).astimezone(UTC)
        except (ValueError, OverflowError):
            return None
    fields["acked_at"] = acked_at
    return fields


async def ack(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> edge.Answer:
    """The fast-path handler of `POST /v1/nodes/{node_id}/ack` (core.fastpath): answered after
    the ack writer committed the ack; the same status, body and headers as the DRF view."""
    body = await edge.read_body(receive, headers.get(b"content-length"))
    node_id = scope["path_params"]["node_id"]
    try:
        check_identifier("node_id", node_id)
    except ApiError:
        raise Delegate(body) from None
    fields = fast_ack_fields(headers, body)
    if fields is None:
        raise Delegate(body)
    from releases.services import ack_write

    outcome = await asyncio.wrap_future(writer.submit(ack_write(node_id=node_id, **fields)))
    return (201 if outcome.created else 200), _renderer.render(ack_as_dict(outcome.obj)), []

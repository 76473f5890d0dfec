"""The fast-path handlers of the events app: `POST /v1/events` and `GET /v1/events` (and
`GET /v1/health`), routed by `core.fastpath` (table in `orchestrator_site/urls.py`).

They answer exactly as the DRF views in `events/api/views.py` (tests/test_edge_parity.py): the
same validation (`events.validation`), service path and selector, and the same JSON bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from core import dbthreads, edge
from events import writer
from events.selectors import event_list, event_list_sqlite
from events.validation import ListQuery, parse_body, parse_list_query

# Parse and validate bodies larger than this on a pool thread instead of the event loop.
OFFLOAD_BODY_BYTES = 256 * 1024

HEALTH_BODY = b'{"status":"ok"}'


async def health(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> edge.Answer:
    return 200, HEALTH_BODY, []


async def ingest(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> edge.Answer:
    body = await edge.read_body(receive, headers.get(b"content-length"))
    if len(body) > OFFLOAD_BODY_BYTES:
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(dbthreads.readers(), parse_body, body)
    else:
        rows = parse_body(body)
    result = await asyncio.wrap_future(writer.submit(rows))
    return 200, result.as_json(), []


def list_page(query: ListQuery) -> bytes:
    """One page of `GET /v1/events` as JSON (Django's connection of the calling thread)."""
    page = event_list(
        node_id=query.node_id,
        event_type=query.event_type,
        limit=query.limit,
        before=query.before,
    )
    return page.as_json()


async def events(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> edge.Answer:
    query = parse_list_query(edge.query_params(scope))
    conn = dbthreads.inline_sqlite()
    if conn is None:
        return 200, await dbthreads.run_read(list_page, query), []
    page = event_list_sqlite(
        conn,
        node_id=query.node_id,
        event_type=query.event_type,
        limit=query.limit,
        before=query.before,
    )
    return 200, page.as_json(), []

"""A lean ASGI app in front of Django for the hot routes.

`GET /v1/health`, `POST /v1/events`, `GET /v1/events` and `GET /v1/releases/latest` are answered
here, on the event loop plus the database threads (events.writer, core.dbthreads),
without Django's request objects, middleware, URL resolver or DRF. Measured on this project's
machines, Django + DRF under daphne costs about 2 ms of CPU per request, more than the SQL of
these routes (docs/performance.md).

Everything else goes to Django unchanged: other routes and methods (so 404/405 with `Allow` come
from DRF), requests whose `Accept` asks for HTML (the browsable API), a Host that
`ALLOWED_HOSTS` does not list.
Both paths share validation, services, selectors, error bodies (`errors.error_body`), database
error mapping (`dberrors`) and request observation (`observability.observe_request`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from django.conf import settings

from core import dberrors
from core.errors import ApiError, error_body, retry_after
from core.observability import client_identity_from_scope, observe_request

logger = logging.getLogger("orchestrator.request")

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]

# Parse and validate bodies larger than this on a pool thread instead of the event loop.
OFFLOAD_BODY_BYTES = 256 * 1024

# The headers Django's SecurityMiddleware and DRF put on the same answers.
_BASE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"vary", b"Accept"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_HEALTH_BODY = b'{"status":"ok"}'


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


class _FallThrough(Exception):
    """Hand this request to Django after all (decided before the body is read)."""


def _query(scope: dict[str, Any]) -> dict[str, str]:
    raw = scope.get("query_string") or b""
    if not raw:
        return {}
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="replace"))


def _json_error(status: int, message: str, **detail: Any) -> bytes:
    return orjson.dumps(error_body(message, **detail))


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", limit=limit)


async def _read_body(receive: Any, content_length: bytes | None) -> bytes:
    limit = settings.MAX_REQUEST_BODY_BYTES
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if declared > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse_and_validate(body: bytes) -> Any:
    from events.validation import parse_json_body, validate_body

    return validate_body(parse_json_body(body) if body.strip() else {})


async def _health(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> Answer:
    return 200, _HEALTH_BODY, []


async def _ingest(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> Answer:
    from events import writer

    body = await _read_body(receive, headers.get(b"content-length"))
    if len(body) > OFFLOAD_BODY_BYTES:
        from core.dbthreads import readers

        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(readers(), _parse_and_validate, body)
    else:
        rows = _parse_and_validate(body)
    result = await asyncio.wrap_future(writer.submit(rows))
    return 200, result.as_json(), []


def _list_page(query: Any) -> bytes:
    from events.selectors import event_list

    page = event_list(
        node_id=query.node_id,
        event_type=query.event_type,
        limit=query.limit,
        before=query.before,
    )
    return page.as_json()


async def _list(scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]) -> Answer:
    from core.dbthreads import inline_sqlite, run_read
    from events.selectors import event_list_sqlite
    from events.validation import parse_list_query

    query = parse_list_query(_query(scope))
    conn = inline_sqlite()
    if conn is None:
        return 200, await run_read(_list_page, query), []
    page = event_list_sqlite(
        conn,
        node_id=query.node_id,
        event_type=query.event_type,
        limit=query.limit,
        before=query.before,
    )
    return 200, page.as_json(), []


async def _release_latest(
    scope: dict[str, Any], receive: Any, headers: dict[bytes, bytes]
) -> Answer:
    """The node poll. Most polls are answered from the in-process cache on the loop itself
    (`cached_latest_answer`, no database); the rest go to a database thread."""
    from core.dbthreads import run_read
    from releases.fast import cached_latest_answer, latest_release_answer

    query = _query(scope)
    cached = cached_latest_answer(query)
    if cached is not None:
        status, body = cached
    else:
        status, body = await run_read(latest_release_answer, query)
    return status, body, []


Handler = Callable[[dict[str, Any], Any, dict[bytes, bytes]], Awaitable[Answer]]

ROUTES: dict[tuple[str, str], tuple[str, Handler]] = {
    ("GET", "/v1/health"): ("/v1/health", _health),
    ("POST", "/v1/events"): ("/v1/events", _ingest),
    ("GET", "/v1/events"): ("/v1/events", _list),
    ("GET", "/v1/releases/latest"): ("/v1/releases/latest", _release_latest),
}


def _error_answer(exc: BaseException) -> Answer:
    """The same answers as Django's ApiErrorMiddleware/exception handler give."""
    if isinstance(exc, ApiError):
        headers = [
            (k.lower().encode(), v.encode()) for k, v in retry_after(exc.status_code).items()
        ]
        return exc.status_code, _json_error(exc.status_code, exc.message, **exc.extra), headers
    kind = dberrors.classify(exc)
    if kind == dberrors.BUSY:
        return (
            503,
            _json_error(503, "the database is busy; retry shortly"),
            [(b"retry-after", str(dberrors.RETRY_AFTER_SECONDS).encode())],
        )
    if kind == dberrors.FULL:
        return (
            507,
            _json_error(507, "the disk holding the database is full; nothing was stored"),
            [],
        )
    if kind == dberrors.NUL:
        return 400, _json_error(400, dberrors.NUL_MESSAGE), []
    if kind == dberrors.CORRUPT:
        dberrors.die_corrupt(exc)
    logger.error("unhandled error on the fast path", exc_info=exc)
    return 500, _json_error(500, "internal error; the server log has the details"), []


class FastPath:
    """ASGI app: the hot routes here, everything else to `app` (Django)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._check_host: bool | None = None

    def _host_allowed(self, host: bytes | None) -> bool:
        if self._check_host is None:
            self._check_host = "*" not in settings.ALLOWED_HOSTS
        if not self._check_host:
            return True
        from django.http.request import split_domain_port, validate_host

        domain, _port = split_domain_port(host.decode("latin-1") if host else "")
        return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = ROUTES.get((scope["method"], scope["path"]))
        if route is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        accept = headers.get(b"accept")
        if (accept is not None and b"text/html" in accept) or not self._host_allowed(
            headers.get(b"host")
        ):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        template, handler = route
        try:
            status, body, extra = await handler(scope, receive, headers)
        except _FallThrough:
            return await self.app(scope, receive, send)
        except _Disconnected:
            return None
        except Exception as exc:
            status, body, extra = _error_answer(exc)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *_BASE_HEADERS,
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        client = scope.get("client")
        observe_request(
            method=scope["method"],
            route=template,
            path=scope["path"],
            status=status,
            duration=time.perf_counter() - started,
            client=client[0] if client else None,
            client_identity=client_identity_from_scope(scope),
        )
        return None

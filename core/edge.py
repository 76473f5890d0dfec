"""The HTTP edge, shared by both request paths (the fast path, `core.fastpath`, and Django/DRF).

One place for what every answer has in common:

* `read_body`: the request body, with `MAX_REQUEST_BODY_BYTES` enforced while reading (413 as soon
  as the declared or received size passes it; nothing past the limit is buffered). The fast
  handlers call it; `Guard` calls it in front of Django, which then gets the body replayed.
* `error_answer`: an exception -> `(status, body, headers)`: ApiError, the database failures of
  `core.dberrors` (busy 503 + Retry-After, disk full 507, NUL 400, corrupt: the process ends),
  413, and 500 for anything else. The Django middleware and the DRF exception handler turn the
  same answers into responses (`to_response`), so every message is written once, here.
* `security_headers`: the headers Django's SecurityMiddleware puts on every answer, read from the
  same settings; the fast path sends them, plus `Vary: Accept` and the route's `Allow` as DRF does.
* `HostCheck`: the Host/ALLOWED_HOSTS check; a refused Host is the same 400 on both paths.
* `Guard`: Django's ASGI app behind the edge (Host check, body limit) as the fast path is.

Imports nothing of this repository but `core`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from django.conf import settings
from django.http import HttpResponse
from django.http.request import split_domain_port, validate_host
from django.urls import Resolver404, resolve
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core import dberrors
from core.errors import BAD_REQUEST, INTERNAL_ERROR, ApiError, error_body, malformed_json
from core.observability import UNMATCHED_ROUTE, client_identity_from_scope, observe_request

logger = logging.getLogger("orchestrator.request")

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, bytes, Headers]
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

JSON = b"application/json"
BAD_CONTENT_LENGTH = "invalid Content-Length header"
# Status and message of each database failure dberrors.classify names (CORRUPT ends the process).
_DB_ANSWERS = {
    dberrors.BUSY: (503, "the database is busy; retry shortly"),
    dberrors.UNAVAILABLE: (503, dberrors.UNAVAILABLE_MESSAGE),
    dberrors.FULL: (507, "the disk holding the database is full; nothing was stored"),
    dberrors.NUL: (400, dberrors.NUL_MESSAGE),
}


class Disconnected(Exception):
    """The client went away before its request body arrived."""


def too_large() -> ApiError:
    limit = settings.MAX_REQUEST_BODY_BYTES
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", limit=limit)


def check_content_length(value: str | bytes | None) -> None:
    """Refuse a declared body size over the limit (413) or that is not a number (400)."""
    if not value:
        return
    try:
        declared = int(value)
    except ValueError:
        raise ApiError(400, BAD_CONTENT_LENGTH) from None
    if declared > settings.MAX_REQUEST_BODY_BYTES:
        raise too_large()


async def read_body(receive: Any, content_length: bytes | None) -> bytes:
    """The whole request body; ApiError 413 as soon as it passes the limit, Disconnected when
    the client goes away first."""
    check_content_length(content_length)
    limit = settings.MAX_REQUEST_BODY_BYTES
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large()
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def query_params(scope: dict[str, Any]) -> dict[str, str]:
    """The query string as a dict (the last value of a repeated key wins, as in Django's
    `QueryDict.dict()`); blank values are kept."""
    raw = scope.get("query_string") or b""
    if not raw:
        return {}
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="replace"))


def json_bytes(message: str, **detail: Any) -> bytes:
    return orjson.dumps(error_body(message, **detail))


def retry_after_headers(status: int) -> Headers:
    """Every 503 tells the client when to retry (the contract's `Retry-After`)."""
    if status == 503:
        return [(b"retry-after", str(dberrors.RETRY_AFTER_SECONDS).encode())]
    return []


def api_error_answer(exc: ApiError) -> Answer:
    return (
        exc.status_code,
        json_bytes(exc.message, **exc.extra),
        retry_after_headers(exc.status_code),
    )


def db_error_answer(exc: BaseException) -> Answer | None:
    """The answer for a database failure, None when `exc` is not one. A corrupt store ends the
    process here."""
    kind = dberrors.classify(exc)
    if kind == dberrors.CORRUPT:
        dberrors.die_corrupt(exc)
    mapped = _DB_ANSWERS.get(kind) if kind is not None else None
    if mapped is None:
        return None
    status, message = mapped
    return status, json_bytes(message), retry_after_headers(status)


def internal_error_answer() -> Answer:
    return 500, json_bytes(INTERNAL_ERROR), []


def error_answer(exc: BaseException) -> Answer:
    """Any exception of a request -> its answer (unexpected ones are logged and become 500)."""
    if isinstance(exc, ApiError):
        return api_error_answer(exc)
    answer = db_error_answer(exc)
    if answer is not None:
        return answer
    logger.error("unhandled error on the fast path", exc_info=exc)
    return internal_error_answer()


def message_answer(status: int, message: str) -> Answer:
    return status, json_bytes(message), retry_after_headers(status)


def to_response(answer: Answer) -> HttpResponse:
    """A Django response with exactly the status, body and extra headers of `answer` (the
    security headers and `Vary` are added as for every other Django answer)."""
    status, body, extra = answer
    response = HttpResponse(body, status=status, content_type="application/json")
    for name, value in extra:
        response[name.decode("latin-1")] = value.decode("latin-1")
    response["Vary"] = "Accept"
    return response


def json_answer(request: Any, status: int, body: bytes) -> HttpResponse | Response:
    """For a DRF view: the fast path's exact JSON bytes for JSON clients, the parsed data for
    the browsable API (`request` is DRF's Request)."""
    if getattr(request.accepted_renderer, "format", "json") == "json":
        return HttpResponse(body, status=status, content_type="application/json")
    return Response(orjson.loads(body), status=status)


def security_headers() -> Headers:
    """What Django's SecurityMiddleware adds to every answer, from the same settings."""
    headers: Headers = []
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        if not isinstance(policy, str):
            policy = ",".join(policy)
        headers.append((b"referrer-policy", policy.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(
            (b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode())
        )
    return headers


def view_allow(view_class: Any) -> str | None:
    """The `Allow` header a DRF view sends (HEAD wherever GET is, as Django's `View.setup`
    adds); None for a view that is not DRF's."""
    if not hasattr(view_class, "allowed_methods"):
        return None
    view = view_class()
    if hasattr(view, "get") and not hasattr(view, "head"):
        view.head = view.get
    return ", ".join(view.allowed_methods)


class HostCheck:
    """`ALLOWED_HOSTS`, read once: True when the request's Host may be served."""

    def __init__(self) -> None:
        self.allowed = list(settings.ALLOWED_HOSTS)
        self.any_host = "*" in self.allowed

    def __call__(self, host: bytes | None) -> bool:
        if self.any_host:
            return True
        domain, _port = split_domain_port(host.decode("latin-1") if host else "")
        return bool(domain) and validate_host(domain, self.allowed)


async def send_answer(send: Any, answer: Answer, base: Headers) -> None:
    status, body, extra = answer
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*base, (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


def observe(scope: dict[str, Any], route: str, status: int, started: float) -> None:
    client = scope.get("client")
    observe_request(
        method=scope["method"],
        route=route,
        path=scope["path"],
        status=status,
        duration=time.perf_counter() - started,
        client=client[0] if client else None,
        client_identity=client_identity_from_scope(scope),
    )


def _replay(body: bytes, receive: Any) -> Any:
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replayed


def _route_allow(path: str) -> Headers:
    """The `Allow` header of the DRF view at `path`, which every answer on that route carries
    (read only for the edge's own error answers)."""
    try:
        match = resolve(path)
    except Resolver404:
        return []
    allow = view_allow(getattr(match.func, "view_class", None))
    return [(b"allow", allow.encode())] if allow else []


class Guard:
    """Django behind the edge: the Host check and the body limit happen here, as on the fast
    path, and Django gets the body (read once, within the limit) replayed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._host_allowed: HostCheck | None = None
        self._headers: Headers = []

    def _prepare(self) -> HostCheck:
        """Read the settings once (the first request)."""
        self._headers = [(b"content-type", JSON), (b"vary", b"Accept"), *security_headers()]
        self._host_allowed = HostCheck()
        return self._host_allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host_allowed = self._host_allowed or self._prepare()
        started = time.perf_counter()
        headers = dict(scope["headers"])
        try:
            if not host_allowed(headers.get(b"host")):
                raise ApiError(400, BAD_REQUEST)
            body = await read_body(receive, headers.get(b"content-length"))
        except Disconnected:
            return None
        except ApiError as exc:
            answer = api_error_answer(exc)
            await send_answer(send, answer, [*self._headers, *_route_allow(scope["path"])])
            return observe(scope, UNMATCHED_ROUTE, answer[0], started)
        return await self.app(scope, _replay(body, receive), send)


# --- the Django side -------------------------------------------------------------------------


def drf_answer(request: Any, answer: Answer) -> HttpResponse | Response:
    """`answer` from a DRF view: the same bytes for JSON clients, data for the browsable API
    (DRF adds `Allow` and `Vary` to either)."""
    if getattr(getattr(request, "accepted_renderer", None), "format", "json") == "json":
        return to_response(answer)
    status_code, body, extra = answer
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in extra}
    return Response(orjson.loads(body), status=status_code, headers=headers)


def _first_validation_error(detail: Any, path: str = "") -> tuple[str, str]:
    """Walk a DRF ValidationError detail and return (field path, message) of the first error."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            sub = key if not path else f"{path}.{key}"
            if key == "non_field_errors":
                sub = path
            return _first_validation_error(value, sub)
    if isinstance(detail, list) and detail:
        if all(isinstance(item, str | exceptions.ErrorDetail) for item in detail):
            return path, str(detail[0])
        for index, item in enumerate(detail):
            if item:
                return _first_validation_error(item, f"{path}[{index}]" if path else str(index))
    return path, str(detail)


def api_exception_handler(
    exc: Exception, context: dict[str, Any]
) -> HttpResponse | Response | None:
    """DRF exception handler: reshape every API error into the contract's error body."""
    if isinstance(exc, ApiError):
        return drf_answer(context.get("request"), api_error_answer(exc))
    response = exception_handler(exc, context)
    if response is None:
        return None  # not an API exception: ApiErrorMiddleware decides (503/507/...)
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_validation_error(exc.detail)
        if field:
            body = error_body(f"invalid field '{field}': {message}", field=field)
        else:
            body = error_body(message)
        response.data = body
        response.status_code = status.HTTP_400_BAD_REQUEST
        return response
    if isinstance(exc, exceptions.ParseError):
        response.data = error_body(malformed_json(exc.detail).message)
        return response
    if isinstance(exc, exceptions.MethodNotAllowed):
        response.data = error_body(f"method {context['request'].method} is not allowed here")
        return response
    if isinstance(exc, exceptions.NotFound):
        message = str(exc.detail)
        response.data = error_body(message if message != "Not found." else "not found")
        return response
    detail = getattr(exc, "detail", None)
    response.data = error_body(str(detail) if detail else str(exc))
    return response

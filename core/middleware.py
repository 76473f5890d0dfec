"""Request-path middleware: access log + metrics, and the contract's error answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.core.exceptions import (
    BadRequest,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
)
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse

from core import edge
from core.auth import REQUEST_CONTEXT
from core.errors import ApiError
from core.observability import (
    client_identity_from_scope,
    error_reason,
    observe_request,
    route_template,
)

logger = logging.getLogger("orchestrator.request")


class ObservabilityMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = route_template(match.route if match else None)
        scope = getattr(request, "scope", None)
        status = response.status_code
        observe_request(
            method=request.method or "",
            route=route,
            path=request.path,
            status=status,
            duration=time.perf_counter() - started,
            client=request.META.get("REMOTE_ADDR"),
            client_identity=client_identity_from_scope(scope),
            error=None if response.streaming else error_reason(status, response.content),
        )
        return response


def db_error_response(exc: BaseException) -> HttpResponse | None:
    """The edge's answer to a database failure as a Django response; None when `exc` is not one."""
    answer = edge.db_error_answer(exc)
    return None if answer is None else edge.to_response(answer)


def _view_allow(request: HttpRequest) -> str | None:
    """The `Allow` header DRF would have sent for the request's view."""
    match = getattr(request, "resolver_match", None)
    view_class = getattr(getattr(match, "func", None), "view_class", None)
    return None if view_class is None else edge.view_allow(view_class)


class ApiErrorMiddleware:
    """The edge's answers on the Django path: 413 for oversized bodies (when `edge.Guard` did not
    already give it, e.g. under the test client), 503/507/400 for database failures, 500 JSON,
    never an HTML traceback. Every complete answer gets its Content-Length, as on the fast path."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            edge.check_content_length(request.META.get("CONTENT_LENGTH"))
        except ApiError as exc:
            response = edge.to_response(edge.api_error_answer(exc))
        else:
            response = self.get_response(request)
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        return response

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, RequestDataTooBig):
            response = edge.to_response(edge.api_error_answer(edge.too_large()))
        elif isinstance(exc, Http404 | PermissionDenied | SuspiciousOperation | BadRequest):
            return None  # Django answers these itself (404/403/400 via the handlers in urls.py)
        else:
            answer = edge.db_error_answer(exc) if isinstance(exc, DatabaseError | OSError) else None
            if answer is None:
                logger.exception("unhandled error on %s %s", request.method, request.path)
                answer = edge.internal_error_answer()
            response = edge.to_response(answer)
        allow = _view_allow(request)  # DRF did not finalize this answer: add what it would have
        if allow:
            response["Allow"] = allow
        return response


class PrincipalMiddleware:
    """`request.principal`: the principal the HTTP edge resolved (core.edge.AuthGate), None when
    the request did not come through the edge (Django's test client)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        scope = getattr(request, "scope", None)
        request.principal = scope.get("principal") if isinstance(scope, dict) else None  # type: ignore[attr-defined]
        token = REQUEST_CONTEXT.set((None, request.META.get("REMOTE_ADDR")))
        try:
            return self.get_response(request)
        finally:
            REQUEST_CONTEXT.reset(token)

    def process_view(self, request: HttpRequest, *args: object) -> None:
        match = getattr(request, "resolver_match", None)
        REQUEST_CONTEXT.set(
            (route_template(match.route) if match else None, request.META.get("REMOTE_ADDR"))
        )

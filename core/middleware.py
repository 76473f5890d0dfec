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

from core import dberrors
from core.errors import json_error
from core.observability import (
    client_identity_from_scope,
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
        observe_request(
            method=request.method or "",
            route=route,
            path=request.path,
            status=response.status_code,
            duration=time.perf_counter() - started,
            client=request.META.get("REMOTE_ADDR"),
            client_identity=client_identity_from_scope(scope),
        )
        return response


def _too_large() -> HttpResponse:
    from django.conf import settings

    return json_error(
        413,
        f"request body is larger than the limit of {settings.MAX_REQUEST_BODY_BYTES} bytes",
        limit=settings.MAX_REQUEST_BODY_BYTES,
    )


def db_error_response(exc: BaseException) -> HttpResponse | None:
    kind = dberrors.classify(exc)
    if kind in (dberrors.BUSY, dberrors.UNAVAILABLE):
        return json_error(
            503,
            "the database is busy; retry shortly"
            if kind == dberrors.BUSY
            else dberrors.UNAVAILABLE_MESSAGE,
            headers={"Retry-After": str(dberrors.RETRY_AFTER_SECONDS)},
        )
    if kind == dberrors.FULL:
        return json_error(507, "the disk holding the database is full; nothing was stored")
    if kind == dberrors.NUL:
        return json_error(400, dberrors.NUL_MESSAGE)
    if kind == dberrors.CORRUPT:
        dberrors.die_corrupt(exc)
    return None


class ApiErrorMiddleware:
    """413 for oversized bodies; 503/507 for a busy or full store; never an HTML traceback."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.conf import settings

        length = request.META.get("CONTENT_LENGTH")
        if length:
            try:
                if int(length) > settings.MAX_REQUEST_BODY_BYTES:
                    return _too_large()
            except ValueError:
                return json_error(400, "invalid Content-Length header")
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, RequestDataTooBig):
            return _too_large()
        if isinstance(exc, DatabaseError | OSError):
            response = db_error_response(exc)
            if response is not None:
                return response
        if isinstance(exc, Http404 | PermissionDenied | SuspiciousOperation | BadRequest):
            return None  # Django answers these itself (404/403/400 via the handlers in urls.py)
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error; the server log has the details")

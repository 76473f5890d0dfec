"""Every error answer is `{"error": "<one readable sentence>", ...detail keys}`."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


def error_body(message: str, **detail: Any) -> dict[str, Any]:
    return {"error": message, **detail}


def json_error(
    status_code: int, message: str, headers: dict[str, str] | None = None, **detail: Any
) -> HttpResponse:
    """A plain Django JSON error response (outside DRF views)."""
    response = HttpResponse(
        orjson.dumps(error_body(message, **detail)),
        status=status_code,
        content_type="application/json",
    )
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def retry_after(status_code: int) -> dict[str, str]:
    """Every 503 tells the client when to retry (the contract's `Retry-After`)."""
    from core.dberrors import RETRY_AFTER_SECONDS

    return {"Retry-After": str(RETRY_AFTER_SECONDS)} if status_code == 503 else {}


class ApiError(exceptions.APIException):
    """Raise from services/views for a contract error with detail keys.

    `ApiError(409, "plan is completed", phase="completed")`.
    """

    def __init__(self, status_code: int, message: str, **detail: Any) -> None:
        super().__init__(detail=message)
        self.status_code = status_code
        self.message = message
        self.extra = detail


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


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler: reshape every API error into the contract's error body."""
    if isinstance(exc, ApiError):
        return Response(
            error_body(exc.message, **exc.extra),
            status=exc.status_code,
            headers=retry_after(exc.status_code),
        )
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
        response.data = error_body(f"malformed JSON body: {exc.detail}")
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


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return json_error(404, f"no route for {request.method} {request.path}")


def handler500(request: HttpRequest) -> HttpResponse:
    return json_error(500, "internal error; the server log has the details")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return json_error(400, "bad request")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return json_error(403, "forbidden")

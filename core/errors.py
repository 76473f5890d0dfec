"""Every error answer is `{"error": "<one readable sentence>", ...detail keys}`.

`ApiError` and the error body live here; the mapping of exceptions to answers, shared by both
request paths, is `core.edge` (which also holds DRF's exception handler).
"""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from rest_framework import exceptions

BAD_REQUEST = "bad request"
INTERNAL_ERROR = "internal error; the server log has the details"


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


class ApiError(exceptions.APIException):
    """Raise from services/views for a contract error with detail keys.

    `ApiError(409, "plan is completed", phase="completed")`.
    """

    def __init__(self, status_code: int, message: str, **detail: Any) -> None:
        super().__init__(detail=message)
        self.status_code = status_code
        self.message = message
        self.extra = detail


MALFORMED_JSON = "malformed JSON body: {}"


def malformed_json(reason: object) -> ApiError:
    """The 400 for a request body that is not JSON (every route, both paths)."""
    return ApiError(400, MALFORMED_JSON.format(reason))


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return json_error(404, f"no route for {request.method} {request.path}")


def handler500(request: HttpRequest) -> HttpResponse:
    return json_error(500, INTERNAL_ERROR)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return json_error(400, BAD_REQUEST)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return json_error(403, "forbidden")

"""What every app's OpenAPI annotations share: the error body, parameter helpers, and the
postprocessing hook (a SPECTACULAR_SETTINGS entry).

Each app describes its own routes next to its views, in `<app>/api/schema.py` (one
`OpenApiViewExtension` per view, registered when the app is ready). This module holds only
what is common to all of them:

- the `Error` component and `error()`/`errors()` for responses that carry it;
- helpers for the parameters several apps share (`limit`, `offset`, path ids);
- `register_route()` for routes answered outside DRF (drf-spectacular cannot discover them);
- `postprocess_schema`, which adds what every operation shares (400/405/413/415/503/507 with
  the error body, `Retry-After` and `Allow`).

Imports nothing of this repository (core's rule). docs/api.md describes the layout.
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema_view
from rest_framework import serializers

from core.params import DEFAULT_LIMIT, MAX_LIMIT, MAX_PARSED_INT

# --------------------------------------------------------------------------------------------
# The error body, shared by every error answer


class OpenObjectSerializer(serializers.Serializer):
    """A documentation serializer for objects that carry keys beyond the declared ones
    (`additionalProperties: true` in the schema)."""


class OpenObjectSchema(OpenApiSerializerExtension):
    target_class = OpenObjectSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": True}


class ErrorSerializer(OpenObjectSerializer):
    """Every error answer: `{"error": "<one readable sentence>", ...detail keys}`."""

    error = serializers.CharField(help_text="One readable sentence saying what went wrong.")
    field = serializers.CharField(
        required=False,
        help_text="The offending field, on a 400 about one field (`events`, `limit`, ...).",
    )
    index = serializers.IntegerField(
        required=False,
        help_text="On a rejected event batch: the index of the first invalid event.",
    )


ERROR_COMPONENT = "Error"

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed JSON, or a missing or invalid field (named in `field`).",
    404: "Unknown object (or route).",
    405: "A method this route does not take: `Allow` lists the ones it does.",
    409: "Illegal state transition, or a conflicting duplicate.",
    413: "The request body is larger than the server's limit (`limit`, in bytes).",
    415: "The request body is not `application/json`.",
    503: "The database is busy beyond its busy timeout: retry after `Retry-After` seconds.",
    507: "The disk holding the database is full; nothing was stored.",
}


def error(status: int, description: str | None = None) -> OpenApiResponse:
    """An error response with the shared error body."""
    return OpenApiResponse(
        response=ErrorSerializer, description=description or ERROR_DESCRIPTIONS[status]
    )


def errors(*statuses: int, **descriptions: str) -> dict[int, OpenApiResponse]:
    """`errors(400, 404, e409="plan is terminal")` -> responses dict entries."""
    out = {status: error(status) for status in statuses}
    for key, text in descriptions.items():
        status = int(key.lstrip("e"))
        out[status] = error(status, text)
    return out


def replace(target: Any, **methods: Any) -> type:
    """A subclass of `target` carrying the given per-method `extend_schema` annotations (what an
    `OpenApiViewExtension.view_replacement` returns)."""
    namespace = {"__doc__": target.__doc__}
    decorated = extend_schema_view(**methods)(type(target.__name__, (target,), namespace))
    decorated.__module__ = target.__module__
    return decorated


# Set on an operation (`extend_schema(extensions=NO_DATABASE)`) that never touches the database:
# it gets no 503. Removed from the served document by the hook.
NO_DATABASE_KEY = "x-no-database"
NO_DATABASE = {NO_DATABASE_KEY: True}
# Response headers of an operation (drf-spectacular's `extend_schema` has no place for them):
# `extend_schema(extensions=response_headers(200, {"X-Name": header object}))`; moved into the
# responses by the hook.
RESPONSE_HEADERS_KEY = "x-response-headers"
# Listed beside a non-JSON media type (PEM, a CRL) for client generators that know only
# generic binary answers (openapi-python-client drops an answer of a type it does not know).
BINARY = "application/octet-stream"


def response_headers(status: int, headers: dict[str, Any]) -> dict[str, Any]:
    return {RESPONSE_HEADERS_KEY: {str(status): headers}}


# --------------------------------------------------------------------------------------------
# Parameters several apps share

MAX_ID_CHARS = 256
# One path segment.
SEGMENT_PATTERN = "^[^/]+$"


def limit_parameter(
    default: int = DEFAULT_LIMIT, clamp: int = MAX_LIMIT, maximum: int = MAX_PARSED_INT
) -> OpenApiParameter:
    """The contract's `limit`: default 100; values above `clamp` are clamped (not refused);
    `maximum`: the largest value the route's parser reads at all."""
    schema: dict[str, Any] = {"type": "integer", "minimum": 1, "default": default}
    schema["maximum"] = maximum
    return OpenApiParameter(
        "limit",
        schema,
        description=(
            f"Page size: at least 1, default {default}; values above {clamp} are clamped "
            f"to {clamp}."
        ),
    )


def int_parameter(
    name: str, description: str, *, minimum: int, default: int, maximum: int | None = None
) -> OpenApiParameter:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "default": default}
    if maximum is not None:
        schema["maximum"] = maximum
    return OpenApiParameter(name, schema, description=description)


def offset_parameter(maximum: int = MAX_PARSED_INT) -> OpenApiParameter:
    return int_parameter("offset", "Items to skip (paging).", minimum=0, default=0, maximum=maximum)


def before_parameter() -> OpenApiParameter:
    """The `before` cursor (core.params.parse_before): a row id, as `next_before` gave it."""
    return OpenApiParameter(
        "before",
        {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
        description="Cursor: the `next_before` of the previous page.",
    )


def excluding(pattern: str, reserved: tuple[str, ...]) -> str:
    """`pattern` (anchored with `^`), except the exact words in `reserved`."""
    assert pattern.startswith("^"), pattern
    lookaheads = "".join(f"(?!{re.escape(word)}$)" for word in reserved)
    return "^" + lookaheads + pattern[1:]


def path_id(
    name: str, description: str, *, reserved: tuple[str, ...] = (), pattern: str = SEGMENT_PATTERN
) -> OpenApiParameter:
    """A path segment of 1-256 characters. `reserved`: literal routes beside this parameter
    (`/v1/releases/latest`), which are other operations, not a value of it."""
    schema: dict[str, Any] = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_CHARS,
        "pattern": excluding(pattern, reserved),
    }
    if reserved:
        schema["not"] = {"enum": list(reserved)}
    return OpenApiParameter(
        name, schema, OpenApiParameter.PATH, required=True, description=description
    )


def query_id(name: str, description: str, default: str | None = None) -> OpenApiParameter:
    """An optional id in the query string: 1-256 characters."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
    if default is not None:
        schema["default"] = default
    return OpenApiParameter(name, schema, description=description)


# --------------------------------------------------------------------------------------------
# Routes answered outside DRF

# {path: {method: operation}}; an error response may be written `{"$error": "description"}`.
_PLAIN_ROUTES: dict[str, dict[str, Any]] = {}


def register_route(path: str, method: str, operation: dict[str, Any]) -> None:
    """Describe a route that a plain Django view or an ASGI wrapper answers (drf-spectacular
    discovers only DRF views)."""
    _PLAIN_ROUTES.setdefault(path, {})[method] = operation


def _error_response(status: int, description: str | None = None) -> dict[str, Any]:
    return {
        "description": description or ERROR_DESCRIPTIONS[status],
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}
        },
    }


def _plain_routes() -> dict[str, dict[str, Any]]:
    routes: dict[str, dict[str, Any]] = {}
    for path, item in _PLAIN_ROUTES.items():
        routes[path] = {}
        for method, operation in item.items():
            responses = {}
            for status, response in operation["responses"].items():
                if "$error" in response:
                    response = _error_response(int(status), response["$error"])
                responses[status] = response
            routes[path][method] = {**operation, "responses": responses}
    return routes


# --------------------------------------------------------------------------------------------
# Postprocessing: what every operation shares

API_DESCRIPTION = """\
Fleet control plane: telemetry events, releases and node acks, staged rollouts.

- JSON in and out (`application/json`), except `/metrics` (Prometheus text), `/v1/crl`
  (`application/pkix-crl`) and `/v1/signing-key` (PEM). Exact paths, no trailing slash.
- Timestamps are RFC 3339 (`2026-04-07T10:00:00Z`); the server writes UTC with `Z`.
- Every error answer is `{"error": "<one readable sentence>", ...detail keys}`; a 400 about
  one field names it in `field`. Ids and names containing NUL (U+0000) are refused (400); on
  PostgreSQL, which cannot store it, so is any string carrying one.
- 404 for an unknown route or object, 405 (with `Allow`) for a wrong method, 413 for a body
  over the size limit, 503 with `Retry-After` when the database is busy, 507 when its disk is
  full. No authentication at this layer: deploy behind mTLS (`serve --tls-ca-file`).

Guide with worked examples: docs/api.md. Browsable page: `/v1/docs`.
"""

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_WRITE_METHODS = {"post", "put", "patch", "delete"}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}
_ALLOW = {
    "description": "The methods this route takes, e.g. `GET, HEAD, OPTIONS`.",
    "required": True,
    "schema": {"type": "string"},
}
_REQUEST_ID_DESCRIPTION = (
    "The request's id (core.requestid): the client's `X-Request-ID` when it is 1 to 128 "
    "characters of `A-Z a-z 0-9 - _ . : @ / + =`, else one the server made. The server's log "
    "lines of the request carry it."
)
_REQUEST_ID_PARAMETER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": _REQUEST_ID_DESCRIPTION,
    "schema": {"type": "string"},
}
_REQUEST_ID_HEADER = {
    "description": _REQUEST_ID_DESCRIPTION,
    "required": True,
    "schema": {"type": "string"},
}


def postprocess_schema(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """Add the shared error answers to every operation and tidy the document.

    - 400 wherever a body or query parameter can be invalid; 415 wherever there is a body;
      413 and 507 on every write; 503 (with `Retry-After`) on every operation that touches
      the database; 405 (with `Allow`) everywhere: another method on the same path.
    - The `{}` security requirement (no authentication) is dropped: the API has none.
    - `X-Request-ID`: an optional request header of every operation, a header of every answer.
    """
    result.setdefault("info", {})["description"] = API_DESCRIPTION
    result.setdefault("paths", {}).update(_plain_routes())
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            operation.pop("security", None)
            no_database = operation.pop(NO_DATABASE_KEY, False)
            responses = operation.setdefault("responses", {})
            for status, headers in operation.pop(RESPONSE_HEADERS_KEY, {}).items():
                responses[status].setdefault("headers", {}).update(headers)
            has_query = any(p.get("in") == "query" for p in operation.get("parameters", []))
            if (has_query or "requestBody" in operation) and "400" not in responses:
                responses["400"] = _error_response(400)
            if "requestBody" in operation:
                responses.setdefault("415", _error_response(415))
            if method in _WRITE_METHODS:
                responses.setdefault("413", _error_response(413))
                responses.setdefault("507", _error_response(507))
            if not no_database and "503" not in responses:
                responses["503"] = _error_response(503)
                responses["503"]["headers"] = {"Retry-After": _RETRY_AFTER}
            responses.setdefault("405", {**_error_response(405), "headers": {"Allow": _ALLOW}})
            parameters = operation.setdefault("parameters", [])
            if not any(p.get("name") == "X-Request-ID" for p in parameters):
                parameters.append(dict(_REQUEST_ID_PARAMETER))
            for response in responses.values():
                response["headers"] = {
                    **response.get("headers", {}),
                    "X-Request-ID": _REQUEST_ID_HEADER,
                }
            operation["responses"] = dict(sorted(responses.items()))
    return result

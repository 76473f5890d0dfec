"""DRF permission from the route table: judges `request.principal` (set by the HTTP edge).

Phase 2 of issue 11 sets `request.principal` on every request at the single HTTP edge; until
then a request without it is served as before (the edge has not judged it yet).
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from core.auth import authorize
from core.errors import ApiError


class RoutePolicyPermission(BasePermission):
    """Allows what core.policy allows for the view's `policy_route` (a route template)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = getattr(request._request, "principal", None)
        if principal is None:
            return True  # not judged at the edge yet (phase 2 wires it)
        decision = authorize(
            principal,
            request.method or "GET",
            view.policy_route,
            path_params=getattr(view, "kwargs", {}),
            query=request.query_params.dict(),
        )
        if decision.allowed:
            return True
        body = decision.body()
        error = body.pop("error")
        raise ApiError(decision.status, error, **body)


class PolicyViewMixin:
    """For views using RoutePolicyPermission: a 401 carries `WWW-Authenticate: Bearer` (§6)."""

    def handle_exception(self, exc: Exception) -> Response:
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        if response.status_code == 401:
            response["WWW-Authenticate"] = "Bearer"
        return response

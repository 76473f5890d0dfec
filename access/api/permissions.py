"""DRF permission from the route table: judges `request.principal` (set by the HTTP edge).

The classes live in `core.drfauth` (the defaults of every DRF view, settings.REST_FRAMEWORK);
this module keeps the names the audit view uses.
"""

from __future__ import annotations

from rest_framework.response import Response

from core.drfauth import RoutePolicyPermission

__all__ = ["PolicyViewMixin", "RoutePolicyPermission"]


class PolicyViewMixin:
    """For views using RoutePolicyPermission: a 401 carries `WWW-Authenticate: Bearer` (§6)."""

    def handle_exception(self, exc: Exception) -> Response:
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        if response.status_code == 401:
            response["WWW-Authenticate"] = "Bearer"
        return response

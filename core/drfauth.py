"""DRF's view of what the HTTP edge decided (API.md §6): no second resolution.

The edge (`core.edge.AuthGate`, on both request paths) resolves the principal, judges it against
`core.policy` and puts it into the ASGI scope; `PrincipalMiddleware` (core.middleware) copies it
to `request.principal`. Here DRF's authentication class hands that principal to DRF
(`request.user`/`request.auth`), and the permission class re-checks the same pure decision as a
backstop (a view reached without the edge, e.g. by Django's test client, has no principal and is
served as in `--auth off`).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from core.auth import Principal, authorize
from core.errors import ApiError
from core.observability import route_template


def principal_of(request: Any) -> Principal | None:
    """The principal the edge resolved for this request (a Django or DRF request), or None."""
    django_request = getattr(request, "_request", request)
    principal = getattr(django_request, "principal", None)
    if principal is None:
        scope = getattr(django_request, "scope", None)
        principal = scope.get("principal") if isinstance(scope, dict) else None
    return principal


class EdgeAuthentication(BaseAuthentication):
    """`request.user` and `request.auth` are the edge's principal (None when there is none)."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        principal = principal_of(request)
        return None if principal is None else (principal, principal)

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class RoutePolicyPermission(BasePermission):
    """Allows what core.policy allows for the view's route (`policy_route`, else the matched
    URL route) and the edge's principal."""

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = principal_of(request)
        if principal is None:
            return True  # not behind the edge (test client): served as with --auth off
        route = getattr(view, "policy_route", None)
        if route is None:
            match = getattr(request._request, "resolver_match", None)
            route = route_template(match.route) if match is not None else None
        decision = authorize(
            principal,
            request.method or "GET",
            route,
            path_params=getattr(view, "kwargs", {}),
            query=request.query_params.dict(),
        )
        if decision.allowed:
            return True
        body = decision.body()
        error = body.pop("error")
        raise ApiError(decision.status, error, **body)


class EdgeAuthenticationScheme(OpenApiAuthenticationExtension):
    """The OpenAPI document names the bearer scheme (client certificates are TLS, not HTTP)."""

    target_class = EdgeAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer"}

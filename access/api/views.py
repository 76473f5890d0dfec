"""`GET /v1/audit`: the audit log, newest first (admin)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access.api.permissions import PolicyViewMixin, RoutePolicyPermission
from access.selectors import AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT, audit_list
from access.services import TokenError, audit_dict, parse_since
from core.errors import ApiError


def _field(name: str, message: str) -> ApiError:
    return ApiError(400, f"invalid field '{name}': {message}", field=name)


def _int(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _field(name, "must be an integer") from None


_RECORD = inline_serializer(
    "AuditRecord",
    many=True,
    fields={
        "id": serializers.IntegerField(),
        "at": serializers.DateTimeField(),
        "event_name": serializers.CharField(),
        "category": serializers.CharField(),
        "outcome": serializers.ChoiceField(choices=["success", "failure", "denied"]),
        "principal": serializers.CharField(),
        "principal_kind": serializers.ChoiceField(
            choices=["token", "cert", "session", "anonymous", "system"]
        ),
        "role": serializers.CharField(allow_null=True),
        "source_ip": serializers.CharField(allow_null=True),
        "route": serializers.CharField(allow_null=True),
        "target": serializers.CharField(allow_null=True),
        "detail": serializers.DictField(),
    },
)


class AuditView(PolicyViewMixin, APIView):
    """The audit log (API.md §6), newest first."""

    policy_route = "/v1/audit"
    permission_classes = [RoutePolicyPermission]

    @extend_schema(
        operation_id="audit_list",
        summary="Audit log, newest first (admin)",
        tags=["audit"],
        parameters=[
            OpenApiParameter(
                "since", OpenApiTypes.STR, description="a duration back (24h, 7d) or RFC 3339"
            ),
            OpenApiParameter("event_name", OpenApiTypes.STR, description="exact event name"),
            OpenApiParameter("principal", OpenApiTypes.STR, description="exact principal name"),
            OpenApiParameter(
                "limit",
                OpenApiTypes.INT,
                description=f"default {AUDIT_DEFAULT_LIMIT}, max {AUDIT_MAX_LIMIT} (clamped)",
            ),
            OpenApiParameter(
                "before", OpenApiTypes.INT, description="cursor: `next_before` of the last page"
            ),
        ],
        responses={
            200: inline_serializer(
                "AuditPage",
                {
                    "records": _RECORD,
                    "count": serializers.IntegerField(),
                    "next_before": serializers.IntegerField(allow_null=True),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        params = request.query_params.dict()
        since = None
        if params.get("since"):
            try:
                since = parse_since(params["since"])
            except TokenError as exc:
                raise _field("since", str(exc)) from None
        limit = _int(params, "limit")
        if limit is None:
            limit = AUDIT_DEFAULT_LIMIT
        elif limit < 1:
            raise _field("limit", "must be at least 1")
        before = _int(params, "before")
        records = audit_list(
            since=since,
            event_name=params.get("event_name") or None,
            principal=params.get("principal") or None,
            limit=min(limit, AUDIT_MAX_LIMIT),
            before=before,
        )
        data: dict[str, Any] = {
            "records": [audit_dict(r) for r in records],
            "count": len(records),
            "next_before": records[-1].pk if len(records) == min(limit, AUDIT_MAX_LIMIT) else None,
        }
        return Response(data)

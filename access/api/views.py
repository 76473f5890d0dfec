"""`GET /v1/audit`: the audit log, newest first (admin)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access.api.permissions import PolicyViewMixin, RoutePolicyPermission
from access.selectors import AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT, audit_list
from access.services import TokenError, audit_dict, parse_since
from core.errors import ApiError
from core.openapi import before_parameter, limit_parameter, query_id
from core.params import check_identifier, parse_before, parse_int


def _field(name: str, message: str) -> ApiError:
    return ApiError(400, f"invalid field '{name}': {message}", field=name)


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
                "since",
                {
                    "anyOf": [
                        {"type": "string", "pattern": "^[1-9][0-9]{0,5}[smhdw]$"},
                        {"type": "string", "format": "date-time"},
                    ]
                },
                description="A duration back from now (`24h`, `7d`, also Go style `1h30m`) or "
                "an RFC 3339 instant with an offset.",
            ),
            query_id("event_name", "exact event name"),
            query_id("principal", "exact principal name"),
            limit_parameter(AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT),
            before_parameter(),
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
        if params.get("since") is not None:  # given but empty is a 400, like `limit=`
            try:
                since = parse_since(params["since"])
            except TokenError as exc:
                raise _field("since", str(exc)) from None
        limit = min(
            parse_int("limit", params.get("limit"), default=AUDIT_DEFAULT_LIMIT, minimum=1),
            AUDIT_MAX_LIMIT,
        )
        event_name, principal = params.get("event_name"), params.get("principal")
        records = audit_list(
            since=since,
            event_name=None if event_name is None else check_identifier("event_name", event_name),
            principal=None if principal is None else check_identifier("principal", principal),
            limit=limit,
            before=parse_before(params),
        )
        data: dict[str, Any] = {
            "records": [audit_dict(r) for r in records],
            "count": len(records),
            "next_before": records[-1].pk if len(records) == limit else None,
        }
        return Response(data)

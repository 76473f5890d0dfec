"""HTTP views for releases, acks and the fleet: parse, call one service or selector, answer.

Every route also renders DRF's browsable API when a browser asks for HTML.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access.services import audited_failure
from core.auth import acting
from core.drfauth import principal_of
from core.edge import json_answer
from core.params import check_identifier, param_error, parse_limit, parse_offset
from releases import selectors, services
from releases.api.serializers import NodeAckSerializer, ReleasePublishSerializer
from releases.fast import latest_signed_answer
from releases.params import parse_cursor, parse_fleet_query, parse_page_limit

# Release ids must stay addressable as one path segment, and `latest` is a route of its own.
_RESERVED_RELEASE_IDS = {"latest"}


def _validated(serializer_class: type, data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class ReleaseListView(APIView):
    """`GET /v1/releases` (newest first; `channel`, `limit`, `offset`) and `POST /v1/releases`."""

    def get(self, request: Request) -> Response:
        query = request.query_params
        channel = query.get("channel")
        page = selectors.release_list(
            channel=None if channel is None else check_identifier("channel", channel),
            limit=parse_limit(query),
            offset=parse_offset(query),
        )
        return Response(page.as_dict())

    def post(self, request: Request) -> Response:
        data = _validated(ReleasePublishSerializer, request.data)
        release_id = data["release_id"]
        if release_id in _RESERVED_RELEASE_IDS or "/" in release_id:
            raise param_error("release_id", "must not be 'latest' or contain '/'")
        if not data["channel"]:
            raise param_error("channel", "must be a non-empty string")
        actor = acting(principal_of(request), request.META.get("HTTP_X_AUTONOMY_OPERATOR"))
        with audited_failure("release.published", actor, release_id):
            outcome = services.release_publish(**data, principal=actor)
        return Response(
            selectors.release_as_dict(outcome.obj),
            status=status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK,
        )


class LatestReleaseView(APIView):
    """`GET /v1/releases/latest?channel=<c>[&node_id=<n>]`: the node poll path.

    Normally answered by the fast path in front of Django; this view gives the same answer
    (browsers, tests, and any deployment without the fast path).
    """

    def get(self, request: Request) -> HttpResponse | Response:
        code, body, headers = latest_signed_answer(request.query_params.dict())
        response = json_answer(request, code, body)
        for name, value in headers:  # the signed desired state (releases.desired_state)
            response[name.decode()] = value.decode()
        return response


class ReleaseDetailView(APIView):
    """`GET /v1/releases/{release_id}`."""

    def get(self, request: Request, release_id: str) -> Response:
        return Response(selectors.release_as_dict(selectors.release_get(release_id=release_id)))


class ReleaseAcksView(APIView):
    """`GET /v1/releases/{release_id}/acks`."""

    def get(self, request: Request, release_id: str) -> Response:
        query = request.query_params
        return Response(
            selectors.release_acks(
                release_id=release_id, limit=parse_page_limit(query), after=parse_cursor(query)
            )
        )


def _node_id(value: str) -> str:
    return check_identifier("node_id", value)


class NodeAckView(APIView):
    """`POST /v1/nodes/{node_id}/ack`: upsert; 201 the first time, 200 after."""

    def post(self, request: Request, node_id: str) -> Response:
        node_id = _node_id(node_id)
        data = _validated(NodeAckSerializer, request.data)
        outcome = services.node_ack_upsert(node_id=node_id, **data)
        return Response(
            selectors.ack_as_dict(outcome.obj),
            status=status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK,
        )


class NodeAcksView(APIView):
    """`GET /v1/nodes/{node_id}/acks`."""

    def get(self, request: Request, node_id: str) -> Response:
        query = request.query_params
        return Response(
            selectors.node_acks(
                node_id=_node_id(node_id), limit=parse_page_limit(query), after=parse_cursor(query)
            )
        )


class FleetView(APIView):
    """`GET /v1/fleet?channel=<c>&stale_threshold=<seconds>` (+ `limit`, `cursor`,
    `node_status`, `release_id`, `ack_status`, `summary`)."""

    def get(self, request: Request) -> Response:
        query = parse_fleet_query(request.query_params)
        return Response(
            selectors.fleet_summary(
                channel=query.channel, stale_threshold=query.stale_threshold, query=query
            )
        )

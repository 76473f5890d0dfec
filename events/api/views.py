"""DRF views for `/v1/events` and `/v1/health`.

These serve the browsable API and every request the fast path (core.fastpath, handlers in
events/fast.py) hands to Django; both paths call the same parser, validation, selector and
serialisation, so JSON clients get the same bytes (tests/test_edge_parity.py).
"""

from __future__ import annotations

from django.http import HttpResponse
from rest_framework.exceptions import UnsupportedMediaType
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.edge import json_answer
from events.fast import HEALTH_BODY
from events.selectors import event_list
from events.services import events_store
from events.validation import parse_body, parse_list_query


class EventsView(APIView):
    """POST a batch `{"events": [...]}`; GET stored events, newest first."""

    def get(self, request: Request) -> HttpResponse | Response:
        query = parse_list_query(request.query_params.dict())
        page = event_list(
            node_id=query.node_id,
            event_type=query.event_type,
            limit=query.limit,
            before=query.before,
        )
        if getattr(request.accepted_renderer, "format", "json") != "json":
            return Response(page.as_data())  # the browsable API (keeps big integers exact)
        return HttpResponse(page.as_json(), content_type="application/json")

    def post(self, request: Request) -> HttpResponse | Response:
        raw = request.body
        # Unlike the fast path, the DRF path (browsers) wants a JSON Content-Type (docs/events.md).
        negotiator = request.negotiator
        if raw and negotiator and negotiator.select_parser(request, request.parsers or []) is None:
            raise UnsupportedMediaType(request.content_type)
        (result,) = events_store(batches=[parse_body(raw)])
        return json_answer(request, 200, result.as_json())


class HealthView(APIView):
    """Liveness: answers as long as the process serves requests."""

    def get(self, request: Request) -> HttpResponse | Response:
        return json_answer(request, 200, HEALTH_BODY)

"""DRF views for `/v1/events` and `/v1/health`.

These serve the browsable API and every request the fast path (orchestrator_site.fastpath) hands
to Django; both paths call the same validation, service and selector, so they answer alike.
"""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.jsonvalues import JsonValueError
from events.api.serializers import EventListQuerySerializer
from events.selectors import event_list
from events.services import events_ingest
from events.validation import event_value_error, field_error


class EventsView(APIView):
    """POST a batch `{"events": [...]}`; GET stored events, newest first."""

    def get(self, request: Request) -> Response:
        params = EventListQuerySerializer(data=request.query_params.dict())
        params.is_valid(raise_exception=True)
        query = params.to_query()
        page = event_list(
            node_id=query.node_id,
            event_type=query.event_type,
            limit=query.limit,
            before=query.before,
        )
        return Response(page.as_data())

    def post(self, request: Request) -> Response:
        try:
            body = request.data
        except JsonValueError as exc:  # the same answer as the fast path's
            raise event_value_error(exc) from None
        if not isinstance(body, dict):
            raise field_error("events", 'the body must be a JSON object {"events": [...]}')
        events = body.get("events")
        if not isinstance(events, list):
            raise field_error("events", "this field is required and must be a list of events")
        result = events_ingest(events=events)
        return Response(result.as_dict())


class HealthView(APIView):
    """Liveness: answers as long as the process serves requests."""

    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})

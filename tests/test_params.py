"""One parser per shared parameter (core.params): every list route answers a bad `limit` or
`offset` with the same 400, timestamps follow one leap-second rule and come back in one format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.params import format_rfc3339, parse_rfc3339

pytestmark = pytest.mark.django_db

LIST_ROUTES = ["/v1/events", "/v1/releases", "/v1/rollouts"]
LIMIT_ERROR = {"error": "invalid field 'limit': must be an integer >= 1", "field": "limit"}


@pytest.mark.parametrize("route", LIST_ROUTES)
@pytest.mark.parametrize("value", ["", "0", "abc", "-1", "1.5", "1e3"])
def test_a_bad_limit_is_the_same_400_on_every_list_route(api, route, value):
    response = api.get(f"{route}?limit={value}")
    assert (response.status_code, response.json()) == (400, LIMIT_ERROR)


@pytest.mark.parametrize("route", LIST_ROUTES)
def test_a_large_limit_is_clamped_on_every_list_route(api, route):
    assert api.get(f"{route}?limit=5000").status_code == 200


@pytest.mark.parametrize("route", ["/v1/releases", "/v1/rollouts"])
@pytest.mark.parametrize("value", ["", "-1", "x"])
def test_a_bad_offset_is_the_same_400(api, route, value):
    response = api.get(f"{route}?offset={value}")
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid field 'offset': must be an integer >= 0",
        "field": "offset",
    }


def test_a_leap_second_is_accepted_in_events_and_acks(api):
    leap = "2016-12-31T23:59:60.5Z"
    event = {"event_id": "e", "event_type": "t", "node_id": "n", "timestamp": leap}
    response = api.post("/v1/events", {"events": [event]}, format="json")
    assert response.status_code == 200
    assert api.get("/v1/events").json()["events"][0]["timestamp"] == leap  # stored as sent
    api.post("/v1/releases", {"release_id": "r1"}, format="json")
    response = api.post(
        "/v1/nodes/n/ack", {"release_id": "r1", "status": "active", "acked_at": leap}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["acked_at"] == "2016-12-31T23:59:59.500000Z"  # read as :59


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2026-04-07T10:00:00", "with an offset"),
        ("2026-02-30T10:00:00Z", "is not a valid date and time"),
        ("2026-04-07T10:00:61Z", "is not a valid date and time"),
        ("x" * 65, "at most 64 characters"),
    ],
)
def test_bad_timestamps_get_the_same_reason_in_events_and_acks(api, text, reason):
    event = {"event_id": "e", "event_type": "t", "node_id": "n", "timestamp": text}
    events_error = api.post("/v1/events", {"events": [event]}, format="json").json()["error"]
    api.post("/v1/releases", {"release_id": "r1"}, format="json")
    ack = {"release_id": "r1", "status": "active", "acked_at": text}
    ack_error = api.post("/v1/nodes/n/ack", ack, format="json").json()["error"]
    assert reason in events_error
    assert ack_error == events_error.removeprefix("event 0: ").replace("'timestamp'", "'acked_at'")


def test_one_format_for_every_timestamp_answered():
    assert format_rfc3339(datetime(2026, 4, 7, 10, 0, tzinfo=UTC)) == "2026-04-07T10:00:00Z"
    plus_two = timezone(timedelta(hours=2))
    assert (
        format_rfc3339(datetime(2026, 4, 7, 12, 0, 0, 120, tzinfo=plus_two))
        == "2026-04-07T10:00:00.000120Z"
    )
    assert format_rfc3339(None) is None
    assert parse_rfc3339("2026-04-07t10:00:00.123456789z") == datetime(
        2026, 4, 7, 10, 0, 0, 123456, tzinfo=UTC
    )

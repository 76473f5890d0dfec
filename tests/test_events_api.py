"""`/v1/events` and `/v1/health` through URLs (the DRF path) with APIClient: API.md §3 "Events"."""

from __future__ import annotations

import json

import pytest

from events.models import Event
from tests.factories import EventFactory

pytestmark = pytest.mark.django_db


def ev(event_id: str, **extra: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "event_type": "app.heartbeat",
        "node_id": "node-a",
        "timestamp": "2026-04-07T10:00:00Z",
        **extra,
    }


def post(api, body, **kwargs):
    return api.post("/v1/events", data=json.dumps(body), content_type="application/json", **kwargs)


def test_health(api):
    response = api.get("/v1/health")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}


def test_ingest_then_list_returns_each_event_exactly_as_received(api):
    odd = ev(
        "e-1",
        lock_fingerprint="sha256:ab",
        release_id=None,
        custom={"nested": [1, 2.5, "x", None, True]},
        big=2**63 - 1,  # the largest integer the JSON-values rule accepts
        small=-(2**63),
        text="é ✓",
    )
    response = post(api, {"events": [odd, ev("e-2", node_id="node-b")]})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"received": 2, "inserted": 2, "deduped": 0}

    listed = api.get("/v1/events")
    assert listed.status_code == 200
    body = listed.json()
    assert body["count"] == 2
    assert body["next_before"] is None
    assert body["events"] == [ev("e-2", node_id="node-b"), odd]
    assert list(body["events"][1]) == list(odd)  # same keys, same order


@pytest.mark.parametrize("raw", ["9223372036854775808", "-9223372036854775809", "1e400"])
def test_a_number_no_store_can_serve_back_is_a_400_naming_event_and_field(api, raw):
    bad = json.dumps(ev("bad", extra={"n": [0, 0]})).replace("[0, 0]", f"[0, {raw}]")
    body = '{"events":[' + json.dumps(ev("ok")) + "," + bad + "]}"
    response = api.post("/v1/events", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["index"] == 1
    assert response.json()["field"] == "extra.n[1]"
    assert response.json()["error"].startswith("event 1: invalid field 'extra.n[1]'")
    assert not Event.objects.exists()


def test_duplicates_against_store_and_inside_batch_are_counted_and_first_copy_wins(api):
    assert post(api, {"events": [ev("dup-1", first=True)]}).json()["inserted"] == 1
    response = post(
        api,
        {"events": [ev("dup-1", first=False), ev("new-1"), ev("new-1", copy=2), ev("new-2")]},
    )
    assert response.status_code == 200
    assert response.json() == {"received": 4, "inserted": 2, "deduped": 2}
    events = {e["event_id"]: e for e in api.get("/v1/events").json()["events"]}
    assert events["dup-1"]["first"] is True
    assert "copy" not in events["new-1"]
    assert Event.objects.count() == 3


def test_the_same_event_id_from_two_nodes_is_two_events_and_the_key_is_per_node(api):
    squat = ev("node-b-000042", node_id="node-a")
    real = ev("node-b-000042", node_id="node-b", event_type="app.crash")
    assert post(api, {"events": [squat]}).json() == {"received": 1, "inserted": 1, "deduped": 0}
    both = post(api, {"events": [real, squat, real]})
    assert both.json() == {"received": 3, "inserted": 1, "deduped": 2}
    stored = Event.objects.order_by("id").values_list("node_id", "event_type")
    assert list(stored) == [("node-a", "app.heartbeat"), ("node-b", "app.crash")]


def test_empty_batch_is_accepted_and_stores_nothing(api):
    response = post(api, {"events": []})
    assert response.status_code == 200
    assert response.json() == {"received": 0, "inserted": 0, "deduped": 0}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"event_type": "t", "node_id": "n", "timestamp": "2026-04-07T10:00:00Z"}, "event_id"),
        (ev("x", node_id=""), "node_id"),
        (ev("x", event_type=7), "event_type"),
        (ev("x", event_type="t" * 257), "event_type"),
        (ev("x", timestamp="2026-04-07T10:00:00"), "timestamp"),  # no offset
        (ev("x", timestamp="2026-04-07"), "timestamp"),
        (ev("x", timestamp="2026-13-07T10:00:00Z"), "timestamp"),
        (ev("x", timestamp=1712484000), "timestamp"),
        ({"event_id": "x", "event_type": "t", "node_id": "n"}, "timestamp"),
        (ev("x", lock_fingerprint=5), "lock_fingerprint"),
        (ev("x", release_id=["r"]), "release_id"),
        ("not an object", "events"),
    ],
)
def test_one_invalid_event_rejects_the_batch_naming_index_and_field(api, bad, field):
    batch = [ev("ok-0"), ev("ok-1"), ev("ok-2"), bad]
    response = post(api, {"events": batch})
    assert response.status_code == 400
    body = response.json()
    assert body["index"] == 3
    assert body["field"] == field
    assert field in body["error"] and "3" in body["error"]
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-04-07T10:00:00Z",
        "2026-04-07T10:00:00.123456789+05:30",
        "2026-04-07t10:00:00-00:00",
        "2016-12-31T23:59:60Z",
    ],
)
def test_rfc3339_timestamps_with_an_offset_are_accepted(api, timestamp):
    response = post(api, {"events": [ev("t-1", timestamp=timestamp)]})
    assert response.status_code == 200, response.json()
    assert api.get("/v1/events").json()["events"][0]["timestamp"] == timestamp


@pytest.mark.parametrize("body", [[], {"event": []}, {"events": {"a": 1}}, {"events": None}])
def test_body_without_an_events_list_is_400_naming_events(api, body):
    response = post(api, body)
    assert response.status_code == 400
    assert response.json()["field"] == "events"


def test_malformed_json_is_400_json(api):
    response = api.post("/v1/events", data=b'{"events": [', content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "malformed JSON" in response.json()["error"]


def test_batch_over_the_documented_maximum_is_400(api):
    from events.validation import MAX_BATCH_EVENTS

    events = [ev(f"m-{i}") for i in range(MAX_BATCH_EVENTS + 1)]
    response = post(api, {"events": events})
    assert response.status_code == 400
    assert response.json()["field"] == "events"
    assert str(MAX_BATCH_EVENTS) in response.json()["error"]
    assert Event.objects.count() == 0


def test_newest_first_is_insertion_order_not_timestamp(api):
    post(api, {"events": [ev("late", timestamp="2030-01-01T00:00:00Z")]})
    post(api, {"events": [ev("early", timestamp="2001-01-01T00:00:00Z")]})
    ids = [e["event_id"] for e in api.get("/v1/events").json()["events"]]
    assert ids == ["early", "late"]


def test_filters_by_node_and_type(api):
    post(
        api,
        {
            "events": [
                ev("a1", node_id="a", event_type="boot"),
                ev("a2", node_id="a", event_type="crash"),
                ev("b1", node_id="b", event_type="crash"),
            ]
        },
    )

    def ids(**params):
        response = api.get("/v1/events", params)
        assert response.status_code == 200
        return [e["event_id"] for e in response.json()["events"]]

    assert ids(node_id="a") == ["a2", "a1"]
    assert ids(event_type="crash") == ["b1", "a2"]
    assert ids(node_id="a", event_type="crash") == ["a2"]
    assert ids(node_id="nobody") == []


def test_limit_defaults_to_100_and_is_clamped_at_1000(api):
    EventFactory.create_batch(1001)
    default = api.get("/v1/events").json()
    assert default["count"] == 100
    assert len(default["events"]) == 100
    clamped = api.get("/v1/events", {"limit": 5000}).json()
    assert clamped["count"] == 1000
    assert api.get("/v1/events", {"limit": 3}).json()["count"] == 3


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1.5", "", " "])
def test_limit_not_a_positive_integer_is_400_naming_limit(api, limit):
    response = api.get("/v1/events", {"limit": limit})
    assert response.status_code == 400
    assert response.json()["field"] == "limit"
    assert "limit" in response.json()["error"]


def test_before_cursor_pages_back_without_gaps_or_overlap(api):
    post(api, {"events": [ev(f"p-{i:02d}") for i in range(25)]})
    seen: list[str] = []
    params: dict[str, object] = {"limit": 10}
    pages = 0
    while True:
        body = api.get("/v1/events", params).json()
        seen += [e["event_id"] for e in body["events"]]
        pages += 1
        if body["next_before"] is None:
            break
        params["before"] = body["next_before"]
    assert seen == [f"p-{i:02d}" for i in reversed(range(25))]
    assert pages == 3


@pytest.mark.parametrize("before", ["abc", "0", "-5", "1.0"])
def test_invalid_before_cursor_is_400_naming_before(api, before):
    response = api.get("/v1/events", {"before": before})
    assert response.status_code == 400
    assert response.json()["field"] == "before"


def test_ingest_and_list_query_counts_are_capped(api, django_assert_max_num_queries):
    batch = {"events": [ev(f"q-{i}") for i in range(200)]}
    # savepoint/BEGIN, one executemany, the fleet view's node upsert, release/COMMIT
    with django_assert_max_num_queries(4):
        assert post(api, batch).status_code == 200
    with django_assert_max_num_queries(1):
        assert api.get("/v1/events", {"node_id": "node-a", "limit": 1000}).json()["count"] == 200


def test_wrong_method_is_405_with_allow(api):
    response = api.delete("/v1/events")
    assert response.status_code == 405
    assert response.json()["error"]
    assert "GET" in response["Allow"] and "POST" in response["Allow"]
    health = api.post("/v1/health")
    assert health.status_code == 405
    assert "GET" in health["Allow"]


def test_unknown_v1_route_is_404_json(api):
    response = api.get("/v1/nope")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]
    assert api.get("/v1/events/").status_code == 404  # exact paths, no trailing slash


def test_browser_gets_the_browsable_api(api):
    response = api.get("/v1/events", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"<html" in response.content.lower()


def test_non_json_content_type_on_the_django_path_is_a_json_error(api):
    response = api.post("/v1/events", data="events", content_type="text/plain")
    assert response.status_code == 415
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]
    assert Event.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_key_migration_keeps_every_stored_event(api):
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", "events", "0001", verbosity=0)
    try:
        with connection.cursor() as cursor:
            for n in range(3):
                cursor.execute(
                    "INSERT INTO events_event (event_id, event_type, node_id, timestamp, "
                    "payload, received_at) VALUES (%s, 't', %s, 'ts', '{}', %s)",
                    [f"old-{n}", f"node-{n % 2}", "2026-11-27 08:00:00"],
                )
    finally:
        call_command("migrate", "events", verbosity=0)
    stored = list(Event.objects.order_by("id").values_list("event_id", "node_id"))
    assert stored == [("old-0", "node-0"), ("old-1", "node-1"), ("old-2", "node-0")]
    assert post(api, {"events": [ev("old-1", node_id="node-0")]}).json()["inserted"] == 1

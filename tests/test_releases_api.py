"""POST/GET /v1/releases, /v1/releases/{id}, /v1/releases/latest through the URLs."""

from __future__ import annotations

import orjson
import pytest

from releases.fast import latest_release_answer
from releases.models import Release
from tests.factories import ReleaseFactory

pytestmark = pytest.mark.django_db


def publish(api, **body):
    return api.post("/v1/releases", body, format="json")


def test_publish_assigns_consecutive_sequences_per_channel(api):
    first = publish(api, release_id="rel-001", policy_ref="arm-safety:v1.2.0")
    assert first.status_code == 201
    assert first["Content-Type"] == "application/json"
    body = first.json()
    assert body["release_id"] == "rel-001"
    assert body["channel"] == "stable"
    assert body["sequence"] == 1
    assert body["policy_ref"] == "arm-safety:v1.2.0"
    assert body["lock_fingerprint"] is None
    assert body["artifact_ref"] is None
    assert body["metadata"] == {}
    assert body["created_at"].endswith("Z")

    assert publish(api, release_id="rel-002").json()["sequence"] == 2
    assert publish(api, release_id="canary-1", channel="canary").json()["sequence"] == 1
    assert publish(api, release_id="rel-003").json()["sequence"] == 3


def test_identical_republish_is_200_and_consumes_no_number(api):
    body = {
        "release_id": "rel-a",
        "channel": "dev",
        "metadata": {"k": [1, 2]},
        "artifact_ref": "oci://r/a",
    }
    created = publish(api, **body)
    assert created.status_code == 201
    again = publish(api, **body)
    assert again.status_code == 200
    assert again.json() == created.json()
    # explicit defaults are the same fields as omitted ones
    again = publish(api, **body, policy_ref=None, lock_fingerprint=None)
    assert again.status_code == 200
    assert publish(api, release_id="rel-b", channel="dev").json()["sequence"] == 2


@pytest.mark.parametrize(
    "change",
    [
        {"channel": "stable"},
        {"metadata": {"k": [1]}},
        {"artifact_ref": "oci://r/b"},
        {"policy_ref": "p:1"},
    ],
)
def test_same_id_different_fields_is_409(api, change):
    body = {
        "release_id": "rel-a",
        "channel": "dev",
        "metadata": {"k": [1, 2]},
        "artifact_ref": "oci://r/a",
    }
    assert publish(api, **body).status_code == 201
    conflict = publish(api, **{**body, **change})
    assert conflict.status_code == 409
    error = conflict.json()
    assert "already exists" in error["error"]
    assert error["release_id"] == "rel-a"
    assert error["fields"] == list(change)
    # a 409 consumes no number either
    assert publish(api, release_id="rel-next", channel="dev").json()["sequence"] == 2
    assert Release.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "release_id"),
        ({"release_id": ""}, "release_id"),
        ({"release_id": 5}, "release_id"),
        ({"release_id": "x" * 257}, "release_id"),
        ({"release_id": "latest"}, "release_id"),
        ({"release_id": "a/b"}, "release_id"),
        ({"release_id": "r", "channel": ""}, "channel"),
        ({"release_id": "r", "channel": 3}, "channel"),
        ({"release_id": "r", "policy_ref": 1.5}, "policy_ref"),
        ({"release_id": "r", "lock_fingerprint": ["x"]}, "lock_fingerprint"),
        ({"release_id": "r", "artifact_ref": True}, "artifact_ref"),
        ({"release_id": "r", "metadata": [1, 2]}, "metadata"),
        ({"release_id": "r", "metadata": "x"}, "metadata"),
    ],
)
def test_publish_invalid_field_is_400_naming_it(api, body, field):
    response = api.post("/v1/releases", body, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["error"]
    assert not Release.objects.exists()


def test_publish_malformed_json_and_non_object(api):
    bad = api.post("/v1/releases", b"{not json", content_type="application/json")
    assert bad.status_code == 400
    assert "malformed JSON" in bad.json()["error"]
    listed = api.post("/v1/releases", [1], format="json")
    assert listed.status_code == 400
    assert set(listed.json()) >= {"error"}


def test_wrong_method_is_405_with_allow(api):
    response = api.delete("/v1/releases")
    assert response.status_code == 405
    assert "POST" in response["Allow"] and "GET" in response["Allow"]
    assert "error" in response.json()
    assert api.post("/v1/releases/latest", {}, format="json").status_code == 405
    assert api.put("/v1/fleet", {}, format="json").status_code == 405


def test_latest_is_highest_sequence_of_channel(api):
    publish(api, release_id="s1")
    publish(api, release_id="s2", policy_ref="p:2")
    publish(api, release_id="c1", channel="canary")
    response = api.get("/v1/releases/latest")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert (body["release_id"], body["sequence"], body["policy_ref"]) == ("s2", 2, "p:2")
    assert api.get("/v1/releases/latest?channel=canary").json()["release_id"] == "c1"


def test_latest_of_an_empty_channel_is_404(api):
    response = api.get("/v1/releases/latest?channel=nightly")
    assert response.status_code == 404
    assert response.json() == {"error": "channel 'nightly' has no release", "channel": "nightly"}
    assert api.get("/v1/releases/latest").status_code == 404


def test_latest_invalid_channel_or_node_id_is_400(api):
    response = api.get("/v1/releases/latest?channel=")
    assert response.status_code == 400
    assert response.json()["field"] == "channel"
    response = api.get("/v1/releases/latest?node_id=" + "n" * 257)
    assert response.status_code == 400
    assert response.json()["field"] == "node_id"


def test_latest_with_node_id_asks_the_rollout_selector(api, monkeypatch):
    publish(api, release_id="old")
    publish(api, release_id="new")
    seen = {}

    def desired(*, latest, node_id):
        seen[node_id] = latest.release_id
        chosen = None if node_id == "node-out" else Release.objects.get(release_id="old")
        return chosen, None  # (release, the deciding plan's snapshot)

    monkeypatch.setattr("rollouts.selectors.desired_for_node", desired)
    assert api.get("/v1/releases/latest?node_id=node-in").json()["release_id"] == "old"
    out = api.get("/v1/releases/latest?node_id=node-out")
    assert out.status_code == 404
    assert out.json()["node_id"] == "node-out"
    assert seen == {"node-in": "new", "node-out": "new"}
    # without node_id: the plain latest, no rollout logic
    assert api.get("/v1/releases/latest").json()["release_id"] == "new"


def test_fast_answer_matches_the_view(api):
    publish(api, release_id="r1", metadata={"a": "é"})
    for query in (
        {},
        {"channel": "stable"},
        {"channel": "none"},
        {"channel": ""},
        {"node_id": "n1"},
    ):
        code, body = latest_release_answer(query)
        response = api.get("/v1/releases/latest", query)
        assert code == response.status_code
        assert orjson.loads(body) == response.json()
        assert body == response.content


def test_latest_costs_one_query(api, django_assert_max_num_queries):
    ReleaseFactory(release_id="r1", sequence=1)
    with django_assert_max_num_queries(1):
        assert api.get("/v1/releases/latest").status_code == 200


def test_detail_and_404(api):
    publish(api, release_id="r1", artifact_ref="oci://x")
    response = api.get("/v1/releases/r1")
    assert response.status_code == 200
    assert response.json()["artifact_ref"] == "oci://x"
    missing = api.get("/v1/releases/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "release 'nope' not found", "release_id": "nope"}


def test_list_newest_first_paginated_and_filtered(api, django_assert_max_num_queries):
    for index in range(5):
        publish(api, release_id=f"s{index}")
    publish(api, release_id="c0", channel="canary")
    with django_assert_max_num_queries(1):
        page = api.get("/v1/releases?limit=2")
    assert page.status_code == 200
    body = page.json()
    assert [r["release_id"] for r in body["releases"]] == ["c0", "s4"]
    assert (body["count"], body["next_offset"]) == (2, 2)
    body = api.get("/v1/releases?limit=2&offset=4").json()
    assert [r["release_id"] for r in body["releases"]] == ["s1", "s0"]
    assert body["next_offset"] is None
    body = api.get("/v1/releases?channel=canary").json()
    assert [r["release_id"] for r in body["releases"]] == ["c0"]
    assert api.get("/v1/releases?limit=5000").json()["limit"] == 1000


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=x", "limit"), ("offset=-1", "offset"), ("channel=", "channel")],
)
def test_list_invalid_query_is_400(api, query, field):
    response = api.get("/v1/releases?" + query)
    assert response.status_code == 400
    assert response.json()["field"] == field


def test_browsable_api_renders_html_for_a_browser(api):
    publish(api, release_id="r1")
    for path in (
        "/v1/releases",
        "/v1/releases/latest",
        "/v1/releases/r1",
        "/v1/releases/r1/acks",
        "/v1/nodes/n1/acks",
        "/v1/fleet",
        "/v1/nodes/n1/ack",
    ):
        response = api.get(path, HTTP_ACCEPT="text/html")
        assert response["Content-Type"].startswith("text/html"), path
        assert response.status_code in (200, 405), path
        assert b"Django REST framework" in response.content, path


@pytest.mark.django_db(transaction=True)
def test_simultaneous_publishes_to_one_channel_never_run_out_of_retries(monkeypatch):
    """PostgreSQL: 24 clients publishing to one channel at once all get their release, with the
    sequences 1..N and no gap, even with a single retry allowed: publishes to a channel wait for
    each other instead of racing for the same number (CI once saw a 503 'too many concurrent
    publishes' from 16 clients)."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection, connections

    from releases import services

    if connection.vendor != "postgresql":
        pytest.skip("SQLite serializes writers with IMMEDIATE transactions (run on PostgreSQL)")
    monkeypatch.setattr(services, "PUBLISH_ATTEMPTS", 2)

    def publish_one(index: int) -> int:
        try:
            return services.release_publish(
                release_id=f"race-{index:03d}", channel="race"
            ).obj.sequence
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=24) as pool:
        sequences = list(pool.map(publish_one, range(96)))
    assert sorted(sequences) == list(range(1, 97))
    assert Release.objects.filter(channel="race").count() == 96

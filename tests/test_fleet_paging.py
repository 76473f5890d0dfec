"""GET /v1/fleet paged and filtered (limit, cursor, node_status, release_id, ack_status,
summary), --fleet-forget-after, and the paged ack lists. API tests: they run on SQLite and, in
.ci/run's second pass, on PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import EventFactory, NodeAckFactory, ReleaseFactory

pytestmark = pytest.mark.django_db

FILTERS = [
    {},
    {"node_status": "up"},
    {"node_status": "stale"},
    {"node_status": "unknown"},
    {"release_id": "rel-2"},
    {"ack_status": "active"},
    {"ack_status": "none"},
    {"release_id": "rel-1", "ack_status": "failed"},
    {"node_status": "up", "ack_status": "pending"},
]


@pytest.fixture
def fleet():
    """23 nodes: up, stale and ack-only ones, acks of two stable releases and one canary."""
    now = timezone.now()
    rel1 = ReleaseFactory(release_id="rel-1", sequence=1)
    rel2 = ReleaseFactory(release_id="rel-2", sequence=2)
    canary = ReleaseFactory(release_id="can-1", channel="canary", sequence=1)
    statuses = ["active", "pending", "failed"]
    for i in range(20):
        node = f"n-{i:02d}"
        seen = now - timedelta(seconds=5 if i % 3 else 600)  # every third node is stale
        EventFactory(node_id=node, received_at=seen)
        if i % 4 == 0:
            continue  # no ack at all
        release = rel2 if i % 2 else rel1
        NodeAckFactory(node_id=node, release=release, status=statuses[i % 3], updated_at=now)
        if i % 5 == 0:
            NodeAckFactory(node_id=node, release=canary, updated_at=now)
    for node in ("acks-only-a", "acks-only-b", "acks-only-c"):
        NodeAckFactory(node_id=node, release=rel2, status="active", updated_at=now)


def _get(api, **params):
    response = api.get("/v1/fleet", params)
    assert response.status_code == 200, response.content
    return response.json()


def _walk(api, **params):
    """Every page of a listing; returns the nodes in order and the number of pages."""
    nodes, cursor, pages = [], None, 0
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        body = _get(api, **query)
        nodes += body["nodes"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return nodes, pages
        assert len(body["nodes"]) == body["limit"]


def test_a_small_fleet_gets_one_page_with_every_existing_field(api, fleet):
    body = _get(api)
    assert {
        "channel",
        "generated_at",
        "stale_threshold",
        "total",
        "up",
        "stale",
        "unknown",
        "latest_release",
        "nodes",
    } <= set(body)
    assert (body["total"], body["up"], body["stale"], body["unknown"]) == (23, 13, 7, 3)
    assert body["limit"] == 1000 and body["next_cursor"] is None
    assert [n["node_id"] for n in body["nodes"]] == sorted(n["node_id"] for n in body["nodes"])
    assert len(body["nodes"]) == 23
    assert set(body["nodes"][0]) == {
        "node_id",
        "node_status",
        "last_seen",
        "release_id",
        "ack_status",
        "sequence",
    }


@pytest.mark.parametrize("limit", [1, 4, 7, 23])
def test_paging_lists_every_node_exactly_once_in_order(api, fleet, limit):
    everything = _get(api)["nodes"]
    paged, pages = _walk(api, limit=limit)
    assert paged == everything
    assert pages == -(-23 // limit)


def test_paging_with_a_filter_covers_the_filtered_set(api, fleet):
    full = _get(api, ack_status="active")["nodes"]
    paged, _pages = _walk(api, ack_status="active", limit=2)
    assert paged == full and full


@pytest.mark.parametrize("params", FILTERS)
def test_filters_select_exactly_the_matching_nodes(api, fleet, params):
    everything = _get(api)["nodes"]
    expected = [
        n
        for n in everything
        if n["node_status"] == params.get("node_status", n["node_status"])
        and n["release_id"] == params.get("release_id", n["release_id"])
        and (n["ack_status"] or "none") == params.get("ack_status", n["ack_status"] or "none")
    ]
    assert _get(api, **params)["nodes"] == expected


@pytest.mark.parametrize("params", FILTERS)
def test_summary_counts_equal_the_full_listing(api, fleet, params):
    listing = _get(api, **params)
    summary = _get(api, summary="true", **params)
    assert "nodes" not in summary and "next_cursor" not in summary
    statuses = Counter(n["node_status"] for n in listing["nodes"])
    assert summary["total"] == len(listing["nodes"]) == listing["total"]
    for status in ("up", "stale", "unknown"):
        assert summary[status] == statuses[status] == listing[status]
    per_release = Counter(
        (n["release_id"], n["sequence"], n["ack_status"])
        for n in listing["nodes"]
        if n["release_id"]
    )
    assert {
        (r["release_id"], r["sequence"], r["ack_status"]): r["nodes"] for r in summary["by_release"]
    } == dict(per_release)
    assert summary["by_release"] == listing["by_release"]
    assert summary["latest_release"] == listing["latest_release"]


def test_summary_of_another_channel_counts_its_acks(api, fleet):
    summary = _get(api, channel="canary", summary="true")
    assert summary["total"] == 23
    assert summary["by_release"] == [
        {"release_id": "can-1", "sequence": 1, "ack_status": "active", "nodes": 3}
    ]


def test_limit_above_the_maximum_is_clamped(api, fleet):
    body = _get(api, limit="999999")
    assert body["limit"] == 10000 and len(body["nodes"]) == 23


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "-3"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": "c" * 257}, "cursor"),
        ({"cursor": "node\x00"}, "cursor"),
        ({"node_status": "down"}, "node_status"),
        ({"ack_status": "done"}, "ack_status"),
        ({"release_id": ""}, "release_id"),
        ({"release_id": "r" * 257}, "release_id"),
        ({"summary": "maybe"}, "summary"),
    ],
)
def test_bad_parameters_are_400_naming_them(api, params, field):
    response = api.get("/v1/fleet", params)
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field
    assert body["error"].startswith(f"invalid field '{field}': ")


def test_an_unknown_release_filter_selects_nobody(api, fleet):
    body = _get(api, release_id="rel-none")
    assert body["nodes"] == [] and body["total"] == 0


def test_forget_after_hides_quiet_nodes_but_keeps_their_acks(api, settings):
    now = timezone.now()
    release = ReleaseFactory(release_id="rel-f", sequence=1)
    EventFactory(node_id="quiet", received_at=now - timedelta(hours=3))
    NodeAckFactory(node_id="quiet", release=release, updated_at=now - timedelta(hours=3))
    EventFactory(node_id="lively", received_at=now - timedelta(hours=3))
    NodeAckFactory(node_id="lively", release=release, updated_at=now)  # an ack is being heard
    EventFactory(node_id="chatty", received_at=now)

    assert _get(api)["total"] == 3
    settings.FLEET_FORGET_AFTER_SECONDS = 3600
    body = _get(api)
    assert [n["node_id"] for n in body["nodes"]] == ["chatty", "lively"]
    assert (body["total"], body["up"], body["stale"]) == (2, 1, 1)
    assert _get(api, summary="true")["total"] == 2
    # the forgotten node's acks are all still there
    acks = api.get("/v1/nodes/quiet/acks").json()
    assert [a["release_id"] for a in acks["acks"]] == ["rel-f"]
    assert {a["node_id"] for a in api.get("/v1/releases/rel-f/acks").json()["acks"]} == {
        "quiet",
        "lively",
    }
    # it comes back as soon as it is heard from again
    EventFactory(node_id="quiet", received_at=timezone.now())
    assert "quiet" in {n["node_id"] for n in _get(api)["nodes"]}


def test_events_and_acks_through_the_api_reach_the_fleet_view(api):
    api.post("/v1/releases", {"release_id": "rel-api", "channel": "stable"}, format="json")
    batch = {
        "events": [
            {
                "event_id": f"e-{i}",
                "event_type": "app.heartbeat",
                "node_id": node,
                "timestamp": "2026-04-07T10:00:00Z",
            }
            for i, node in enumerate(["api-a", "api-b", "api-a"])
        ]
    }
    assert api.post("/v1/events", batch, format="json").status_code == 200
    assert api.post("/v1/events", batch, format="json").json()["inserted"] == 0  # a retry
    ack = {"release_id": "rel-api", "status": "pending"}
    assert api.post("/v1/nodes/api-c/ack", ack, format="json").status_code == 201
    ack["status"] = "active"
    assert api.post("/v1/nodes/api-a/ack", ack, format="json").status_code == 201
    nodes = {n["node_id"]: n for n in _get(api)["nodes"]}
    assert (nodes["api-a"]["node_status"], nodes["api-a"]["ack_status"]) == ("up", "active")
    assert nodes["api-a"]["last_seen"] is not None
    assert (nodes["api-b"]["node_status"], nodes["api-b"]["release_id"]) == ("up", None)
    assert (nodes["api-c"]["node_status"], nodes["api-c"]["ack_status"]) == ("unknown", "pending")
    # the newest ack wins: api-c moves on
    api.post("/v1/nodes/api-c/ack", {"release_id": "rel-api", "status": "failed"}, format="json")
    assert _get(api, node_status="unknown")["nodes"][0]["ack_status"] == "failed"


def test_release_acks_are_paged_with_count_the_total(api):
    release = ReleaseFactory(release_id="rel-many", sequence=1)
    for i in range(11):
        NodeAckFactory(node_id=f"node-{i:02d}", release=release)
    whole = api.get("/v1/releases/rel-many/acks").json()
    assert whole["count"] == 11 and whole["next_cursor"] is None and whole["limit"] == 1000
    seen, cursor = [], None
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/releases/rel-many/acks", params).json()
        assert page["count"] == 11
        seen += page["acks"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == whole["acks"]
    assert api.get("/v1/releases/rel-many/acks", {"limit": "x"}).json()["field"] == "limit"
    assert api.get("/v1/releases/rel-many/acks", {"cursor": ""}).status_code == 400


def test_node_acks_are_paged_newest_first(api):
    now = timezone.now()
    for i in range(7):
        release = ReleaseFactory(release_id=f"rel-{i}", sequence=i + 1)
        # two acks share an updated_at: the insertion order breaks the tie
        NodeAckFactory(node_id="busy", release=release, updated_at=now - timedelta(seconds=i // 2))
    whole = api.get("/v1/nodes/busy/acks").json()
    assert whole["count"] == 7
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/nodes/busy/acks", params).json()
        assert page["count"] == 7
        seen += page["acks"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == whole["acks"]
    assert [a["release_id"] for a in seen] == [
        "rel-1",
        "rel-0",
        "rel-3",
        "rel-2",
        "rel-5",
        "rel-4",
        "rel-6",
    ]
    for bad_cursor in ("not-a-key", "12", "1.2.3", ""):
        bad = api.get("/v1/nodes/busy/acks", {"cursor": bad_cursor})
        assert bad.status_code == 400 and bad.json()["field"] == "cursor", bad_cursor
    # a position past every ack: an empty last page
    assert api.get("/v1/nodes/busy/acks", {"cursor": "1.1"}).json()["acks"] == []


def test_the_largest_stale_threshold_counts_every_seen_node_up(api, fleet):
    body = _get(api, stale_threshold="999999999999999998", summary="true")
    assert (body["up"], body["stale"], body["unknown"]) == (20, 0, 3)


def test_the_data_migration_rebuilds_the_same_fleet_view(api, fleet):
    """releases 0004 fills the fleet tables from the events and acks already stored."""
    from importlib import import_module
    from types import SimpleNamespace

    from django.apps import apps
    from django.db import connection

    from releases.models import FleetNode

    EventFactory(node_id="n-01")  # its newest event now
    before = _get(api, stale_threshold=60)
    FleetNode.objects.all().delete()  # and their channel acks (cascade)
    assert _get(api)["total"] == 0
    import_module("releases.migrations.0004_fill_fleet_tables").fill(
        apps, SimpleNamespace(connection=connection)
    )
    after = _get(api, stale_threshold=60)
    assert after["nodes"] == before["nodes"]
    assert after["by_release"] == before["by_release"]

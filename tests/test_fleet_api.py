"""GET /v1/fleet: per-node status from events, newest ack per channel, bounded queries."""

from __future__ import annotations

from datetime import timedelta

import factory
import pytest
from django.utils import timezone

from tests.factories import EventFactory, NodeAckFactory, ReleaseFactory

pytestmark = pytest.mark.django_db


def test_empty_fleet(api):
    response = api.get("/v1/fleet")
    assert response.status_code == 200
    body = response.json()
    assert body["channel"] == "stable"
    assert body["stale_threshold"] == 60
    assert (body["total"], body["up"], body["stale"], body["unknown"]) == (0, 0, 0, 0)
    assert body["latest_release"] is None
    assert body["nodes"] == []
    assert body["generated_at"].endswith("Z")


def test_fleet_statuses_acks_and_latest_release(api):
    now = timezone.now()
    old = ReleaseFactory(release_id="rel-1", sequence=1, policy_ref="p:1")
    new = ReleaseFactory(release_id="rel-2", sequence=2, policy_ref="p:2")
    canary = ReleaseFactory(release_id="can-1", channel="canary", sequence=1)
    # node-up: recent event; newest ack of the channel is rel-2 (updated last)
    EventFactory(node_id="node-up", received_at=now - timedelta(minutes=10))
    EventFactory(node_id="node-up", received_at=now - timedelta(seconds=5))
    NodeAckFactory(
        node_id="node-up", release=new, status="pending", updated_at=now - timedelta(seconds=30)
    )
    NodeAckFactory(
        node_id="node-up", release=old, status="active", updated_at=now - timedelta(seconds=90)
    )
    # node-stale: last event 2 minutes ago, acked only a canary release
    EventFactory(node_id="node-stale", received_at=now - timedelta(minutes=2))
    NodeAckFactory(node_id="node-stale", release=canary, status="active", updated_at=now)
    # node-acks-only: never sent an event
    NodeAckFactory(node_id="node-acks-only", release=old, status="failed", updated_at=now)

    response = api.get("/v1/fleet")
    assert response.status_code == 200
    body = response.json()
    assert (body["total"], body["up"], body["stale"], body["unknown"]) == (3, 1, 1, 1)
    assert body["latest_release"]["release_id"] == "rel-2"
    assert body["latest_release"]["sequence"] == 2
    nodes = {n["node_id"]: n for n in body["nodes"]}
    assert [n["node_id"] for n in body["nodes"]] == ["node-acks-only", "node-stale", "node-up"]
    up = nodes["node-up"]
    assert (up["node_status"], up["release_id"], up["ack_status"], up["sequence"]) == (
        "up",
        "rel-2",
        "pending",
        2,
    )
    assert up["last_seen"].endswith("Z")
    stale = nodes["node-stale"]
    assert (stale["node_status"], stale["release_id"], stale["ack_status"]) == ("stale", None, None)
    only = nodes["node-acks-only"]
    assert (
        only["node_status"],
        only["last_seen"],
        only["release_id"],
        only["ack_status"],
        only["sequence"],
    ) == ("unknown", None, "rel-1", "failed", 1)

    # the same fleet seen from the canary channel, with a longer stale threshold
    body = api.get("/v1/fleet?channel=canary&stale_threshold=3600").json()
    assert (body["channel"], body["stale_threshold"]) == ("canary", 3600)
    assert (body["up"], body["stale"], body["unknown"]) == (2, 0, 1)
    assert body["latest_release"]["release_id"] == "can-1"
    nodes = {n["node_id"]: n for n in body["nodes"]}
    assert (nodes["node-stale"]["release_id"], nodes["node-stale"]["sequence"]) == ("can-1", 1)
    assert nodes["node-up"]["release_id"] is None


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", "", "99999999999999999999"])
def test_invalid_stale_threshold_is_400(api, value):
    response = api.get("/v1/fleet", {"stale_threshold": value})
    assert response.status_code == 400
    assert response.json()["field"] == "stale_threshold"


def test_invalid_channel_is_400(api):
    for value in ("", "c" * 257):
        response = api.get("/v1/fleet", {"channel": value})
        assert response.status_code == 400
        assert response.json()["field"] == "channel"


def test_query_count_is_bounded_whatever_the_fleet_size(api, django_assert_max_num_queries):
    now = timezone.now()
    releases = [ReleaseFactory(release_id=f"rel-{i}", sequence=i + 1) for i in range(3)]
    EventFactory.create_batch(
        400,
        node_id=factory.Iterator([f"node-{i:04d}" for i in range(300)]),
        received_at=now,
    )
    for i in range(0, 350, 2):
        NodeAckFactory(node_id=f"node-{i:04d}", release=releases[i % 3], updated_at=now)
    with django_assert_max_num_queries(5):
        response = api.get("/v1/fleet")
    body = response.json()
    assert body["total"] == 325  # 300 with events + 25 with acks only
    assert body["up"] == 300 and body["unknown"] == 25
    assert sum(1 for n in body["nodes"] if n["release_id"]) == 175

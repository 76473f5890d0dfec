"""Node acks: POST /v1/nodes/{id}/ack (upsert) and both ack lists."""

from __future__ import annotations

import re

import pytest

from core.params import parse_rfc3339
from releases.models import NodeAck
from tests.factories import NodeAckFactory, ReleaseFactory

pytestmark = pytest.mark.django_db

RFC3339_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z")


def ack(api, node_id, **body):
    return api.post(f"/v1/nodes/{node_id}/ack", body, format="json")


def test_first_ack_is_201_then_200_upsert(api, monkeypatch):
    pokes = []
    monkeypatch.setattr("rollouts.evaluator.poke", lambda: pokes.append(1))
    ReleaseFactory(release_id="rel-1")
    first = ack(
        api,
        "node-a",
        release_id="rel-1",
        status="pending",
        lock_fingerprint="sha256:aa",
        acked_at="2026-04-07T12:00:00+02:00",
    )
    assert first.status_code == 201
    body = first.json()
    assert body == {
        "node_id": "node-a",
        "release_id": "rel-1",
        "status": "pending",
        "lock_fingerprint": "sha256:aa",
        "message": None,
        "acked_at": "2026-04-07T10:00:00Z",
        "updated_at": body["updated_at"],
    }
    assert RFC3339_Z.fullmatch(body["updated_at"])

    second = ack(api, "node-a", release_id="rel-1", status="active", message="running")
    assert second.status_code == 200
    body2 = second.json()
    assert (body2["status"], body2["message"], body2["lock_fingerprint"]) == (
        "active",
        "running",
        None,
    )
    assert RFC3339_Z.fullmatch(body2["acked_at"]) and body2["acked_at"] != "2026-04-07T10:00:00Z"
    assert parse_rfc3339(body2["updated_at"]) >= parse_rfc3339(body["updated_at"])  # as times
    assert NodeAck.objects.count() == 1
    assert len(pokes) == 2  # rollout gates re-evaluate after every ack


def test_ack_for_unknown_release_is_404(api):
    response = ack(api, "node-a", release_id="ghost", status="active")
    assert response.status_code == 404
    assert response.json() == {"error": "release 'ghost' not found", "release_id": "ghost"}
    assert not NodeAck.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "active"}, "release_id"),
        ({"release_id": 7, "status": "active"}, "release_id"),
        ({"release_id": "rel-1"}, "status"),
        ({"release_id": "rel-1", "status": "activated"}, "status"),
        ({"release_id": "rel-1", "status": None}, "status"),
        (
            {"release_id": "rel-1", "status": "active", "acked_at": "2026-04-07T10:00:00"},
            "acked_at",
        ),
        ({"release_id": "rel-1", "status": "active", "acked_at": "yesterday"}, "acked_at"),
        ({"release_id": "rel-1", "status": "active", "acked_at": 1700000000}, "acked_at"),
        ({"release_id": "rel-1", "status": "active", "message": {"a": 1}}, "message"),
        ({"release_id": "rel-1", "status": "active", "lock_fingerprint": 3}, "lock_fingerprint"),
    ],
)
def test_invalid_ack_is_400_naming_the_field(api, body, field):
    ReleaseFactory(release_id="rel-1")
    response = api.post("/v1/nodes/node-a/ack", body, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert not NodeAck.objects.exists()


@pytest.mark.parametrize("status", ["pending", "acknowledged", "active", "failed", "rejected"])
def test_every_listed_status_is_accepted(api, status):
    ReleaseFactory(release_id="rel-1")
    assert ack(api, "n", release_id="rel-1", status=status).json()["status"] == status


def test_node_id_longer_than_256_is_400(api):
    ReleaseFactory(release_id="rel-1")
    response = ack(api, "n" * 257, release_id="rel-1", status="active")
    assert response.status_code == 400
    assert response.json()["field"] == "node_id"
    assert api.get("/v1/nodes/" + "n" * 257 + "/acks").status_code == 400


def test_ack_get_is_405(api):
    response = api.get("/v1/nodes/n/ack")
    assert response.status_code == 405
    assert response["Allow"] == "POST, OPTIONS"


def test_release_acks_list(api, django_assert_max_num_queries):
    release = ReleaseFactory(release_id="rel-1")
    ack(api, "node-b", release_id="rel-1", status="failed", message="boom")
    ack(api, "node-a", release_id="rel-1", status="active")
    NodeAckFactory(node_id="node-c")  # another release
    with django_assert_max_num_queries(2):
        response = api.get("/v1/releases/rel-1/acks")
    assert response.status_code == 200
    body = response.json()
    assert body["release_id"] == release.release_id
    assert body["count"] == 2
    assert [(a["node_id"], a["status"]) for a in body["acks"]] == [
        ("node-a", "active"),
        ("node-b", "failed"),
    ]
    assert body["acks"][1]["message"] == "boom"


def test_release_acks_of_unknown_release_is_404(api):
    response = api.get("/v1/releases/nope/acks")
    assert response.status_code == 404
    assert response.json()["release_id"] == "nope"


def test_node_acks_list_newest_first(api, django_assert_max_num_queries):
    for rid in ("rel-1", "rel-2", "rel-3"):
        ReleaseFactory(release_id=rid)
    ack(api, "node-a", release_id="rel-1", status="active")
    ack(api, "node-a", release_id="rel-2", status="pending")
    ack(api, "node-b", release_id="rel-3", status="active")
    ack(api, "node-a", release_id="rel-1", status="failed")  # updated last
    with django_assert_max_num_queries(1):
        response = api.get("/v1/nodes/node-a/acks")
    assert response.status_code == 200
    body = response.json()
    assert (body["node_id"], body["count"]) == ("node-a", 2)
    assert [(a["release_id"], a["status"]) for a in body["acks"]] == [
        ("rel-1", "failed"),
        ("rel-2", "pending"),
    ]


def test_node_without_acks_is_200_empty(api):
    response = api.get("/v1/nodes/quiet/acks")
    assert response.status_code == 200
    assert response.json() == {
        "node_id": "quiet",
        "acks": [],
        "count": 0,
        "limit": 1000,
        "next_cursor": None,
    }

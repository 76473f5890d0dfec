"""Rollout-aware polling: `GET /v1/releases/latest?channel=c&node_id=n` (API.md §4 "Which
release a node gets"), checked against an independent computation of the bucket formula."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from tests.factories import NodeAckFactory, ReleaseFactory, RolloutPlanFactory

pytestmark = pytest.mark.django_db

NODES = [f"edge-{i:04d}" for i in range(1000)]


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


def expected_bucket(plan_id: str, node_id: str) -> float:
    digest = hashlib.sha256((plan_id + ":" + node_id).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 10000 / 100


def release_for(api, node_id: str, channel: str = "stable") -> str | None:
    response = api.get(f"/v1/releases/latest?channel={channel}&node_id={node_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.content
    return orjson.loads(response.content)["release_id"]


@pytest.fixture
def channel():
    old = ReleaseFactory(release_id="rel-old", channel="stable", sequence=1)
    new = ReleaseFactory(release_id="rel-new", channel="stable", sequence=2)
    return old, new


def assert_cohort(api, in_rollout, nodes=NODES):
    """`nodes` through the selector the poll endpoint uses, every 8th of them through HTTP."""
    from releases.models import Release
    from rollouts.selectors import desired_release_for_node

    latest = Release.objects.get(release_id="rel-new")
    expected = {n: "rel-new" if in_rollout(n) else "rel-old" for n in nodes}
    got = {n: desired_release_for_node(latest=latest, node_id=n).release_id for n in nodes}
    assert {n for n in nodes if got[n] != expected[n]} == set()
    wrong = [n for n in nodes[::8] if release_for(api, n) != expected[n]]
    assert wrong == []


def test_membership_follows_the_bucket_formula_for_1000_nodes(api, channel):
    _old, new = channel
    RolloutPlanFactory(
        plan_id="plan-web",
        release=new,
        stages=[
            {"stage_id": "canary", "percent": 5, "nodes": ["edge-0999"]},
            {"stage_id": "half", "percent": 37.5, "nodes": ["edge-0998"]},
            {"stage_id": "all", "percent": 100},
        ],
    )
    canary = {n for n in NODES if expected_bucket("plan-web", n) < 5}
    assert 20 < len(canary) < 80  # the formula spreads nodes: about 5% of 1000
    some = [*NODES[::3], "edge-0998", "edge-0999"]
    assert_cohort(api, lambda n: n in canary or n == "edge-0999", some)

    api.post("/v1/rollouts/plan-web/promote")
    assert_cohort(
        api, lambda n: expected_bucket("plan-web", n) < 37.5 or n in ("edge-0999", "edge-0998")
    )

    # Halted: the halted stage takes nobody new; the furthest promoted stage still counts.
    api.post("/v1/rollouts/plan-web/halt")
    assert_cohort(api, lambda n: n in canary or n == "edge-0999", some)


def test_without_node_id_it_is_the_plain_latest(api, channel):
    RolloutPlanFactory(plan_id="p", release=channel[1], stages=[{"stage_id": "s", "percent": 1}])
    response = api.get("/v1/releases/latest?channel=stable")
    assert response.status_code == 200
    assert orjson.loads(response.content)["release_id"] == "rel-new"


def test_no_plan_means_everyone_gets_the_latest(api, channel):
    assert {release_for(api, n) for n in NODES[:50]} == {"rel-new"}


def test_nodes_that_acked_active_keep_the_new_release(api, channel):
    _old, new = channel
    RolloutPlanFactory(plan_id="p", release=new, stages=[{"stage_id": "s", "percent": 1}])
    outside = [n for n in NODES if expected_bucket("p", n) >= 1][:3]
    NodeAckFactory(node_id=outside[0], release=new, status="active")
    NodeAckFactory(node_id=outside[1], release=new, status="failed")
    assert release_for(api, outside[0]) == "rel-new"
    assert release_for(api, outside[1]) == "rel-old"
    assert release_for(api, outside[2]) == "rel-old"


@pytest.mark.parametrize("action", ["cancel", "rollback"])
def test_cancelled_and_rolled_back_plans_take_nobody_new(api, channel, action):
    _old, new = channel
    RolloutPlanFactory(
        plan_id="p", release=new, stages=[{"stage_id": "s", "percent": 50, "nodes": ["edge-0001"]}]
    )
    inside = [n for n in NODES if expected_bucket("p", n) < 50][:2]
    NodeAckFactory(node_id=inside[0], release=new, status="active")
    assert release_for(api, inside[1]) == "rel-new"
    if action == "cancel":
        api.post("/v1/rollouts/p/cancel")
    else:
        api.post(
            "/v1/rollouts/p/recover",
            orjson.dumps({"strategy": "rollback"}),
            content_type="application/json",
        )
    assert release_for(api, inside[0]) == "rel-new"  # already active: keeps it
    assert release_for(api, inside[1]) == "rel-old"
    assert release_for(api, "edge-0001") == "rel-old"


def test_completed_plan_keeps_its_last_stage_share(api, channel):
    RolloutPlanFactory(plan_id="p", release=channel[1], stages=[{"stage_id": "s", "percent": 100}])
    api.post("/v1/rollouts/p/promote")
    assert {release_for(api, n) for n in NODES[:100]} == {"rel-new"}


def test_no_previous_release_is_404(api):
    only = ReleaseFactory(release_id="rel-first", channel="edge", sequence=1)
    RolloutPlanFactory(plan_id="p", release=only, stages=[{"stage_id": "s", "percent": 1}])
    outside = next(n for n in NODES if expected_bucket("p", n) >= 1)
    response = api.get(f"/v1/releases/latest?channel=edge&node_id={outside}")
    assert response.status_code == 404
    assert "error" in response.json()


def test_poll_query_count(api, channel, django_assert_max_num_queries):
    RolloutPlanFactory(plan_id="p", release=channel[1], stages=[{"stage_id": "s", "percent": 1}])
    outside = next(n for n in NODES if expected_bucket("p", n) >= 1)
    with django_assert_max_num_queries(8):
        assert release_for(api, outside) == "rel-old"

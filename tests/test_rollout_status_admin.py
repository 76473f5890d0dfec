"""The admin pages of issue 15 with Django's test client: a plan's per-stage node counts and its
failed/silent nodes, the plan nodes page, the plan list's approval/adoption/halt columns, the
releases' adoption, the fleet page (filters, paging) and the node page. The numbers are the
API's (`GET …/status`, `…/nodes`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from rollouts import clock, services
from tests.factories import EventFactory, NodeAckFactory, ReleaseFactory, RolloutPlanFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
CANARY = ["n-a", "n-b", "n-c", "n-d"]
PLANS = "/admin/rollouts/rolloutplan/"


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


@pytest.fixture
def ops(client, django_user_model) -> Client:
    client.force_login(django_user_model.objects.create_superuser("ops", "o@example.com", None))
    return client


@pytest.fixture
def plan(monkeypatch):
    """As in test_rollout_progress: canary = n-a (active), n-b (failed), n-c (pending), n-d
    (silent); `all` adds n-e..n-h (events only) and n-z (an ack of another release)."""
    now = [T0]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    release = ReleaseFactory(release_id="rel-new")
    plan = RolloutPlanFactory(
        plan_id="p1",
        release=release,
        stages=[
            {
                "stage_id": "canary",
                "percent": 0.01,
                "nodes": CANARY,
                "gates": [{"kind": "manual"}],
            },
            {"stage_id": "all", "percent": 100},
        ],
    )
    for node, status in (("n-a", "active"), ("n-b", "failed"), ("n-c", "pending")):
        NodeAckFactory(node_id=node, release=release, status=status)
    for node in ["n-d", "n-e", "n-f", "n-g", "n-h"]:
        EventFactory(node_id=node)
    NodeAckFactory(node_id="n-z", release=ReleaseFactory(release_id="rel-old"), status="active")
    now[0] = T0 + timedelta(minutes=11)
    return plan


def counts_shown(html: str, cell_id: str) -> dict[str, int]:
    """{state: count} of the node bar inside the element with this id or data-stage-id."""
    match = re.search(rf'(id|data-stage-id)="{cell_id}".*?</ul>', html, re.S)
    assert match, cell_id
    return {
        state: int(n)
        for state, n in re.findall(
            r'data-state="(\w+)">(?:<strong class="count">|<span class="state[^"]*">'
            r'<span class="count">)(\d+)',
            match[0],
        )
    }


def test_plan_page_shows_the_status_counts_and_links_failed_and_silent_nodes(ops, api, plan):
    status = api.get("/v1/rollouts/p1/status").json()
    html = ops.get(f"{PLANS}{plan.pk}/change/").content.decode()
    for stage in status["stages"]:
        shown = counts_shown(html, stage["stage_id"])
        assert shown == {k: v for k, v in stage["nodes"].items() if v}, stage["stage_id"]
    assert counts_shown(html, "rollout-nodes") == {k: v for k, v in status["nodes"].items() if v}
    failed = re.search(r'id="rollout-failed-nodes".*?</div>', html, re.S)[0]
    assert "1 failed node (stage canary)" in failed and "/admin/fleet/nodes/n-b/" in failed
    silent = re.search(r'id="rollout-silent-nodes".*?</div>', html, re.S)[0]
    assert "/admin/fleet/nodes/n-d/" in silent
    assert 'data-refresh-seconds="10"' in html  # published: it runs, the page refreshes


def test_a_terminal_plan_page_does_not_refresh(ops, plan):
    services.rollout_cancel(plan_id="p1")
    html = ops.get(f"{PLANS}{plan.pk}/change/").content.decode()
    assert 'data-refresh-seconds="0"' in html


def test_plan_nodes_page_lists_the_nodes_behind_a_count(ops, api, plan):
    api_page = api.get("/v1/rollouts/p1/nodes?stage_id=all&state=waiting").json()
    response = ops.get(f"{PLANS}{plan.pk}/nodes/?stage_id=all&state=waiting")
    html = response.content.decode()
    assert response.status_code == 200
    assert re.findall(r'<tr data-node-id="([^"]+)"', html) == [
        n["node_id"] for n in api_page["nodes"]
    ]
    assert f"<strong>{api_page['total']}</strong> nodes of stage all" in html
    assert ops.get(f"{PLANS}{plan.pk}/nodes/?stage_id=nope").status_code == 404
    assert ops.get(f"{PLANS}{plan.pk}/nodes/?state=asleep").status_code == 404


def test_plan_list_shows_awaiting_approval_adoption_and_halted_reason(ops, plan):
    other = RolloutPlanFactory(plan_id="p2", stages=[{"stage_id": "only", "percent": 100}])
    services.rollout_halt(plan_id="p2", reason="bad canary")
    html = ops.get(PLANS).content.decode()
    row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*>p1</a>.*?</tr>", html, re.S)[0]
    assert "awaiting approval (canary)" in row
    assert "1 active of 3 acks, 1 failed" in row
    row2 = re.search(r"<tr[^>]*>(?:(?!</tr>).)*>p2</a>.*?</tr>", html, re.S)[0]
    assert other.plan_id == "p2" and "bad canary" in row2 and "awaiting approval" not in row2
    services.rollout_gate_approve(plan_id="p1", stage_id="canary")
    html = ops.get(PLANS).content.decode()
    assert "awaiting approval (canary)" not in html


def test_release_list_and_page_show_adoption_per_ack_status(ops, plan):
    html = ops.get("/admin/releases/release/").content.decode()
    row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*rel-new.*?</tr>", html, re.S)[0]
    assert "1 active" in row and "1 pending" in row and "1 failed" in row
    assert "status=failed" in row
    page = ops.get(f"/admin/releases/release/{plan.release.pk}/change/").content.decode()
    assert "1 active" in page and "1 failed" in page


def test_fleet_page_filters_and_pages(ops, api, plan):
    html = ops.get("/admin/fleet/").content.decode()
    fleet = api.get("/v1/fleet?channel=stable").json()
    assert f"<strong>{fleet['total']}</strong> nodes" in html
    assert set(re.findall(r'<tr data-node-id="([^"]+)"', html)) == {
        n["node_id"] for n in fleet["nodes"]
    }
    failed = ops.get("/admin/fleet/?ack_status=failed").content.decode()
    assert re.findall(r'<tr data-node-id="([^"]+)"', failed) == ["n-b"]
    unknown = ops.get("/admin/fleet/?status=unknown").content.decode()
    assert re.findall(r'<tr data-node-id="([^"]+)"', unknown) == ["n-a", "n-b", "n-c", "n-z"]
    released = ops.get("/admin/fleet/?release=rel-old").content.decode()
    assert re.findall(r'<tr data-node-id="([^"]+)"', released) == ["n-z"]
    for n in range(120):
        EventFactory(node_id=f"x-{n:03d}")
    first = ops.get("/admin/fleet/?status=up").content.decode()
    assert "<strong>125</strong> nodes, page 1 of 2" in first
    assert len(re.findall(r'<tr data-node-id="', first)) == 100
    second = ops.get("/admin/fleet/?status=up&p=2").content.decode()
    assert len(re.findall(r'<tr data-node-id="', second)) == 25


def test_node_page_shows_acks_events_and_its_plan_and_stage(ops, plan):
    NodeAckFactory(node_id="n-b", release=ReleaseFactory(release_id="rel-older"), status="active")
    html = ops.get("/admin/fleet/nodes/n-b/").content.decode()
    assert re.findall(r'<tr data-release-id="([^"]+)"', html) == ["rel-older", "rel-new"]
    row = re.search(r'<tr data-plan-id="p1">.*?</tr>', html, re.S)[0]
    assert "canary" in row and "failed" in row
    events = ops.get("/admin/fleet/nodes/n-e/").content.decode()
    assert "app.heartbeat" in events and 'class="node-entry-stage">all<' in events
    assert ops.get("/admin/fleet/nodes/nobody/").status_code == 404


def test_fleet_pages_need_a_staff_login_and_the_view_permission(client, django_user_model, plan):
    assert client.get("/admin/fleet/").status_code == 302  # to the login page
    user = django_user_model.objects.create_user("staff", is_staff=True)
    client.force_login(user)
    assert client.get("/admin/fleet/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_nodeack"))
    assert client.get("/admin/fleet/nodes/n-a/").status_code == 200

"""What the dashboard's numbers mean (docs/metrics.md), computed in-process against the store:
transitions and halts by trigger, approvals waiting, stuck plans, fleet status, release
adoption, store size, and the fleet counts' cache."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest

from core import store_metrics
from releases import metrics as release_metrics
from releases.selectors import fleet_status_counts, release_ack_counts
from rollouts import metrics as rollout_metrics
from rollouts import services
from rollouts.evaluator import evaluate_open_stages
from rollouts.selectors import rollout_live_summary
from tests.factories import EventFactory, NodeAckFactory, ReleaseFactory
from tests.test_rollout_gates import Clock, plan_with

pytestmark = pytest.mark.django_db


@pytest.fixture
def fake_clock(monkeypatch) -> Clock:
    from rollouts import clock

    fake = Clock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


def _value(counter, **labels) -> float:
    return counter.labels(**labels)._value.get()


def test_transitions_and_halts_are_counted_by_trigger(
    fake_clock, django_capture_on_commit_callbacks
):
    plan = plan_with([{"kind": "ack_failure", "max_ratio": 0.25}, {"kind": "manual"}])
    before = {
        "paused": _value(rollout_metrics.TRANSITIONS, to="paused", trigger="operator"),
        "active": _value(rollout_metrics.TRANSITIONS, to="active", trigger="operator"),
        "halted": _value(rollout_metrics.TRANSITIONS, to="halted", trigger="automatic"),
        "auto": _value(rollout_metrics.HALTS, trigger="automatic"),
        "op": _value(rollout_metrics.HALTS, trigger="operator"),
    }
    with django_capture_on_commit_callbacks(execute=True):
        services.rollout_pause(plan_id=plan.plan_id, operator="alice")
        services.rollout_resume(plan_id=plan.plan_id, operator="alice")
    for node in ("a", "b"):
        NodeAckFactory(node_id=node, release=plan.release, status="failed")
    with django_capture_on_commit_callbacks(execute=True):
        assert [o.action for _, o in evaluate_open_stages()] == ["halt"]
    assert _value(rollout_metrics.TRANSITIONS, to="paused", trigger="operator") == (
        before["paused"] + 1
    )
    assert _value(rollout_metrics.TRANSITIONS, to="active", trigger="operator") == (
        before["active"] + 1
    )
    assert _value(rollout_metrics.TRANSITIONS, to="halted", trigger="automatic") == (
        before["halted"] + 1
    )
    assert _value(rollout_metrics.HALTS, trigger="automatic") == before["auto"] + 1
    assert _value(rollout_metrics.HALTS, trigger="operator") == before["op"]


def test_a_rolled_back_transaction_is_neither_counted_nor_logged(
    fake_clock, django_capture_on_commit_callbacks, caplog
):
    plan = plan_with([{"kind": "manual"}])
    before = _value(rollout_metrics.TRANSITIONS, to="paused", trigger="operator")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.rollout_pause(plan_id=plan.plan_id, operator="alice")
    assert any("_apply" in c.__qualname__ for c in callbacks)  # deferred to the commit
    assert _value(rollout_metrics.TRANSITIONS, to="paused", trigger="operator") == before
    assert "pause by" not in caplog.text


def test_approvals_waiting_and_stuck_plans(fake_clock, api):
    plan = plan_with([{"kind": "manual"}])
    fake_clock.advance(minutes=30)
    live = rollout_live_summary(stuck_threshold=3600)
    assert live.pending_approvals == 1
    assert live.oldest_pending_approval_seconds == 1800
    assert (live.stuck_plans, live.max_idle_seconds) == (0, 1800)
    fake_clock.advance(minutes=31)
    live = rollout_live_summary(stuck_threshold=3600)
    assert (live.stuck_plans, live.max_idle_seconds) == (1, 3660)
    services.rollout_gate_approve(plan_id=plan.plan_id, stage_id="s1", operator="alice")
    live = rollout_live_summary(stuck_threshold=3600)
    assert live.pending_approvals == 0 and live.oldest_pending_approval_seconds == 0
    assert live.stuck_plans == 0  # promoted just now


def test_fleet_status_counts_as_the_fleet_view_tells_them(api):
    now = timezone.now()
    release = ReleaseFactory(release_id="r1")
    EventFactory(node_id="fresh", received_at=now)
    EventFactory(node_id="old", received_at=now - timedelta(minutes=10))
    NodeAckFactory(node_id="silent", release=release, status="pending")
    NodeAckFactory(node_id="fresh", release=release, status="active")
    assert fleet_status_counts(stale_threshold=60) == {"up": 1, "stale": 1, "unknown": 1}
    fleet = api.get("/v1/fleet?channel=stable&stale_threshold=60").json()
    assert (fleet["up"], fleet["stale"], fleet["unknown"]) == (1, 1, 1)


def test_release_adoption_covers_the_newest_releases_of_each_channel():
    old, mid, new = (ReleaseFactory(release_id=f"s{i}", channel="stable") for i in (1, 2, 3))
    beta = ReleaseFactory(release_id="b1", channel="beta")
    NodeAckFactory(node_id="n1", release=new, status="active")
    NodeAckFactory(node_id="n2", release=new, status="failed")
    NodeAckFactory(node_id="n1", release=old, status="active")
    NodeAckFactory(node_id="n3", release=beta, status="pending")
    rows = release_ack_counts(per_channel=2)
    assert {r[1] for r in rows} == {"s2", "s3", "b1"}  # s1 is not among the 2 newest
    counts = {(channel, release, status): n for channel, release, status, n in rows}
    assert counts[("stable", "s3", "active")] == 1
    assert counts[("stable", "s3", "failed")] == 1
    assert counts[("stable", "s3", "pending")] == 0
    assert counts[("stable", mid.release_id, "active")] == 0
    assert counts[("beta", "b1", "pending")] == 1
    assert len(rows) == 3 * 5  # every ack status of every release listed


def test_fleet_counts_are_cached_between_scrapes(monkeypatch):
    calls = []

    def counting(**_):
        calls.append(1)
        return {"up": 2, "stale": 0, "unknown": 1}

    monkeypatch.setattr("releases.selectors.fleet_status_counts", counting)
    monkeypatch.setattr("releases.selectors.release_ack_counts", lambda **_: [])
    release_metrics.fleet_counts.clear()
    registry = CollectorRegistry()
    registry.register(release_metrics.FleetCollector())
    first = generate_latest(registry).decode()
    second = generate_latest(registry).decode()
    assert 'cp_fleet_nodes{status="up"} 2.0' in first and first == second
    assert len(calls) == 1  # one computation for both scrapes (CACHE_SECONDS)
    release_metrics.fleet_counts.clear()


def test_store_size_counts_the_wal(tmp_path):
    db = tmp_path / "orchestrator.sqlite3"
    db.write_bytes(b"x" * 4096)
    assert store_metrics.sqlite_size(str(db)) == 4096
    (tmp_path / "orchestrator.sqlite3-wal").write_bytes(b"x" * 1000)
    assert store_metrics.sqlite_size(str(db)) == 5096

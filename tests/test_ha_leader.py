"""Leader fencing in-process (API.md §7): a leader-only write commits only while the lease it
carries is the durable leader's; a stale lease's write is refused and rolled back. Runs on the
test database (SQLite, and PostgreSQL in the PostgreSQL run, where the check is `FOR SHARE`).
Also: the routes' answers on the single-process store, the policy entries and the metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from prometheus_client import CollectorRegistry, generate_latest

from core import ha, leader
from core.policy import POLICY, PUBLIC, VIEWER
from rollouts import clock
from rollouts.evaluator import evaluate_open_stages, evaluate_plan
from rollouts.models import RolloutPlan
from tests.factories import ReleaseFactory, RolloutPlanFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


@pytest.fixture
def fake_clock(monkeypatch):
    now = [T0]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    return now


def set_leader(epoch: int, token: str, holder: str = "r1") -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ha_leader")
        cursor.execute(
            "INSERT INTO ha_leader (id, epoch, token, holder_id, acquired_at, renewed_at) "
            "VALUES (1, %s, %s, %s, %s, %s)",
            [epoch, token, holder, T0, T0],
        )


def due_plan() -> RolloutPlan:
    """A plan whose first stage's soak has elapsed: the evaluator would promote it."""
    stages = [
        {"stage_id": "s1", "percent": 100, "gates": [{"kind": "time_soak", "seconds": 60}]},
        {"stage_id": "s2", "percent": 100},
    ]
    plan: RolloutPlan = RolloutPlanFactory.create(
        plan_id="p1", release=ReleaseFactory.create(), stages=stages
    )
    return plan


def test_a_stale_leases_promotion_is_refused_and_nothing_is_applied(fake_clock):
    plan = due_plan()
    fake_clock[0] = T0 + timedelta(minutes=5)
    set_leader(7, "new-token", holder="r2")  # another replica took over since
    with pytest.raises(leader.Fenced):
        evaluate_plan(plan_id="p1", lease=(6, "old-token"))
    with pytest.raises(leader.Fenced):
        evaluate_plan(plan_id="p1", lease=(7, "old-token"))  # same number, other lease
    plan.refresh_from_db()
    assert plan.current_stage_id == "s1"
    assert plan.version == RolloutPlan.objects.get(plan_id="p1").version
    # The current lease's promotion commits.
    outcome = evaluate_plan(plan_id="p1", lease=(7, "new-token"))
    assert outcome.action == "promote"
    assert RolloutPlan.objects.get(plan_id="p1").current_stage_id == "s2"


def test_a_fenced_pass_stops_at_the_first_refusal(fake_clock):
    due_plan()
    fake_clock[0] = T0 + timedelta(minutes=5)
    set_leader(2, "theirs")
    with pytest.raises(leader.NotLeader):
        evaluate_open_stages(keep_going=True, lease=(1, "mine"))
    assert RolloutPlan.objects.get(plan_id="p1").current_stage_id == "s1"


def test_everything_in_a_refused_leader_transaction_is_rolled_back():
    set_leader(3, "current")
    with pytest.raises(leader.Fenced), leader.leader_transaction((3, "stale")):
        ReleaseFactory(release_id="never")  # not reached: the check runs first
    with leader.leader_transaction((3, "current")):
        ReleaseFactory(release_id="kept")
    from releases.models import Release

    assert list(Release.objects.values_list("release_id", flat=True)) == ["kept"]


def test_a_follower_has_no_lease():
    follower = leader.Elector()
    assert follower.is_leader() is False
    with pytest.raises(leader.NotLeader):
        follower.lease()


def test_health_leader_before_and_after_a_leader(api):
    body = api.get("/v1/health/leader").json()
    assert body == {
        "current_epoch": 0,
        "holder_id": "",
        "acquired_at": None,
        "session_lock_held": False,
    }
    set_leader(4, "t", holder="cp-2")
    body = api.get("/v1/health/leader").json()
    assert body["current_epoch"] == 4 and body["holder_id"] == "cp-2"
    assert body["acquired_at"] == "2026-11-27T10:00:00Z"
    assert api.head("/v1/health/leader").status_code == 200


def test_ha_status_on_the_single_process_store(api):
    set_leader(1, "t", holder="solo")
    body = api.get("/v1/ha/status").json()
    assert body["leader"]["holder_id"] == "solo"
    assert body["role"] == "follower"  # this test process runs no elector
    assert body["database"] == {
        "role": "sqlite" if connection.vendor == "sqlite" else "primary",
        "sync_standbys_streaming": 0,
        "sync_standbys_required": 0,
        "standbys": body["database"]["standbys"],
    }
    assert set(body["pool"]) == {"size", "in_use", "idle", "waiting", "timeouts"}


def test_the_routes_are_in_the_policy_table():
    assert POLICY[("GET", "/v1/health/leader")] == PUBLIC
    assert POLICY[("GET", "/v1/ha/status")] == VIEWER


def test_operator_writes_are_gated_but_not_node_ingest_or_reads():
    assert ha.is_operator_write("POST", "/v1/releases")
    assert ha.is_operator_write("POST", "/v1/rollouts/{plan_id}/promote")
    assert ha.is_operator_write("POST", "/v1/rollouts")
    assert not ha.is_operator_write("POST", "/v1/events")
    assert not ha.is_operator_write("POST", "/v1/nodes/{node_id}/ack")
    assert not ha.is_operator_write("GET", "/v1/releases")


def test_sync_replica_requirement_is_validated():
    assert ha.parse_sync_replicas("0") == 0
    assert ha.parse_sync_replicas(" 2 ") == 2
    for bad in ("-1", "x", "65", ""):
        with pytest.raises(ValueError):
            ha.parse_sync_replicas(bad)


def test_shared_key_check_stores_then_refuses_another_key():
    ha.check_shared_keys("r1", {"rollout signing key": b"A"}, {})
    ha.check_shared_keys("r2", {"rollout signing key": b"A"}, {})  # same key: fine
    with pytest.raises(ha.SharedKeyMismatch) as err:
        ha.check_shared_keys("r3", {"rollout signing key": b"B"}, {"rollout signing key": "fix"})
    assert str(err.value) == (
        "this replica's rollout signing key differs from the one the other replicas use "
        "(first stored by r1); fix"
    )


def test_leader_metrics():
    registry = CollectorRegistry()
    registry.register(ha.HaCollector())
    text = generate_latest(registry).decode()
    for name in (
        "cp_leader_is_leader 0.0",
        "cp_leader_epoch 0.0",
        "cp_leader_campaigns_total",
        "cp_leader_fenced_writes_total",
        "cp_db_sync_standbys_streaming 0.0",
        "cp_db_replication_replay_lag_seconds 0.0",
    ):
        assert name in text

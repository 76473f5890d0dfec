"""Gate evaluation and automatic progress with a controllable clock (API.md §4 "Gates and
automatic progress", "Stuck and recover")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from rollouts import clock
from rollouts.cohort import bucket
from rollouts.evaluator import evaluate_open_stages
from tests.factories import EventFactory, NodeAckFactory, ReleaseFactory, RolloutPlanFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def fake_clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


def plan_with(gates, *, percent=100, nodes=None, plan_id="p1", stages_after=1):
    release = ReleaseFactory()
    first = {"stage_id": "s1", "percent": percent, "gates": gates}
    if nodes:
        first["nodes"] = nodes
    stages = [first] + [{"stage_id": f"s{i + 2}", "percent": 100} for i in range(stages_after)]
    return RolloutPlanFactory(plan_id=plan_id, release=release, stages=stages)


def gates_of(api, plan_id="p1", stage_id="s1"):
    response = api.get(f"/v1/rollouts/{plan_id}/stages/{stage_id}/gates")
    assert response.status_code == 200, response.content
    return response.json()


def status(api, plan_id="p1"):
    return api.get(f"/v1/rollouts/{plan_id}/status").json()


def ack(plan, node, state):
    return NodeAckFactory(node_id=node, release=plan.release, status=state)


def test_time_soak_promotes_once_the_soak_has_elapsed(api, fake_clock):
    plan_with([{"kind": "time_soak", "seconds": 1800}])
    fake_clock.advance(minutes=10)
    body = gates_of(api)
    assert body["stage_phase"] == "open"
    assert body["all_passed"] is False
    assert body["gates"] == [
        {"kind": "time_soak", "passed": False, "detail": "soak elapsed 10m of required 30m"}
    ]
    assert evaluate_open_stages() == []
    assert status(api)["current_stage_id"] == "s1"
    fake_clock.advance(minutes=20)
    assert gates_of(api)["all_passed"] is True
    changed = evaluate_open_stages()
    assert [(plan_id, outcome.action) for plan_id, outcome in changed] == [("p1", "promote")]
    after = status(api)
    assert after["phase"] == "active"
    assert after["current_stage_id"] == "s2"
    assert after["history"][-1]["operator"] == "evaluator"
    assert "all gates passed" in after["history"][-1]["reason"]
    assert after["stages"][0]["promoted_at"] == "2026-11-27T10:30:00Z"


def test_failure_gates_under_their_limit_count_as_passed(api, fake_clock):
    plan = plan_with([{"kind": "ack_failure", "max_ratio": 0.5}])
    ack(plan, "a", "active")
    assert gates_of(api)["all_passed"] is True
    assert [o.action for _, o in evaluate_open_stages()] == ["promote"]


def test_a_stage_with_no_gates_is_promoted_only_by_hand(api, fake_clock):
    plan_with([])
    fake_clock.advance(days=3)
    assert evaluate_open_stages() == []
    assert status(api)["phase"] == "published"
    assert gates_of(api)["all_passed"] is False


def test_manual_gate_approval_promotes_when_it_is_the_last_unmet_gate(api, fake_clock):
    plan_with([{"kind": "time_soak", "seconds": 60}, {"kind": "manual"}])
    body = gates_of(api)
    assert body["gates"][1] == {
        "kind": "manual",
        "passed": False,
        "detail": "awaiting operator approval",
    }
    early = api.post(
        "/v1/rollouts/p1/stages/s1/gates/approve",
        orjson.dumps({"reason": "looks good"}),
        content_type="application/json",
        HTTP_X_AUTONOMY_OPERATOR="alice",
    )
    assert early.status_code == 200
    assert early.json()["approved"] is True
    assert early.json()["promoted"] is False
    assert "time_soak" in early.json()["message"]
    after = gates_of(api)
    assert after["manual_approved"] is True
    assert after["gates"][1]["passed"] is True
    assert status(api)["history"][-1]["action"] == "approve"
    assert status(api)["history"][-1]["operator"] == "alice"
    fake_clock.advance(seconds=61)
    assert [o.action for _, o in evaluate_open_stages()] == ["promote"]
    assert status(api)["current_stage_id"] == "s2"


def test_approve_alone_promotes_a_manual_only_stage(api, fake_clock):
    plan_with([{"kind": "manual"}])
    response = api.post("/v1/rollouts/p1/stages/s1/gates/approve")
    assert response.status_code == 200
    assert response.json()["promoted"] is True
    assert status(api)["stages"][0]["phase"] == "promoted"
    assert status(api)["stages"][0]["manual_approved"] is True


def test_approve_errors(api, fake_clock):
    plan_with([{"kind": "time_soak", "seconds": 5}])
    no_manual = api.post("/v1/rollouts/p1/stages/s1/gates/approve")
    assert no_manual.status_code == 409
    assert "no manual gate" in no_manual.json()["error"]
    assert api.post("/v1/rollouts/p1/stages/nope/gates/approve").status_code == 404
    assert api.get("/v1/rollouts/p1/stages/nope/gates").status_code == 404
    api.post("/v1/rollouts/p1/cancel")
    terminal = api.post("/v1/rollouts/p1/stages/s1/gates/approve")
    assert terminal.status_code == 409
    assert terminal.json()["phase"] == "cancelled"


def test_ack_success_needs_min_acks_and_min_ratio(api, fake_clock):
    plan = plan_with([{"kind": "ack_success", "min_ratio": 0.8, "min_acks": 3}])
    ack(plan, "a", "active")
    ack(plan, "b", "active")
    gate = gates_of(api)["gates"][0]
    assert gate["passed"] is False
    assert "2 of 2 stage acks active" in gate["detail"]
    ack(plan, "c", "active")
    ack(plan, "d", "pending")
    assert gates_of(api)["gates"][0]["passed"] is False  # 3/4 = 0.75 < 0.8
    assert evaluate_open_stages() == []
    ack(plan, "e", "active")  # 4/5 = 0.8
    assert gates_of(api)["gates"][0]["passed"] is True
    assert [o.action for _, o in evaluate_open_stages()] == ["promote"]


def test_ack_failure_over_its_ratio_halts_with_a_reason(api, fake_clock):
    plan = plan_with(
        [{"kind": "ack_failure", "max_ratio": 0.25}, {"kind": "time_soak", "seconds": 3600}]
    )
    for node in ("a", "b", "c"):
        ack(plan, node, "active")
    ack(plan, "d", "failed")  # 1/4 = 0.25: not over
    assert gates_of(api)["gates"][0]["passed"] is True
    assert evaluate_open_stages() == []
    ack(plan, "e", "rejected")  # 2/5 = 0.4
    gate = gates_of(api)["gates"][0]
    assert gate["passed"] is False
    assert "2 of 5 stage acks failed or rejected" in gate["detail"]
    assert [o.action for _, o in evaluate_open_stages()] == ["halt"]
    after = status(api)
    assert after["phase"] == "halted"
    assert after["stages"][0]["phase"] == "halted"
    assert "ack_failure gate tripped" in after["history"][-1]["reason"]
    assert after["history"][-1]["operator"] == "evaluator"
    assert "ack_failure" in after["stages"][0]["halt_reason"]
    # Halted plans are not evaluated any more.
    assert evaluate_open_stages() == []


def test_only_the_stage_nodes_acks_count(api, fake_clock):
    release = ReleaseFactory()
    outsiders = [n for n in (f"node-{i}" for i in range(200)) if bucket("p1", n) >= 10][:5]
    insiders = [n for n in (f"node-{i}" for i in range(200)) if bucket("p1", n) < 10][:2]
    RolloutPlanFactory(
        plan_id="p1",
        release=release,
        stages=[
            {
                "stage_id": "s1",
                "percent": 10,
                "nodes": ["listed"],
                "gates": [{"kind": "ack_failure", "max_ratio": 0.5}, {"kind": "manual"}],
            },
            {"stage_id": "s2", "percent": 100},
        ],
    )
    for node in outsiders:
        NodeAckFactory(node_id=node, release=release, status="failed")
    NodeAckFactory(node_id="listed", release=release, status="active")
    for node in insiders:
        NodeAckFactory(node_id=node, release=release, status="active")
    gate = gates_of(api)["gates"][0]
    assert "0 of 3 stage acks failed" in gate["detail"]
    assert evaluate_open_stages() == []


def test_event_threshold_counts_nodes_on_the_new_release_since_the_stage_opened(api, fake_clock):
    plan = plan_with(
        [
            {
                "kind": "event_threshold",
                "event_type": "app.crash",
                "max_ratio": 0.3,
                "min_nodes": 4,
            },
            {"kind": "manual"},
        ]
    )
    before_open = T0 - timedelta(minutes=5)
    for node in ("a", "b", "c"):
        ack(plan, node, "active")
        EventFactory(node_id=node, event_type="app.crash", received_at=T0 + timedelta(seconds=1))
    gate = gates_of(api)["gates"][0]
    assert gate["passed"] is True  # 3 nodes on the new release: not counted before 4
    assert "counted from 4" in gate["detail"]
    ack(plan, "d", "active")
    ack(plan, "e", "active")
    ack(plan, "f", "active")
    ack(plan, "g", "active")
    # Only crashes that arrived after the stage opened, from nodes with an `active` ack, count.
    from events.models import Event

    Event.objects.filter(node_id__in=["b", "c"]).update(received_at=before_open)
    EventFactory(node_id="c", event_type="app.heartbeat", received_at=T0 + timedelta(seconds=5))
    EventFactory(node_id="x", event_type="app.crash", received_at=T0 + timedelta(seconds=5))
    ack(plan, "x", "failed")  # not on the new release
    gate = gates_of(api)["gates"][0]
    assert gate["passed"] is True, gate  # 1 of 7
    assert "1 of 7 stage nodes on the new release reported app.crash" in gate["detail"]
    assert evaluate_open_stages() == []
    EventFactory(node_id="d", event_type="app.crash", received_at=T0 + timedelta(seconds=9))
    EventFactory(node_id="e", event_type="app.crash", received_at=T0 + timedelta(seconds=9))
    EventFactory(node_id="e", event_type="app.crash", received_at=T0 + timedelta(seconds=10))
    gate = gates_of(api)["gates"][0]
    assert gate["passed"] is False  # 3 of 7 = 0.43 > 0.3
    assert [o.action for _, o in evaluate_open_stages()] == ["halt"]
    after = status(api)
    assert after["phase"] == "halted"
    assert "event_threshold gate tripped" in after["history"][-1]["reason"]
    assert "app.crash" in after["history"][-1]["reason"]


def test_event_threshold_sees_events_stored_after_its_earlier_passes(api, fake_clock):
    # The gate reads the event type's index from the window's first event id on; that bound
    # is taken on the first pass (here: before any event of the window exists) and must not
    # hide what arrives later, nor let older events of the type in.
    plan = plan_with(
        [
            {"kind": "event_threshold", "event_type": "app.crash", "max_ratio": 0.5},
            {"kind": "manual"},
        ]
    )
    for node in ("a", "b", "c", "d"):
        ack(plan, node, "active")
    EventFactory(node_id="a", event_type="app.crash", received_at=T0 - timedelta(seconds=1))
    EventFactory(node_id="b", event_type="app.crash", received_at=T0 - timedelta(seconds=1))
    EventFactory(node_id="c", event_type="app.crash", received_at=T0 - timedelta(seconds=1))
    first = gates_of(api)["gates"][0]
    assert first["passed"] is True
    assert "0 of 4 stage nodes" in first["detail"]  # crashes before the stage opened
    assert evaluate_open_stages() == []
    EventFactory(node_id="a", event_type="app.crash", received_at=T0 + timedelta(seconds=2))
    EventFactory(node_id="b", event_type="app.heartbeat", received_at=T0 + timedelta(seconds=2))
    assert "1 of 4 stage nodes" in gates_of(api)["gates"][0]["detail"]
    EventFactory(node_id="b", event_type="app.crash", received_at=T0 + timedelta(seconds=3))
    EventFactory(node_id="c", event_type="app.crash", received_at=T0 + timedelta(seconds=3))
    assert "3 of 4 stage nodes" in gates_of(api)["gates"][0]["detail"]
    assert [o.action for _, o in evaluate_open_stages()] == ["halt"]


def test_resume_after_a_halt_restarts_the_soak_and_the_event_window(api, fake_clock):
    plan = plan_with(
        [
            {"kind": "event_threshold", "event_type": "app.crash", "max_ratio": 0.0},
            {"kind": "time_soak", "seconds": 60},
        ]
    )
    ack(plan, "a", "active")
    EventFactory(node_id="a", event_type="app.crash", received_at=T0 + timedelta(seconds=1))
    assert [o.action for _, o in evaluate_open_stages()] == ["halt"]
    fake_clock.advance(minutes=5)
    api.post("/v1/rollouts/p1/resume")
    body = gates_of(api)
    assert body["stage_phase"] == "open"
    assert body["gates"][0]["passed"] is True  # the old crash is before the re-opening
    assert body["gates"][1]["detail"] == "soak elapsed 0s of required 1m"
    fake_clock.advance(seconds=60)
    assert [o.action for _, o in evaluate_open_stages()] == ["promote"]


def test_evaluator_does_not_touch_paused_plans(api, fake_clock):
    plan_with([{"kind": "time_soak", "seconds": 1}])
    api.post("/v1/rollouts/p1/pause")
    fake_clock.advance(hours=1)
    assert evaluate_open_stages() == []
    assert status(api)["phase"] == "paused"


def test_stuck_lists_running_plans_without_progress_and_names_unmet_gates(api, fake_clock):
    plan_with([{"kind": "time_soak", "seconds": 7200}, {"kind": "manual"}], plan_id="slow")
    plan_with([], plan_id="nogates")
    plan_with([{"kind": "manual"}], plan_id="paused")
    api.post("/v1/rollouts/paused/pause")
    fake_clock.advance(minutes=30)
    assert api.get("/v1/rollouts/stuck").json()["stuck_plans"] == []  # default 3600 s
    response = api.get("/v1/rollouts/stuck?threshold_seconds=600")
    assert response.status_code == 200
    stuck = {p["plan_id"]: p for p in response.json()["stuck_plans"]}
    assert set(stuck) == {"slow", "nogates"}
    slow = stuck["slow"]
    assert slow["phase"] == "published"
    assert slow["current_stage_id"] == "s1"
    assert slow["stuck_since"] == "2026-11-27T10:00:00Z"
    assert "time_soak (soak elapsed 30m of required 2h)" in slow["stuck_reason"]
    assert "manual (awaiting operator approval)" in slow["stuck_reason"]
    assert "no gates" in stuck["nogates"]["stuck_reason"]
    # recover retry refreshes updated_at: the plan leaves the stuck list.
    assert (
        api.post(
            "/v1/rollouts/slow/recover",
            orjson.dumps({"strategy": "retry"}),
            content_type="application/json",
        ).status_code
        == 200
    )
    again = api.get("/v1/rollouts/stuck?threshold_seconds=600").json()["stuck_plans"]
    assert [p["plan_id"] for p in again] == ["nogates"]


@pytest.mark.parametrize("value", ["soon", "-1", "1297083638377"])
def test_stuck_rejects_a_bad_threshold(api, value):
    response = api.get(f"/v1/rollouts/stuck?threshold_seconds={value}")
    assert response.status_code == 400
    assert response.json()["field"] == "threshold_seconds"


def test_gate_evaluation_query_count(api, fake_clock, django_assert_max_num_queries):
    plan = plan_with(
        [
            {"kind": "ack_success", "min_ratio": 0.5},
            {"kind": "event_threshold", "event_type": "app.crash", "max_ratio": 0.5},
        ]
    )
    for i in range(300):
        ack(plan, f"n{i}", "active")
    with django_assert_max_num_queries(6):
        gates_of(api)


# A gate the server accepts is exactly a gate the documented schema allows (one closed object per
# kind, from rollouts.gates.registry), so clients generated from the OpenAPI document agree.
_GATES = [
    ({"kind": "time_soak", "seconds": 60}, True),
    ({"kind": "time_soak", "seconds": -1}, False),
    ({"kind": "time_soak"}, False),
    ({"kind": "time_soak", "seconds": 5, "secs": 5}, False),
    ({"kind": "manual"}, True),
    ({"kind": "manual", "by": "ops"}, False),
    ({"kind": "ack_success", "min_ratio": 0.9}, True),
    ({"kind": "ack_success", "min_ratio": 0.9, "min_acks": 0}, True),
    ({"kind": "ack_success", "min_ratio": 1.5}, False),
    ({"kind": "ack_success", "min_ratio": 0.9, "min_acks": -1}, False),
    ({"kind": "ack_failure", "max_ratio": 0}, True),
    ({"kind": "ack_failure", "max_ratio": "0.1"}, False),
    ({"kind": "event_threshold", "event_type": "crash", "max_ratio": 0.1}, True),
    ({"kind": "event_threshold", "event_type": "crash", "max_ratio": 0.1, "min_nodes": 0}, False),
    ({"kind": "event_threshold", "event_type": "", "max_ratio": 0.1}, False),
    ({"kind": "event_threshold", "event_type": "x" * 257, "max_ratio": 0.1}, False),
    ({"kind": "canary_magic"}, False),
]


@pytest.mark.parametrize(("gate", "accepted"), _GATES)
def test_the_gate_schema_accepts_what_the_server_accepts(api, gate, accepted):
    import jsonschema

    from rollouts.gates import gates_openapi_schema

    body = {"release_id": "r-1", "stages": [{"stage_id": "all", "percent": 100, "gates": [gate]}]}
    ReleaseFactory(release_id="r-1")
    response = api.post("/v1/rollouts", orjson.dumps(body), content_type="application/json")
    assert (response.status_code == 201) is accepted, response.content
    schema_ok = jsonschema.Draft202012Validator(gates_openapi_schema()).is_valid(gate)
    assert schema_ok is accepted

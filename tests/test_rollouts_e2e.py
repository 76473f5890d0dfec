"""Rollouts against the real `autonomy-orchestrator serve`: automatic progress driven by acks,
approvals and the clock, the telemetry-driven halt, and racing promotes (API.md §4)."""

from __future__ import annotations

import base64
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from tests.liveserver import ServeProcess

pytestmark = pytest.mark.e2e

TIMEOUT = 5


def wait_for(predicate, *, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Client:
    def __init__(self, srv: ServeProcess) -> None:
        self.srv = srv
        self.http = requests.Session()

    def get(self, path, **kw):
        return self.http.get(self.srv.url(path), timeout=TIMEOUT, **kw)

    def post(self, path, body=None, **kw):
        return self.http.post(self.srv.url(path), json=body, timeout=TIMEOUT, **kw)

    def release(self, release_id, channel="stable"):
        response = self.post("/v1/releases", {"release_id": release_id, "channel": channel})
        assert response.status_code == 201, response.text

    def ack(self, node, release_id, status="active"):
        response = self.post(f"/v1/nodes/{node}/ack", {"release_id": release_id, "status": status})
        assert response.status_code in (200, 201), response.text

    def events(self, *events):
        batch = [
            {
                "event_id": f"{node}-{event_type}-{time.monotonic_ns()}-{i}",
                "event_type": event_type,
                "node_id": node,
                "timestamp": "2026-11-27T10:00:00Z",
            }
            for i, (node, event_type) in enumerate(events)
        ]
        response = self.post("/v1/events", {"events": batch})
        assert response.status_code == 200, response.text

    def status(self, plan_id):
        response = self.get(f"/v1/rollouts/{plan_id}/status")
        assert response.status_code == 200, response.text
        return response.json()

    def polls(self, node, channel="stable"):
        response = self.get(f"/v1/releases/latest?channel={channel}&node_id={node}")
        assert response.status_code == 200, response.text
        return response.json()["release_id"]


@pytest.fixture
def client(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        yield Client(srv)


def test_three_stage_rollout_completes_through_acks_and_approvals(client):
    client.release("rel-1")
    client.release("rel-2")
    spec = {
        "plan_id": "plan-e2e",
        "release_id": "rel-2",
        "created_by": "alice",
        "stages": [
            {
                "stage_id": "canary",
                "percent": 1,
                "nodes": ["edge-a", "edge-b"],
                "gates": [
                    {"kind": "ack_success", "min_ratio": 1.0, "min_acks": 2},
                    {"kind": "ack_failure", "max_ratio": 0.5},
                ],
            },
            {"stage_id": "half", "percent": 50, "gates": [{"kind": "manual"}]},
            {
                "stage_id": "all",
                "percent": 100,
                "gates": [
                    {"kind": "ack_success", "min_ratio": 0.75, "min_acks": 4},
                    {"kind": "time_soak", "seconds": 1},
                ],
            },
        ],
    }
    created = client.post("/v1/rollouts", spec, headers={"X-Autonomy-Operator": "alice"})
    assert created.status_code == 201, created.text
    outsider = next(
        f"edge-{i}"
        for i in range(1000)
        if int(hashlib.sha256(f"plan-e2e:edge-{i}".encode()).hexdigest()[:8], 16) % 10000 / 100
        >= 50
    )

    # Canary: the listed nodes get rel-2, the others stay on rel-1.
    assert client.polls("edge-a") == "rel-2"
    assert client.polls("edge-b") == "rel-2"
    assert client.polls(outsider) == "rel-1"
    client.ack("edge-a", "rel-2")
    assert client.status("plan-e2e")["current_stage_id"] == "canary"
    client.ack("edge-b", "rel-2")
    status = wait_for(
        lambda: (s := client.status("plan-e2e"))["current_stage_id"] == "half" and s,
        what="the canary to be promoted by its acks",
    )
    assert status["phase"] == "active"
    assert status["history"][-1]["operator"] == "evaluator"

    # Half: a manual gate; approval promotes.
    gates = client.get("/v1/rollouts/plan-e2e/stages/half/gates").json()
    assert gates["all_passed"] is False
    approved = client.post(
        "/v1/rollouts/plan-e2e/stages/half/gates/approve",
        {"reason": "canary healthy"},
        headers={"X-Autonomy-Operator": "bob"},
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["approved"] is True
    assert approved.json()["promoted"] is True
    assert client.status("plan-e2e")["current_stage_id"] == "all"
    assert client.polls(outsider) == "rel-2"

    # All: four stage acks, 3 of 4 active, plus a 1 s soak.
    client.ack("edge-c", "rel-2")
    client.ack("edge-d", "rel-2", status="pending")
    assert client.status("plan-e2e")["phase"] == "active"
    client.ack(outsider, "rel-2")
    final = wait_for(
        lambda: (s := client.status("plan-e2e"))["phase"] == "completed" and s,
        what="the plan to complete",
    )
    assert [s["phase"] for s in final["stages"]] == ["promoted", "promoted", "promoted"]
    actions = [(h["action"], h["operator"]) for h in final["history"]]
    assert actions == [
        ("publish", "alice"),
        ("promote", "evaluator"),
        ("approve", "bob"),
        ("promote", "bob"),
        ("promote", "evaluator"),
    ]
    assert client.get("/v1/rollouts?phase=completed").json()["plans"][0]["plan_id"] == "plan-e2e"

    # The stored spec verifies with the public key the server publishes.
    pem = client.get("/v1/signing-key").text
    public = serialization.load_pem_public_key(pem.encode())
    raw = client.get("/v1/rollouts/plan-e2e/spec?raw=true").content
    signed = client.get("/v1/rollouts/plan-e2e/spec").json()
    assert signed["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    public.verify(base64.b64decode(signed["signature"]["value"]), signed["digest"].encode())


def test_event_threshold_halts_the_rollout(client):
    client.release("rel-1")
    client.release("rel-2")
    spec = {
        "plan_id": "plan-crash",
        "release_id": "rel-2",
        "stages": [
            {
                "stage_id": "canary",
                "percent": 100,
                "gates": [
                    {
                        "kind": "event_threshold",
                        "event_type": "app.crash",
                        "max_ratio": 0.3,
                        "min_nodes": 3,
                    },
                    {"kind": "manual"},
                ],
            },
            {"stage_id": "all", "percent": 100},
        ],
    }
    assert client.post("/v1/rollouts", spec).status_code == 201
    for node in ("n1", "n2", "n3", "n4"):
        client.ack(node, "rel-2")
    client.events(("n1", "app.crash"), ("n2", "app.heartbeat"), ("n9", "app.crash"))
    gates = client.get("/v1/rollouts/plan-crash/stages/canary/gates").json()
    assert gates["gates"][0]["passed"] is True  # 1 of 4 nodes on rel-2 crashed: 0.25
    assert client.status("plan-crash")["phase"] == "published"
    client.events(("n2", "app.crash"))
    status = wait_for(
        lambda: (s := client.status("plan-crash"))["phase"] == "halted" and s,
        what="the event_threshold gate to halt the plan",
    )
    assert status["stages"][0]["phase"] == "halted"
    last = status["history"][-1]
    assert last["action"] == "halt"
    assert last["operator"] == "evaluator"
    assert "event_threshold gate tripped" in last["reason"]
    assert "2 of 4" in last["reason"]
    # A halted stage takes nobody new... but nodes that are already active keep rel-2.
    assert client.polls("n1") == "rel-2"
    refused = client.post("/v1/rollouts/plan-crash/promote")
    assert refused.status_code == 409
    assert refused.json() == {"error": "cannot promote a rollout that is halted", "phase": "halted"}


def test_time_soak_promotes_without_any_request(client):
    client.release("rel-1")
    spec = {
        "plan_id": "plan-soak",
        "release_id": "rel-1",
        "stages": [
            {"stage_id": "s1", "percent": 10, "gates": [{"kind": "time_soak", "seconds": 1}]},
            {"stage_id": "s2", "percent": 100},
        ],
    }
    assert client.post("/v1/rollouts", spec).status_code == 201
    started = time.monotonic()
    wait_for(
        lambda: client.status("plan-soak")["current_stage_id"] == "s2",
        timeout=15,
        what="the periodic evaluation to promote after the soak",
    )
    assert time.monotonic() - started < 1 + 5 + 1  # soak + the evaluation period + slack


def test_racing_promotes_advance_exactly_one_stage(client):
    client.release("rel-1")
    spec = {
        "plan_id": "plan-race",
        "release_id": "rel-1",
        "stages": [{"stage_id": f"s{i}", "percent": 10 * i} for i in range(1, 6)],
    }
    assert client.post("/v1/rollouts", spec).status_code == 201
    racers = 8
    barrier = Barrier(racers)

    def promote(_):
        session = requests.Session()
        barrier.wait(timeout=10)
        return session.post(
            client.srv.url("/v1/rollouts/plan-race/promote"), json={"stage_id": "s1"}, timeout=10
        )

    with ThreadPoolExecutor(racers) as pool:
        responses = list(pool.map(promote, range(racers)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1, [(r.status_code, r.text) for r in responses]
    assert set(codes) == {200, 409}
    status = client.status("plan-race")
    assert status["current_stage_id"] == "s2"
    assert [s["phase"] for s in status["stages"]] == [
        "promoted",
        "open",
        "pending",
        "pending",
        "pending",
    ]
    assert [h["action"] for h in status["history"]] == ["publish", "promote"]


@pytest.fixture
def pg_client(tmp_path):
    from tests.pg import require_postgres, temp_database

    require_postgres()
    with (
        temp_database("test_rollouts") as url,
        ServeProcess(tmp_path / "data", "--postgres-url", url) as srv,
    ):
        yield Client(srv)


@pytest.mark.postgres
def test_racing_promotes_advance_exactly_one_stage_on_postgres(pg_client):
    test_racing_promotes_advance_exactly_one_stage(pg_client)


@pytest.mark.postgres
def test_three_stage_rollout_completes_on_postgres(pg_client):
    test_three_stage_rollout_completes_through_acks_and_approvals(pg_client)


@pytest.mark.postgres
def test_event_threshold_halts_the_rollout_on_postgres(pg_client):
    test_event_threshold_halts_the_rollout(pg_client)

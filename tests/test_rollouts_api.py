"""Rollout plans through the HTTP API (API.md §3 rows 11-20, 22-25; §4): publishing and its
validation, reads, the whole transition table, history and 409s."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from core.params import parse_rfc3339
from rollouts.models import RolloutPlan
from tests.factories import EventFactory, NodeAckFactory, ReleaseFactory, RolloutPlanFactory

pytestmark = pytest.mark.django_db

THREE_STAGES = [
    {"stage_id": "canary", "percent": 10},
    {"stage_id": "half", "percent": 50},
    {"stage_id": "all", "percent": 100},
]


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


def post_json(api, path, body, **extra):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return api.post(path, raw, content_type="application/json", **extra)


def publish(api, **spec):
    spec.setdefault("stages", THREE_STAGES)
    return post_json(api, "/v1/rollouts", spec)


# --- publishing -------------------------------------------------------------------------------


def test_publish_returns_the_signed_plan_with_stage_one_open(api):
    release = ReleaseFactory(release_id="rel-004")
    response = publish(
        api, plan_id="plan-web", release_id="rel-004", created_by="alice", description="web tier"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["plan_id"] == "plan-web"
    assert body["release_id"] == "rel-004"
    assert body["channel"] == release.channel
    assert body["phase"] == "published"
    assert body["current_stage_id"] == "canary"
    assert body["digest"].startswith("sha256:")
    assert body["signature"]["alg"] == "Ed25519"
    assert len(body["signature"]["key_id"]) == 16
    assert [s["phase"] for s in body["status"]["stages"]] == ["open", "pending", "pending"]
    assert [s["percent"] for s in body["status"]["stages"]] == [10, 50, 100]
    assert body["status"]["stages"][0]["opened_at"].endswith("Z")
    assert body["status"]["history"][0]["action"] == "publish"
    assert body["status"]["history"][0]["operator"] == "alice"
    assert body["spec"]["description"] == "web tier"


def test_publish_without_plan_id_generates_one(api):
    ReleaseFactory(release_id="rel-1")
    response = publish(api, release_id="rel-1")
    assert response.status_code == 201
    assert response.json()["plan_id"].startswith("plan-")
    assert len(response.json()["plan_id"]) == len("plan-") + 12


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"stages": THREE_STAGES}, "release_id", "required"),
        ({"release_id": "rel-missing", "stages": THREE_STAGES}, "release_id", "no release"),
        ({"release_id": "rel-1"}, "stages", "required"),
        ({"release_id": "rel-1", "stages": []}, "stages", "1 to 50"),
        (
            {"release_id": "rel-1", "stages": [{"stage_id": "a", "percent": 5}] * 51},
            "stages",
            "1 to 50",
        ),
        (
            {
                "release_id": "rel-1",
                "stages": [{"stage_id": "a", "percent": 5}, {"stage_id": "a", "percent": 9}],
            },
            "stages[1].stage_id",
            "unique",
        ),
        (
            {"release_id": "rel-1", "stages": [{"stage_id": "a", "percent": 0}]},
            "stages[0].percent",
            "0 < percent <= 100",
        ),
        (
            {"release_id": "rel-1", "stages": [{"stage_id": "a", "percent": 100.5}]},
            "stages[0].percent",
            "0 < percent <= 100",
        ),
        (
            {
                "release_id": "rel-1",
                "stages": [{"stage_id": "a", "percent": 50}, {"stage_id": "b", "percent": 20}],
            },
            "stages[1].percent",
            "must not decrease",
        ),
        ({"release_id": "rel-1", "stages": [{"stage_id": "a"}]}, "stages[0].percent", "required"),
        (
            {
                "release_id": "rel-1",
                "stages": [{"stage_id": "a", "percent": 5, "gates": [{"kind": "health"}]}],
            },
            "stages[0].gates[0].kind",
            "unknown gate kind 'health'",
        ),
        (
            {
                "release_id": "rel-1",
                "stages": [{"stage_id": "a", "percent": 5, "gates": [{"kind": {}}]}],
            },
            "stages[0].gates[0].kind",
            "unknown gate kind",
        ),
        (
            {
                "release_id": "rel-1",
                "stages": [{"stage_id": "a", "percent": 5, "gates": [{"kind": "time_soak"}]}],
            },
            "stages[0].gates[0].seconds",
            "required",
        ),
        (
            {
                "release_id": "rel-1",
                "stages": [
                    {
                        "stage_id": "a",
                        "percent": 5,
                        "gates": [{"kind": "ack_success", "min_ratio": 1.5}],
                    }
                ],
            },
            "stages[0].gates[0].min_ratio",
            "between 0 and 1",
        ),
        (
            {
                "release_id": "rel-1",
                "stages": [
                    {
                        "stage_id": "a",
                        "percent": 5,
                        "gates": [{"kind": "ack_failure", "max_ration": 0.1}],
                    }
                ],
            },
            "stages[0].gates[0].max_ration",
            "not a parameter",
        ),
        (
            {
                "release_id": "rel-1",
                "stages": [
                    {
                        "stage_id": "a",
                        "percent": 5,
                        "gates": [
                            {
                                "kind": "event_threshold",
                                "event_type": "app.crash",
                                "max_ratio": 0.1,
                                "min_nodes": 0,
                            }
                        ],
                    }
                ],
            },
            "stages[0].gates[0].min_nodes",
            ">= 1",
        ),
        (
            {"release_id": "rel-1", "channel": "beta", "stages": THREE_STAGES},
            "channel",
            "not 'beta'",
        ),
        (
            {"plan_id": "stuck", "release_id": "rel-1", "stages": THREE_STAGES},
            "plan_id",
            "not 'stuck'",
        ),
    ],
)
def test_publish_says_exactly_what_is_wrong(api, spec, field, words):
    ReleaseFactory(release_id="rel-1")
    response = post_json(api, "/v1/rollouts", spec)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["field"] == field
    assert words in body["error"]
    assert RolloutPlan.objects.count() == 0


def test_publish_rejects_malformed_json(api):
    response = post_json(api, "/v1/rollouts", b'{"release_id": ')
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]


def test_duplicate_plan_id_and_second_live_plan_are_409(api):
    ReleaseFactory(release_id="rel-1")
    ReleaseFactory(release_id="rel-2")
    assert publish(api, plan_id="p1", release_id="rel-1").status_code == 201
    dup = publish(api, plan_id="p1", release_id="rel-2")
    assert dup.status_code == 409
    assert dup.json()["plan_id"] == "p1"
    second = publish(api, plan_id="p2", release_id="rel-1")
    assert second.status_code == 409
    assert second.json() == {
        "error": "release rel-1 already has a rollout in progress (p1, published); "
        "cancel it or let it finish first",
        "plan_id": "p1",
        "phase": "published",
    }
    # Once the first plan is terminal, a new plan for the release is accepted.
    assert post_json(api, "/v1/rollouts/p1/cancel", {}).status_code == 200
    assert publish(api, plan_id="p2", release_id="rel-1").status_code == 201


def test_dry_run_previews_cohorts_and_stores_nothing(api):
    ReleaseFactory(release_id="rel-1")
    nodes = [f"n-{i:03d}" for i in range(200)]
    for node in nodes[:150]:
        EventFactory(node_id=node)
    for node in nodes[150:]:
        NodeAckFactory(node_id=node, release=ReleaseFactory(), status="acknowledged")
    stages = [
        {"stage_id": "canary", "percent": 10, "nodes": ["n-007"]},
        {"stage_id": "all", "percent": 100},
    ]
    response = post_json(
        api,
        "/v1/rollouts?dry_run=true",
        {"plan_id": "preview", "release_id": "rel-1", "stages": stages},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["dry_run"] is True
    assert body["known_nodes"] == 200
    expected = sorted(
        n
        for n in nodes
        if int(hashlib.sha256(f"preview:{n}".encode()).hexdigest()[:8], 16) % 10000 / 100 < 10
        or n == "n-007"
    )
    canary, everything = body["stages"]
    assert canary["nodes"] == len(expected)
    assert canary["sample"] == expected[:10]
    assert everything["nodes"] == 200
    assert RolloutPlan.objects.count() == 0
    # The same body without dry_run is then accepted.
    assert (
        post_json(
            api, "/v1/rollouts", {"plan_id": "preview", "release_id": "rel-1", "stages": stages}
        ).status_code
        == 201
    )


def test_a_misspelt_dry_run_flag_publishes_nothing(api):
    ReleaseFactory(release_id="rel-1")
    response = post_json(
        api, "/v1/rollouts?dry_run=ture", {"release_id": "rel-1", "stages": THREE_STAGES}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "dry_run"
    assert RolloutPlan.objects.count() == 0


@pytest.mark.parametrize("query", ["dry_run=", "dry_run=%20"])
def test_an_empty_dry_run_flag_is_a_400_not_false(api, query):
    # Found by the schema fuzzer (`?raw=` on the spec route): the schema says boolean, and an
    # empty value is neither true nor false, so it is refused as a misspelling is.
    ReleaseFactory(release_id="rel-1")
    response = post_json(
        api, f"/v1/rollouts?{query}", {"release_id": "rel-1", "stages": THREE_STAGES}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "dry_run"
    assert RolloutPlan.objects.count() == 0


def test_dry_run_reports_the_same_errors(api):
    response = post_json(
        api, "/v1/rollouts?dry_run=true", {"release_id": "nope", "stages": THREE_STAGES}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "release_id"


# --- reads ------------------------------------------------------------------------------------


def test_list_is_newest_first_paginated_and_filtered_by_phase(api):
    plans = [RolloutPlanFactory(plan_id=f"p{i}") for i in range(5)]
    api.post("/v1/rollouts/p1/pause")
    response = api.get("/v1/rollouts")
    assert response.status_code == 200
    assert [p["plan_id"] for p in response.json()["plans"]] == ["p4", "p3", "p2", "p1", "p0"]
    page = api.get("/v1/rollouts?limit=2&offset=1").json()
    assert [p["plan_id"] for p in page["plans"]] == ["p3", "p2"]
    assert page["count"] == 2
    paused = api.get("/v1/rollouts?phase=paused").json()
    assert [p["plan_id"] for p in paused["plans"]] == ["p1"]
    assert len(plans) == 5


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("offset=-1", "offset"),
        ("offset=99999999999999999999999", "offset"),
        ("phase=running", "phase"),
    ],
)
def test_list_rejects_bad_parameters(api, query, field):
    response = api.get(f"/v1/rollouts?{query}")
    assert response.status_code == 400
    assert response.json()["field"] == field


def test_list_query_count_does_not_grow_with_plans(api, django_assert_max_num_queries):
    for i in range(30):
        RolloutPlanFactory(plan_id=f"p{i}")
    with django_assert_max_num_queries(2):
        assert api.get("/v1/rollouts").json()["count"] == 30


def test_list_clamps_limit(api):
    RolloutPlanFactory()
    assert api.get("/v1/rollouts?limit=5000").json()["limit"] == 1000


def test_unknown_plan_is_404_everywhere(api):
    for path in (
        "/v1/rollouts/nope",
        "/v1/rollouts/nope/spec",
        "/v1/rollouts/nope/status",
        "/v1/rollouts/nope/stages/canary/gates",
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert "nope" in response.json()["error"]
    for action in ("pause", "resume", "promote", "halt", "cancel"):
        assert api.post(f"/v1/rollouts/nope/{action}").status_code == 404
    assert post_json(api, "/v1/rollouts/nope/recover", {"strategy": "retry"}).status_code == 404


def test_detail_and_status(api):
    RolloutPlanFactory(plan_id="p1")
    detail = api.get("/v1/rollouts/p1").json()
    assert detail["plan_id"] == "p1"
    assert detail["spec"]["plan_id"] == "p1"
    assert detail["status"]["phase"] == "published"
    status = api.get("/v1/rollouts/p1/status").json()
    assert set(status) >= {
        "plan_id",
        "phase",
        "current_stage_id",
        "stages",
        "updated_at",
        "history",
    }
    assert set(status["stages"][0]) >= {
        "stage_id",
        "phase",
        "percent",
        "opened_at",
        "promoted_at",
        "manual_approved",
    }


def test_wrong_method_is_405_with_allow(api):
    RolloutPlanFactory(plan_id="p1")
    response = api.get("/v1/rollouts/p1/pause")
    assert response.status_code == 405
    assert "POST" in response["Allow"]


# --- the transition table ---------------------------------------------------------------------

ACTIONS = ["pause", "resume", "promote", "halt", "cancel", "retry", "rollback", "skip_failed"]
# Written out from API.md §4 independently of rollouts/statemachine.py. "next" = next stage.
EXPECTED = {
    "published": {
        "pause": "paused",
        "resume": 409,
        "promote": "active",
        "halt": "halted",
        "cancel": "cancelled",
        "retry": "active",
        "rollback": "rolled_back",
        "skip_failed": "active",
    },
    "active": {
        "pause": "paused",
        "resume": 409,
        "promote": "active",
        "halt": "halted",
        "cancel": "cancelled",
        "retry": "active",
        "rollback": "rolled_back",
        "skip_failed": "active",
    },
    "paused": {
        "pause": 409,
        "resume": "active",
        "promote": 409,
        "halt": "halted",
        "cancel": "cancelled",
        "retry": "active",
        "rollback": "rolled_back",
        "skip_failed": 409,
    },
    "halted": {
        "pause": 409,
        "resume": "active",
        "promote": 409,
        "halt": 409,
        "cancel": "cancelled",
        "retry": "active",
        "rollback": "rolled_back",
        "skip_failed": 409,
    },
    "completed": dict.fromkeys(ACTIONS, 409),
    "cancelled": dict.fromkeys(ACTIONS, 409),
    "rolled_back": dict.fromkeys(ACTIONS, 409),
}


def do(api, plan_id, action, **body):
    headers = {key: body.pop(key) for key in list(body) if key.startswith("HTTP_")}
    if action in ("retry", "rollback", "skip_failed"):
        body = {"strategy": action, **body}
        return post_json(api, f"/v1/rollouts/{plan_id}/recover", body, **headers)
    return post_json(api, f"/v1/rollouts/{plan_id}/{action}", body, **headers)


def plan_in_phase(api, phase, plan_id="p1"):
    RolloutPlanFactory(plan_id=plan_id)
    steps = {
        "published": [],
        "active": ["promote"],
        "paused": ["pause"],
        "halted": ["halt"],
        "completed": ["promote", "promote", "promote"],
        "cancelled": ["cancel"],
        "rolled_back": ["rollback"],
    }[phase]
    for step in steps:
        assert do(api, plan_id, step).status_code == 200
    assert api.get(f"/v1/rollouts/{plan_id}/status").json()["phase"] == phase
    return plan_id


@pytest.mark.parametrize("phase", list(EXPECTED))
@pytest.mark.parametrize("action", ACTIONS)
def test_transition_table(api, phase, action):
    plan_id = plan_in_phase(api, phase)
    before = api.get(f"/v1/rollouts/{plan_id}/status").json()
    response = do(api, plan_id, action, reason="table test", HTTP_X_AUTONOMY_OPERATOR="carol")
    expected = EXPECTED[phase][action]
    after = api.get(f"/v1/rollouts/{plan_id}/status").json()
    if expected == 409:
        assert response.status_code == 409, response.content
        body = response.json()
        assert body["phase"] == phase
        assert phase in body["error"]
        assert body["error"].startswith("cannot ")
        assert after == before  # nothing changed, no history entry
        return
    assert response.status_code == 200, response.content
    assert response.json()["phase"] == expected
    assert after["phase"] == expected
    # as times: compared as text, `…:30Z` sorts after `…:30.022393Z` (a fraction is written
    # only when there is one)
    assert parse_rfc3339(after["updated_at"]) > parse_rfc3339(before["updated_at"])
    entry = after["history"][-1]
    assert entry["operator"] == "carol"
    assert entry["reason"] == "table test"
    assert entry["from_phase"] == phase
    assert entry["to_phase"] == expected
    assert entry["action"] == (
        f"recover_{action}" if action in ("retry", "rollback", "skip_failed") else action
    )
    assert len(after["history"]) == len(before["history"]) + 1


def stage_phases(api, plan_id):
    return [s["phase"] for s in api.get(f"/v1/rollouts/{plan_id}/status").json()["stages"]]


def test_promote_advances_one_stage_and_the_last_completes(api):
    RolloutPlanFactory(plan_id="p1")
    status = do(api, "p1", "promote").json()
    assert status["phase"] == "active"
    assert status["current_stage_id"] == "half"
    assert stage_phases(api, "p1") == ["promoted", "open", "pending"]
    assert status["stages"][0]["promoted_at"] is not None
    assert status["stages"][1]["opened_at"] is not None
    do(api, "p1", "promote")
    final = do(api, "p1", "promote").json()
    assert final["phase"] == "completed"
    assert stage_phases(api, "p1") == ["promoted", "promoted", "promoted"]


def test_halt_marks_the_stage_and_resume_reopens_it(api):
    RolloutPlanFactory(plan_id="p1")
    do(api, "p1", "promote")
    halted = do(api, "p1", "halt", reason="crash spike").json()
    assert halted["phase"] == "halted"
    assert halted["stages"][1]["phase"] == "halted"
    assert halted["stages"][1]["halt_reason"] == "crash spike"
    opened_before = halted["stages"][1]["opened_at"]
    resumed = do(api, "p1", "resume").json()
    assert resumed["phase"] == "active"
    assert resumed["stages"][1]["phase"] == "open"
    # the soak restarts
    assert parse_rfc3339(resumed["stages"][1]["opened_at"]) > parse_rfc3339(opened_before)


def test_skip_failed_skips_the_current_stage(api):
    RolloutPlanFactory(plan_id="p1")
    status = do(api, "p1", "skip_failed").json()
    assert status["phase"] == "active"
    assert status["current_stage_id"] == "half"
    assert stage_phases(api, "p1") == ["skipped", "open", "pending"]


def test_operator_from_body_and_default(api):
    RolloutPlanFactory(plan_id="p1")
    history = do(api, "p1", "pause", operator="dave").json()["history"]
    assert history[-1]["operator"] == "dave"
    history = do(api, "p1", "resume").json()["history"]
    assert history[-1]["operator"] == "anonymous"
    assert history[-1]["reason"] == ""


def test_header_operator_wins_over_body(api):
    RolloutPlanFactory(plan_id="p1")
    history = do(api, "p1", "pause", operator="dave", HTTP_X_AUTONOMY_OPERATOR="erin").json()
    assert history["history"][-1]["operator"] == "erin"


def test_a_body_operator_that_is_not_a_string_is_a_400_even_with_the_header(api):
    # Found by the schema fuzzer: with the header set, `"operator": 1.6e16` was not looked at
    # and the action ran, while the schema says `operator` is a string or null.
    RolloutPlanFactory(plan_id="p1")
    response = do(api, "p1", "pause", operator=16731714941132756, HTTP_X_AUTONOMY_OPERATOR="erin")
    assert response.status_code == 400
    assert response.json()["field"] == "operator"
    assert stage_phases(api, "p1")[0] == "open"
    assert api.get("/v1/rollouts/p1/status").json()["phase"] == "published"


def test_409_body_names_the_phase(api):
    plan_in_phase(api, "completed")
    response = do(api, "p1", "pause")
    assert response.status_code == 409
    assert response.json() == {
        "error": "cannot pause a rollout that is completed",
        "phase": "completed",
    }


@pytest.mark.parametrize("body", [{}, {"strategy": "reboot"}, {"strategy": 3}])
def test_recover_requires_a_valid_strategy(api, body):
    RolloutPlanFactory(plan_id="p1")
    response = post_json(api, "/v1/rollouts/p1/recover", body)
    assert response.status_code == 400
    assert response.json()["field"] == "strategy"


def test_action_body_must_be_json_object(api):
    RolloutPlanFactory(plan_id="p1")
    response = post_json(api, "/v1/rollouts/p1/pause", b"[1]")
    assert response.status_code == 400
    response = post_json(api, "/v1/rollouts/p1/pause", {"reason": 5})
    assert response.status_code == 400
    assert response.json()["field"] == "reason"


def test_a_stale_promote_does_not_advance_a_second_stage():
    """Two promotes that read the same plan version: the conditional UPDATE lets one through."""
    from rollouts.services import _apply

    plan = RolloutPlanFactory(plan_id="p1")
    stale = RolloutPlan.objects.get(pk=plan.pk)
    assert _apply(plan, "promote", "advance", "a", "") is True
    assert _apply(stale, "promote", "advance", "b", "") is False
    plan.refresh_from_db()
    assert plan.current_stage_id == "half"
    assert plan.history.filter(action="promote").count() == 1


def test_stage_id_in_the_body_refuses_a_plan_that_moved_on(api):
    RolloutPlanFactory(plan_id="p1")
    assert do(api, "p1", "promote", stage_id="canary").status_code == 200
    again = do(api, "p1", "promote", stage_id="canary")
    assert again.status_code == 409
    assert again.json() == {
        "error": "cannot promote stage canary: the rollout is at stage half (active)",
        "phase": "active",
        "current_stage_id": "half",
    }
    assert do(api, "p1", "skip_failed", stage_id="half").status_code == 200
    assert api.get("/v1/rollouts/p1/status").json()["current_stage_id"] == "all"


def test_phase_counts_for_metrics():
    from rollouts.selectors import rollout_phase_counts

    RolloutPlanFactory(plan_id="a")
    RolloutPlanFactory(plan_id="b")
    from rollouts.services import rollout_cancel

    rollout_cancel(plan_id="b", operator="x")
    counts = rollout_phase_counts()
    assert counts["published"] == 1
    assert counts["cancelled"] == 1
    assert counts["active"] == 0
    assert set(counts) == {
        "published",
        "active",
        "paused",
        "halted",
        "completed",
        "cancelled",
        "rolled_back",
    }


def test_browsable_api_for_a_browser(api):
    RolloutPlanFactory(plan_id="p1")
    for path in ("/v1/rollouts", "/v1/rollouts/p1", "/v1/rollouts/p1/status"):
        response = api.get(path, HTTP_ACCEPT="text/html")
        assert response.status_code == 200, path
        assert response["Content-Type"].startswith("text/html")
        assert b"p1" in response.content


def test_dry_run_cohorts_match_the_rule_for_many_stages_and_nodes(api):
    """The one-pass cohort computation gives, for every stage, exactly the nodes the rule names
    (bucket < percent, or listed by this or an earlier stage, or already running the release)."""
    release = ReleaseFactory(release_id="rel-1")
    nodes = [f"m-{i:04d}" for i in range(600)]
    for node in nodes[:500]:
        EventFactory(node_id=node)
    for node in nodes[500:]:
        NodeAckFactory(node_id=node, release=ReleaseFactory(), status="acknowledged")
    NodeAckFactory(node_id="m-0599", release=release, status="active")
    stages = [
        {"stage_id": f"s{i}", "percent": p, **({"nodes": [nodes[i * 7]]} if i % 3 == 0 else {})}
        for i, p in enumerate([0.5, 1, 1, 2, 5, 5, 10, 20, 25, 40, 50, 75, 90, 99, 100])
    ]
    body = {"plan_id": "many", "release_id": "rel-1", "stages": stages}
    response = post_json(api, "/v1/rollouts?dry_run=true", body)
    assert response.status_code == 200, response.content

    def bucket(node):
        return int(hashlib.sha256(f"many:{node}".encode()).hexdigest()[:8], 16) % 10000 / 100

    listed: set[str] = set()
    for stage, answer in zip(stages, response.json()["stages"], strict=True):
        listed.update(stage.get("nodes", []))
        members = sorted(
            n for n in nodes if bucket(n) < stage["percent"] or n in listed or n == "m-0599"
        )
        assert (answer["nodes"], answer["sample"]) == (len(members), members[:10])

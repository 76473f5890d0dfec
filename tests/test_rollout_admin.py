"""The rollouts admin: the plan list (phase, release, current stage, progress), a plan's page
(stages, live gates, history, spec) and the operator actions, which go through
`rollouts.services` like the API (same history, same refusals)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client

from rollouts import services
from rollouts.models import RolloutPlan
from tests.factories import ReleaseFactory, RolloutPlanFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/rollouts/rolloutplan/"


def page(plan: RolloutPlan) -> str:
    return f"{LIST}{plan.pk}/change/"


def control(plan: RolloutPlan, action: str) -> str:
    return f"{LIST}{plan.pk}/control/{action}/"


def messages_of(response) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def fresh(plan: RolloutPlan) -> RolloutPlan:
    return RolloutPlan.objects.get(pk=plan.pk)


def hidden_fields(html: str, form_id: str) -> dict[str, str]:
    """The hidden inputs of one form of a page, as the browser would submit them."""
    match = re.search(rf'<form[^>]*id="{form_id}".*?</form>', html, re.S)
    assert match, f"no form {form_id} on the page"
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', match[0]))


@pytest.fixture
def ops(client, django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", None)
    client.force_login(user)
    return client


@pytest.fixture
def viewer(django_user_model) -> Client:
    """Staff that may view rollout plans but not act on them."""
    user = django_user_model.objects.create_user("watcher", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_rolloutplan"))
    browser = Client()
    browser.force_login(user)
    return browser


# --- the list ---------------------------------------------------------------------------------


def test_list_shows_phase_release_current_stage_and_progress(ops):
    fresh_plan = RolloutPlanFactory(plan_id="plan-fresh", release=ReleaseFactory(release_id="r-1"))
    moved = RolloutPlanFactory(plan_id="plan-moved", release=ReleaseFactory(release_id="r-2"))
    services.rollout_promote(plan_id=moved.plan_id, operator="alice")
    services.rollout_halt(plan_id=moved.plan_id, operator="alice", reason="crash spike")

    response = ops.get(LIST)
    assert response.status_code == 200
    html = response.content.decode()
    for column in ("Plan id", "Release", "Channel", "Phase", "Current stage", "Progress"):
        assert column in html
    # Fresh: stage 1 of 3 open, 10% of nodes. Halted in stage 2: one stage done, the halted
    # stage is not live, so the furthest live (promoted) stage's 10% remains.
    assert f'<a href="{page(fresh_plan)}">plan-fresh</a>' in html
    assert "0/3 stages, 10%" in html
    assert 'data-phase="published"' in html and 'data-phase="halted"' in html
    assert "1/3 stages, 10%" in html
    assert ">half<" in html  # moved's current stage
    assert ">r-2</a>" in html  # the release, linked to its admin page


def test_list_progress_after_promotions_and_when_completed(ops):
    plan = RolloutPlanFactory(plan_id="plan-a")
    services.rollout_promote(plan_id=plan.plan_id)
    assert "1/3 stages, 50%" in ops.get(LIST).content.decode()
    services.rollout_promote(plan_id=plan.plan_id)
    services.rollout_promote(plan_id=plan.plan_id)
    html = ops.get(LIST).content.decode()
    assert "3/3 stages, 100%" in html and 'data-phase="completed"' in html


def test_list_filters_by_phase_and_searches_plan_and_release(ops):
    RolloutPlanFactory(plan_id="plan-one", release=ReleaseFactory(release_id="rel-web-7"))
    paused = RolloutPlanFactory(plan_id="plan-two", release=ReleaseFactory(release_id="rel-db-3"))
    services.rollout_pause(plan_id=paused.plan_id)

    html = ops.get(LIST).content.decode()
    assert "?phase__exact=paused" in html and "?channel=stable" in html
    only_paused = ops.get(LIST + "?phase__exact=paused").content.decode()
    assert "plan-two" in only_paused and "plan-one" not in only_paused
    by_release = ops.get(LIST + "?q=rel-web").content.decode()
    assert "plan-one" in by_release and "plan-two" not in by_release
    by_plan = ops.get(LIST + "?q=plan-two").content.decode()
    assert "plan-two" in by_plan and "plan-one" not in by_plan


def test_list_query_count_does_not_grow_with_plans(ops, django_assert_max_num_queries):
    for _ in range(30):
        RolloutPlanFactory()
    with django_assert_max_num_queries(10):
        response = ops.get(LIST)
    assert response.status_code == 200
    assert response.content.decode().count("0/3 stages, 10%") == 30


# --- the plan page ----------------------------------------------------------------------------


def test_plan_page_shows_stages_live_gates_history_and_spec(ops):
    plan = RolloutPlanFactory(
        plan_id="plan-gated",
        stages=[
            {
                "stage_id": "canary",
                "percent": 5,
                "nodes": ["node-a"],
                "gates": [
                    {"kind": "manual"},
                    {"kind": "time_soak", "seconds": 1800},
                    {"kind": "ack_success", "min_ratio": 0.9, "min_acks": 3},
                ],
            },
            {"stage_id": "rest", "percent": 100, "gates": [{"kind": "time_soak", "seconds": 60}]},
        ],
        created_by="alice",
    )
    services.rollout_pause(plan_id=plan.plan_id, operator="bob", reason="weekend freeze")

    response = ops.get(page(plan))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="rollout-phase" data-phase="paused"' in html
    assert "0/2 stages, 5%" in html
    # Stages with their phases; the current one's gates evaluated now.
    assert 'data-stage-id="canary" data-stage-phase="open"' in html
    assert 'data-stage-id="rest" data-stage-phase="pending"' in html
    assert "awaiting operator approval" in html
    assert "soak elapsed 0s of required 30m" in html
    assert "0 of 0 stage acks active" in html
    assert "node-a" in html
    assert "time_soak (seconds=60)" in html  # the next stage's gate, not evaluated yet
    # History: who, what, from -> to, why.
    assert "weekend freeze" in html and ">bob<" in html and "published → paused" in html
    assert ">alice<" in html  # created_by publishes
    # The signed spec, pretty-printed and read-only; no save button.
    assert plan.digest in html and plan.key_id in html
    assert "&quot;stage_id&quot;: &quot;canary&quot;" in html
    assert 'name="_save"' not in html
    # Only the actions legal for a paused plan are offered.
    assert 'id="rollout-action-resume"' in html
    assert 'id="rollout-action-pause"' not in html
    assert 'id="rollout-action-promote"' not in html
    assert 'id="rollout-action-cancel"' in html


def test_plan_page_of_a_terminal_plan_offers_no_action(ops):
    plan = RolloutPlanFactory()
    services.rollout_cancel(plan_id=plan.plan_id)
    html = ops.get(page(plan)).content.decode()
    assert "no action applies" in html
    assert "rollout-action-" not in html


# --- actions from the plan page ---------------------------------------------------------------


def test_pause_button_pauses_through_the_service_and_records_the_admin_user(ops, api):
    plan = RolloutPlanFactory()
    response = ops.post(control(plan, "pause"), {"reason": "looks wrong"})
    assert response.status_code == 302
    assert response["Location"] == page(plan)
    assert messages_of(response) == [
        ("success", f"Pause: {plan.plan_id} went from published to paused (current stage canary).")
    ]
    assert fresh(plan).phase == "paused"
    status = api.get(f"/v1/rollouts/{plan.plan_id}/status").json()
    assert status["phase"] == "paused"
    last = status["history"][-1]
    assert (last["action"], last["operator"], last["reason"]) == ("pause", "ops", "looks wrong")
    assert (last["from_phase"], last["to_phase"]) == ("published", "paused")
    html = ops.get(page(plan)).content.decode()
    assert 'data-phase="paused"' in html and "looks wrong" in html


def test_every_plan_action_follows_the_transition_table(ops):
    plan = RolloutPlanFactory()
    steps = [
        ("promote", "active", "half"),
        ("halt", "halted", "half"),
        ("resume", "active", "half"),
        ("pause", "paused", "half"),
        ("resume", "active", "half"),
        ("skip_failed", "active", "all"),
        ("retry", "active", "all"),
        ("cancel", "cancelled", "all"),
    ]
    for action, phase, stage in steps:
        response = ops.post(control(plan, action))
        assert messages_of(response)[0][0] == "success", (action, messages_of(response))
        now = fresh(plan)
        assert (now.phase, now.current_stage_id) == (phase, stage), action
    history = list(fresh(plan).history.values_list("action", "operator").order_by("id"))
    assert [a for a, _ in history] == [
        "publish",
        "promote",
        "halt",
        "resume",
        "pause",
        "resume",
        "recover_skip_failed",
        "recover_retry",
        "cancel",
    ]
    assert {o for _, o in history[1:]} == {"ops"}


def test_promote_submitted_twice_from_the_same_page_advances_one_stage(ops, api):
    plan = RolloutPlanFactory()  # canary (open), half, all
    form = hidden_fields(ops.get(page(plan)).content.decode(), "rollout-action-promote")
    assert form["stage_id"] == "canary"  # the current stage the page shows

    first = ops.post(control(plan, "promote"), form, follow=True)
    assert messages_of(first)[0][0] == "success"
    second = ops.post(
        control(plan, "promote"), form, follow=True
    )  # a double click, or the back button

    assert fresh(plan).current_stage_id == "half"  # advanced once, not twice
    assert list(fresh(plan).history.values_list("action", "stage_id").order_by("id")) == [
        ("publish", "canary"),
        ("promote", "canary"),
    ]
    # The same refusal as the API gives a promote naming a stage the plan has left.
    stale = api.post(f"/v1/rollouts/{plan.plan_id}/promote", {"stage_id": "canary"}, format="json")
    assert stale.status_code == 409
    assert (
        stale.json()["error"]
        == "cannot promote stage canary: the rollout is at stage half (active)"
    )
    assert messages_of(second) == [
        ("error", f"Promote current stage refused: {stale.json()['error']}.")
    ]


def test_stage_actions_of_a_stale_page_are_refused_plan_actions_are_not(ops):
    plan = RolloutPlanFactory()
    html = ops.get(page(plan)).content.decode()
    forms = {
        action: hidden_fields(html, f"rollout-action-{action}")
        for action in ("pause", "promote", "halt", "cancel", "retry", "rollback", "skip_failed")
    }
    # The actions that change the current stage name it; pause, cancel and roll back do not.
    assert {a for a, fields in forms.items() if "stage_id" in fields} == {
        "promote",
        "halt",
        "retry",
        "skip_failed",
    }
    services.rollout_promote(plan_id=plan.plan_id, operator="alice")  # meanwhile: now at half

    response = ops.post(control(plan, "halt"), forms["halt"], follow=True)
    assert messages_of(response) == [
        ("error", "Halt refused: cannot halt stage canary: the rollout is at stage half (active).")
    ]
    response = ops.post(control(plan, "skip_failed"), forms["skip_failed"], follow=True)
    assert messages_of(response)[0][0] == "error"
    assert (fresh(plan).phase, fresh(plan).current_stage_id) == ("active", "half")

    response = ops.post(control(plan, "pause"), forms["pause"], follow=True)  # not tied to a stage
    assert messages_of(response)[0][0] == "success"
    assert fresh(plan).phase == "paused"


def test_rollback_from_the_page(ops):
    plan = RolloutPlanFactory()
    ops.post(control(plan, "rollback"), {"reason": "bad build"})
    assert fresh(plan).phase == "rolled_back"


def test_refused_transition_is_an_error_message_not_a_crash(ops):
    plan = RolloutPlanFactory()
    services.rollout_cancel(plan_id=plan.plan_id)
    response = ops.post(control(plan, "resume"), follow=True)
    assert response.status_code == 200
    assert messages_of(response) == [
        ("error", "Resume refused: cannot resume a rollout that is cancelled.")
    ]
    assert "cannot resume a rollout that is cancelled" in response.content.decode()
    assert fresh(plan).phase == "cancelled"
    assert fresh(plan).history.count() == 2  # publish, cancel: nothing added


def test_pause_of_a_paused_plan_is_refused(ops):
    plan = RolloutPlanFactory()
    services.rollout_pause(plan_id=plan.plan_id)
    response = ops.post(control(plan, "pause"))
    assert messages_of(response) == [
        ("error", "Pause refused: cannot pause a rollout that is paused.")
    ]


def test_approve_manual_gate_promotes_when_it_was_the_last_gate(ops):
    plan = RolloutPlanFactory(
        stages=[
            {"stage_id": "canary", "percent": 10, "gates": [{"kind": "manual"}]},
            {"stage_id": "all", "percent": 100},
        ]
    )
    html = ops.get(page(plan)).content.decode()
    assert "Approve manual gate of canary" in html
    response = ops.post(
        f"{LIST}{plan.pk}/approve/", {"stage_id": "canary", "reason": "metrics look fine"}
    )
    level, text = messages_of(response)[0]
    assert level == "success" and "the stage was promoted" in text
    now = fresh(plan)
    assert (now.phase, now.current_stage_id) == ("active", "all")
    approve = now.history.get(action="approve")
    assert (approve.operator, approve.reason) == ("ops", "metrics look fine")
    stage = now.stages.get(stage_id="canary")
    assert stage.manual_approved and stage.manual_approved_by == "ops"


def test_approve_without_a_manual_gate_is_refused(ops):
    plan = RolloutPlanFactory()
    response = ops.post(f"{LIST}{plan.pk}/approve/", {"stage_id": "canary"})
    assert messages_of(response) == [
        ("error", "Approval refused: stage canary has no manual gate to approve.")
    ]


def test_control_urls_only_take_post_and_known_actions(ops):
    plan = RolloutPlanFactory()
    assert ops.get(control(plan, "pause")).status_code == 405
    assert ops.post(control(plan, "explode")).status_code == 404
    assert ops.post(f"{LIST}999999/control/pause/").status_code == 404
    assert fresh(plan).phase == "published"


# --- actions on the list ----------------------------------------------------------------------


def test_list_action_pauses_the_selected_plans_and_lists_refusals(ops):
    running = RolloutPlanFactory(plan_id="plan-run")
    done = RolloutPlanFactory(plan_id="plan-done")
    untouched = RolloutPlanFactory(plan_id="plan-other")
    services.rollout_cancel(plan_id=done.plan_id)
    response = ops.post(
        LIST,
        {
            "action": "pause_selected",
            "_selected_action": [running.pk, done.pk],
            "reason": "incident 42",
        },
    )
    assert response.status_code == 302
    assert messages_of(response) == [
        ("error", "plan-done: cannot pause a rollout that is cancelled."),
        ("success", "Pause: done for 1 rollout plan (plan-run)."),
    ]
    assert fresh(running).phase == "paused"
    assert fresh(done).phase == "cancelled"
    assert fresh(untouched).phase == "published"
    entry = fresh(running).history.last()
    assert (entry.action, entry.operator, entry.reason) == ("pause", "ops", "incident 42")


def test_list_promote_submitted_twice_advances_each_plan_once(ops):
    first = RolloutPlanFactory(plan_id="plan-1")
    second = RolloutPlanFactory(plan_id="plan-2")
    html = ops.get(LIST).content.decode()
    form = hidden_fields(html, "changelist-form")
    assert form[f"stage_id_{first.pk}"] == form[f"stage_id_{second.pk}"] == "canary"
    post = {**form, "action": "promote_selected", "_selected_action": [first.pk, second.pk]}

    assert messages_of(ops.post(LIST, post, follow=True)) == [
        ("success", "Promote current stage: done for 2 rollout plans (plan-1, plan-2).")
    ]
    again = ops.post(LIST, post, follow=True)  # the same list page submitted again

    assert messages_of(again) == [
        ("error", "plan-1: cannot promote stage canary: the rollout is at stage half (active)."),
        ("error", "plan-2: cannot promote stage canary: the rollout is at stage half (active)."),
    ]
    assert {fresh(p).current_stage_id for p in (first, second)} == {"half"}


def test_list_offers_the_five_actions_and_a_reason(ops):
    RolloutPlanFactory()
    html = ops.get(LIST).content.decode()
    for action in ("pause", "resume", "promote", "halt", "cancel"):
        assert f'value="{action}_selected"' in html
    assert 'name="reason"' in html
    assert 'value="delete_selected"' not in html


# --- who may do what --------------------------------------------------------------------------


def test_view_only_staff_sees_the_plan_but_cannot_act(viewer):
    plan = RolloutPlanFactory()
    html = viewer.get(page(plan)).content.decode()
    assert plan.plan_id in html and "acting on it needs" in html
    assert "rollout-action-" not in html
    assert viewer.post(control(plan, "pause")).status_code == 403
    assert viewer.post(f"{LIST}{plan.pk}/approve/", {"stage_id": "canary"}).status_code == 403
    listing = viewer.get(LIST).content.decode()
    assert "pause_selected" not in listing
    viewer.post(LIST, {"action": "pause_selected", "_selected_action": [plan.pk]})
    assert fresh(plan).phase == "published"


def test_non_staff_and_anonymous_users_are_sent_to_the_login(client, django_user_model):
    plan = RolloutPlanFactory()
    assert client.post(control(plan, "pause"))["Location"].startswith("/admin/login/")
    user = django_user_model.objects.create_user("nodeuser")
    client.force_login(user)
    response = client.post(control(plan, "pause"))
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert fresh(plan).phase == "published"


def test_actions_need_the_csrf_token(django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", None)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    plan = RolloutPlanFactory()
    assert browser.post(control(plan, "pause")).status_code == 403
    assert fresh(plan).phase == "published"


def test_plans_cannot_be_added_edited_or_deleted_through_forms(ops):
    plan = RolloutPlanFactory()
    assert ops.get(LIST + "add/").status_code == 403
    assert ops.post(page(plan), {"phase": "completed"}).status_code == 403
    assert ops.post(f"{LIST}{plan.pk}/delete/", {"post": "yes"}).status_code == 403
    assert fresh(plan).phase == "published"


def test_plan_page_escapes_what_operators_typed(ops):
    plan = RolloutPlanFactory(description="<b>big</b> rollout")
    ops.post(control(plan, "pause"), {"reason": "<script>alert(1)</script>"})
    html = ops.get(page(plan)).content.decode()
    assert "<script>alert(1)</script>" not in html and "<b>big</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_plan_page_query_count_does_not_grow_with_stages_or_history(
    ops, django_assert_max_num_queries
):
    gates = [{"kind": "ack_success", "min_ratio": 0.5, "min_acks": 1}, {"kind": "manual"}]
    plan = RolloutPlanFactory(
        stages=[{"stage_id": f"s{i}", "percent": i + 1, "gates": gates} for i in range(50)]
    )
    for _ in range(20):
        services.rollout_pause(plan_id=plan.plan_id)
        services.rollout_resume(plan_id=plan.plan_id)
    with django_assert_max_num_queries(10):
        response = ops.get(page(plan))
    html = response.content.decode()
    assert html.count("data-stage-id=") == 50
    assert html.count('data-action="resume"') == 20

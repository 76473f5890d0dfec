"""The actor is the principal (API.md §6): history, admin (with Django's LogEntry) and the audit
log name who acted; a claimed operator is only a claim; the evaluator is the server itself."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry

from access.models import AuditRecord
from core.auth import Kind, Principal, Role, acting
from rollouts import services
from rollouts.evaluator import evaluate_plan
from rollouts.models import RolloutPlan
from tests.factories import RolloutPlanFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/rollouts/rolloutplan/"


@pytest.fixture
def ops(client, django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", None)
    client.force_login(user)
    return client


def records(event_name):
    return list(AuditRecord.objects.filter(event_name=event_name).order_by("id"))


def test_an_admin_action_writes_the_audit_record_and_a_log_entry(ops):
    plan = RolloutPlanFactory()
    response = ops.post(f"{LIST}{plan.pk}/control/pause/", {"reason": "looks wrong"})
    assert response.status_code == 302
    [record] = records("rollout.plan.paused")
    assert (record.principal, record.principal_kind, record.outcome) == (
        "ops",
        "session",
        "success",
    )
    assert record.target == plan.plan_id and record.detail["reason"] == "looks wrong"
    entry = LogEntry.objects.get(object_id=str(plan.pk))
    assert entry.user.username == "ops" and "Pause" in entry.get_change_message()
    # The change history page of the plan is no longer empty.
    history = ops.get(f"{LIST}{plan.pk}/history/").content.decode()
    assert "doesn't have a change history" not in history


def test_a_refused_admin_action_is_audited_as_a_failure(ops):
    plan = RolloutPlanFactory()
    services.rollout_cancel(plan_id=plan.plan_id)
    ops.post(f"{LIST}{plan.pk}/control/resume/")
    [record] = records("rollout.plan.resumed")
    assert record.outcome == "failure" and record.principal == "ops"
    assert not LogEntry.objects.exists()


def test_a_claimed_operator_is_kept_apart_from_the_principal():
    plan = RolloutPlanFactory()
    carol = Principal(Kind.TOKEN, "ci-deployer", Role.OPERATOR).with_claim("carol")
    status = services.rollout_pause(plan_id=plan.plan_id, principal=carol)
    entry = status.history.order_by("id").last()
    assert (entry.operator, entry.claimed_operator) == ("ci-deployer", "carol")
    [record] = records("rollout.plan.paused")
    assert record.principal == "ci-deployer" and record.detail["claimed_operator"] == "carol"


def test_a_client_cannot_claim_to_be_the_evaluator():
    principal = acting(None, "evaluator")  # open loopback mode with X-Autonomy-Operator
    assert principal.name == "anonymous" and principal.claimed_operator == "evaluator"
    token = acting(Principal(Kind.TOKEN, "ci", Role.OPERATOR), "evaluator")
    assert token.name == "ci" and token.claimed_operator == "evaluator"


def test_an_automatic_promotion_is_audited_as_the_system():
    plan = RolloutPlanFactory(
        stages=[
            {"stage_id": "canary", "percent": 100, "gates": [{"kind": "time_soak", "seconds": 0}]}
        ]
    )
    outcome = evaluate_plan(plan_id=plan.plan_id)
    assert outcome.action == "promote"
    [record] = records("rollout.plan.promoted")
    assert (record.principal, record.principal_kind) == ("evaluator", "system")
    assert RolloutPlan.objects.get(pk=plan.pk).history.last().operator == "evaluator"

from django.urls import path

from rollouts.api import views

_ACTIONS = ("pause", "resume", "promote", "halt", "cancel")

urlpatterns = [
    path("v1/signing-key", views.SigningKeyView.as_view(), name="signing-key"),
    path("v1/signing-keys", views.SigningKeysView.as_view(), name="signing-keys"),
    path("v1/rollouts", views.RolloutListView.as_view(), name="rollout-list"),
    # `stuck` before `{plan_id}` (plan ids may not be "stuck").
    path("v1/rollouts/stuck", views.StuckView.as_view(), name="rollout-stuck"),
    path("v1/rollouts/<str:plan_id>", views.RolloutDetailView.as_view(), name="rollout-detail"),
    path("v1/rollouts/<str:plan_id>/spec", views.RolloutSpecView.as_view(), name="rollout-spec"),
    path(
        "v1/rollouts/<str:plan_id>/status", views.RolloutStatusView.as_view(), name="rollout-status"
    ),
    *(
        path(
            f"v1/rollouts/<str:plan_id>/{action}",
            views.RolloutActionView.as_view(transition=action),
            name=f"rollout-{action}",
        )
        for action in _ACTIONS
    ),
    path(
        "v1/rollouts/<str:plan_id>/recover",
        views.RolloutRecoverView.as_view(),
        name="rollout-recover",
    ),
    path(
        "v1/rollouts/<str:plan_id>/stages/<str:stage_id>/gates",
        views.StageGatesView.as_view(),
        name="rollout-stage-gates",
    ),
    path(
        "v1/rollouts/<str:plan_id>/stages/<str:stage_id>/gates/approve",
        views.StageGatesApproveView.as_view(),
        name="rollout-stage-gates-approve",
    ),
]

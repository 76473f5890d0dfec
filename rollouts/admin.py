"""Rollout plans in the Django admin: the operators' view of staged rollouts, and their controls.

The plan list shows phase, release, current stage and progress; a plan's page shows its stages
(the current stage's gates evaluated live), its history and its signed spec. Operators steer a
plan from its page (one button per legal action, with an optional reason) or from the list
(admin actions on the selected plans). Every change goes through `rollouts.services`, exactly
like the API: the operator recorded in the history is the admin user's username, and a refusal
(the API's 409) shows as an error message. Nothing is edited through a form: plans are published
with `POST /v1/rollouts` and their state only moves through the transition table.

Acting needs the `rollouts.change_rolloutplan` permission (superusers have it); staff with only
`view_rolloutplan` can look but not act.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, OuterRef, Q, QuerySet, Subquery
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from access.services import audited_failure
from core.admin import ReadOnlyAdminMixin
from core.auth import Kind, Principal, Role
from core.errors import ApiError
from releases.models import NodeAck
from rollouts import clock, progress, selectors, services
from rollouts.cohort import LIVE_STAGE_PHASES, NO_NEW_NODES, snapshot_of
from rollouts.gates import evaluate_stage, human_duration
from rollouts.models import (
    APPROVABLE_STAGE_PHASES,
    RUNNING_PHASES,
    TERMINAL_PHASES,
    Phase,
    RolloutPlan,
    StagePhase,
    StageStatus,
)
from rollouts.statemachine import STAGE_EFFECTS, target_phase
from rollouts.validation import stages_of

CONTROL_PERMISSION = "rollouts.change_rolloutplan"
REASON_MAX_LENGTH = 1000

# Plan phase -> colour of its badge (list and page).
PHASE_COLOURS: dict[str, str] = {
    Phase.PUBLISHED: "#2f6fb0",
    Phase.ACTIVE: "#2e7d32",
    Phase.PAUSED: "#b26a00",
    Phase.HALTED: "#c62828",
    Phase.COMPLETED: "#455a64",
    Phase.CANCELLED: "#757575",
    Phase.ROLLED_BACK: "#6a1b9a",
}
DONE_STAGE_PHASES = (StagePhase.PROMOTED, StagePhase.SKIPPED)
# The bars' segments, in order (targeted = their sum), and the nodes listed on a plan's page.
BAR_STATES = ("active", "acknowledged", "pending", "failed", "rejected", "silent", "waiting")
LISTED_STATES = ("failed", "rejected", "silent")
LISTED_NODES = 50
NODES_PAGE = 100


def refresh_seconds() -> int:
    """How often a running plan's page reloads itself (AUTONOMY_ADMIN_REFRESH_SECONDS)."""
    return int(getattr(settings, "ADMIN_REFRESH_SECONDS", 10))


def plan_nodes_url(pk: int, stage_id: str, state: str) -> str:
    base = reverse("admin:rollouts_rolloutplan_nodes", args=[quote(pk)])
    return base + "?" + urlencode({"stage_id": stage_id, "state": state})


def node_counts(counts: dict[str, int], pk: int, stage_id: str) -> dict[str, Any]:
    """A stage's counts for the templates: the bar's segments (state, count, width %, link)."""
    targeted = counts["targeted"]
    segments = [
        {
            "state": state,
            "count": counts[state],
            "width": f"{100 * counts[state] / targeted:.2f}" if targeted else "0",
            "url": plan_nodes_url(pk, stage_id, state),
        }
        for state in BAR_STATES
    ]
    return {
        "targeted": targeted,
        "targeted_url": plan_nodes_url(pk, stage_id, "targeted"),
        "segments": segments,
        "adoption": f"{100 * counts['active'] / targeted:.0f}%" if targeted else "—",
        **{state: counts[state] for state in BAR_STATES},
    }


@dataclass(frozen=True)
class Control:
    """One operator action: its name in URLs, its button label and the service call."""

    name: str
    label: str
    call: Callable[..., Any]
    confirm: str = ""  # asked in the browser before a final action
    recover: bool = False  # shown apart, under "Recover"

    @property
    def stage_scoped(self) -> bool:
        """The action changes the current stage (promote, skip, halt, re-open): its form sends
        the `stage_id` shown, and the service refuses it (409) once the plan has moved on, so a
        double submit or a stale page cannot act on the next stage."""
        return STAGE_EFFECTS[self.name] is not None


def _recover(strategy: str) -> Callable[..., RolloutPlan]:
    return lambda **kw: services.rollout_recover(strategy=strategy, **kw)


# The plan actions of API.md §4, in button order; the keys are the transition table's actions.
PLAN_CONTROLS: dict[str, Control] = {
    "pause": Control("pause", "Pause", services.rollout_pause),
    "resume": Control("resume", "Resume", services.rollout_resume),
    "promote": Control("promote", "Promote current stage", services.rollout_promote),
    "halt": Control("halt", "Halt", services.rollout_halt),
    "cancel": Control(
        "cancel", "Cancel", services.rollout_cancel, "Cancel this rollout? This cannot be undone."
    ),
}
RECOVER_CONTROLS: dict[str, Control] = {
    "retry": Control("retry", "Recover: retry", _recover("retry"), recover=True),
    "rollback": Control(
        "rollback",
        "Recover: roll back",
        _recover("rollback"),
        "Roll this rollout back? This cannot be undone.",
        recover=True,
    ),
    "skip_failed": Control(
        "skip_failed", "Recover: skip current stage", _recover("skip_failed"), recover=True
    ),
}
CONTROLS = {**PLAN_CONTROLS, **RECOVER_CONTROLS}


def phase_badge(phase: str) -> str:
    return format_html(
        '<span class="rollout-phase" data-phase="{}" style="color:#fff;background:{};'
        'padding:1px 7px;border-radius:8px;font-weight:600;white-space:nowrap">{}</span>',
        phase,
        PHASE_COLOURS.get(phase, "#555"),
        phase,
    )


def progress_text(*, done: int, total: int, percent: float) -> str:
    return f"{done}/{total} stages, {percent:g}%"


class RolloutActionForm(ActionForm):
    """The list's action bar, with the optional reason recorded in each plan's history."""

    reason = forms.CharField(
        required=False,
        max_length=REASON_MAX_LENGTH,
        label="Reason (optional):",
        widget=forms.TextInput(attrs={"size": 40}),
    )


def _bulk_action(control: Control) -> Callable[..., None]:
    def run(modeladmin: RolloutPlanAdmin, request: HttpRequest, queryset: QuerySet) -> None:
        modeladmin.run_bulk(request, queryset, control)

    run.__name__ = f"{control.name}_selected"
    return admin.action(
        description=f"{control.label} the selected rollout plans", permissions=["control"]
    )(run)


@admin.register(RolloutPlan)
class RolloutPlanAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "plan_id",
        "release_link",
        "channel",
        "phase_display",
        "current_stage",
        "progress",
        "awaiting_approval",
        "adoption",
        "halted_reason",
        "updated_at",
    )
    list_filter = ("phase", "channel")
    search_fields = ("plan_id", "release__release_id")
    list_select_related = ("release",)
    ordering = ("-id",)
    action_form = RolloutActionForm
    actions = [_bulk_action(control) for control in PLAN_CONTROLS.values()]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "plan_id",
                    "release_link",
                    "channel",
                    "description",
                    "created_by",
                    "created_at",
                    "updated_at",
                    "version",
                )
            },
        ),
        ("Signature", {"fields": ("digest", "key_id", "signature")}),
        ("Spec (as published, immutable)", {"fields": ("spec_pretty",)}),
    )
    # Phase, current stage and progress head the page (the template's status panel).
    readonly_fields = (
        "plan_id",
        "release_link",
        "channel",
        "description",
        "created_by",
        "created_at",
        "updated_at",
        "version",
        "digest",
        "key_id",
        "signature",
        "spec_pretty",
    )

    # --- permissions: nothing is added, edited through a form or deleted (ReadOnlyAdminMixin) --

    def has_control_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """May this user pause, resume, promote, halt, cancel, recover and approve gates."""
        user = request.user
        return bool(user.is_active and user.is_staff and user.has_perm(CONTROL_PERMISSION))

    # --- the list ------------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Progress for every row in the list's one query: stage counts and the furthest live
        # stage's percent (the share of nodes in the rollout now).
        # The current stage's phase, approval and halt reason, and the release's ack counts,
        # as subqueries of the same query (the spec, for the manual gate, comes with the row).
        current = StageStatus.objects.filter(
            plan=OuterRef("pk"), stage_id=OuterRef("current_stage_id")
        )

        def acks(*statuses: str) -> Subquery:
            rows = NodeAck.objects.filter(release=OuterRef("release"))
            if statuses:
                rows = rows.filter(status__in=statuses)
            return Subquery(
                rows.order_by().values("release").annotate(n=Count("id")).values("n")[:1]
            )

        return (
            super()
            .get_queryset(request)
            .annotate(
                stages_total=Count("stages"),
                stages_done=Count("stages", filter=Q(stages__phase__in=DONE_STAGE_PHASES)),
                live_percent=Max("stages__percent", filter=Q(stages__phase__in=LIVE_STAGE_PHASES)),
                current_phase=Subquery(current.values("phase")[:1]),
                current_approved=Subquery(current.values("manual_approved")[:1]),
                current_halt_reason=Subquery(current.values("halt_reason")[:1]),
                acks_total=acks(),
                acks_active=acks(NodeAck.Status.ACTIVE),
                acks_failed=acks(NodeAck.Status.FAILED, NodeAck.Status.REJECTED),
            )
        )

    @admin.display(description="release", ordering="release__release_id")
    def release_link(self, plan: RolloutPlan) -> str:
        url = reverse("admin:releases_release_change", args=[quote(plan.release_id)])
        return format_html('<a href="{}">{}</a>', url, plan.release.release_id)

    @admin.display(description="phase", ordering="phase")
    def phase_display(self, plan: RolloutPlan) -> str:
        return phase_badge(plan.phase)

    @admin.display(description="current stage", ordering="current_stage_id")
    def current_stage(self, plan: RolloutPlan) -> str:
        # The list's actions send the stage each row shows (see `run_bulk`).
        return format_html(
            '{}<input type="hidden" name="{}" value="{}">',
            plan.current_stage_id,
            _row_stage_field(plan.pk),
            plan.current_stage_id,
        )

    @admin.display(description="progress")
    def progress(self, plan: RolloutPlan) -> str:
        row: Any = plan  # get_queryset() annotates live_percent, stages_done, stages_total
        percent = 0.0 if plan.phase in NO_NEW_NODES else (row.live_percent or 0.0)
        return progress_text(done=row.stages_done, total=row.stages_total, percent=percent)

    @admin.display(description="awaiting approval")
    def awaiting_approval(self, plan: RolloutPlan) -> str:
        """The current stage waits for its manual gate (a running plan, not approved yet)."""
        row: Any = plan  # get_queryset() annotates the current stage's phase and approval
        if (
            plan.phase not in RUNNING_PHASES
            or row.current_phase not in APPROVABLE_STAGE_PHASES
            or row.current_approved
        ):
            return "—"
        stage = next(
            (s for s in stages_of(bytes(plan.spec)) if s.stage_id == plan.current_stage_id), None
        )
        if stage is None or not any(gate.kind == "manual" for gate in stage.gates):
            return "—"
        return format_html(
            '<span class="awaiting-approval" style="color:#b26a00;font-weight:600">'
            "awaiting approval ({})</span>",
            plan.current_stage_id,
        )

    @admin.display(description="adoption")
    def adoption(self, plan: RolloutPlan) -> str:
        """Nodes that acked the plan's release `active`, of all its acks (failed ones named);
        the plan's page has the per-stage counts."""
        row: Any = plan  # get_queryset() annotates the release's ack counts
        if not row.acks_total:
            return "no ack yet"
        failed = f", {row.acks_failed} failed" if row.acks_failed else ""
        return format_html(
            '<span class="adoption">{} active of {} acks{}</span>',
            row.acks_active,
            row.acks_total,
            failed,
        )

    @admin.display(description="halted reason")
    def halted_reason(self, plan: RolloutPlan) -> str:
        row: Any = plan
        if plan.phase != Phase.HALTED:
            return "—"
        return row.current_halt_reason or "halted by hand"

    @admin.display(description="spec")
    def spec_pretty(self, plan: RolloutPlan) -> str:
        raw = bytes(plan.spec)
        try:
            text = orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:  # stored as received; publishing validated it
            text = raw.decode(errors="replace")
        return format_html(
            '<pre style="max-height:30em;overflow:auto;margin:0">{}</pre>'
            "<p>{} bytes, exactly as published; the digest and signature cover these bytes.</p>",
            text,
            len(raw),
        )

    def run_bulk(self, request: HttpRequest, queryset: QuerySet, control: Control) -> None:
        """An action on the selected plans: each one through the service, refusals listed."""
        reason = _reason(request)
        actor = admin_principal(request)
        done: list[str] = []
        for pk, plan_id in queryset.order_by("id").values_list("pk", "plan_id"):
            # A stage-scoped action acts on the stage the row showed (absent for plans selected
            # with "select all" beyond the page: their current stage).
            stage_id = _stage_id(request, _row_stage_field(pk)) if control.stage_scoped else None
            try:
                with audited_failure(services.audit_event(control.name), actor, plan_id):
                    after = control.call(
                        plan_id=plan_id, principal=actor, reason=reason, stage_id=stage_id
                    )
            except ApiError as exc:
                self.message_user(request, f"{plan_id}: {exc.message}.", messages.ERROR)
            else:
                self.log_change(
                    request, after, f"{control.label}" + (f": {reason}" if reason else "")
                )
                done.append(plan_id)
        if done:
            self.message_user(
                request,
                f"{control.label}: done for {len(done)} rollout plan"
                f"{'' if len(done) == 1 else 's'} ({', '.join(done)}).",
                messages.SUCCESS,
            )

    # --- the plan page -------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        custom = [
            path(
                "<path:object_id>/control/<str:action>/",
                self.admin_site.admin_view(self.control_view),
                name="{}_{}_control".format(*info),
            ),
            path(
                "<path:object_id>/nodes/",
                self.admin_site.admin_view(self.nodes_view),
                name="{}_{}_nodes".format(*info),
            ),
            path(
                "<path:object_id>/approve/",
                self.admin_site.admin_view(self.approve_view),
                name="{}_{}_approve".format(*info),
            ),
        ]
        return custom + super().get_urls()

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: RolloutPlan | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["rollout"] = self._page_context(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _page_context(self, request: HttpRequest, plan: RolloutPlan) -> dict[str, Any]:
        snap = snapshot_of(plan)
        terminal = plan.phase in TERMINAL_PHASES
        current = snap.current
        report = None if terminal else evaluate_stage(snap, current, now=clock.now())
        evaluated = dict(enumerate(report.gates)) if report is not None else {}
        stages = []
        for stage in snap.stages:
            is_current = stage.stage_id == current.stage_id
            gates = []
            for index, gate in enumerate(stage.gates):
                result = evaluated.get(index) if is_current else None
                gates.append(
                    {
                        "kind": gate.kind,
                        "params": ", ".join(f"{k}={v}" for k, v in gate.params.items()),
                        "passed": None if result is None else result.passed,
                        "detail": result.detail if result is not None else "",
                    }
                )
            stages.append(
                {
                    "stage": stage,
                    "current": is_current,
                    "gates": gates,
                    "nodes": sorted(stage.nodes),
                    "has_manual": any(gate.kind == "manual" for gate in stage.gates),
                }
            )
        can_control = self.has_control_permission(request, plan)
        controls = [
            control
            for control in CONTROLS.values()
            if can_control and target_phase(control.name, plan.phase) is not None
        ]
        approvable = (
            can_control
            and not terminal
            and any(gate.kind == "manual" for gate in current.gates)
            and not current.manual_approved
            and current.phase in APPROVABLE_STAGE_PHASES
        )
        done = sum(1 for stage in snap.stages if stage.phase in DONE_STAGE_PHASES)
        nodes = progress.plan_progress(plan, snap=snap)
        for row, stage in zip(stages, snap.stages, strict=True):
            row["counts"] = node_counts(nodes.stage_counts[stage.position], plan.pk, stage.stage_id)
        current_nodes = nodes.stage_counts[nodes.current_position]
        listed = {}
        for state in LISTED_STATES:
            shown = nodes.first_ids(
                position=nodes.current_position, state=state, limit=LISTED_NODES
            )
            listed[state] = {
                "nodes": shown,
                "total": current_nodes[state],
                "url": plan_nodes_url(plan.pk, current.stage_id, state),
            }
        return {
            "plan": plan,
            "phase_badge": phase_badge(plan.phase),
            "progress": progress_text(
                done=done, total=len(snap.stages), percent=snap.rollout_percent()
            ),
            "current": current,
            "report": report,
            "stages": stages,
            "history": list(plan.history.order_by("id")),
            "can_control": can_control,
            "controls": [control for control in controls if not control.recover],
            "recover_controls": [control for control in controls if control.recover],
            "approvable": approvable,
            "reason_max_length": REASON_MAX_LENGTH,
            "nodes": node_counts(current_nodes, plan.pk, current.stage_id),
            "known_nodes": nodes.known,
            "silent_after": human_duration(nodes.silent_after),
            "listed": listed,
            "refresh_seconds": refresh_seconds() if plan.phase in RUNNING_PHASES else 0,
        }

    def _plan_or_404(self, request: HttpRequest, object_id: str) -> RolloutPlan:
        plan = self.get_object(request, unquote(object_id))
        if plan is None:
            raise Http404(f"no rollout plan with id {object_id!r}")
        return plan

    def _checked_post(self, request: HttpRequest, object_id: str) -> RolloutPlan:
        if not self.has_control_permission(request):
            raise PermissionDenied
        return self._plan_or_404(request, object_id)

    def _back(self, plan: RolloutPlan) -> HttpResponseRedirect:
        return HttpResponseRedirect(
            reverse("admin:rollouts_rolloutplan_change", args=[quote(plan.pk)])
        )

    def control_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        """POST a plan action (pause, resume, promote, halt, cancel, retry, rollback,
        skip_failed) with an optional `reason`; back to the plan page with a message."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        control = CONTROLS.get(action)
        if control is None:
            raise Http404(f"no rollout action {action!r}")
        plan = self._checked_post(request, object_id)
        reason = _reason(request)
        # The stage shown on the page; without one (a hand-made POST), the current stage.
        stage_id = _stage_id(request) if control.stage_scoped else None
        before = plan.phase
        actor = admin_principal(request)
        try:
            with audited_failure(services.audit_event(control.name), actor, plan.plan_id):
                after = control.call(
                    plan_id=plan.plan_id, principal=actor, reason=reason, stage_id=stage_id
                )
        except ApiError as exc:
            self.message_user(request, f"{control.label} refused: {exc.message}.", messages.ERROR)
            return self._back(plan)
        self.log_change(
            request,
            after,
            f"{control.label}: {before} -> {after.phase}" + (f" ({reason})" if reason else ""),
        )
        self.message_user(
            request,
            f"{control.label}: {plan.plan_id} went from {before} to {after.phase} "
            f"(current stage {after.current_stage_id}).",
            messages.SUCCESS,
        )
        return self._back(plan)

    def nodes_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The nodes behind a count of the plan's page: `stage_id`, `state`, `cursor`."""
        plan = self._plan_or_404(request, object_id)
        if not self.has_view_permission(request, plan):
            raise PermissionDenied
        state = request.GET.get("state") or "targeted"
        if state not in progress.COUNT_KEYS:
            raise Http404(f"no node state {state!r}")
        cursor = request.GET.get("cursor") or None
        try:
            page = selectors.plan_nodes(
                plan=plan,
                stage_id=request.GET.get("stage_id") or None,
                state=state,
                limit=NODES_PAGE,
                cursor=cursor,
            )
        except ApiError as exc:
            raise Http404(exc.message) from None
        next_url = ""
        if page["next_cursor"] is not None:
            next_url = (
                plan_nodes_url(plan.pk, page["stage_id"], state)
                + "&"
                + urlencode({"cursor": page["next_cursor"]})
            )
        context = {
            **self.admin_site.each_context(request),
            "title": f"{plan.plan_id}: {state} nodes of stage {page['stage_id']}",
            "opts": self.opts,
            "plan": plan,
            "page": page,
            "states": progress.COUNT_KEYS,
            "stage_ids": [stage.stage_id for stage in snapshot_of(plan).stages],
            "next_url": next_url,
            "first_url": plan_nodes_url(plan.pk, page["stage_id"], state) if cursor else "",
        }
        return TemplateResponse(request, "admin/rollouts/rolloutplan/nodes.html", context)

    def approve_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST `stage_id` (and an optional `reason`): approve that stage's manual gate."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        plan = self._checked_post(request, object_id)
        stage_id = _stage_id(request) or plan.current_stage_id
        actor = admin_principal(request)
        try:
            with audited_failure("rollout.gate.approved", actor, plan.plan_id):
                approval = services.rollout_gate_approve(
                    plan_id=plan.plan_id,
                    stage_id=stage_id,
                    principal=actor,
                    reason=_reason(request),
                )
        except ApiError as exc:
            self.message_user(request, f"Approval refused: {exc.message}.", messages.ERROR)
            return self._back(plan)
        self.log_change(request, plan, f"Approved the manual gate of stage {stage_id}")
        self.message_user(request, f"Stage {stage_id}: {approval.message}.", messages.SUCCESS)
        return self._back(plan)


def admin_principal(request: HttpRequest) -> Principal:
    """The admin's logged-in user as the acting principal (kind `session`)."""
    return Principal(Kind.SESSION, request.user.get_username(), Role.ADMIN)


def _row_stage_field(pk: int) -> str:
    return f"stage_id_{pk}"


def _stage_id(request: HttpRequest, field: str = "stage_id") -> str | None:
    return (request.POST.get(field) or "").strip() or None


def _reason(request: HttpRequest) -> str | None:
    return (request.POST.get("reason") or "").strip()[:REASON_MAX_LENGTH] or None

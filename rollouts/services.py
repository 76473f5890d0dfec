"""Writes of rollout state: publishing plans, the transitions of API.md §4, gate approvals.

Every transition goes through `rollout_transition`, which applies the table in
`rollouts.statemachine` with one conditional UPDATE of the plan row
(`WHERE pk = … AND version = … AND phase = …`): of two racing requests exactly one changes the
plan, the other sees 0 rows and re-reads. Stage rows and the history entry are written in the
same short transaction. No `select_for_update`: SQLite and PostgreSQL behave the same.

The admin UI and the API call these functions (keyword-only):

    rollout_publish(raw_spec=…, operator=…)            rollout_publish_dry_run(raw_spec=…)
    rollout_pause / rollout_resume / rollout_promote / rollout_halt / rollout_cancel
        (plan_id=…, operator=…, reason=…, stage_id=None)
    rollout_recover(plan_id=…, strategy="retry"|"rollback"|"skip_failed", operator=…, reason=…,
                    stage_id=None)
    rollout_gate_approve(plan_id=…, stage_id=…, operator=…, reason=…)
"""

from __future__ import annotations

import bisect
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F

from access.models import AuditRecord
from access.services import audit_write
from core.auth import Kind, Principal, acting, is_open_mode, system
from core.errors import ApiError
from core.params import format_rfc3339
from releases.models import NodeAck, Release
from rollouts import clock, signing
from rollouts import metrics as rollout_metrics
from rollouts.cohort import PlanSnapshot, bucket, display_percent, snapshot_of
from rollouts.models import (
    APPROVABLE_STAGE_PHASES,
    NON_TERMINAL_PHASES,
    TERMINAL_PHASES,
    Phase,
    RolloutPlan,
    RolloutTransition,
    StagePhase,
    StageStatus,
)
from rollouts.selectors import plans_changed
from rollouts.statemachine import (
    ADVANCE,
    HISTORY_ACTION,
    NOTIFY_ON_PHASE,
    RECOVER_STRATEGIES,
    STAGE_EFFECTS,
    TRANSITIONS,
    target_phase,
    verb,
)
from rollouts.validation import PlanSpec, parse_spec

logger = logging.getLogger("orchestrator.rollouts")

ANONYMOUS = "anonymous"
EVALUATOR = "evaluator"
# Audit event names of the history actions (API.md §6).
AUDIT_EVENTS = {
    "publish": "rollout.plan.created",
    "pause": "rollout.plan.paused",
    "resume": "rollout.plan.resumed",
    "promote": "rollout.plan.promoted",
    "halt": "rollout.plan.halted",
    "cancel": "rollout.plan.cancelled",
    "retry": "rollout.plan.recovered",
    "rollback": "rollout.plan.recovered",
    "skip_failed": "rollout.plan.recovered",
    "approve": "rollout.gate.approved",
}


def actor_of(principal: Principal | None, operator: str | None = None) -> Principal:
    """The principal an action is recorded under: `principal` when the caller has one (the
    request's, the admin's user), else `evaluator` → the server itself, else the open-mode actor
    named by `operator` as before."""
    if principal is not None:
        return principal
    if operator == EVALUATOR:
        return system(EVALUATOR)
    return acting(None, operator)


def principal_label(actor: Principal) -> str:
    """`token:alice`, `system:evaluator`, `anonymous:bob (claims carol)`: who acted, for logs."""
    label = f"{actor.kind}:{actor.name}"
    return f"{label} (claims {actor.claimed_operator})" if actor.claimed_operator else label


def _log_action(actor: Principal, action: str, plan_id: str, message: str, **fields: Any) -> None:
    """One log line per committed rollout change, naming the principal: info, and warning for an
    automatic halt (the server stopped a rollout by itself)."""
    automatic = actor.kind == Kind.SYSTEM
    level = logging.WARNING if automatic and action == "halt" else logging.INFO
    logger.log(
        level,
        "rollout %s: %s by %s%s",
        plan_id,
        action,
        principal_label(actor),
        message,
        extra={
            "plan_id": plan_id,
            "action": action,
            "principal": actor.name,
            "principal_kind": str(actor.kind),
            "claimed_operator": actor.claimed_operator,
            "trigger": rollout_metrics.AUTOMATIC if automatic else rollout_metrics.OPERATOR,
            **fields,
        },
    )


def audit_event(action: str) -> str:
    return AUDIT_EVENTS.get(action, f"rollout.plan.{action}")


def _audit(actor: Principal, action: str, plan_id: str, detail: dict[str, Any]) -> None:
    audit_write(
        event_name=audit_event(action),
        outcome=AuditRecord.Outcome.SUCCESS,
        principal=actor,
        target=plan_id,
        detail=detail,
    )


DRY_RUN_SAMPLE = 10
_RETRIES = 5


# --- publishing -------------------------------------------------------------------------------


def _publishable(spec: PlanSpec) -> tuple[Release, str]:
    """The release and the plan_id to use; 400/409 when the spec cannot be published."""
    release = Release.objects.filter(release_id=spec.release_id).first()
    if release is None:
        raise ApiError(
            400,
            f"invalid field 'release_id': no release {spec.release_id!r} exists",
            field="release_id",
        )
    if spec.channel is not None and spec.channel != release.channel:
        raise ApiError(
            400,
            f"invalid field 'channel': release {release.release_id} is in channel "
            f"{release.channel!r}, not {spec.channel!r}",
            field="channel",
        )
    plan_id = spec.plan_id or f"plan-{secrets.token_hex(6)}"
    if RolloutPlan.objects.filter(plan_id=plan_id).exists():
        raise ApiError(409, f"a rollout plan {plan_id!r} already exists", plan_id=plan_id)
    live = (
        RolloutPlan.objects.filter(release=release, phase__in=NON_TERMINAL_PHASES)
        .values("plan_id", "phase")
        .first()
    )
    if live is not None:
        raise ApiError(
            409,
            f"release {release.release_id} already has a rollout in progress "
            f"({live['plan_id']}, {live['phase']}); cancel it or let it finish first",
            plan_id=live["plan_id"],
            phase=live["phase"],
        )
    return release, plan_id


def rollout_publish(
    *, raw_spec: bytes, operator: str | None = None, principal: Principal | None = None
) -> RolloutPlan:
    """Validate, sign and store a plan; its first stage opens at once (phase `published`).
    The history and the audit record name `principal` (the spec's `created_by` is only a
    claim when a principal is known)."""
    spec = parse_spec(raw_spec)
    actor = actor_of(principal, operator or spec.created_by)
    if spec.created_by and spec.created_by != actor.name:
        if is_open_mode(actor) and actor.name == ANONYMOUS and not actor.claimed_operator:
            actor = acting(None, spec.created_by)  # open mode: `created_by` names the actor
        else:
            actor = actor.with_claim(actor.claimed_operator or spec.created_by)
    release, plan_id = _publishable(spec)
    key = signing.current_key()
    digest = signing.digest_of(raw_spec)
    signature = key.sign(digest)
    now = clock.now()
    first = spec.stages[0].stage_id
    try:
        with transaction.atomic():
            plan = RolloutPlan.objects.create(
                plan_id=plan_id,
                release=release,
                channel=release.channel,
                description=spec.description,
                created_by=spec.created_by,
                spec=bytes(raw_spec),
                digest=digest,
                signature=signature,
                key_id=key.key_id,
                phase=Phase.PUBLISHED,
                current_stage_id=first,
                version=1,
                created_at=now,
                updated_at=now,
            )
            StageStatus.objects.bulk_create(
                StageStatus(
                    plan=plan,
                    position=index,
                    stage_id=stage.stage_id,
                    percent=stage.percent,
                    phase=StagePhase.OPEN if index == 0 else StagePhase.PENDING,
                    opened_at=now if index == 0 else None,
                )
                for index, stage in enumerate(spec.stages)
            )
            RolloutTransition.objects.create(
                plan=plan,
                action="publish",
                from_phase="",
                to_phase=Phase.PUBLISHED,
                stage_id=first,
                operator=actor.name or ANONYMOUS,
                claimed_operator=actor.claimed_operator or "",
                reason=spec.description,
                at=now,
            )
            _audit(actor, "publish", plan_id, {"release_id": release.release_id})
            plans_changed()
    except IntegrityError:
        _publishable(spec)  # a concurrent publish won: answer its 409
        raise
    _log_action(
        actor,
        "publish",
        plan_id,
        f" (release {release.release_id}, stage {first})",
        release_id=release.release_id,
        stage_id=first,
    )
    _poke()
    return plan


def known_node_ids() -> set[str]:
    """Every node known to the fleet: any node that sent an event or an ack (the fleet view's
    node table: one row per node, and it outlives events deleted by retention)."""
    from releases.models import FleetNode

    return set(FleetNode.objects.values_list("node_id", flat=True))


def _dry_run_cohorts(
    stages: Any, plan_id: str, known: set[str], active: set[str]
) -> tuple[list[int], list[list[str]]]:
    """Per stage: how many known nodes run the release once it is open (cumulative), and the
    first DRY_RUN_SAMPLE of them by id.

    Cohorts only grow (percent never decreases, listed nodes and active nodes stay in), so each
    node has one entry stage: the first whose percent exceeds its bucket (a binary search), the
    first that lists it, or 0 when it already runs the release. One pass over the sorted nodes
    then counts and samples: O(nodes * log stages + stages * sample) after the sort, where the
    old per-stage scan and sort cost stages * nodes * log nodes (12.5 s for 50 stages, issue 11).
    """
    count = len(stages)
    percents = [stage.percent for stage in stages]
    first_listed: dict[str, int] = {}
    for index, stage in enumerate(stages):
        for node in stage.nodes:
            first_listed.setdefault(node, index)
    entering = [0] * count
    samples: list[list[str]] = [[] for _ in range(count)]
    not_full = count  # stages >= not_full have a full sample (cohorts grow: a suffix fills)
    for node in sorted(known):
        if node in active:
            entry = 0
        else:
            entry = min(
                bisect.bisect_right(percents, bucket(plan_id, node)), first_listed.get(node, count)
            )
        if entry >= count:
            continue
        entering[entry] += 1
        for index in range(entry, not_full):
            samples[index].append(node)
        while not_full > 0 and len(samples[not_full - 1]) >= DRY_RUN_SAMPLE:
            not_full -= 1
    counts = []
    total = 0
    for added in entering:
        total += added
        counts.append(total)
    return counts, samples


def rollout_publish_dry_run(*, raw_spec: bytes) -> dict[str, Any]:
    """Validate like `rollout_publish` and say who each stage would reach; store nothing."""
    spec = parse_spec(raw_spec)
    release, plan_id = _publishable(spec)
    known = known_node_ids()
    active = set(
        NodeAck.objects.filter(release=release, status=NodeAck.Status.ACTIVE).values_list(
            "node_id", flat=True
        )
    )
    counts, samples = _dry_run_cohorts(spec.stages, plan_id, known, active)
    stages = [
        {
            "stage_id": stage.stage_id,
            "percent": display_percent(stage.percent),
            "nodes": counts[index],
            "sample": samples[index],
        }
        for index, stage in enumerate(spec.stages)
    ]
    return {
        "dry_run": True,
        "valid": True,
        "plan_id": plan_id,
        "plan_id_generated": spec.plan_id is None,
        "release_id": release.release_id,
        "channel": release.channel,
        "digest": signing.digest_of(raw_spec),
        "known_nodes": len(known),
        "stages": stages,
    }


# --- transitions ------------------------------------------------------------------------------


def plan_get(plan_id: str) -> RolloutPlan:
    plan = RolloutPlan.objects.filter(plan_id=plan_id).first()
    if plan is None:
        raise ApiError(404, f"no rollout plan {plan_id!r}", plan_id=plan_id)
    return plan


def _conflict(action: str, plan_id: str) -> ApiError:
    plan = plan_get(plan_id)
    return ApiError(
        409,
        f"cannot {verb(action)}: the rollout changed while this request ran (it is now "
        f"{plan.phase}, stage {plan.current_stage_id}); re-read its status and retry",
        phase=plan.phase,
        current_stage_id=plan.current_stage_id,
    )


def _stage_changes(
    snap: PlanSnapshot, action: str, target: str, reason: str, now: datetime
) -> tuple[str, str, list[tuple[int, dict[str, Any]]]]:
    """(new plan phase, new current stage id, [(stage pk, fields)]) for `action`."""
    current = snap.current
    effect = STAGE_EFFECTS[action]
    updates: list[tuple[int, dict[str, Any]]] = []
    if target == ADVANCE:
        if effect == "promote":
            updates.append((current.pk, {"phase": StagePhase.PROMOTED, "promoted_at": now}))
        else:
            updates.append((current.pk, {"phase": StagePhase.SKIPPED}))
        if current.position + 1 < len(snap.stages):
            following = snap.stages[current.position + 1]
            updates.append((following.pk, {"phase": StagePhase.OPEN, "opened_at": now}))
            return Phase.ACTIVE, following.stage_id, updates
        return Phase.COMPLETED, current.stage_id, updates
    if effect == "halt" and current.phase == StagePhase.OPEN:
        updates.append(
            (
                current.pk,
                {"phase": StagePhase.HALTED, "halt_reason": reason or "halted by an operator"},
            )
        )
    elif effect == "reopen" and current.phase == StagePhase.HALTED:
        updates.append(
            (
                current.pk,
                {
                    "phase": StagePhase.OPEN,
                    "opened_at": now,
                    "halt_reason": "",
                    "manual_approved": False,
                    "manual_approved_by": "",
                },
            )
        )
    return target, current.stage_id, updates


def _apply(
    plan: RolloutPlan, action: str, target: str, actor: Principal | str, reason: str
) -> bool:
    """One conditional transition; False when another writer changed the plan first."""
    if isinstance(actor, str):
        actor = actor_of(None, actor)
    snap = snapshot_of(plan)
    now = clock.now()
    new_phase, new_current, updates = _stage_changes(snap, action, target, reason, now)
    with transaction.atomic():
        changed = RolloutPlan.objects.filter(
            pk=plan.pk, version=plan.version, phase=plan.phase
        ).update(
            phase=new_phase,
            current_stage_id=new_current,
            version=F("version") + 1,
            updated_at=now,
        )
        if not changed:
            return False
        plans_changed()
        for pk, fields in updates:
            StageStatus.objects.filter(pk=pk).update(**fields)
        RolloutTransition.objects.create(
            plan_id=plan.pk,
            action=HISTORY_ACTION.get(action, action),
            from_phase=plan.phase,
            to_phase=new_phase,
            stage_id=snap.current_stage_id,
            operator=actor.name,
            claimed_operator=actor.claimed_operator or "",
            reason=reason,
            at=now,
        )
        _audit(
            actor,
            action,
            plan.plan_id,
            {
                "action": HISTORY_ACTION.get(action, action),
                "from_phase": plan.phase,
                "to_phase": new_phase,
                "stage_id": snap.current_stage_id,
                "reason": reason,
            },
        )
        event = NOTIFY_ON_PHASE.get(new_phase)
        if event is not None and new_phase != plan.phase:
            _notify_transition(event, plan, snap, actor, new_phase, reason, now)

    def committed() -> None:  # counted and logged once it holds (the evaluator's leader fence
        # may still roll its transaction back)
        rollout_metrics.record_transition(
            to_phase=new_phase, action=action, automatic=actor.kind == Kind.SYSTEM
        )
        _log_action(
            actor,
            HISTORY_ACTION.get(action, action),
            plan.plan_id,
            f" ({plan.phase} -> {new_phase}, stage {snap.current_stage_id})"
            + (f": {reason}" if reason else ""),
            from_phase=plan.phase,
            to_phase=new_phase,
            stage_id=snap.current_stage_id,
            reason=reason,
        )

    transaction.on_commit(committed)
    return True


def _notify_transition(
    event: str,
    plan: RolloutPlan,
    snap: PlanSnapshot,
    actor: Principal,
    new_phase: str,
    reason: str,
    now: datetime,
) -> None:
    """Queue the webhook event of a transition (in its transaction: both commit or neither)."""
    from notifications.selectors import subscribers
    from notifications.services import event_emit

    endpoints = subscribers(event)
    if not endpoints:
        return
    release_id = Release.objects.filter(pk=plan.release_id).values_list("release_id", flat=True)
    data: dict[str, Any] = {
        "plan_id": plan.plan_id,
        "release_id": release_id.first(),
        "channel": plan.channel,
        "phase": new_phase,
        "from_phase": plan.phase,
        "stage_id": snap.current_stage_id,
        "operator": actor.name,
        "automatic": actor.kind is Kind.SYSTEM,
        "at": format_rfc3339(now),
    }
    if new_phase == Phase.HALTED:
        data["reason"] = reason or "halted by an operator"
    event_emit(name=event, data=data, endpoints=endpoints)


def rollout_transition(
    *,
    plan_id: str,
    action: str,
    operator: str | None = None,
    reason: str | None = None,
    stage_id: str | None = None,
    expected_version: int | None = None,
    principal: Principal | None = None,
) -> RolloutPlan:
    """Apply `action` (a key of the transition table) to the plan; 404/409 as the contract says.

    Stage-relative actions (`promote`, `skip_failed`) and calls with `expected_version` are
    never retried after losing a race: of two promotes that read the same plan, one advances
    and the other gets 409. Others re-read and re-check the table (two racing pauses: one 200,
    one 409). `stage_id`, when given, is the stage the caller means to act on: the action is
    refused (409) once the plan has moved on, so promotes of one stage advance it once even when
    they do not overlap in time (the admin UI and scripts should send it).
    """
    if action not in TRANSITIONS:
        raise ValueError(f"unknown rollout action {action!r}")
    actor = actor_of(principal, operator)
    reason = reason or ""
    for _ in range(_RETRIES):
        plan = plan_get(plan_id)
        if expected_version is not None and plan.version != expected_version:
            raise _conflict(action, plan_id)
        _refuse_tampered(plan, action)
        target = target_phase(action, plan.phase)
        if target is None:
            raise ApiError(
                409, f"cannot {verb(action)} a rollout that is {plan.phase}", phase=plan.phase
            )
        if stage_id is not None and stage_id != plan.current_stage_id:
            raise ApiError(
                409,
                f"cannot {verb(action)} stage {stage_id}: the rollout is at stage "
                f"{plan.current_stage_id} ({plan.phase})",
                phase=plan.phase,
                current_stage_id=plan.current_stage_id,
            )
        if _apply(plan, action, target, actor, reason):
            if action in ("resume", "retry"):
                _poke()
            return plan_get(plan_id)
        if target == ADVANCE or expected_version is not None:
            raise _conflict(action, plan_id)
    raise _conflict(action, plan_id)


def rollout_pause(
    *,
    plan_id: str,
    operator: str | None = None,
    reason: str | None = None,
    stage_id: str | None = None,
    principal: Principal | None = None,
) -> RolloutPlan:
    return rollout_transition(
        principal=principal,
        plan_id=plan_id,
        action="pause",
        operator=operator,
        reason=reason,
        stage_id=stage_id,
    )


def rollout_resume(
    *,
    plan_id: str,
    operator: str | None = None,
    reason: str | None = None,
    stage_id: str | None = None,
    principal: Principal | None = None,
) -> RolloutPlan:
    return rollout_transition(
        principal=principal,
        plan_id=plan_id,
        action="resume",
        operator=operator,
        reason=reason,
        stage_id=stage_id,
    )


def rollout_promote(
    *,
    plan_id: str,
    operator: str | None = None,
    reason: str | None = None,
    stage_id: str | None = None,
    principal: Principal | None = None,
) -> RolloutPlan:
    return rollout_transition(
        principal=principal,
        plan_id=plan_id,
        action="promote",
        operator=operator,
        reason=reason,
        stage_id=stage_id,
    )


def rollout_halt(
    *,
    plan_id: str,
    operator: str | None = None,
    reason: str | None = None,
    stage_id: str | None = None,
    principal: Principal | None = None,
) -> RolloutPlan:
    return rollout_transition(
        principal=principal,
        plan_id=plan_id,
        action="halt",
        operator=operator,
        reason=reason,
        stage_id=stage_id,
    )


def rollout_cancel(
    *,
    plan_id: str,
    operator: str | None = None,
    reason: str | None = None,
    stage_id: str | None = None,
    principal: Principal | None = None,
) -> RolloutPlan:
    return rollout_transition(
        principal=principal,
        plan_id=plan_id,
        action="cancel",
        operator=operator,
        reason=reason,
        stage_id=stage_id,
    )


def rollout_recover(
    *,
    plan_id: str,
    strategy: str,
    operator: str | None = None,
    reason: str | None = None,
    stage_id: str | None = None,
    principal: Principal | None = None,
) -> RolloutPlan:
    if strategy not in RECOVER_STRATEGIES:
        raise ApiError(
            400,
            f"invalid field 'strategy': must be one of {', '.join(RECOVER_STRATEGIES)}",
            field="strategy",
        )
    return rollout_transition(
        plan_id=plan_id,
        action=strategy,
        operator=operator,
        reason=reason,
        stage_id=stage_id,
        principal=principal,
    )


# --- gates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    approved: bool
    promoted: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "promoted": self.promoted, "message": self.message}


def rollout_gate_approve(
    *,
    plan_id: str,
    stage_id: str,
    operator: str | None = None,
    reason: str | None = None,
    principal: Principal | None = None,
) -> Approval:
    """Mark the stage's manual gate passed, re-evaluate, and promote when every gate passes."""
    actor = actor_of(principal, operator)
    for _ in range(_RETRIES):
        plan = plan_get(plan_id)
        snap = snapshot_of(plan)
        stage = snap.stage(stage_id)
        if stage is None:
            raise ApiError(
                404,
                f"no stage {stage_id!r} in rollout plan {plan_id!r}",
                plan_id=plan_id,
                stage_id=stage_id,
            )
        if plan.phase in TERMINAL_PHASES:
            raise ApiError(
                409, f"cannot approve a gate of a rollout that is {plan.phase}", phase=plan.phase
            )
        if not any(gate.kind == "manual" for gate in stage.gates):
            raise ApiError(
                409,
                f"stage {stage_id} has no manual gate to approve",
                phase=plan.phase,
                stage_phase=stage.phase,
            )
        if stage.phase not in APPROVABLE_STAGE_PHASES:
            raise ApiError(
                409,
                f"cannot approve stage {stage_id}: it is {stage.phase}",
                phase=plan.phase,
                stage_phase=stage.phase,
            )
        now = clock.now()
        with transaction.atomic():
            changed = RolloutPlan.objects.filter(
                pk=plan.pk, version=plan.version, phase=plan.phase
            ).update(version=F("version") + 1, updated_at=now)
            if not changed:
                continue
            plans_changed()
            StageStatus.objects.filter(pk=stage.pk).update(
                manual_approved=True, manual_approved_by=actor.name
            )
            RolloutTransition.objects.create(
                plan_id=plan.pk,
                action="approve",
                from_phase=plan.phase,
                to_phase=plan.phase,
                stage_id=stage_id,
                operator=actor.name,
                claimed_operator=actor.claimed_operator or "",
                reason=reason or "",
                at=now,
            )
            _audit(actor, "approve", plan_id, {"stage_id": stage_id, "reason": reason or ""})
        _log_action(
            actor,
            "approve",
            plan_id,
            f" (stage {stage_id})" + (f": {reason}" if reason else ""),
            stage_id=stage_id,
            reason=reason or "",
        )
        break
    else:
        raise _conflict("approve", plan_id)

    from rollouts.evaluator import evaluate_plan

    outcome = evaluate_plan(plan_id=plan_id, principal=actor)
    promoted = outcome.action == "promote" and outcome.stage_id == stage_id
    if promoted:
        message = "manual gate approved; all gates pass: the stage was promoted"
    elif outcome.action == "halt":
        message = f"manual gate approved; the rollout halted: {outcome.reason}"
    elif outcome.reason:
        message = f"manual gate approved; not promoted yet: {outcome.reason}"
    else:
        message = f"manual gate approved; the rollout is {plan_get(plan_id).phase}"
    return Approval(approved=True, promoted=promoted, message=message)


def _poke() -> None:
    from rollouts.evaluator import poke

    poke()


# --- keys -------------------------------------------------------------------------------------

SHARED_KEY_NAME = "rollout signing key"  # the name `serve` registers its fingerprint under


def signing_key_rotate(*, path: Any, principal: Principal | None = None) -> signing.KeyRing:
    """Make a new active key in the keyring at `path`; the old active key is kept as `retired`
    (its signatures stay verifiable). Writes the `signing_key.rotated` audit record and, where
    replicas registered the key's fingerprint (core.ha), the new one, in one transaction."""
    from access.services import cli_principal
    from core import ha

    actor = principal or cli_principal()
    before = signing.ring_at(path)
    with transaction.atomic():
        ring = signing.rotate(path)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {ha.SHARED_KEY_TABLE} SET fingerprint = %s WHERE name = %s",
                [ha.fingerprint(ring.active.public_pem.encode()), SHARED_KEY_NAME],
            )
        audit_write(
            event_name="signing_key.rotated",
            outcome=AuditRecord.Outcome.SUCCESS,
            principal=actor,
            target=ring.active.key_id,
            detail={
                "retired_key_id": before.active.key_id,
                "keys": [key.key_id for key in ring.keys],
                "path": str(path),
            },
        )
    return ring


# --- tamper detection -------------------------------------------------------------------------

TAMPER_CHECKER = "tamper-check"
# Actions that would run the plan's stages again: refused while its spec does not match.
_REFUSED_WHEN_TAMPERED = frozenset({"resume", "retry", "promote", "skip_failed"})


def plan_tampered(*, plan: RolloutPlan, actual_digest: str, reason: str) -> None:
    """A stored spec no longer matches its signed digest, or its stage rows no longer match the
    spec (`actual_digest` is then `rows:<what they say>`) (`rollouts.cohort` found it while
    building the plan's snapshot; the snapshot already ignores the spec, so nodes get what a
    halted plan gives). Halt the plan through the state machine when it is running, count
    `cp_rollout_plan_tampered_total`, write the `rollout.plan.tampered` audit record, log a
    warning. The one place a tampered plan is acted on: the `rollout.plan.tampered` webhook
    hooks here."""
    from rollouts.metrics import PLAN_TAMPERED

    PLAN_TAMPERED.inc()
    logger.warning(
        "rollout %s: %s; halting it",
        plan.plan_id,
        reason,
        extra={"plan_id": plan.plan_id, "digest": plan.digest, "actual_digest": actual_digest},
    )
    actor = system(TAMPER_CHECKER)
    halted = False
    if target_phase("halt", plan.phase) is not None:
        try:
            rollout_transition(plan_id=plan.plan_id, action="halt", reason=reason, principal=actor)
            halted = True
        except ApiError:  # another replica or an operator changed it first
            pass
        except DatabaseError:
            logger.exception("rollout %s: could not halt the tampered plan", plan.plan_id)
    try:
        with transaction.atomic():
            audit_write(
                event_name="rollout.plan.tampered",
                outcome=AuditRecord.Outcome.FAILURE,
                principal=actor,
                target=plan.plan_id,
                detail={
                    "digest": plan.digest,
                    "actual_digest": actual_digest,
                    "phase": plan.phase,
                    "halted": halted,
                    "reason": reason,
                },
            )
            from notifications.services import plan_tampered_emit

            plan_tampered_emit(
                plan_id=plan.plan_id,
                digest=plan.digest,
                actual_digest=actual_digest,
                reason=reason,
                phase=plan.phase,
                halted=halted,
                release_id=plan.release.release_id,
                channel=plan.channel,
            )
    except DatabaseError:
        logger.exception("rollout %s: could not audit the tampered plan", plan.plan_id)


def plan_spec_intact(plan: RolloutPlan) -> bool:
    """False (and the plan reported: `plan_tampered`) when the stored spec no longer matches its
    digest (checked uncached) or its stage rows no longer match the spec (its snapshot)."""
    from rollouts.cohort import spec_intact

    return spec_intact(plan) and not snapshot_of(plan).tampered


def _refuse_tampered(plan: RolloutPlan, action: str) -> None:
    if action in _REFUSED_WHEN_TAMPERED and not plan_spec_intact(plan):
        raise ApiError(
            409,
            f"cannot {verb(action)}: the stored spec of rollout plan {plan.plan_id!r} no longer "
            f"matches its signed digest {plan.digest}; cancel or roll it back and publish a new "
            "plan",
            phase=plan.phase,
            plan_id=plan.plan_id,
        )

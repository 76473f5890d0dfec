"""Background re-evaluation of open rollout stages (API.md §4 "Gates and automatic progress").

`poke()` is cheap and safe to call from any request path (acks, event batches): it sets a
`threading.Event` that wakes the evaluator thread `serve` starts with
`start_background_evaluator()`. The thread evaluates the open stage of every `published` /
`active` plan when poked and at least every `INTERVAL_SECONDS`: every gate passes → promote;
a failure gate over its limit → halt, with the reason in the history. It changes plans only
through `rollouts.services.rollout_transition` with the version it evaluated, so it never
overrides an operator's action that happened meanwhile.

With several replicas the thread evaluates only on the leader (`core.leader`, API.md §7), and
each promote or halt it makes commits only while the lease it started the pass with is still
the leader's (`leader_transaction`): a stale leader's change is refused and rolled back.

It also tells webhook endpoints (`notifications.services.event_emit`, docs/operating.md
"Webhooks") when a stage waits only for its manual approval (`rollout.awaiting_approval`, once
per opening of the stage) and when a running plan made no progress for `--stuck-after`
(`rollout.stuck`, once per episode: until the plan's next transition). Each is keyed in the
outbox (`dedup_key`), so a restart or another leader does not send it again.

Tests call `evaluate_open_stages()` / `evaluate_plan()` / `notify_stuck_plans()` directly.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import close_old_connections

from core import dberrors, leader
from core.errors import ApiError
from rollouts import clock
from rollouts import metrics as rollout_metrics
from rollouts.models import RUNNING_PHASES, RolloutPlan, StagePhase

logger = logging.getLogger("orchestrator.rollouts")

INTERVAL_SECONDS = 2.0  # the contract asks for "at least every few seconds" (<= 5 s)
MIN_SPACING_SECONDS = 0.25  # a burst of pokes: one evaluation per 250 ms at most (spacing_after)

DEFAULT_STUCK_AFTER_SECONDS = 3600.0  # as GET /v1/rollouts/stuck's default threshold

_wakeup = threading.Event()
_started = False
_start_lock = threading.Lock()
_stuck_after = DEFAULT_STUCK_AFTER_SECONDS
# Events already emitted by this process (dedup keys): skips the outbox look-up on every pass.
_notified: set[str] = set()
_notified_lock = threading.Lock()


@dataclass(frozen=True)
class Outcome:
    action: str | None  # "promote", "halt" or None
    stage_id: str | None = None
    reason: str = ""


def evaluate_plan(
    *,
    plan_id: str,
    operator: str = "evaluator",
    now: datetime | None = None,
    principal: Any = None,
    lease: tuple[int, str] | None = None,
) -> Outcome:
    """Evaluate the open stage of one plan and promote or halt it as its gates say.

    With `lease` (the background thread), the change commits only while that lease is the
    leader's; otherwise `core.leader.Fenced` is raised and nothing is applied."""
    from rollouts.cohort import snapshot_of, spec_intact
    from rollouts.gates import evaluate_stage, halt_reason, unmet_reason
    from rollouts.services import rollout_transition

    plan = RolloutPlan.objects.filter(plan_id=plan_id).first()
    if plan is None or plan.phase not in RUNNING_PHASES:
        return Outcome(None)
    if not spec_intact(plan):  # altered in the store: halted by `plan_tampered`, never run
        return Outcome(None, plan.current_stage_id, "the stored spec does not match its digest")
    snap = snapshot_of(plan)
    stage = snap.current
    if stage.phase != StagePhase.OPEN:
        return Outcome(None, stage.stage_id)
    report = evaluate_stage(snap, stage, now=now or clock.now())
    if report.tripped:
        action, reason = "halt", halt_reason(report)
    elif report.all_passed:
        kinds = ", ".join(gate.kind for gate in report.gates)
        action, reason = "promote", f"stage {stage.stage_id}: all gates passed ({kinds})"
    else:
        if report.unmet and all(gate.kind == "manual" for gate in report.unmet):
            _notify_awaiting_approval(plan, stage, lease)
        return Outcome(None, stage.stage_id, unmet_reason(report))
    fence = leader.leader_transaction(lease) if lease is not None else nullcontext()
    try:
        with fence:
            rollout_transition(
                plan_id=plan_id,
                action=action,
                operator=operator,
                reason=reason,
                expected_version=plan.version,
                principal=principal,
            )
    except ApiError:
        return Outcome(None, stage.stage_id, "the rollout changed during evaluation")
    # rollouts.services logged the change with its principal (a halt of its own at warning).
    return Outcome(action, stage.stage_id, reason)


def _emitted(key: str) -> bool:
    with _notified_lock:
        return key in _notified


def _emit_once(key: str, name: str, data: dict[str, Any], lease: tuple[int, str] | None) -> None:
    """Emit the webhook event `name` unless `key` was emitted before (here or in the outbox);
    with `lease`, only while this replica leads."""
    from notifications.selectors import subscribers
    from notifications.services import event_emit

    if _emitted(key):
        return
    endpoints = subscribers(name)
    if endpoints:  # no endpoint, no leader-only write
        fence = leader.leader_transaction(lease) if lease is not None else nullcontext()
        with fence:
            event_emit(name=name, data=data, dedup_key=key, endpoints=endpoints)
    with _notified_lock:
        if len(_notified) > 10_000:
            _notified.clear()
        _notified.add(key)


def _notify_awaiting_approval(plan: RolloutPlan, stage: Any, lease: tuple[int, str] | None) -> None:
    from core.params import format_rfc3339

    opened = format_rfc3339(stage.opened_at) if stage.opened_at else ""
    key = f"rollout.awaiting_approval:{plan.plan_id}:{stage.stage_id}:{opened}"
    if _emitted(key):
        return  # the common case on every pass: no query
    data = {
        "plan_id": plan.plan_id,
        "release_id": plan.release.release_id,
        "channel": plan.channel,
        "stage_id": stage.stage_id,
        "stage_opened_at": opened or None,
        "approve": f"/v1/rollouts/{plan.plan_id}/stages/{stage.stage_id}/gates/approve",
    }
    _emit_once(key, "rollout.awaiting_approval", data, lease)


def notify_stuck_plans(
    *, threshold_seconds: float | None = None, lease: tuple[int, str] | None = None
) -> int:
    """Emit `rollout.stuck` for every running plan without a transition for the threshold
    (default `--stuck-after`), once per episode; returns how many plans are stuck (0 without
    an endpoint subscribed: nothing is evaluated then)."""
    from notifications.selectors import subscribers
    from rollouts.selectors import stuck_plans

    if not subscribers("rollout.stuck"):
        return 0
    threshold = int(_stuck_after if threshold_seconds is None else threshold_seconds)
    stuck = stuck_plans(threshold_seconds=threshold)
    for entry in stuck:
        key = f"rollout.stuck:{entry['plan_id']}:{entry['stuck_since']}"
        _emit_once(key, "rollout.stuck", {**entry, "threshold_seconds": threshold}, lease)
    return len(stuck)


def configure(*, stuck_after: float) -> None:
    """`serve --stuck-after`: how long a running plan may go without a transition."""
    global _stuck_after
    _stuck_after = stuck_after


def _stuck_check_period() -> float:
    return min(30.0, max(1.0, _stuck_after / 4))


def evaluate_open_stages(
    *,
    now: datetime | None = None,
    keep_going: bool = False,
    lease: tuple[int, str] | None = None,
) -> list[tuple[str, Outcome]]:
    """One pass over every running plan; returns the plans that were promoted or halted.

    `keep_going` (the background thread): a plan whose evaluation fails is logged and skipped,
    so one bad plan cannot stall the others.
    """
    changed = []
    plan_ids = list(
        RolloutPlan.objects.filter(phase__in=RUNNING_PHASES).values_list("plan_id", flat=True)
    )
    for plan_id in plan_ids:
        try:
            outcome = evaluate_plan(plan_id=plan_id, now=now, lease=lease)
        except leader.NotLeader:
            raise  # another replica leads now: end the pass
        except Exception:
            if not keep_going:
                raise
            dberrors.log_background_failure(
                logger, "rollout %s: evaluation failed; retrying on the next pass", plan_id
            )
            rollout_metrics.EVALUATOR_ERRORS.inc()
            continue
        if outcome.action:
            changed.append((plan_id, outcome))
    return changed


def poke() -> None:
    """Ask the evaluator to re-check open stages soon (non-blocking)."""
    _wakeup.set()


def spacing_after(pass_seconds: float) -> float:
    """The pause after a pass: MIN_SPACING_SECONDS, or four times the pass when passes are
    slow (PostgreSQL recounts a release's acks on every pass), so that a burst of acks, each
    poking, never keeps the evaluator busy more than a fifth of the time; never more than
    INTERVAL_SECONDS (the contract's "every few seconds")."""
    return max(MIN_SPACING_SECONDS, min(INTERVAL_SECONDS, 4 * pass_seconds))


def _run(stop: threading.Event) -> None:
    last_stuck_check = 0.0
    while not stop.is_set():
        _wakeup.wait(INTERVAL_SECONDS)
        _wakeup.clear()
        if not leader.elector.is_leader():
            continue  # followers leave background work to the leader
        close_old_connections()
        started = time.monotonic()
        try:
            lease = leader.elector.lease()
            # Keep promoting while stages pass (a stage whose gates already pass opens next).
            for _ in range(50):
                if not evaluate_open_stages(keep_going=True, lease=lease):
                    break
            rollout_metrics.evaluator_pass_completed()
            if time.monotonic() - last_stuck_check >= _stuck_check_period():
                last_stuck_check = time.monotonic()
                notify_stuck_plans(lease=lease)
        except leader.NotLeader as exc:
            logger.warning("rollout evaluation stopped: %s", exc)
        except Exception:  # keep the thread alive; the next pass retries
            dberrors.log_background_failure(
                logger, "rollout evaluation failed; retrying in %ss", INTERVAL_SECONDS
            )
            rollout_metrics.EVALUATOR_ERRORS.inc()
        finally:
            close_old_connections()
        stop.wait(spacing_after(time.monotonic() - started))


_stop = threading.Event()


def start_background_evaluator() -> None:
    """Start the evaluator thread (called once by `serve`; later calls do nothing)."""
    global _started
    with _start_lock:
        if _started:
            return
        _started = True
    rollout_metrics.evaluator_started()
    thread = threading.Thread(target=_run, args=(_stop,), name="rollout-evaluator", daemon=True)
    thread.start()

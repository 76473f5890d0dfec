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

Tests call `evaluate_open_stages()` / `evaluate_plan()` directly.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import close_old_connections

from core import leader
from core.errors import ApiError
from rollouts import clock
from rollouts.models import RUNNING_PHASES, RolloutPlan, StagePhase

logger = logging.getLogger("orchestrator.rollouts")

INTERVAL_SECONDS = 2.0  # the contract asks for "at least every few seconds" (<= 5 s)
MIN_SPACING_SECONDS = 0.25  # a burst of pokes (busy ingest) costs one evaluation per 250 ms

_wakeup = threading.Event()
_started = False
_start_lock = threading.Lock()


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
    logger.info(
        "rollout %s: %s stage %s (%s)",
        plan_id,
        action,
        stage.stage_id,
        reason,
        extra={"plan_id": plan_id, "action": action, "stage_id": stage.stage_id},
    )
    return Outcome(action, stage.stage_id, reason)


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
            logger.exception("rollout %s: evaluation failed; retrying on the next pass", plan_id)
            continue
        if outcome.action:
            changed.append((plan_id, outcome))
    return changed


def poke() -> None:
    """Ask the evaluator to re-check open stages soon (non-blocking)."""
    _wakeup.set()


def _run(stop: threading.Event) -> None:
    while not stop.is_set():
        _wakeup.wait(INTERVAL_SECONDS)
        _wakeup.clear()
        if not leader.elector.is_leader():
            continue  # followers leave background work to the leader
        close_old_connections()
        try:
            lease = leader.elector.lease()
            # Keep promoting while stages pass (a stage whose gates already pass opens next).
            for _ in range(50):
                if not evaluate_open_stages(keep_going=True, lease=lease):
                    break
        except leader.NotLeader as exc:
            logger.warning("rollout evaluation stopped: %s", exc)
        except Exception:  # keep the thread alive; the next pass retries
            logger.exception("rollout evaluation failed; retrying in %ss", INTERVAL_SECONDS)
        finally:
            close_old_connections()
        stop.wait(MIN_SPACING_SECONDS)


_stop = threading.Event()


def start_background_evaluator() -> None:
    """Start the evaluator thread (called once by `serve`; later calls do nothing)."""
    global _started
    with _start_lock:
        if _started:
            return
        _started = True
    thread = threading.Thread(target=_run, args=(_stop,), name="rollout-evaluator", daemon=True)
    thread.start()

"""The rollout state machine: the one transition table (API.md §4 "Status and phases").

`TRANSITIONS[action][from_phase]` is the phase the plan moves to, or `ADVANCE` for actions that
move to the next stage (the plan becomes `active`, or `completed` after the last stage). An
action missing for a phase is illegal there (409). `STAGE_EFFECTS` says what happens to the
current stage. The services in `rollouts.services` apply this table and nothing else.
"""

from __future__ import annotations

from typing import Final

from rollouts.models import Phase

ADVANCE: Final = "advance"

PUBLISHED, ACTIVE, PAUSED, HALTED = Phase.PUBLISHED, Phase.ACTIVE, Phase.PAUSED, Phase.HALTED

# Actions: the five plan actions and the three recover strategies.
ACTIONS: Final = (
    "pause",
    "resume",
    "promote",
    "halt",
    "cancel",
    "retry",
    "rollback",
    "skip_failed",
)
RECOVER_STRATEGIES: Final = ("retry", "rollback", "skip_failed")

TRANSITIONS: Final[dict[str, dict[str, str]]] = {
    "pause": {PUBLISHED: PAUSED, ACTIVE: PAUSED},
    "resume": {PAUSED: ACTIVE, HALTED: ACTIVE},
    "promote": {PUBLISHED: ADVANCE, ACTIVE: ADVANCE},
    "halt": {PUBLISHED: HALTED, ACTIVE: HALTED, PAUSED: HALTED},
    "cancel": {
        PUBLISHED: Phase.CANCELLED,
        ACTIVE: Phase.CANCELLED,
        PAUSED: Phase.CANCELLED,
        HALTED: Phase.CANCELLED,
    },
    "retry": {PUBLISHED: ACTIVE, ACTIVE: ACTIVE, PAUSED: ACTIVE, HALTED: ACTIVE},
    "rollback": {
        PUBLISHED: Phase.ROLLED_BACK,
        ACTIVE: Phase.ROLLED_BACK,
        PAUSED: Phase.ROLLED_BACK,
        HALTED: Phase.ROLLED_BACK,
    },
    "skip_failed": {PUBLISHED: ADVANCE, ACTIVE: ADVANCE},
}

# What each action does to the current stage:
#   "promote"  current -> promoted, next -> open (soak starts)
#   "skip"     current -> skipped,  next -> open
#   "halt"     current -> halted (the reason is kept on the stage)
#   "reopen"   a halted current stage -> open again (soak restarts, manual approval cleared)
#   None       the stages do not change
STAGE_EFFECTS: Final[dict[str, str | None]] = {
    "pause": None,
    "resume": "reopen",
    "promote": "promote",
    "halt": "halt",
    "cancel": None,
    "retry": "reopen",
    "rollback": None,
    "skip_failed": "skip",
}

# The phases whose arrival is announced to webhook endpoints (the event name; the services emit
# it in the transaction of the transition, docs/operating.md "Webhooks").
NOTIFY_ON_PHASE: Final[dict[str, str]] = {
    HALTED: "rollout.halted",
    Phase.COMPLETED: "rollout.completed",
}

# Verbs for messages: "cannot pause a rollout that is completed".
HISTORY_ACTION: Final = {
    "retry": "recover_retry",
    "rollback": "recover_rollback",
    "skip_failed": "recover_skip_failed",
}


def target_phase(action: str, phase: str) -> str | None:
    """The phase `action` leads to from `phase` (or ADVANCE); None when it is illegal."""
    return TRANSITIONS[action].get(phase)


def verb(action: str) -> str:
    return f"recover ({action})" if action in RECOVER_STRATEGIES else action

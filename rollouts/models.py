from django.db import models


class Phase(models.TextChoices):
    """A rollout plan's phase (API.md §4 "Status and phases")."""

    PUBLISHED = "published"
    ACTIVE = "active"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.CANCELLED, Phase.ROLLED_BACK})
# In declaration order (the constraint below lists them; its migration has this order).
LIVE_PHASES: tuple[Phase, ...] = tuple(phase for phase in Phase if phase not in TERMINAL_PHASES)
NON_TERMINAL_PHASES = frozenset(LIVE_PHASES)
# Phases whose open stage the evaluator checks, and the only ones `stuck` reports.
RUNNING_PHASES = frozenset({Phase.PUBLISHED, Phase.ACTIVE})


class StagePhase(models.TextChoices):
    """A stage's phase (API.md §4 "Status and phases")."""

    PENDING = "pending"
    OPEN = "open"
    PROMOTED = "promoted"
    HALTED = "halted"
    SKIPPED = "skipped"


# Stage phases in which a manual gate may be approved.
APPROVABLE_STAGE_PHASES = frozenset({StagePhase.OPEN, StagePhase.PENDING})


class RolloutPlan(models.Model):
    """A staged rollout of one release, published from a signed, immutable spec.

    `spec` holds the request body exactly as received; `digest` is "sha256:<hex>" of those bytes
    and `signature` the base64 Ed25519 signature over the digest string. `version` grows by one on
    every change of the plan or its stages: transitions are conditional UPDATEs on it.
    """

    plan_id = models.CharField(max_length=128, unique=True)
    release = models.ForeignKey(
        "releases.Release", on_delete=models.PROTECT, related_name="rollout_plans"
    )
    channel = models.CharField(max_length=256)
    description = models.TextField(blank=True, default="")
    created_by = models.CharField(max_length=256, blank=True, default="")
    spec = models.BinaryField(help_text="the plan spec exactly as received")
    digest = models.CharField(max_length=80)
    signature = models.CharField(max_length=128, help_text="base64 Ed25519 signature of digest")
    key_id = models.CharField(max_length=16)
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.PUBLISHED)
    current_stage_id = models.CharField(max_length=128)
    version = models.PositiveBigIntegerField(default=1)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["release"],
                condition=models.Q(phase__in=[phase.value for phase in LIVE_PHASES]),
                name="rolloutplan_one_live_plan_per_release",
            ),
        ]
        indexes = [
            models.Index(fields=["phase", "updated_at"], name="rolloutplan_phase_upd_idx"),
            models.Index(fields=["release", "id"], name="rolloutplan_release_id_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.plan_id} ({self.phase})"


class StageStatus(models.Model):
    """The mutable status of one stage of a plan; `position` is its index in the spec."""

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="stages")
    position = models.PositiveIntegerField()
    stage_id = models.CharField(max_length=128)
    phase = models.CharField(max_length=16, choices=StagePhase.choices, default=StagePhase.PENDING)
    percent = models.FloatField()
    opened_at = models.DateTimeField(null=True, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    manual_approved = models.BooleanField(default=False)
    manual_approved_by = models.CharField(max_length=256, blank=True, default="")
    halt_reason = models.TextField(blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "stage_id"], name="stagestatus_plan_stage"),
            models.UniqueConstraint(fields=["plan", "position"], name="stagestatus_plan_position"),
        ]
        ordering = ["plan", "position"]

    def __str__(self) -> str:
        return f"{self.plan_id}/{self.stage_id} ({self.phase})"


class RolloutTransition(models.Model):
    """One entry of a plan's history: who did what, from which phase to which, and why."""

    plan = models.ForeignKey(RolloutPlan, on_delete=models.CASCADE, related_name="history")
    action = models.CharField(max_length=32)
    from_phase = models.CharField(max_length=16, blank=True, default="")
    to_phase = models.CharField(max_length=16)
    stage_id = models.CharField(max_length=128, blank=True, default="")
    operator = models.CharField(max_length=256)
    # X-Autonomy-Operator / body `operator` / spec `created_by` when it named someone other than
    # the authenticated principal in `operator` (API.md §6); empty otherwise.
    claimed_operator = models.CharField(max_length=256, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    at = models.DateTimeField()

    class Meta:
        ordering = ["plan", "id"]

    def __str__(self) -> str:
        return f"{self.plan_id}: {self.action} {self.from_phase} -> {self.to_phase}"

from django.db import models


class Release(models.Model):
    """A desired-state release published to a channel.

    `sequence` is assigned by the server: 1, 2, 3, ... per channel, without gaps.
    """

    release_id = models.CharField(max_length=256, unique=True)
    channel = models.CharField(max_length=256, default="stable")
    sequence = models.PositiveBigIntegerField()
    policy_ref = models.CharField(max_length=1024, null=True, blank=True)
    lock_fingerprint = models.CharField(max_length=256, null=True, blank=True)
    artifact_ref = models.CharField(max_length=2048, null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    # The offline release signature as posted (releases.release_signing; docs/trust.md), or null.
    release_signature = models.JSONField(null=True, blank=True, default=None)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "sequence"], name="release_channel_sequence"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.release_id} ({self.channel} #{self.sequence})"


class NodeAck(models.Model):
    """A node's acknowledgement of a release; one per (node, release), upserted."""

    class Status(models.TextChoices):
        PENDING = "pending"
        ACKNOWLEDGED = "acknowledged"
        ACTIVE = "active"
        FAILED = "failed"
        REJECTED = "rejected"

    node_id = models.CharField(max_length=256)
    release = models.ForeignKey(Release, on_delete=models.CASCADE, related_name="acks")
    status = models.CharField(max_length=16, choices=Status.choices)
    lock_fingerprint = models.CharField(max_length=256, null=True, blank=True)
    message = models.TextField(null=True, blank=True)
    acked_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node_id", "release"], name="nodeack_node_release"),
        ]
        indexes = [models.Index(fields=["release", "status"], name="nodeack_release_status_idx")]

    def __str__(self) -> str:
        return f"{self.node_id} -> {self.release_id}: {self.status}"

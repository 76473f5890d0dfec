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
    # no index of its own: (release, status) below starts with it (every ack would pay for two)
    release = models.ForeignKey(
        Release, on_delete=models.CASCADE, related_name="acks", db_index=False
    )
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


class FleetNode(models.Model):
    """One row per known node: what `GET /v1/fleet` pages over (the fleet view's index).

    Maintained where the facts are written, never at read time: the events writer upserts the
    nodes of each committed group (`last_seen` = the arrival time of the node's newest event),
    every group of acks upserts its nodes (`releases.services.node_acks_store`). `last_heard` is
    the newest of both (what `--fleet-forget-after` compares). Events pruned by retention leave
    the row as it is: a node's last_seen outlives its events.
    """

    node_id = models.CharField(max_length=256, primary_key=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    last_heard = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["last_heard"], name="fleetnode_last_heard_idx"),
            # the summary's up/unknown counts are index-only range counts
            models.Index(fields=["last_seen"], name="fleetnode_last_seen_idx"),
        ]

    def __str__(self) -> str:
        return self.node_id


class FleetNodeAck(models.Model):
    """A node's newest ack (by `updated_at`, then insertion order) for a release of one
    channel: the fleet view's `release_id`, `ack_status` and `sequence`. Moved by every group of
    acks in its transaction (`releases.services.node_acks_store`); rebuilt from `NodeAck` by
    `releases.services.fleet_acks_refresh` (migrations, `migrate`, writes around the writer)."""

    # No index of their own (every ack moves these rows): (node, channel) below starts with
    # `node`; `release` is only looked up when a release is deleted (a scan of this table).
    node = models.ForeignKey(
        FleetNode, on_delete=models.CASCADE, related_name="channel_acks", db_index=False
    )
    channel = models.CharField(max_length=256)
    release = models.ForeignKey(Release, on_delete=models.CASCADE, related_name="+", db_index=False)
    status = models.CharField(max_length=16, choices=NodeAck.Status.choices)
    sequence = models.PositiveBigIntegerField()
    updated_at = models.DateTimeField()
    ack_pk = models.BigIntegerField(help_text="the NodeAck row this copies")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node", "channel"], name="fleetnodeack_node_channel"),
        ]
        indexes = [
            models.Index(
                fields=["channel", "release", "status"], name="fleetnodeack_chan_rel_st_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.node_id} on {self.channel}: {self.release_id} {self.status}"

"""Models of the site itself (not of a domain app): the HA cutover record written by `migrate`."""

from django.db import models


class HACutoverAt(models.Model):
    """When `autonomy-orchestrator migrate` finished copying a SQLite store into this database.

    Written only into the PostgreSQL target, once per completed and validated run (a re-run adds
    a row), so the newest row is the cutover. `table_counts` maps each copied table to the row
    count both sides agreed on.
    """

    completed_at = models.DateTimeField()
    source = models.CharField(max_length=4096, help_text="the SQLite file the data came from")
    rows_copied = models.PositiveBigIntegerField(help_text="rows inserted by this run")
    table_counts = models.JSONField(default=dict)
    version = models.CharField(max_length=64, help_text="autonomy-orchestrator version")

    class Meta:
        verbose_name = "HA cutover"
        ordering = ["-completed_at"]

    def __str__(self) -> str:
        return f"cutover at {self.completed_at:%Y-%m-%dT%H:%M:%SZ} from {self.source}"


# Many replicas on one PostgreSQL database (API.md §7). The tables are read and written with SQL
# by core.leader and core.ha (core imports no models); their names are fixed here for that.


class LeaderState(models.Model):
    """The one row (id 1) naming the leader of background work: bumped on every acquisition.

    Every leader-only write checks `(epoch, token)` against this row in its own transaction, so
    a stale leader's write is refused (the token, random per acquisition, not the number alone).
    """

    id = models.PositiveSmallIntegerField(primary_key=True)
    epoch = models.PositiveBigIntegerField(default=0)
    token = models.CharField(max_length=64, default="")
    holder_id = models.CharField(max_length=255, default="")
    acquired_at = models.DateTimeField(null=True)
    renewed_at = models.DateTimeField(null=True)

    class Meta:
        db_table = "ha_leader"

    def __str__(self) -> str:
        return f"leader {self.holder_id} (epoch {self.epoch})"


class ReplicaHeartbeat(models.Model):
    """One row per `serve` replica, renewed about every second while it runs."""

    node_id = models.CharField(max_length=255, primary_key=True)
    role = models.CharField(max_length=16, default="follower")
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField()

    class Meta:
        db_table = "ha_replica"

    def __str__(self) -> str:
        return f"{self.node_id} ({self.role})"


class SharedCrl(models.Model):
    """The one row (id 1): the CRL the leader enforces, shared with the followers (crl.shared).

    Written only by the leader, fenced (`core.leader.leader_transaction`), and only with a CRL
    newer than the stored one; followers poll `sha256` and adopt a newer CRL into their file."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    der = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    number = models.CharField(max_length=64, default="")  # CRL numbers go up to 20 octets
    stored_by = models.CharField(max_length=255, default="")
    epoch = models.PositiveBigIntegerField(default=0)
    stored_at = models.DateTimeField()

    class Meta:
        db_table = "ha_crl"

    def __str__(self) -> str:
        return f"CRL number {self.number or '?'} from {self.stored_by}"


class SharedKeyFingerprint(models.Model):
    """Fingerprints of the keys every replica must share (rollout signing key, session secret),
    stored by the first replica to start; a replica with another key refuses to start."""

    name = models.CharField(max_length=32, primary_key=True)
    fingerprint = models.CharField(max_length=64)
    node_id = models.CharField(max_length=255)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "ha_shared_key"

    def __str__(self) -> str:
        return f"{self.name} {self.fingerprint}"


class LoginFailure(models.Model):
    """One failed admin login, kept 15 minutes for the login throttle (orchestrator_site.
    login_throttle). In the database so that every replica on PostgreSQL counts the same
    failures; `migrate` does not copy these short-lived rows."""

    username = models.CharField(max_length=150)
    source_ip = models.CharField(max_length=64)
    failed_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["username", "source_ip", "failed_at"], name="loginfail_key_idx"),
            models.Index(fields=["failed_at"], name="loginfail_at_idx"),
        ]

    def __str__(self) -> str:
        return f"failed login of {self.username!r} from {self.source_ip} at {self.failed_at}"

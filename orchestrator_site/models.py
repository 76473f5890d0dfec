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

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

from django.db import models

# Index names that raw SQL names in `INDEXED BY` (SQLite) so statistics never pick a scan:
# retention's prune, the fleet view's last_seen, the event_threshold gate.
TYPE_INDEX = "event_type_id_idx"
RECEIVED_AT_INDEX = "event_received_at_idx"


class Event(models.Model):
    """A telemetry event, stored exactly as a node sent it.

    `payload` holds the event's JSON as received (all keys, unknown ones too); the indexed columns
    are copies of the fields the API filters on. `id` is the insertion order: "newest first" means
    highest `id` first. `received_at` is the arrival time (the fleet view's `last_seen`).

    The idempotency key is (`node_id`, `event_id`) (API.md §6): event ids are unique per node, so
    one node can never shadow another node's event. The unique index lists `event_id` first so
    that it also serves exact lookups by `event_id` (admin search) without a second index; the
    key is the same set of columns (`ON CONFLICT (node_id, event_id)` matches it).
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=256)
    event_type = models.CharField(max_length=256)
    node_id = models.CharField(max_length=256)
    timestamp = models.CharField(max_length=64, help_text="RFC 3339 timestamp as sent by the node")
    lock_fingerprint = models.CharField(max_length=256, null=True, blank=True)
    release_id = models.CharField(max_length=256, null=True, blank=True)
    payload = models.TextField(help_text="the event's JSON object exactly as received")
    received_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["node_id", "id"], name="event_node_id_idx"),
            models.Index(fields=["event_type", "id"], name=TYPE_INDEX),
            # Retention deletes the oldest arrivals in small batches (events/retention.py).
            models.Index(fields=["received_at"], name=RECEIVED_AT_INDEX),
        ]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "node_id"], name="event_node_event_key"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} from {self.node_id} ({self.event_id})"

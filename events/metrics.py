"""`cp_events_ingested_total{result="inserted"|"deduped"}` and `cp_events_writer_queue_depth`
(docs/metrics.md).

`install()` (called by `serve` with `core.metrics.install`) registers `record_ingest` as an
ingest hook of `events.services`; it counts every committed batch on both request paths.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from events import writer
from events.services import add_ingest_hook

EVENTS_INGESTED = Counter(
    "cp_events_ingested_total",
    "Events received by POST /v1/events, by result.",
    ["result"],
)
for _result in ("inserted", "deduped"):
    EVENTS_INGESTED.labels(result=_result)

WRITER_QUEUE = Gauge(
    "cp_events_writer_queue_depth",
    "Event batches waiting for the single writer thread (read at scrape time).",
)
WRITER_QUEUE.set_function(writer.queue_depth)


def record_ingest(*, inserted: int, deduped: int) -> None:
    """Count one ingested batch; call it after the batch is committed."""
    if inserted:
        EVENTS_INGESTED.labels(result="inserted").inc(inserted)
    if deduped:
        EVENTS_INGESTED.labels(result="deduped").inc(deduped)


def _on_ingest(inserted: int, deduped: int) -> None:
    record_ingest(inserted=inserted, deduped=deduped)


def install() -> None:
    """Count every committed batch from now on (idempotent)."""
    add_ingest_hook(_on_ingest)

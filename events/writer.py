"""The in-process events writer: one thread, one persistent connection, group commit.

Concurrent writers in one process only queue on SQLite's write lock (busy-handler sleeps and
multi-second p99, docs/performance.md), so every fast-path ingest goes through this one thread.
While a transaction runs, later batches queue; the next transaction takes all queued batches (up
to GROUP_MAX_EVENTS events) and commits them together, each batch keeping its own counts. A caller
is answered only after its transaction committed (under `serve` on SQLite: and the WAL was
synced after the write turn, `core.dbthreads.sync_after_turn`).

Other work that must not contend with ingest for SQLite's write lock (the retention pruner's
small delete batches, events/retention.py) runs ON this thread between groups: `run(fn)`
queues `fn` as a task of its own, run alone in FIFO order with the batches.

On SQLite `serve` lets the ack writer ride along (`carry`, `releases.writer.AckWriter.ride_on`):
its queued acks are stored by this thread in the same write turn, right after the events
group is answered, so a process takes one turn for both instead of two threads each waiting for
a turn of their own.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connection

from core import dberrors
from core.dbthreads import answer_when_durable, reset_broken_connection, write_turn
from core.errors import ApiError
from events.services import IngestResult, events_store
from events.validation import EventRow

logger = logging.getLogger("orchestrator.events")

GROUP_MAX_EVENTS = 2000
CONFLICT_RETRIES = 3
CONFLICT_BACKOFF_SECONDS = 0.02


@dataclass
class _Job:
    rows: list[EventRow]
    future: Future[Any] = field(default_factory=Future)
    task: Callable[[], Any] | None = None  # run alone instead of storing rows
    wake: bool = False  # no rows: a carried writer has something queued


class EventWriter:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._held: _Job | None = None  # a task met while grouping: it runs next, alone
        self._carried: list[Callable[[], None]] = []
        self._wake_queued = False

    def carry(self, write_queued: Callable[[], None]) -> Callable[[], None]:
        """Run `write_queued()` in every write turn of this thread, after the events group was
        answered (another writer's queued group, stored in its own transaction); returns the
        function that wakes this thread when that writer has queued something."""
        self._carried.append(write_queued)
        return self._wake

    def _wake(self) -> None:
        if not self._wake_queued:
            self._wake_queued = True
            self._put(_Job([], wake=True))

    def submit(self, rows: list[EventRow]) -> Future[IngestResult]:
        return self._put(_Job(rows))

    def run(self, task: Callable[[], Any]) -> Future[Any]:
        """Run `task()` on the writer thread, between two groups; the future has its result."""
        return self._put(_Job([], task=task))

    def _put(self, job: _Job) -> Future[Any]:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="events-writer", daemon=True
                    )
                    self._thread.start()
        self._queue.put(job)
        return job.future

    def _take_group(self) -> list[_Job]:
        """Block for one batch, then add whatever else is queued (a request whose client went
        away and whose task was cancelled is dropped before anything is written for it)."""
        jobs: list[_Job] = []
        count = 0
        while not jobs:
            job, self._held = self._held or self._queue.get(), None
            if job.future.set_running_or_notify_cancel():
                jobs.append(job)
                count = len(job.rows)
        if jobs[0].task is not None:
            return jobs
        return self._take_more(jobs, count)

    def _take_more(self, jobs: list[_Job], count: int) -> list[_Job]:
        """Add what queued meanwhile to a group of batches (up to GROUP_MAX_EVENTS events)."""
        if self._held is not None:
            return jobs
        while count < GROUP_MAX_EVENTS:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job.task is not None:
                self._held = job
                break
            if job.future.set_running_or_notify_cancel():
                jobs.append(job)
                count += len(job.rows)
        return jobs

    def _take_queued(self) -> list[_Job]:
        jobs: list[_Job] = []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return jobs
            if job.future.set_running_or_notify_cancel():
                jobs.append(job)

    def _run(self) -> None:
        while True:
            jobs = self._take_group()
            task = jobs[0].task
            if task is not None:
                try:
                    jobs[0].future.set_result(task())
                except BaseException as exc:
                    jobs[0].future.set_exception(exc)
                continue
            try:
                with write_turn():
                    # What queued while this writer waited for its turn (the other writers,
                    # other workers) joins the group: under contention groups grow instead of
                    # each waiting for a turn of its own.
                    jobs = self._take_more(jobs, sum(len(job.rows) for job in jobs))
                    self._store(jobs)
                    if self._carried:
                        self._wake_queued = False  # what queues from now on wakes us again
                        for write_queued in self._carried:
                            write_queued()
            except BaseException as exc:  # the turn itself failed: _store answers its own
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _store(self, jobs: list[_Job]) -> None:
        """Store the group's batches in one transaction and answer each job."""
        for job in jobs:
            if job.wake:
                job.future.set_result(None)
        jobs = [job for job in jobs if not job.wake]
        if not jobs:
            return
        try:
            results = store_with_retries([job.rows for job in jobs])
        except BaseException as exc:
            if isinstance(exc, ApiError) and exc.status_code == 503:
                # The store is unreachable: what queued meanwhile gets the same answer now
                # instead of waiting another pool timeout of its own.
                jobs += [job for job in self._take_queued() if not job.wake]
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, result in zip(jobs, results, strict=True):
            answer_when_durable(job.future, result)  # after the turn's WAL sync, under serve


def store_with_retries(batches: list[list[EventRow]]) -> list[IngestResult]:
    """`events_store`, retried where a retry is safe (the insert is idempotent: a retry can never
    store an event twice): once on a fresh connection when the connection broke (a database
    restart or failover, also when it happened while idle or during COMMIT), and up to
    CONFLICT_RETRIES times after a deadlock or serialization failure. What still fails because
    the database is unavailable becomes the contract's 503 + Retry-After."""
    reconnected = False
    conflicts = 0
    while True:
        try:
            with write_turn():
                return events_store(batches=batches)
        except DatabaseError as exc:  # also InternalError: "read-only transaction" is one
            if dberrors.is_retryable_conflict(exc) and conflicts < CONFLICT_RETRIES:
                conflicts += 1
                logger.info("ingest transaction hit a lock conflict (%s); retrying", exc)
                time.sleep(CONFLICT_BACKOFF_SECONDS * conflicts)
                continue
            if not reconnected and reset_broken_connection(exc):
                reconnected = True
                continue
            if dberrors.classify(exc) == dberrors.UNAVAILABLE:
                with contextlib.suppress(DatabaseError):
                    connection.close()  # the next group starts on a fresh connection
                raise dberrors.unavailable_error(exc) from exc
            raise


_writer = EventWriter()


def queue_depth() -> int:
    """Batches waiting for the writer now (`cp_events_writer_queue_depth`)."""
    return _writer._queue.qsize()


def submit(rows: list[EventRow]) -> Future[IngestResult]:
    """Queue a validated batch; the future resolves after its transaction committed."""
    return _writer.submit(rows)


def carry(write_queued: Callable[[], None]) -> Callable[[], None]:
    """Let another writer's groups ride this process's events writer turns (`EventWriter.carry`)."""
    return _writer.carry(write_queued)


def run_on_writer(task: Callable[[], Any]) -> Future[Any]:
    """Run `task()` on the writer thread between two ingest groups (its own short transaction
    inside `task`): SQLite writes that must not queue on the write lock behind ingest."""
    return _writer.run(task)

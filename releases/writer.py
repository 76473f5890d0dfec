"""The in-process ack writer: one thread, one persistent connection, group commit.

`POST /v1/nodes/{node_id}/ack` used to write in the request thread: at fleet scale (tens of
thousands of nodes acking a stage) those short transactions queued on SQLite's write lock behind
the events writer, ~100 acks/s. Now every ack goes to this thread (like `events.writer`): while a
transaction runs, later acks queue; the next transaction takes all queued acks (up to
GROUP_MAX_ACKS) and commits them together (`releases.services.node_acks_store`). A caller is
answered only after its ack committed and the in-process ack book learnt it
(`services.acks_committed`), so a poll right after the 200 sees it (under `serve` on SQLite also
only after the WAL was synced, right after the write turn: `core.dbthreads.answer_when_durable`).

On SQLite the transaction takes its turn with the events writer (`core.dbthreads.write_turn`);
under `serve` it rides the events writer's thread (`ride_on`): the acks queued when that thread
has the turn are stored right after its events group, one turn for both.
An unknown release fails only its own ack (404). A group that fails as a whole because the
database refused a value (a NUL character on PostgreSQL, a constraint) is retried one ack per
transaction, so the bad ack answers its own error and the others are stored: the same answers
as when every ack had its own transaction. A busy, full or unavailable store fails the group
alike (503 + Retry-After, 507, ...).
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

from django.db import DatabaseError, connection

from core import dberrors, sharedstate
from core.dbthreads import answer_when_durable, reset_broken_connection, write_turn
from core.errors import ApiError
from releases.services import (
    AckWrite,
    Outcome,
    acks_committed,
    book_entries,
    node_acks_store,
)

logger = logging.getLogger("orchestrator.releases")

GROUP_MAX_ACKS = 500
CONFLICT_RETRIES = 3
CONFLICT_BACKOFF_SECONDS = 0.02

# A writer this one can ride (`events.writer.carry`): takes the rider's `write_queued`, gives
# back the function that wakes its thread.
Carry = Callable[[Callable[[], None]], Callable[[], None]]


@dataclass
class _Job:
    write: AckWrite
    future: Future[Outcome] = field(default_factory=Future)


class AckWriter:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None

    def ride_on(self, carry: Carry) -> None:
        """Store acks on another writer's thread, in its turns (`events.writer.carry`)
        instead of a thread of this writer's own."""
        self._wake = carry(self.write_queued)

    def submit(self, write: AckWrite) -> Future[Outcome]:
        job = _Job(write)
        if self._wake is not None:
            self._queue.put(job)
            self._wake()
            return job.future
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="acks-writer", daemon=True
                    )
                    self._thread.start()
        self._queue.put(job)
        return job.future

    def _take_group(self) -> list[_Job]:
        """Block for one ack, then add whatever else is queued (up to GROUP_MAX_ACKS); acks
        whose request was cancelled are dropped before anything is written for them."""
        jobs: list[_Job] = []
        while not jobs:
            job = self._queue.get()
            if job.future.set_running_or_notify_cancel():
                jobs.append(job)
        return self._take_more(jobs)

    def _take_more(self, jobs: list[_Job]) -> list[_Job]:
        """Add what queued meanwhile to the group (up to GROUP_MAX_ACKS)."""
        while len(jobs) < GROUP_MAX_ACKS:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job.future.set_running_or_notify_cancel():
                jobs.append(job)
        return jobs

    def _run(self) -> None:
        while True:
            self.write_group()

    def write_group(self) -> None:
        """Take one group of queued acks (waiting for the first), store it, answer each."""
        self._write(self._take_group())

    def write_queued(self) -> None:
        """Store one group of what is queued now, if anything (on the thread this writer rides,
        in its turn); with more queued, ask for another turn."""
        self._write(self._take_more([]))
        if self._wake is not None and not self._queue.empty():
            self._wake()

    def _write(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            with write_turn():
                # What queued while this writer waited for its turn joins the group.
                jobs = self._take_more(jobs)
                results = store_with_retries([job.write for job in jobs])
        except BaseException as exc:
            if len(jobs) > 1 and _maybe_one_ack(exc):
                self._one_by_one(jobs)
            else:
                for job in jobs:
                    job.future.set_exception(exc)
            return
        self._answer(jobs, results)

    def queue(self, write: AckWrite) -> Future[Outcome]:
        """Queue without starting the thread (tests drive `write_group` themselves)."""
        job = _Job(write)
        self._queue.put(job)
        return job.future

    def _one_by_one(self, jobs: list[_Job]) -> None:
        for job in jobs:
            try:
                results = store_with_retries([job.write])
            except BaseException as exc:
                job.future.set_exception(exc)
                continue
            self._answer([job], results)

    @staticmethod
    def _answer(jobs: list[_Job], results: list[Outcome | ApiError]) -> None:
        try:
            acks_committed(results)
        except Exception:  # the acks are stored; never leave a caller waiting
            logger.exception("after-commit work of %d acks failed", len(results))
        for job, result in zip(jobs, results, strict=True):
            answer_when_durable(job.future, result)  # after the turn's WAL sync, under serve


def _maybe_one_ack(exc: BaseException) -> bool:
    """Whether a group's failure may be one ack's fault (a value the database refuses: NUL on
    PostgreSQL, a constraint), so that storing the acks one by one gives each its own answer.
    Not when the store is busy, full, unavailable or corrupt: every ack would fail alike, and
    one at a time only multiplies the wait."""
    if not isinstance(exc, DatabaseError):
        return False
    return dberrors.classify(exc) in (None, dberrors.NUL)


def store_with_retries(writes: list[AckWrite]) -> list[Outcome | ApiError]:
    """`node_acks_store`, retried where a retry is safe (an upsert sets the same values again):
    once on a fresh connection when the connection broke, and up to CONFLICT_RETRIES times
    after a deadlock or serialization failure. What still fails because the database is
    unavailable becomes the contract's 503 + Retry-After."""
    reconnected = False
    conflicts = 0
    while True:
        try:
            with write_turn():
                results = node_acks_store(writes=writes)
                shared = sharedstate.state()
                if shared is not None and not shared.publish_acks(book_entries(results)):
                    sharedstate.bump(sharedstate.ACKS_RESET)  # an ack too long for the ring
                return results
        except DatabaseError as exc:
            if dberrors.is_retryable_conflict(exc) and conflicts < CONFLICT_RETRIES:
                conflicts += 1
                logger.info("ack transaction hit a lock conflict (%s); retrying", exc)
                time.sleep(CONFLICT_BACKOFF_SECONDS * conflicts)
                continue
            if not reconnected and reset_broken_connection(exc):
                reconnected = True
                continue
            if dberrors.classify(exc) == dberrors.UNAVAILABLE:
                with contextlib.suppress(DatabaseError):
                    connection.close()
                raise dberrors.unavailable_error(exc) from exc
            raise


_writer = AckWriter()


def ride_on(carry: Carry) -> None:
    """Store this process's acks on another writer's thread (`AckWriter.ride_on`)."""
    _writer.ride_on(carry)


def submit(write: AckWrite) -> Future[Outcome]:
    """Queue a validated ack; the future resolves after its transaction committed (an unknown
    release: ApiError 404)."""
    return _writer.submit(write)

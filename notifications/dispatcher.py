"""The webhook dispatcher: sends the outbox (docs/operating.md "Webhooks").

`serve` starts one `Dispatcher`. Its thread wakes when an event commits in this process
(`wake()`) and at least every POLL_SECONDS (events written by another replica or a command), and
only on the leader of background work (`core.leader`; every replica on SQLite is its own
leader). It finds the endpoints with due deliveries and gives each its own worker thread: one
endpoint's deliveries go one at a time, oldest first, while other endpoints' workers send in
parallel, so a slow or dead endpoint (a request takes at most REQUEST_TIMEOUT_SECONDS) only
delays itself. No request thread ever sends.

Each delivery is claimed before it is sent (a conditional UPDATE that commits only while this
replica's lease is the leader's) and held for the request's time plus a margin: of several
replicas exactly one sends it. The outcome is written after the request, with no database
connection held while it waits. A process killed mid-request leaves the claim to expire (or to be
released when a replica of the same `--node-name` starts again) and the next leader sends again:
at-least-once in that one case, which is why every request carries the event id
(`X-Autonomy-Event-Id`) for receivers to drop a repeat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import close_old_connections, connection
from django.utils import timezone

from core import dberrors, leader
from notifications import delivery, selectors, services

logger = logging.getLogger("orchestrator.webhooks")

POLL_SECONDS = 1.0
MAX_WORKERS = 32  # endpoints sent to at once; more wait for a free worker
BATCH = 50
PRUNE_EVERY_SECONDS = 3600.0
CLAIM_MARGIN_SECONDS = 10.0  # a claim lasts the request's timeout plus this

_wakeup = threading.Event()


def wake() -> None:
    """Ask the dispatcher of this process to look at the outbox now (non-blocking)."""
    _wakeup.set()


class Dispatcher:
    def __init__(
        self,
        *,
        replica: str = "",
        policy: delivery.RetryPolicy | None = None,
        timeout: float | None = None,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.replica = replica
        self.policy = policy or delivery.policy_from_env()
        self.timeout = delivery.timeout_from_env() if timeout is None else timeout
        self.on_outcome = on_outcome
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: dict[int, threading.Thread] = {}
        self._last_prune = 0.0

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.replica:
            try:
                released = services.delivery_release_claims(holder=self.replica)
            except Exception:
                logger.exception("could not release this replica's earlier webhook claims")
            else:
                if released:
                    logger.info(
                        "%d webhook deliveries this replica held when it stopped are due again",
                        released,
                    )
            finally:
                connection.close()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking for work; a request in flight ends on its own (daemon threads), and a
        delivery it did not record is sent again later (its claim expires)."""
        self._stop.set()
        _wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ---- the loop ----

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            _wakeup.wait(POLL_SECONDS)
            _wakeup.clear()
            if self._stop.is_set():
                return
            if not leader.elector.is_leader():
                continue  # followers leave the outbox to the leader
            try:
                close_old_connections()
                self.dispatch_round()
                if time.monotonic() - self._last_prune > PRUNE_EVERY_SECONDS:
                    self._last_prune = time.monotonic()
                    services.outbox_prune()
            except leader.NotLeader:
                pass
            except Exception:  # keep the thread alive; the next round retries
                dberrors.log_background_failure(
                    logger, "webhook dispatch failed; retrying in %ss", POLL_SECONDS
                )
            finally:
                connection.close()

    def dispatch_round(self) -> int:
        """Start a worker for every endpoint with due deliveries and none running; returns how
        many were started."""
        lease = leader.elector.lease()
        self._workers = {k: t for k, t in self._workers.items() if t.is_alive()}
        started = 0
        for endpoint_id in selectors.due_endpoint_ids(now=timezone.now()):
            if endpoint_id in self._workers:
                continue
            if len(self._workers) >= MAX_WORKERS:
                break
            worker = threading.Thread(
                target=self._work,
                args=(endpoint_id, lease),
                name=f"webhook-endpoint-{endpoint_id}",
                daemon=True,
            )
            self._workers[endpoint_id] = worker
            worker.start()
            started += 1
        return started

    def _work(self, endpoint_id: int, lease: tuple[int, str]) -> None:
        try:
            while not self._stop.is_set():
                ids = selectors.due_deliveries(
                    endpoint_id=endpoint_id, now=timezone.now(), limit=BATCH
                )
                sent = 0
                for delivery_id in ids:
                    if self._stop.is_set():
                        return
                    if self.deliver(delivery_id, lease) is not None:
                        sent += 1
                if len(ids) < BATCH or not sent:
                    return
        except leader.NotLeader:
            return
        except Exception:
            dberrors.log_background_failure(
                logger, "webhook worker for endpoint %d failed", endpoint_id
            )
        finally:
            connection.close()

    def deliver(self, delivery_id: int, lease: tuple[int, str] | None) -> str | None:
        """Claim, send and record one delivery; the outcome, or None when it was not ours."""
        claim = services.delivery_claim(
            delivery_id=delivery_id,
            hold_seconds=self.timeout + CLAIM_MARGIN_SECONDS,
            lease=lease,
            holder=self.replica,
        )
        connection.close()  # no pooled connection is held while the endpoint answers
        if claim is None:
            return None
        result = delivery.send(
            url=claim.url,
            secret=claim.secret,
            body=claim.body,
            event_id=claim.event_id,
            event_name=claim.event_name,
            attempt=claim.attempt,
            timeout=self.timeout,
        )
        outcome = services.delivery_record(
            claim=claim, result=result, policy=self.policy, replica=self.replica
        )
        connection.close()
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome


_dispatcher: Dispatcher | None = None


def start_dispatcher(*, replica: str, on_outcome: Callable[[str], None] | None = None) -> None:
    """Start this process's dispatcher (called once by `serve`)."""
    global _dispatcher
    if _dispatcher is None:
        _dispatcher = Dispatcher(replica=replica, on_outcome=on_outcome)
        _dispatcher.start()


def stop_dispatcher() -> None:
    global _dispatcher
    if _dispatcher is not None:
        _dispatcher.stop()
        _dispatcher = None

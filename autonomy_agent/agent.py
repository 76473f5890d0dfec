"""The agent loop: poll, verify, apply, ack, send telemetry; spool while the server is away.

One cycle (`Agent.cycle`):
1. spool a heartbeat event;
2. poll the channel and verify the answer (signature, expiry, never a lower sequence than
   already accepted: the floor is persisted in the state dir before anything runs);
3. a new release: ack `pending`, run the apply command, ack `active` (exit 0) or `failed` with
   the tail of its output, spool an `agent.apply` event; a refused answer spools an
   `agent.refused` event (and acks `rejected` when only the offline release signature failed);
4. send queued acks, then the spool, oldest first.
The next cycle starts after the interval with jitter, or after an exponential backoff (at least
the server's `Retry-After`) when the server could not be reached. Nothing is lost while the
spool stays within its bound (docs/agent.md).
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autonomy_agent.client import Client
from autonomy_agent.errors import (
    BadReleaseSignature,
    NoRelease,
    TransportError,
    Unavailable,
    UnsignedRelease,
    VerificationError,
)
from autonomy_agent.state import DEFAULT_SPOOL_MAX_BYTES, StateDir
from autonomy_agent.transport import Backoff
from autonomy_agent.verify import DesiredState

log = logging.getLogger("autonomy_agent")

MESSAGE_TAIL = 2000
SECRET_ENV = {"AUTONOMY_AGENT_TOKEN"}  # the agent's credential is not the apply command's
BATCH_EVENTS = 500


@dataclass
class AgentConfig:
    apply_command: str
    state_dir: Path
    channel: str = "stable"
    interval: float = 30.0
    jitter: float = 0.1  # the interval varies by +-10 %
    apply_timeout: float = 600.0
    max_backoff: float = 300.0
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    batch_events: int = BATCH_EVENTS


@dataclass
class ApplyResult:
    status: str  # "active" or "failed"
    exit_code: int | None
    message: str
    seconds: float


def apply_environment(state: DesiredState, node_id: str, statement_file: Path) -> dict[str, str]:
    """The variables the apply command gets (docs/agent.md, "The apply command")."""
    values: dict[str, Any] = {
        "AUTONOMY_NODE_ID": node_id,
        "AUTONOMY_CHANNEL": state.channel,
        "AUTONOMY_RELEASE_ID": state.release_id,
        "AUTONOMY_SEQUENCE": state.sequence,
        "AUTONOMY_ARTIFACT_REF": state.artifact_ref,
        "AUTONOMY_LOCK_FINGERPRINT": state.lock_fingerprint,
        "AUTONOMY_PLAN_ID": state.plan_id,
        "AUTONOMY_SPEC_DIGEST": state.spec_digest,
        "AUTONOMY_KEY_ID": state.key_id,
        "AUTONOMY_RELEASE_KEY_ID": state.release_signature.key_id
        if state.release_signature
        else None,
        "AUTONOMY_DESIRED_STATE_FILE": statement_file,
    }
    return {k: "" if v is None else str(v) for k, v in values.items()}


def run_apply(command: str, env: dict[str, str], timeout: float) -> ApplyResult:
    """Run COMMAND with `/bin/sh -c` and ENV added (the agent's token variable removed): exit
    0 = active, anything else = failed;
    the message is the tail of its output (stdout and stderr together)."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command,
            shell=True,
            env={**{k: v for k, v in os.environ.items() if k not in SECRET_ENV}, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace").strip()
        tail = output[-MESSAGE_TAIL:]
        message = f"apply command timed out after {timeout:g} s" + (f": {tail}" if tail else "")
        return ApplyResult("failed", None, message, time.monotonic() - started)
    except OSError as exc:
        return ApplyResult(
            "failed", None, f"apply command did not start: {exc}", time.monotonic() - started
        )
    output = proc.stdout.decode(errors="replace").strip()
    message = output[-MESSAGE_TAIL:] or f"apply command exited {proc.returncode}"
    status = "active" if proc.returncode == 0 else "failed"
    return ApplyResult(status, proc.returncode, message, time.monotonic() - started)


class Agent:
    """The reference agent around a `Client` and a `StateDir`; `run()` loops, `cycle()` is one
    pass (useful to drive it from other code: returns the seconds to wait before the next)."""

    def __init__(
        self,
        client: Client,
        config: AgentConfig,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.config = config
        self.state = StateDir(config.state_dir, spool_max_bytes=config.spool_max_bytes)
        self.backoff = Backoff(base=min(1.0, config.max_backoff), cap=config.max_backoff, rng=rng)
        self._rng = rng
        self.last_error: BaseException | None = None  # what went wrong in the last cycle

    def close(self) -> None:
        """Release the state dir and the client's connection."""
        self.state.close()
        self.client.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one cycle --------------------------------------------------------------------------

    def cycle(self) -> float:
        self.last_error = None
        record = self.state.channel(self.config.channel)
        self._spool(
            self.client.event(
                "agent.heartbeat",
                channel=self.config.channel,
                release_id=record.get("release_id"),
                sequence=record.get("sequence"),
                apply_status=record.get("status"),
                refused=record.get("refused"),
                events_dropped=self.state.data["events_dropped"],
            )
        )
        unavailable: Unavailable | None = None
        try:
            self._poll_and_apply()
        except Unavailable as exc:
            unavailable = exc
        except VerificationError as exc:
            self.last_error = exc
        except TransportError as exc:
            log.error("poll failed: %s", exc)
            self.last_error = exc
        try:
            self.flush()
        except Unavailable as exc:
            unavailable = unavailable or exc
        if unavailable is not None:
            self.last_error = unavailable
            delay = self.backoff.next(unavailable.retry_after)
            log.warning("server unavailable (%s): next try in %.1f s", unavailable, delay)
            return delay
        self.backoff.reset()
        spread = self.config.jitter * (2 * self._rng() - 1)
        return max(0.0, self.config.interval * (1 + spread))

    def _spool(self, *events: dict[str, Any]) -> None:
        try:
            self.state.spool(list(events))
        except OSError as exc:  # a full or read-only disk must not stop polling and applying
            self.state.data["events_dropped"] += len(events)
            log.error("cannot spool %d events, dropped: %s", len(events), exc)

    def _poll_and_apply(self) -> None:
        channel = self.config.channel
        record = self.state.channel(channel)
        try:
            desired = self.client.poll(channel, min_sequence=self.state.min_sequence(channel))
        except NoRelease:
            return
        except VerificationError as exc:
            log.error("refused the desired state (%s): %s", exc.reason, exc)
            # Reported once per distinct refusal (the heartbeat repeats its reason), so that a
            # refused answer every interval does not flood the events and the audit log.
            if record.get("refused") != exc.reason or record.get("refused_message") != str(exc):
                record.update(refused=exc.reason, refused_message=str(exc))
                self.state.save()
                self._spool(
                    self.client.event(
                        "agent.refused",
                        channel=channel,
                        reason=exc.reason,
                        message=str(exc)[:1000],
                    )
                )
                if isinstance(exc, UnsignedRelease | BadReleaseSignature) and exc.release_id:
                    self.state.queue_ack(
                        {"release_id": exc.release_id, "status": "rejected", "message": str(exc)}
                    )
            raise
        # Accepted: the rollback floor moves up before anything runs.
        record.pop("refused", None)
        record.pop("refused_message", None)
        record["sequence"] = max(desired.sequence, record.get("sequence") or 0)
        same = record.get("release_id") == desired.release_id
        if same and record.get("status") in ("active", "failed"):
            self.state.save()
            return
        self.apply(desired)

    def apply(self, desired: DesiredState) -> ApplyResult:
        """Apply DESIRED now: ack pending, run the command, ack the result, spool the event."""
        record = self.state.channel(desired.channel)
        record.update(release_id=desired.release_id, status="applying")
        statement_file = self.state.record_statement(desired.statement_bytes)
        self.state.save()
        ack: dict[str, Any] = {"release_id": desired.release_id, "status": "pending"}
        if desired.lock_fingerprint is not None:
            ack["lock_fingerprint"] = desired.lock_fingerprint
        self.state.queue_ack(ack)
        self._flush_acks(raise_unavailable=False)
        log.info("applying release %s (sequence %d)", desired.release_id, desired.sequence)
        env = apply_environment(desired, self.client.node_id, statement_file)
        result = run_apply(self.config.apply_command, env, self.config.apply_timeout)
        record.update(status=result.status)
        self.state.save()
        self.state.queue_ack({**ack, "status": result.status, "message": result.message})
        self._spool(
            self.client.event(
                "agent.apply",
                channel=desired.channel,
                release_id=desired.release_id,
                lock_fingerprint=desired.lock_fingerprint,
                sequence=desired.sequence,
                status=result.status,
                exit_code=result.exit_code,
                seconds=round(result.seconds, 3),
            )
        )
        log.info("release %s: %s (%s)", desired.release_id, result.status, result.message[-200:])
        return result

    # -- sending what is queued -------------------------------------------------------------

    def _flush_acks(self, *, raise_unavailable: bool = True) -> None:
        for ack in self.state.pending_acks():
            fields = {k: v for k, v in ack.items() if k not in ("release_id", "status")}
            try:
                self.client.ack(ack["release_id"], ack["status"], **fields)
            except Unavailable:
                if raise_unavailable:
                    raise
                return
            except TransportError as exc:  # 4xx: sending it again cannot help
                log.error("ack %s %s refused, dropped: %s", ack["release_id"], ack["status"], exc)
            self.state.ack_sent(ack)

    def flush(self) -> None:
        """Send queued acks, then the event spool oldest first; raises Unavailable when the
        server cannot take them now (they stay queued)."""
        self._flush_acks()
        for paths, events in self.state.spooled(self.config.batch_events):
            try:
                self.client.send_events(events)
            except Unavailable:
                raise
            except TransportError as exc:
                if exc.status is None or exc.status in (401, 403, 408):
                    raise Unavailable(str(exc), status=exc.status) from exc
                log.error("event batch of %d refused, dropped: %s", len(events), exc)
                self.state.unspool(paths, dropped=len(events))
                continue
            self.state.unspool(paths)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, cycles: int | None = None) -> None:
        """Cycle until STOP is set (or CYCLES cycles ran); one last flush attempt at the end."""
        stop = stop or threading.Event()
        done = 0
        while not stop.is_set():
            delay = self.cycle()
            done += 1
            if cycles is not None and done >= cycles:
                break
            stop.wait(delay)
        try:
            self.flush()
        except (Unavailable, TransportError) as exc:
            log.info("stopping with %d events spooled (%s)", self.state.spool_count(), exc)

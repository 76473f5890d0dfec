"""The agent's state dir: what it accepted and applied, acks still to send, the event spool.

Layout (the dir is 0700, every file 0600, every write atomic: a temporary file, fsync, rename):

    state.json          {"channels": {channel: {"sequence", "release_id", "status", ...}},
                         "pending_acks": [...], "events_spooled": N, "events_dropped": N}
    desired-state.json  the exact signed statement bytes last accepted (evidence for the apply)
    spool/NNNNNNNNNNNN.json   one batch of events each, oldest = lowest number
    lock                held (flock) by the one agent using the dir

The spool is bounded by total bytes: when a new batch would go over the bound, the oldest
batches are dropped first (counted in `events_dropped`, logged) — newest telemetry wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("autonomy_agent")

LOCK_FILE = "lock"
STATE_FILE = "state.json"
STATEMENT_FILE = "desired-state.json"
SPOOL_DIR = "spool"
DEFAULT_SPOOL_MAX_BYTES = 16 * 1024 * 1024


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write DATA to PATH atomically as a 0600 file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StateDirBusy(ValueError):
    """Another agent holds the state dir."""


class StateDir:
    """The persisted state of one agent (one node). One user at a time: opening takes an
    exclusive lock on the dir (StateDirBusy when another agent, or another StateDir object of
    this process, holds it); `close()` releases it."""

    def __init__(self, path: str | Path, *, spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES) -> None:
        self.path = Path(path)
        self.spool_path = self.path / SPOOL_DIR
        self.spool_max_bytes = spool_max_bytes
        _private_dir(self.path)
        _private_dir(self.spool_path)
        self._lock_fd: int | None = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self.close()
            raise StateDirBusy(f"another agent is using the state dir {self.path}") from exc
        self.data: dict[str, Any] = self._load()

    def close(self) -> None:
        """Release the state dir (everything is already on disk)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- state.json -------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        path = self.path / STATE_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            data = {}
        except ValueError as exc:
            raise ValueError(f"the agent state {path} is not JSON: fix or remove it") from exc
        if not isinstance(data, dict):
            raise ValueError(f"the agent state {path} is not a JSON object: fix or remove it")
        data.setdefault("channels", {})
        data.setdefault("pending_acks", [])
        data.setdefault("events_spooled", 0)
        data.setdefault("events_dropped", 0)
        return data

    def save(self) -> None:
        write_private(self.path / STATE_FILE, json.dumps(self.data, sort_keys=True).encode())

    def channel(self, channel: str) -> dict[str, Any]:
        """The record of CHANNEL: `sequence` (highest accepted), `release_id`, `status`."""
        record: dict[str, Any] = self.data["channels"].setdefault(channel, {})
        return record

    def min_sequence(self, channel: str) -> int | None:
        value = self.channel(channel).get("sequence")
        return value if isinstance(value, int) else None

    def record_statement(self, statement_bytes: bytes) -> Path:
        path = self.path / STATEMENT_FILE
        write_private(path, statement_bytes)
        return path

    # -- acks to send -----------------------------------------------------------------------

    def queue_ack(self, ack: Mapping[str, Any]) -> None:
        """Keep ACK to send; a later ack for the same release replaces an unsent earlier one."""
        acks = [a for a in self.data["pending_acks"] if a.get("release_id") != ack["release_id"]]
        acks.append(dict(ack))
        self.data["pending_acks"] = acks
        self.save()

    def pending_acks(self) -> list[dict[str, Any]]:
        return list(self.data["pending_acks"])

    def ack_sent(self, ack: Mapping[str, Any]) -> None:
        self.data["pending_acks"] = [a for a in self.data["pending_acks"] if a != ack]
        self.save()

    # -- the event spool --------------------------------------------------------------------

    def _batches(self) -> list[Path]:
        return sorted(p for p in self.spool_path.glob("*.json") if p.name[:-5].isdigit())

    def spool_bytes(self) -> int:
        total = 0
        for path in self._batches():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def spool(self, events: list[dict[str, Any]]) -> int:
        """Append EVENTS as one batch; drop the oldest batches beyond the bound. The number of
        events dropped."""
        if not events:
            return 0
        batches = self._batches()
        number = int(batches[-1].name[:-5]) + 1 if batches else 1
        data = json.dumps(events).encode()
        write_private(self.spool_path / f"{number:012d}.json", data)
        self.data["events_spooled"] += len(events)
        dropped = 0
        total = self.spool_bytes()
        for path in self._batches():
            if total <= self.spool_max_bytes:
                break
            size = path.stat().st_size
            dropped += len(self._read_batch(path))
            path.unlink()
            total -= size
        if dropped:
            self.data["events_dropped"] += dropped
            log.warning(
                "event spool over %d bytes: dropped the %d oldest events",
                self.spool_max_bytes,
                dropped,
            )
        self.save()
        return dropped

    def _read_batch(self, path: Path) -> list[dict[str, Any]]:
        try:
            events = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return []
        return events if isinstance(events, list) else []

    def spooled(self, max_events: int) -> Iterator[tuple[list[Path], list[dict[str, Any]]]]:
        """The spool oldest first, as (batch files, their events) of at most MAX_EVENTS events
        (a single bigger batch comes alone)."""
        paths: list[Path] = []
        events: list[dict[str, Any]] = []
        for path in self._batches():
            batch = self._read_batch(path)
            if paths and len(events) + len(batch) > max_events:
                yield paths, events
                paths, events = [], []
            paths.append(path)
            events.extend(batch)
        if paths:
            yield paths, events

    def unspool(self, paths: list[Path], *, dropped: int = 0) -> None:
        """Remove sent (or refused, counted in DROPPED) batches."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if dropped:
            self.data["events_dropped"] += dropped
            self.save()

    def spool_count(self) -> int:
        return sum(len(self._read_batch(path)) for path in self._batches())

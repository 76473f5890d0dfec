"""What the workers of one `serve --workers N` on SQLite tell each other (docs/serve.md#workers).

Each worker keeps in-process caches that let a node's poll be answered without the database
(the channel's latest release, the plan heads, the ack book: docs/performance.md, "A
50,000-node fleet"). With one worker every write passes through that process, which empties or
moves its caches itself. With several, a write in one worker must reach the caches of the
others before they answer from them. This module is that channel: one small file, mapped into
every worker (`workers.directory() / "shared.state"`, 0600), holding

- **change counters** (`RELEASES`, `PLANS`, `ACKS_RESET`): a worker that changed what a cache
  holds bumps the counter after its commit; every worker compares the counter with the value it
  last saw before answering from that cache, and empties the cache when it moved. A comparison
  is one read of shared memory (~0.2 µs), so it is done on every cached read;
- **the ack ring**: the last `RING_SLOTS` committed acks (release pk, node id, status) in commit
  order. The ack writer appends its group while it still holds the cross-process write lock
  (`write_lock`), so the ring's order is the commit order; every worker's ack book replays what
  it has not seen yet before answering (so a poll after an ack's 200, in any worker, sees it).
  A worker that fell more than the ring behind (idle for a while) gets `None` and reloads its
  book from the database instead.

And **the write lock** (`write_lock()`): SQLite has one write lock per database, and a writer
that finds it taken sleeps in the busy handler (up to 100 ms a try). The writer threads of all
workers take turns on an `flock` of `write.lock` first, as the writers of one process take
turns on a thread lock (`core.dbthreads.write_turn`).

Records are written under the write lock; readers never lock: a slot carries its sequence
number, cleared before the slot is rewritten and set after, and a reader keeps a slot only when
it read the same number before and after the fields (a seqlock). Imports nothing of this
repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

MAGIC = b"AOWS0001"
RELEASES, PLANS, ACKS_RESET = 0, 1, 2
MAX_WORKERS = 32
_HEAD_AT = 128  # the ring's next sequence number
# One int64 per (counter, worker): only that worker writes it, so a bump needs no lock and is
# never lost; a counter's value is the sum over the workers (it only grows).
_COUNTER_AT = 256
_COUNTER_ROW = struct.Struct(f"<{MAX_WORKERS}q")
RING_AT = 4096
RING_SLOTS = 32_768
SLOT = 512
# seq, release pk, status length, status, node length, node
_SLOT_HEAD = struct.Struct("<qqB16sH")
NODE_MAX = SLOT - _SLOT_HEAD.size
SIZE = RING_AT + RING_SLOTS * SLOT
_Q = struct.Struct("<q")
_EMPTY = -1


class SharedState:
    """The mapped file of one serve's workers (one instance per worker process)."""

    def __init__(self, directory: Path, index: int) -> None:
        if not 0 <= index < MAX_WORKERS:
            raise ValueError(f"a worker index is 0 to {MAX_WORKERS - 1}")
        self.index = index
        path = directory / "shared.state"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SIZE:
                os.ftruncate(fd, SIZE)  # sparse: pages cost nothing until written
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        if self._map[:8] != MAGIC:
            self._map[:8] = MAGIC
        self._lock_path = directory / "write.lock"
        self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._thread_lock = threading.Lock()

    @staticmethod
    def create(directory: Path) -> None:
        """A fresh file for a starting serve (before its workers start): no stale ring."""
        path = directory / "shared.state"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            os.pwrite(fd, MAGIC, 0)
        finally:
            os.close(fd)

    # ---- change counters ----

    def counter(self, which: int) -> int:
        return sum(_COUNTER_ROW.unpack_from(self._map, _COUNTER_AT + _COUNTER_ROW.size * which))

    def bump(self, which: int) -> None:
        at = _COUNTER_AT + _COUNTER_ROW.size * which + 8 * self.index
        _Q.pack_into(self._map, at, _Q.unpack_from(self._map, at)[0] + 1)

    # ---- the cross-process write lock ----

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Held by one thread of one worker at a time (a thread lock, then the file lock)."""
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # ---- the ack ring ----

    def head(self) -> int:
        return int(_Q.unpack_from(self._map, _HEAD_AT)[0])

    def publish_acks(self, acks: list[tuple[int, str, str]]) -> bool:
        """Append (release pk, node id, status) in commit order. Call with `write_lock()` held.
        False when an ack does not fit a slot: the caller bumps ACKS_RESET instead."""
        records = []
        for release_pk, node, status in acks:
            node_bytes, status_bytes = node.encode(), status.encode()
            if len(node_bytes) > NODE_MAX or len(status_bytes) > 16:
                return False
            records.append((release_pk, status_bytes, node_bytes))
        seq = self.head()
        for release_pk, status_bytes, node_bytes in records:
            at = RING_AT + (seq % RING_SLOTS) * SLOT
            _Q.pack_into(self._map, at, _EMPTY)
            _SLOT_HEAD.pack_into(
                self._map, at, _EMPTY, release_pk, len(status_bytes), status_bytes, len(node_bytes)
            )
            end = at + _SLOT_HEAD.size
            self._map[end : end + len(node_bytes)] = node_bytes
            _Q.pack_into(self._map, at, seq)
            seq += 1
        _Q.pack_into(self._map, _HEAD_AT, seq)
        return True

    def read_acks(self, since: int) -> tuple[list[tuple[int, str, str]], int] | None:
        """The acks published from sequence `since` on and the next sequence to ask for; None
        when some of them were overwritten already (the reader fell a ring behind)."""
        head = self.head()
        if head - since > RING_SLOTS:
            return None
        out = []
        for seq in range(since, head):
            at = RING_AT + (seq % RING_SLOTS) * SLOT
            before, release_pk, status_len, status, node_len = _SLOT_HEAD.unpack_from(self._map, at)
            end = at + _SLOT_HEAD.size
            node = bytes(self._map[end : end + node_len])
            after = _Q.unpack_from(self._map, at)[0]
            if before != seq or after != seq:
                return None
            out.append((int(release_pk), node.decode(), status[:status_len].decode()))
        return out, head

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


_state: SharedState | None = None


def attach(directory: Path | None, index: int) -> SharedState | None:
    """Map the workers' file (each worker, as it starts); None with one worker."""
    global _state
    _state = SharedState(directory, index) if directory is not None else None
    return _state


def state() -> SharedState | None:
    """This worker's view of the shared file, or None (one worker: nothing to share)."""
    return _state


class Watch:
    """Remembers a counter's last seen value: `moved()` says whether another write happened."""

    __slots__ = ("_seen", "_which")

    def __init__(self, which: int) -> None:
        self._which = which
        self._seen = 0

    def moved(self) -> bool:
        shared = _state
        if shared is None:
            return False
        value = shared.counter(self._which)
        if value == self._seen:
            return False
        self._seen = value
        return True


def bump(which: int) -> None:
    shared = _state
    if shared is not None:
        shared.bump(which)

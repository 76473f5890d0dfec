"""SQLite WAL checkpoints off the write path (`serve` on SQLite).

By default SQLite checkpoints inside the COMMIT that grows the WAL past 1,000 pages: that
commit copies the WAL's pages into the database file and syncs it before it returns, while the
writer still holds the store's write turn (`core.dbthreads.write_turn`), so every queued ingest
and ack waits behind it. At fleet scale (thousands of events a second) that is a checkpoint
every second or so, and most of the time the write turn is held (docs/performance.md).

`serve` turns the automatic checkpoint off on its connections (`PRAGMA wal_autocheckpoint=0`,
`disable_autocheckpoint`) and runs this thread instead (in the primary worker): every
`interval` seconds a PASSIVE checkpoint on its own connection, which copies what it can
without waiting for (or blocking) readers and writers. Durability is unchanged: every commit's
WAL is synced before anyone is answered (by SQLite's COMMIT, or by the writer thread right after
its turn, `core.dbthreads.sync_after_turn`). When the WAL has grown past `restart_bytes` anyway (readers
kept it pinned), one RESTART checkpoint (which waits up to the busy timeout for the writers)
lets the next writer start the WAL file again from its beginning, and `journal_size_limit`
(4 MiB) has SQLite cut the file back whenever it starts over, so the WAL does not keep the size
of its largest burst on disk (a store with a short `--events-retention` stays flat). Imports
nothing of this repository.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading

logger = logging.getLogger("orchestrator.db")

INTERVAL_SECONDS = 0.5
RESTART_BYTES = 256 * 1024 * 1024
# Without SQLite's automatic checkpoint the WAL file is only ever reused, never shortened: keep
# what it occupies on disk at about what the automatic checkpoint left (1,000 pages), by having
# SQLite truncate it to this size each time a writer starts it over.
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
AUTOCHECKPOINT_OFF = (
    f"PRAGMA wal_autocheckpoint=0;PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES};"
)


def disable_autocheckpoint(options: dict[str, object]) -> None:
    """Add `wal_autocheckpoint=0` (and the WAL's size limit) to a Django SQLite OPTIONS dict's
    init_command (idempotent); connections opened afterwards leave checkpoints to
    `Checkpointer`."""
    command = str(options.get("init_command") or "")
    if AUTOCHECKPOINT_OFF not in command:
        options["init_command"] = command + AUTOCHECKPOINT_OFF


class Checkpointer:
    def __init__(
        self,
        path: str,
        *,
        interval: float = INTERVAL_SECONDS,
        restart_bytes: int = RESTART_BYTES,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_bytes = restart_bytes
        self.busy_timeout = busy_timeout
        self.checkpoints = 0  # passes that ran (tests, debugging)
        self.frames_copied = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    def start(self) -> Checkpointer:
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
        return self._conn

    def run_once(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint (RESTART when the WAL is past restart_bytes): SQLite's
        (busy, WAL frames, frames checkpointed)."""
        mode = "PASSIVE"
        with contextlib.suppress(OSError):
            if os.path.getsize(self.path + "-wal") > self.restart_bytes:
                mode = "RESTART"
        row = self._connection().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        self.checkpoints += 1
        busy, frames, copied = (int(v) for v in row)
        self.frames_copied += max(copied, 0)
        return busy, frames, copied

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except sqlite3.Error as exc:
                if not failing:  # one line per episode, not one per pass
                    logger.warning("WAL checkpoint failed: %s", exc)
                failing = True
                if self._conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.close()
                    self._conn = None
            else:
                failing = False
        with contextlib.suppress(sqlite3.Error):
            self.run_once()  # leave a short WAL behind

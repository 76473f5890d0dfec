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
its turn, `core.dbthreads.sync_after_turn`).

A PASSIVE checkpoint alone never lets the WAL start over under steady writes: a writer starts the
file from its beginning only when every frame in it was copied, and by the time a pass ends the
writers have appended more. At fleet scale the WAL grew to 256 MiB every ~5 s and a RESTART
checkpoint then held every writer back while it copied the rest (docs/performance.md, "The WAL
synced after the write turn, and reset under a short turn"). So when the WAL is past `reset_bytes`
after its PASSIVE pass, the checkpointer takes the store's write turn (`turn`,
`core.dbthreads.write_turn`, shared by every worker's writers) and runs a RESTART checkpoint in it:
it only has to copy what was written during the pass, and waits at most `reset_wait` for readers;
the next writer then starts the WAL over, writing its frames from the file's beginning. Before it
takes the turn it syncs the database file itself (`_sync_database`): SQLite syncs that file only
at the end of a checkpoint that copied every frame, never after a PASSIVE pass that writers
overtook, so the reset's sync would otherwise write every page the passes copied since the last
reset, inside the turn (~30 ms a reset at fleet scale, ~10 ms with the file synced first). The
decision counts the frames the WAL holds since it last started over (`reset_bytes` of them), not
the file's size: the file keeps its size when the log starts over. SQLite would cut it back to
`journal_size_limit` in the first COMMIT after each start-over, inside that writer's turn, and
grow it again by the next pass: at fleet scale twice a second a truncation of 26-36 MB, and on a
file system that discards freed blocks at once (this project's machines: ext4 with `discard`, no
journal) a `ftruncate` of 32 MB to 4 MB takes ~13 ms, of 64 MB ~27 ms, every writer waiting
(docs/performance.md, "The status read on the fast path; a slower machine; the WAL reset's
stall"). So `journal_size_limit` is `JOURNAL_SIZE_LIMIT_BYTES` (64 MiB), above what the WAL
reaches between two passes at fleet scale: the file is reused in place, and only a burst beyond
64 MiB is cut back, once. On disk the WAL takes at most that (a store with a short
`--events-retention` stays flat). Without a turn (or when the reset keeps failing), a WAL past
`restart_bytes` gets a RESTART that waits up to the busy timeout. Imports nothing of this
repository.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("orchestrator.db")

INTERVAL_SECONDS = 0.5
RESTART_BYTES = 256 * 1024 * 1024
# Past this after a PASSIVE pass, the WAL is reset in a short write turn (`turn`).
RESET_BYTES = 16 * 1024 * 1024
# How long that RESTART may wait for readers (the writers wait as long): a reset that cannot
# finish in time is tried again at the next pass.
RESET_WAIT_SECONDS = 0.1
# Without SQLite's automatic checkpoint the WAL file is only ever reused, never shortened: SQLite
# cuts it back to this size each time a writer starts it over, when it is larger. Above what the
# WAL reaches between two passes at fleet scale (16 MiB + 0.5 s of writes: 30-42 MB measured), so
# that the file is reused in place instead of cut back and grown again twice a second (the
# module's doc); a burst beyond it is cut back once.
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24
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
        turn: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        reset_bytes: int = RESET_BYTES,
        reset_wait: float = RESET_WAIT_SECONDS,
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_bytes = restart_bytes
        self.busy_timeout = busy_timeout
        self.turn = turn
        self.reset_bytes = reset_bytes
        self.reset_wait = reset_wait
        self.checkpoints = 0  # passes that ran (tests, debugging)
        self.frames_copied = 0
        self.resets = 0  # RESTART checkpoints in a write turn that completed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._page_size: int | None = None

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
        """One PASSIVE checkpoint (RESTART when the WAL is past restart_bytes), then, with a
        turn and the WAL past reset_bytes, a RESTART in the turn: SQLite's (busy, WAL frames,
        frames checkpointed) of the last checkpoint run."""
        mode = "RESTART" if self._wal_bytes() > self.restart_bytes else "PASSIVE"
        result = self._checkpoint(mode)
        if (
            self.turn is not None
            and mode == "PASSIVE"
            and self._log_bytes(result) > self.reset_bytes
        ):
            self._sync_database()
            result = self._reset()
        return result

    def _sync_database(self) -> None:
        """Sync the database file before the reset, outside the write turn.

        A PASSIVE pass under steady writes never completes (the writers append while it
        copies), and SQLite syncs the database file only at the end of a checkpoint that copied
        every frame: the reset's. So every page the passes copied since the last reset was still
        to be written to the disk in that one `fsync`, inside the turn (~30 ms a reset at fleet
        scale, twice a second; docs/performance.md, "The database file synced before the
        reset"). Synced here first, the reset's own sync only writes the pages it copied."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _log_bytes(self, result: tuple[int, int, int]) -> int:
        """The bytes of the frames the WAL holds since it last started over (`result`: a
        checkpoint's (busy, frames, copied)); not the file's size, which stays when the log
        starts over."""
        if self._page_size is None:
            row = self._connection().execute("PRAGMA page_size").fetchone()
            self._page_size = int(row[0])
        frames = max(result[1], 0)
        return WAL_HEADER_BYTES + frames * (self._page_size + WAL_FRAME_HEADER_BYTES)

    def _wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def _checkpoint(self, mode: str) -> tuple[int, int, int]:
        row = self._connection().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        self.checkpoints += 1
        busy, frames, copied = (int(v) for v in row)
        self.frames_copied += max(copied, 0)
        return busy, frames, copied

    def _reset(self) -> tuple[int, int, int]:
        """A RESTART checkpoint while this thread holds the store's write turn: no writer
        appends meanwhile, so it copies what the PASSIVE pass left and the next writer starts
        the WAL over; it waits at most reset_wait for readers."""
        assert self.turn is not None
        conn = self._connection()
        conn.execute(f"PRAGMA busy_timeout={int(self.reset_wait * 1000)}")
        try:
            with self.turn():
                result = self._checkpoint("RESTART")
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        if result[0] == 0:
            self.resets += 1
        return result

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except (sqlite3.Error, OSError) as exc:  # OSError: the database file's own sync
                if not failing:  # one line per episode, not one per pass
                    logger.warning("WAL checkpoint failed: %s", exc)
                failing = True
                if self._conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.close()
                    self._conn = None
            else:
                failing = False
        with contextlib.suppress(sqlite3.Error, OSError):
            self.run_once()  # leave a short WAL behind

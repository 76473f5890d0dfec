"""What the workers of `serve --workers N` share (core.sharedstate) and the WAL checkpointer
(core.walcheckpoint), checked in process; several real processes in tests/test_workers.py."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core import sharedstate
from core.sharedstate import ACKS_RESET, PLANS, RELEASES, RING_SLOTS, SharedState, Watch
from core.walcheckpoint import JOURNAL_SIZE_LIMIT_BYTES, Checkpointer, disable_autocheckpoint
from tests.liveserver import wait_until


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    SharedState.create(tmp_path)
    return tmp_path


def test_files_are_private_and_a_fresh_start_forgets_the_ring(shared_dir: Path) -> None:
    one = SharedState(shared_dir, 0)
    assert one.publish_acks([(1, "n-1", "active")])
    for name in ("shared.state", "write.lock"):
        assert stat.S_IMODE((shared_dir / name).stat().st_mode) == 0o600
    one.close()
    SharedState.create(shared_dir)  # the next serve
    again = SharedState(shared_dir, 0)
    assert again.head() == 0
    assert again.read_acks(0) == ([], 0)


def test_acks_published_by_one_worker_are_read_by_another_in_order(shared_dir: Path) -> None:
    writer, reader = SharedState(shared_dir, 1), SharedState(shared_dir, 0)
    with writer.write_lock():
        assert writer.publish_acks([(7, "n-1", "pending"), (7, "n-2", "failed")])
    with reader.write_lock():
        assert reader.publish_acks([(7, "n-1", "active"), (9, "nœud-é", "active")])
    acks, at = writer.read_acks(0)  # type: ignore[misc]
    assert acks == [
        (7, "n-1", "pending"),
        (7, "n-2", "failed"),
        (7, "n-1", "active"),
        (9, "nœud-é", "active"),
    ]
    assert at == 4
    assert reader.read_acks(at) == ([], 4)
    assert reader.read_acks(3) == ([(9, "nœud-é", "active")], 4)


def test_a_reader_a_whole_ring_behind_is_told_to_reload(shared_dir: Path) -> None:
    state = SharedState(shared_dir, 0)
    batch = [(1, f"n-{i}", "active") for i in range(1000)]
    while state.head() <= RING_SLOTS:
        with state.write_lock():
            state.publish_acks(batch)
    assert state.read_acks(0) is None  # overwritten: reload from the database
    recent = state.head() - 10
    acks, _ = state.read_acks(recent)  # type: ignore[misc]
    assert len(acks) == 10


def test_an_ack_too_long_for_a_slot_is_refused_whole(shared_dir: Path) -> None:
    state = SharedState(shared_dir, 0)
    assert not state.publish_acks([(1, "short", "active"), (1, "x" * 600, "active")])
    assert state.head() == 0  # nothing of the group went out: the caller resets every book


def test_change_counters_never_lose_a_bump_of_another_worker(shared_dir: Path) -> None:
    workers = [SharedState(shared_dir, i) for i in range(3)]
    before = workers[0].counter(PLANS)

    def bump_many(state: SharedState) -> None:
        for _ in range(2000):
            state.bump(PLANS)

    threads = [threading.Thread(target=bump_many, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert workers[1].counter(PLANS) == before + 6000
    assert workers[2].counter(RELEASES) == workers[2].counter(ACKS_RESET) == 0


def test_a_watch_sees_each_change_once(shared_dir: Path) -> None:
    try:
        sharedstate.attach(shared_dir, 0)
        other = SharedState(shared_dir, 1)
        watch = Watch(RELEASES)
        assert not watch.moved()
        other.bump(RELEASES)
        assert watch.moved()
        assert not watch.moved()
        sharedstate.bump(RELEASES)  # this worker's own bump counts too
        assert watch.moved()
    finally:
        sharedstate.attach(None, 0)
    assert not Watch(RELEASES).moved()  # one worker: nothing to watch


def _hold_lock(directory: str, held: multiprocessing.synchronize.Event, go: object) -> None:
    state = SharedState(Path(directory), 1)
    with state.write_lock():
        held.set()
        go.wait(10)  # type: ignore[attr-defined]


def test_the_write_lock_excludes_another_process(shared_dir: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    held, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(shared_dir), held, go))
    child.start()
    try:
        assert held.wait(10)
        state = SharedState(shared_dir, 0)
        got = threading.Event()

        def take() -> None:
            with state.write_lock():
                got.set()

        taker = threading.Thread(target=take)
        taker.start()
        assert not got.wait(0.5)  # the other process holds it
        go.set()
        assert got.wait(10)
        taker.join()
    finally:
        go.set()
        child.join(10)


# --- the WAL checkpointer ------------------------------------------------------------------


def test_disable_autocheckpoint_is_added_once() -> None:
    options: dict[str, object] = {"init_command": "PRAGMA journal_mode=WAL;"}
    disable_autocheckpoint(options)
    disable_autocheckpoint(options)
    assert options["init_command"] == (
        "PRAGMA journal_mode=WAL;PRAGMA wal_autocheckpoint=0;PRAGMA journal_size_limit=67108864;"
    )


def _store_without_checkpoints(tmp_path: Path, *, rows: int) -> tuple[str, sqlite3.Connection]:
    """A WAL store as serve's connections leave it (no automatic checkpoint), `rows` 8 KB rows."""
    path = str(tmp_path / "db.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x BLOB)")
    for _ in range(rows):
        conn.execute("INSERT INTO t VALUES (randomblob(8000))")
    return path, conn


def test_the_checkpointer_copies_the_wal_that_writers_no_longer_do(tmp_path: Path) -> None:
    path, conn = _store_without_checkpoints(tmp_path, rows=300)
    wal = Path(path + "-wal")
    grown = wal.stat().st_size
    assert grown > 2_000_000  # nobody checkpointed: the WAL keeps every page
    size_before = os.path.getsize(path)

    checkpointer = Checkpointer(path, interval=0.05).start()
    deadline = time.monotonic() + 10
    while checkpointer.frames_copied == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    checkpointer.stop()
    assert checkpointer.frames_copied > 0
    assert os.path.getsize(path) > size_before + 2_000_000  # the pages reached the database
    conn.execute("INSERT INTO t VALUES (randomblob(8000))")  # the WAL starts over, not grows
    assert wal.stat().st_size <= grown
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (301,)


def test_a_restart_checkpoint_when_the_wal_is_past_its_limit(tmp_path: Path) -> None:
    path, _ = _store_without_checkpoints(tmp_path, rows=50)
    checkpointer = Checkpointer(path, restart_bytes=1)
    busy, frames, copied = checkpointer.run_once()
    assert busy == 0 and frames == copied > 0
    checkpointer.stop()


class _Turn:
    """A write turn that records when it was taken (as `core.dbthreads.write_turn`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0

    @contextlib.contextmanager
    def __call__(self):
        with self.lock:
            self.taken += 1
            yield


def test_the_wal_starts_over_after_a_reset_in_a_write_turn(tmp_path: Path) -> None:
    """Past reset_bytes after its PASSIVE pass, the checkpointer copies the rest in a write turn
    and the next writer starts the WAL from its beginning (cut back to journal_size_limit)
    instead of appending to a WAL that only grows under steady writes."""
    path, conn = _store_without_checkpoints(tmp_path, rows=300)
    conn.execute("PRAGMA journal_size_limit=100000")  # serve's is JOURNAL_SIZE_LIMIT_BYTES
    wal = Path(path + "-wal")
    assert wal.stat().st_size > 2_000_000
    turn = _Turn()
    checkpointer = Checkpointer(path, turn=turn, reset_bytes=1_000_000)
    busy, frames, copied = checkpointer.run_once()
    assert (busy, turn.taken, checkpointer.resets) == (0, 1, 1)
    assert frames == copied > 0
    conn.execute("INSERT INTO t VALUES (randomblob(8000))")
    assert wal.stat().st_size <= 100_000  # started over, cut back to journal_size_limit
    assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (301,)
    assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] < 10  # frames in it

    # Below reset_bytes: the PASSIVE pass alone, no turn taken.
    checkpointer.run_once()
    assert (turn.taken, checkpointer.resets) == (1, 1)
    checkpointer.stop()


def test_a_reset_is_decided_by_what_the_wal_holds_not_by_the_file_s_size(tmp_path: Path) -> None:
    """serve keeps the WAL file's size when the log starts over (journal_size_limit above what
    the WAL reaches between passes: no truncation and regrowth of the file twice a second):
    after a reset the file is as large as before, but a pass that finds few frames in it takes
    no turn, and one that finds more than reset_bytes again does."""
    path, conn = _store_without_checkpoints(tmp_path, rows=300)
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")  # serve's
    wal = Path(path + "-wal")
    grown = wal.stat().st_size
    turn = _Turn()
    checkpointer = Checkpointer(path, turn=turn, reset_bytes=1_000_000)
    checkpointer.run_once()
    assert (turn.taken, checkpointer.resets) == (1, 1)
    conn.execute("INSERT INTO t VALUES (randomblob(8000))")  # the log starts over in place
    assert wal.stat().st_size == grown > 1_000_000  # the file was not cut back
    checkpointer.run_once()
    assert (turn.taken, checkpointer.resets) == (1, 1)  # a few frames: no reset
    for _ in range(200):  # past reset_bytes again
        conn.execute("INSERT INTO t VALUES (randomblob(8000))")
    checkpointer.run_once()
    assert (turn.taken, checkpointer.resets) == (2, 2)
    assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (501,)
    checkpointer.stop()


def _on_database_sync(
    monkeypatch: pytest.MonkeyPatch, path: str, before: Callable[[], None]
) -> None:
    """Call `before()` ahead of every `os.fdatasync` of the database file at `path` (not of its
    WAL); an exception from it is the sync's."""
    database = os.stat(path).st_ino
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        if os.fstat(fd).st_ino == database:
            before()
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)


def test_the_database_file_is_synced_before_the_reset_takes_the_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite syncs the database file only at the end of a checkpoint that copied every frame,
    which under steady writes is the reset's: every page the PASSIVE passes copied would be
    written to the disk inside the write turn. The checkpointer syncs the file first, outside
    the turn, so the reset's own sync has only its few pages left; a pass below reset_bytes
    neither syncs nor takes the turn."""
    path, conn = _store_without_checkpoints(tmp_path, rows=300)
    seen: list[str] = []
    _on_database_sync(monkeypatch, path, lambda: seen.append("database synced"))

    class Turn(_Turn):
        @contextlib.contextmanager
        def __call__(self):
            seen.append("turn taken")
            with self.lock:
                self.taken += 1
                yield

    turn = Turn()
    checkpointer = Checkpointer(path, turn=turn, reset_bytes=1_000_000)
    checkpointer.run_once()
    assert seen == ["database synced", "turn taken"] and checkpointer.resets == 1
    conn.execute("INSERT INTO t VALUES (randomblob(8000))")  # a few frames: below reset_bytes
    checkpointer.run_once()
    assert seen == ["database synced", "turn taken"] and turn.taken == 1
    checkpointer.stop()
    assert sqlite3.connect(path).execute("SELECT count(*) FROM t").fetchone() == (301,)


def test_a_failing_database_sync_is_logged_once_and_the_checkpointer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An I/O error from the database file's sync (a failing disk) skips that pass's reset with
    one warning, not one per pass, and never stops the thread: once the sync works again the
    WAL is reset."""
    path, _conn = _store_without_checkpoints(tmp_path, rows=300)
    failures = 0

    def fail_three_times() -> None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise OSError(5, "Input/output error")

    _on_database_sync(monkeypatch, path, fail_three_times)
    turn = _Turn()
    checkpointer = Checkpointer(path, turn=turn, reset_bytes=1_000_000, interval=0.01)
    with caplog.at_level("WARNING", logger="orchestrator.db"):
        checkpointer.start()
        assert wait_until(lambda: checkpointer.resets >= 1, timeout=10)
    checkpointer.stop()
    assert failures == 3 and turn.taken >= 1
    warnings = [r.getMessage() for r in caplog.records if "WAL checkpoint failed" in r.getMessage()]
    assert warnings == ["WAL checkpoint failed: [Errno 5] Input/output error"]


def test_a_reset_gives_the_turn_back_when_a_reader_pins_the_wal(tmp_path: Path) -> None:
    """A reader in a long read transaction keeps the WAL: the reset waits at most reset_wait,
    then gives the turn back (the writers go on) and the WAL is reset at a later pass."""
    path, conn = _store_without_checkpoints(tmp_path, rows=50)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    conn.execute("INSERT INTO t VALUES (randomblob(8000))")  # a frame the reader does not see
    turn = _Turn()
    checkpointer = Checkpointer(path, turn=turn, reset_bytes=1, reset_wait=0.05)
    busy, _, _ = checkpointer.run_once()
    assert busy == 1 and turn.taken == 1 and checkpointer.resets == 0
    assert turn.lock.acquire(timeout=0)  # given back
    turn.lock.release()
    reader.execute("COMMIT")
    assert checkpointer.run_once()[0] == 0 and checkpointer.resets == 1
    # The connection's own busy timeout is back to its long value for the next passes.
    assert checkpointer._connection().execute("PRAGMA busy_timeout").fetchone() == (5000,)
    checkpointer.stop()

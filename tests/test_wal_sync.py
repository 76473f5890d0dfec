"""The WAL synced after the write turn (`core.dbthreads.sync_after_turn`, what `serve` does on
SQLite; docs/events.md#durability-promise): a writer's answers wait for the fsync of the WAL,
which runs once its turn is over; a failed fsync answers 507 or 503, never a 200.

In process, on a real WAL file; the running server's syncs are checked in tests/test_metrics.py.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from core import dbthreads
from core.errors import ApiError


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A WAL store as serve's writer connection opens it (synchronous=FULL), seen by
    `core.dbthreads` as this thread's connection; fsyncs recorded as (event, inode)."""
    path = tmp_path / "store.sqlite3"
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=FULL")
    raw.execute("CREATE TABLE t (v INTEGER)")
    fake = SimpleNamespace(vendor="sqlite", connection=raw, settings_dict={"NAME": str(path)})
    monkeypatch.setattr(dbthreads, "connection", fake)
    monkeypatch.setattr(dbthreads, "_durable", threading.local())
    monkeypatch.setattr(dbthreads, "_sync_after_turn", True)
    log: list[tuple[str, int]] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        log.append(("fsync", os.fstat(fd).st_ino))
        real_fdatasync(fd)

    monkeypatch.setattr(dbthreads.os, "fdatasync", fdatasync)
    yield SimpleNamespace(raw=raw, path=path, log=log, fake=fake)
    raw.close()


def _answered(future: Future, log: list) -> Future:
    future.add_done_callback(lambda f: log.append(("answered", 0)))
    return future


def test_answers_wait_for_the_wal_fsync_made_after_the_turn(store):
    first, second = _answered(Future(), store.log), _answered(Future(), store.log)
    with dbthreads.write_turn():
        store.raw.execute("INSERT INTO t VALUES (1)")
        dbthreads.answer_when_durable(first, 41)
        dbthreads.answer_when_durable(second, 42)
        assert not first.done() and not second.done()  # committed, not yet synced
        assert store.log == []
    wal_inode = os.stat(f"{store.path}-wal").st_ino
    assert store.log == [("fsync", wal_inode), ("answered", 0), ("answered", 0)]
    assert (first.result(), second.result()) == (41, 42)
    # From its next commit on, the connection leaves the fsync to the writer thread.
    assert store.raw.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL

    store.log.clear()
    third = Future()
    with dbthreads.write_turn():
        store.raw.execute("INSERT INTO t VALUES (2)")
        dbthreads.answer_when_durable(third, "stored")
    assert third.result(timeout=0) == "stored"
    assert store.log == [("fsync", wal_inode)]


def test_a_turn_that_wrote_nothing_answers_without_an_fsync(store):
    with dbthreads.write_turn():
        store.raw.execute("INSERT INTO t VALUES (1)")
    store.log.clear()
    answer = Future()
    with dbthreads.write_turn():
        store.raw.execute("SELECT count(*) FROM t").fetchone()
        dbthreads.answer_when_durable(answer, "nothing new")
    assert answer.result(timeout=0) == "nothing new"
    assert store.log == []


def test_a_new_connection_is_synced_and_switched_too(store, tmp_path):
    with dbthreads.write_turn():
        store.raw.execute("INSERT INTO t VALUES (1)")
    replacement = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    replacement.execute("PRAGMA synchronous=FULL")  # as Django's init_command opens it
    store.fake.connection = replacement
    store.log.clear()
    with dbthreads.write_turn():
        pass  # nothing written on it yet: still synced once, the connection being new
    assert [kind for kind, _ in store.log] == ["fsync"]
    assert replacement.execute("PRAGMA synchronous").fetchone()[0] == 1
    replacement.close()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 507),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), 507),
        (OSError(errno.EIO, "Input/output error"), 503),
        (sqlite3.ProgrammingError("Cannot operate on a closed database."), 503),
    ],
)
def test_a_failed_fsync_answers_an_error_never_the_result(store, monkeypatch, error, status):
    def failing(fd: int) -> None:
        raise error

    monkeypatch.setattr(dbthreads.os, "fdatasync", failing)
    stored, refused = Future(), Future()
    not_found = ApiError(404, "release 'x' not found")
    with dbthreads.write_turn():
        store.raw.execute("INSERT INTO t VALUES (1)")
        dbthreads.answer_when_durable(stored, "would be a 200")
        dbthreads.answer_when_durable(refused, not_found)
    with pytest.raises(ApiError) as failed:
        stored.result(timeout=0)
    assert failed.value.status_code == status
    with pytest.raises(ApiError) as kept:
        refused.result(timeout=0)
    assert kept.value is not_found  # an answer that was an error stays its own


def test_without_sync_after_turn_answers_come_at_once(store, monkeypatch):
    monkeypatch.setattr(dbthreads, "_sync_after_turn", False)
    answer = Future()
    with dbthreads.write_turn():
        store.raw.execute("INSERT INTO t VALUES (1)")
        dbthreads.answer_when_durable(answer, "now")
        assert answer.result(timeout=0) == "now"  # SQLite's own COMMIT synced it
    assert store.log == []
    assert store.raw.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, untouched


def test_outside_a_turn_an_answer_comes_at_once(store):
    answer = Future()
    dbthreads.answer_when_durable(answer, "after the turn")
    assert answer.result(timeout=0) == "after the turn"


# --- against the real server -------------------------------------------------------------------


@pytest.mark.e2e
def test_every_answered_event_and_ack_survives_a_kill_9_of_the_serve(tmp_path):
    """`serve --workers 2` answers ingest and acks after the WAL's sync made after the write
    turn: everything answered 2xx before a SIGKILL of the whole serve is in the store when it is
    opened again; nothing answered is missing."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from tests.liveserver import ServeProcess, call, wait_until

    data = tmp_path / "data"
    answered_events: list[str] = []
    answered_acks: list[str] = []
    stop = threading.Event()

    def post_events(client: int, srv: ServeProcess) -> None:
        n = 0
        while not stop.is_set():
            ids = [f"c{client}-b{n}-{k}" for k in range(10)]
            batch = [
                {"event_id": i, "node_id": f"node-{client}", "event_type": "hb",
                 "timestamp": "2026-11-30T00:00:00Z"}
                for i in ids
            ]  # fmt: skip
            try:
                status, _, _ = call(srv, "POST", "/v1/events", {"events": batch}, timeout=5)
            except OSError:
                return  # the server is gone
            if status == 200:
                answered_events.extend(ids)
            n += 1

    def post_acks(client: int, srv: ServeProcess) -> None:
        n = 0
        while not stop.is_set():
            node = f"acker-{client}-{n}"
            try:
                status, _, _ = call(
                    srv, "POST", f"/v1/nodes/{node}/ack",
                    {"release_id": "r-kill", "status": "active"}, timeout=5,
                )  # fmt: skip
            except OSError:
                return
            if status in (200, 201):
                answered_acks.append(node)
            n += 1

    with ServeProcess(data, "--workers", "2") as srv:
        assert call(srv, "POST", "/v1/releases", {"release_id": "r-kill", "channel": "k"})[0] == 201
        with ThreadPoolExecutor(8) as pool:
            for client in range(4):
                pool.submit(post_events, client, srv)
                pool.submit(post_acks, client, srv)
            # Kill while the load runs, once enough of each was answered.
            wait_until(
                lambda: len(answered_events) >= 500 and len(answered_acks) >= 50,
                what="events and acks answered under load",
                step=0.05,
            )
            assert srv.proc is not None
            from tests.test_workers import children

            workers = children(srv.proc.pid)
            assert len(workers) == 2
            for pid in (srv.proc.pid, *workers):  # the supervisor and both workers at once
                os.kill(pid, signal.SIGKILL)
            srv.proc.wait(timeout=10)
            stop.set()
    assert len(answered_events) > 100 and len(answered_acks) > 10  # the load was real

    with sqlite3.connect(data / "orchestrator.sqlite3") as conn:
        stored_events = {row[0] for row in conn.execute("SELECT event_id FROM events_event")}
        stored_acks = {
            row[0]
            for row in conn.execute(
                "SELECT a.node_id FROM releases_nodeack a JOIN releases_release r "
                "ON r.id = a.release_id WHERE r.release_id = 'r-kill'"
            )
        }
    assert [e for e in answered_events if e not in stored_events] == []
    assert [a for a in answered_acks if a not in stored_acks] == []

"""Error answers of the events routes on the Django path (injected database errors, body limit),
and against the real server: a write lock held by another connection, a corrupt store at start."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
import requests
from django.db import OperationalError
from django.db.backends.utils import CursorWrapper

from core import dberrors
from events import services as events_services
from events.models import Event
from tests.liveserver import ServeProcess, run_serve_expect_exit

GOOD = {"event_id": "e", "event_type": "t", "node_id": "n", "timestamp": "2026-04-07T10:00:00Z"}


def post(api, body):
    return api.post("/v1/events", data=json.dumps(body), content_type="application/json")


def _raise_on_executemany(monkeypatch, message: str) -> None:
    """The database driver fails the insert with `message` (on SQLite and PostgreSQL alike:
    SQLite inserts with multi-row statements through `core.dbthreads.execute`, which skips
    Django's cursor wrapper there, or executemany; PostgreSQL with one INSERT ... SELECT FROM
    unnest through Django's cursor)."""
    execute = CursorWrapper.execute
    writers_execute = events_services.execute

    def executemany(self, query, param_list):
        raise OperationalError(message)

    def execute_insert(self, sql, params=None):
        if sql.lstrip().upper().startswith("INSERT"):
            raise OperationalError(message)
        return execute(self, sql, params)

    def writers_insert(cursor, sql, params):
        if sql.lstrip().upper().startswith("INSERT"):
            raise OperationalError(message)
        return writers_execute(cursor, sql, params)

    monkeypatch.setattr(CursorWrapper, "executemany", executemany)
    monkeypatch.setattr(CursorWrapper, "execute", execute_insert)
    monkeypatch.setattr(events_services, "execute", writers_insert)


@pytest.mark.django_db
def test_disk_full_during_ingest_is_507_and_nothing_is_stored(api, monkeypatch):
    _raise_on_executemany(monkeypatch, "database or disk is full")
    response = post(api, {"events": [GOOD]})
    assert response.status_code == 507
    assert response["Content-Type"] == "application/json"
    assert "full" in response.json()["error"]
    monkeypatch.undo()
    assert Event.objects.count() == 0


@pytest.mark.django_db
def test_locked_database_is_503_with_retry_after(api, monkeypatch):
    _raise_on_executemany(monkeypatch, "database is locked")
    response = post(api, {"events": [GOOD]})
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json()["error"]


@pytest.mark.django_db
def test_corruption_during_ingest_ends_the_process(api, monkeypatch):
    died: list[BaseException] = []

    def die(exc: BaseException) -> None:
        died.append(exc)
        raise SystemExit(70)

    monkeypatch.setattr(dberrors, "die_corrupt", die)
    _raise_on_executemany(monkeypatch, "database disk image is malformed")
    with pytest.raises(SystemExit):
        post(api, {"events": [GOOD]})
    assert "malformed" in str(died[0])


@pytest.mark.django_db
def test_body_over_the_limit_is_413_on_the_django_path(api, settings):
    settings.MAX_REQUEST_BODY_BYTES = 200
    response = post(api, {"events": [GOOD, {**GOOD, "event_id": "f", "pad": "x" * 300}]})
    assert response.status_code == 413
    assert response.json() == {
        "error": "request body is larger than the limit of 200 bytes",
        "limit": 200,
    }
    assert Event.objects.count() == 0


def _wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached before the deadline")


@pytest.mark.e2e
def test_write_lock_held_by_another_connection_gives_503_then_recovers(tmp_path):
    env = {"AUTONOMY_SQLITE_BUSY_TIMEOUT": "0.3"}
    with ServeProcess(tmp_path / "data", env=env) as srv, requests.Session() as http:
        url = srv.url("/v1/events")
        assert http.post(url, json={"events": [GOOD]}, timeout=10).status_code == 200
        blocker = sqlite3.connect(tmp_path / "data" / "orchestrator.sqlite3", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            busy = http.post(url, json={"events": [{**GOOD, "event_id": "f"}]}, timeout=10)
            assert busy.status_code == 503, busy.text
            assert busy.headers["Retry-After"] == "1"
            assert busy.headers["Content-Type"] == "application/json"
            assert "busy" in busy.json()["error"]
            assert time.monotonic() - started < 5  # the busy timeout, not forever
            # readers are not blocked by the writer (WAL)
            listed = http.get(url, timeout=10)
            assert listed.status_code == 200
            assert [e["event_id"] for e in listed.json()["events"]] == ["e"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        retry = http.post(url, json={"events": [{**GOOD, "event_id": "f"}]}, timeout=10)
        assert retry.status_code == 200
        assert retry.json() == {"received": 1, "inserted": 1, "deduped": 0}


@pytest.mark.e2e
def test_corrupt_store_at_start_is_one_line_and_a_non_zero_exit(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "orchestrator.sqlite3").write_bytes(b"this is not a database file " * 400)
    (data / "orchestrator.sqlite3").chmod(0o600)  # as serve makes it: no "tightened" warning
    result = run_serve_expect_exit(data)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "corrupt" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_corruption_found_while_serving_ends_the_process_with_one_line(tmp_path):
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        body = {"events": [{**GOOD, "event_id": f"c-{i}", "pad": "x" * 200} for i in range(300)]}
        assert requests.post(srv.url("/v1/events"), json=body, timeout=10).status_code == 200
    db = data / "orchestrator.sqlite3"
    conn = sqlite3.connect(db)
    try:
        # Every page into the main file, so the damage below is what the server reads (a page
        # still in the WAL would hide it).
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        roots = [
            row[0]
            for row in conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'events_event'"
            )
        ]
    finally:
        conn.close()
    srv = ServeProcess(data).start()
    try:
        with open(db, "r+b") as fh:  # damage the events table and its indexes under the server
            for root in roots:
                fh.seek((root - 1) * page_size)
                fh.write(b"\xa5" * page_size)
        with pytest.raises(requests.ConnectionError):
            requests.get(srv.url("/v1/events"), params={"node_id": "n"}, timeout=10)
        assert srv.proc is not None
        assert srv.proc.wait(timeout=10) == 70
    finally:
        srv.stop()
    log_lines = [line for line in srv.logs().splitlines() if "store is corrupt" in line]
    assert len(log_lines) == 1, srv.logs()
    assert "Traceback" not in srv.logs()

"""`autonomy-orchestrator migrate`: SQLite store → PostgreSQL, through the real CLI.

Each test gets a fresh PostgreSQL database (tests/pg.py) and a SQLite store made by the real
`manage.py migrate` (serve's settings), filled with rows in every table the copy must carry.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from django.core.management import CommandError, call_command

from tests import pg
from tests.liveserver import BIN, child_env, cli

pytestmark = pytest.mark.postgres

BATCH = "7"  # small batches: several per table, so batch edges are exercised


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pg.migrated_store(tmp_path_factory.mktemp("template") / "data")


@pytest.fixture
def store(template_store: Path, tmp_path: Path) -> Path:
    """A data dir with a filled store: 25 rows in every table, plus 300 events."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(template_store, data / template_store.name)
    pg.fill_store(data / template_store.name, rows=25, events=300)
    return data


@pytest.fixture
def target() -> Iterator[str]:
    with pg.temp_database() as url:
        yield url


def migrate(*args: str, env: dict[str, str] | None = None, timeout: float = 180):
    base = {"AUTONOMY_POSTGRES_URL": ""}
    return cli("migrate", *args, env={**base, **(env or {})}, timeout=timeout)


def assert_same_data(db: Path, url: str) -> None:
    from releases.models import FleetNode, FleetNodeAck

    derived = (FleetNode, FleetNodeAck)  # the fleet view: merged and rebuilt, not copied
    for model in pg.copied_models():
        if model in derived:
            continue
        source = pg.rows_of(model, sqlite=db)
        copied = pg.rows_of(model, url=url)
        assert len(copied) == len(source), model._meta.db_table
        assert copied == source, f"{model._meta.db_table} differs after the copy"
    # Every node of the source's fleet view is in the target's, with its last_seen.
    source_nodes = {row[0]: row[1] for row in pg.rows_of(FleetNode, sqlite=db)}
    target_nodes = {row[0]: row[1] for row in pg.rows_of(FleetNode, url=url)}
    assert source_nodes.items() <= target_nodes.items()
    # The target's newest-ack table is rebuilt from its acks: one row per (node, channel) that
    # has an ack, pointing at that node's newest ack there.
    with psycopg.connect(url) as conn:
        expected = set(
            conn.execute(
                "SELECT DISTINCT ON (a.node_id, r.channel) a.node_id, r.channel, a.id "
                "FROM releases_nodeack a JOIN releases_release r ON r.id = a.release_id "
                "ORDER BY a.node_id, r.channel, a.updated_at DESC, a.id DESC"
            ).fetchall()
        )
        rebuilt = set(
            conn.execute("SELECT node_id, channel, ack_pk FROM releases_fleetnodeack").fetchall()
        )
    assert rebuilt == expected


def test_full_copy_carries_every_table_faithfully(store: Path, target: str):
    db = store / "orchestrator.sqlite3"
    before = pg.file_digest(db)

    result = migrate("--sqlite-dir", str(store), "--postgres-url", target, "--batch-size", BATCH)
    assert result.returncode == 0, result.stderr
    # the source store is byte-for-byte untouched, and nothing was created next to it
    assert pg.file_digest(db) == before
    assert sorted(p.name for p in store.iterdir()) == ["orchestrator.sqlite3"]

    for model in pg.copied_models():  # every table populated, every row equal
        assert pg.count(target, model._meta.db_table) == 25 + (
            300 if model._meta.db_table == "events_event" else 0
        )
    assert_same_data(db, target)
    with psycopg.connect(target) as conn:
        # insertion order of events is kept: ids and event_ids in the same order
        ids = conn.execute("SELECT event_id FROM events_event WHERE id > 25 ORDER BY id").fetchall()
        assert [r[0] for r in ids] == [f"evt-{k:08d}" for k in range(25, 325)]
        # the rollout spec bytes (every byte value) arrive unchanged
        spec = pg.scalar(conn, "SELECT spec FROM rollouts_rolloutplan WHERE id = 3")
        assert bytes(spec) == bytes(range(256)) + (2).to_bytes(4, "big") + b"\x00\xff"
        # sequences were reset: a new row gets the next id instead of colliding
        new_id = pg.scalar(
            conn,
            "INSERT INTO events_event (event_id, event_type, node_id, timestamp, payload, "
            "received_at) VALUES ('new', 't', 'n', 'ts', '{}', now()) RETURNING id",
        )
        assert new_id == 326
        cutover = conn.execute(
            "SELECT completed_at, source, rows_copied, table_counts "
            "FROM orchestrator_site_hacutoverat"
        ).fetchall()
    assert len(cutover) == 1
    completed_at, source, rows_copied, table_counts = cutover[0]
    assert source == str(db.resolve())
    assert table_counts["events_event"] == 325 and table_counts["releases_release"] == 25
    assert rows_copied == sum(table_counts.values())
    assert abs(time.time() - completed_at.timestamp()) < 120

    # the output: plain progress lines (not a terminal), validation, summary
    out = result.stdout
    assert "copying events_event: 325 rows" in out
    assert out.index("releases_release") < out.index("events_event") < out.index("rollouts_")
    assert "validation ok" in out and "done: " in out and "cutover recorded" in out


def test_events_that_arrived_after_the_targets_days_get_their_own(store: Path, target: str):
    """The target's events table is partitioned by day, ahead of its migration by a few days; an
    event a server with a clock ahead stored later than that still has a day to go to."""
    ahead = (datetime.now(UTC) + timedelta(days=40)).replace(tzinfo=None)
    with sqlite3.connect(store / "orchestrator.sqlite3") as db:
        db.execute(
            "INSERT INTO events_event (event_id, event_type, node_id, timestamp, payload, "
            "received_at) VALUES ('ahead', 't', 'n', 'ts', '{}', ?)",
            [ahead.isoformat(sep=" ")],
        )
    result = migrate("--sqlite-dir", str(store), "--postgres-url", target, "--batch-size", BATCH)
    assert result.returncode == 0, result.stderr
    assert pg.count(target, "events_event") == 326
    assert f"events_event_p{ahead:%Y%m%d}" in pg.table_names(target)


def test_rerun_inserts_nothing_twice(store: Path, target: str):
    args = ("--sqlite-dir", str(store), "--postgres-url", target, "--batch-size", BATCH)
    first = migrate(*args)
    assert first.returncode == 0, first.stderr
    # the second time with the URL from AUTONOMY_POSTGRES_URL, as an operator's env would have it
    second = migrate(*args[:2], "--batch-size", BATCH, env={"AUTONOMY_POSTGRES_URL": target})
    assert second.returncode == 0, second.stderr
    assert "(0 inserted, 325 already present)" in second.stdout
    assert pg.count(target, "events_event") == 325
    assert_same_data(store / "orchestrator.sqlite3", target)
    assert pg.count(target, "orchestrator_site_hacutoverat") == 2


def test_the_same_event_id_from_two_nodes_is_copied_as_two_events(store: Path, target: str):
    import sqlite3

    db = store / "orchestrator.sqlite3"
    with sqlite3.connect(db) as conn:
        for node in ("node-a", "node-b"):
            conn.execute(
                "INSERT INTO events_event (event_id, event_type, node_id, timestamp, payload, "
                "received_at) VALUES ('node-b-000042', 'app.crash', ?, "
                "'2026-11-27T10:00:00Z', '{}', '2026-11-27 08:00:00')",
                (node,),
            )
    conn.close()
    args = ("--sqlite-dir", str(store), "--postgres-url", target, "--batch-size", BATCH)
    first = migrate(*args)
    assert first.returncode == 0, first.stderr
    again = migrate(*args)
    assert again.returncode == 0, again.stderr
    assert "(0 inserted, 327 already present)" in again.stdout
    with psycopg.connect(target) as pgconn:
        nodes = pgconn.execute(
            "SELECT node_id FROM events_event WHERE event_id = 'node-b-000042' ORDER BY id"
        ).fetchall()
    assert nodes == [("node-a",), ("node-b",)]
    assert_same_data(db, target)


def start_and_interrupt(args: list[str], target: str, sig: int) -> subprocess.Popen[str]:
    """Start `autonomy-orchestrator ARGS`, send `sig` once 1000 events are in the target."""
    proc = subprocess.Popen(
        [str(BIN), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**child_env(), "AUTONOMY_POSTGRES_URL": ""},
    )
    try:
        deadline = time.monotonic() + 60
        copied = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                copied = pg.count(target, "events_event")
            except psycopg.Error:
                copied = 0  # schema not there yet
            if copied >= 1000:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the copy finished before it could be interrupted"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


@pytest.fixture
def big_store(template_store: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(template_store, data / "orchestrator.sqlite3")
    pg.fill_store(data / "orchestrator.sqlite3", rows=5, events=60_000)
    return data


def test_interrupted_run_then_rerun_completes(big_store: Path, target: str):
    args = [
        "migrate",
        "--sqlite-dir",
        str(big_store),
        "--postgres-url",
        target,
        "--batch-size",
        "50",
    ]
    start_and_interrupt(args, target, signal.SIGKILL)
    partial = pg.count(target, "events_event")
    assert 0 < partial < 60_005
    assert pg.count(target, "orchestrator_site_hacutoverat") == 0

    result = migrate(*args[1:])
    assert result.returncode == 0, result.stderr
    assert pg.count(target, "events_event") == 60_005
    assert f"{partial} already present" in result.stdout
    assert pg.count(target, "orchestrator_site_hacutoverat") == 1
    # the big table's indexes, dropped for the fast first copy, were rebuilt by the re-run
    assert "schema: rebuilt " in result.stdout
    assert_event_indexes(target)


def test_ctrl_c_stops_with_one_line_and_a_rerun_finishes(big_store: Path, target: str):
    args = [
        "migrate",
        "--sqlite-dir",
        str(big_store),
        "--postgres-url",
        target,
        "--batch-size",
        "50",
    ]
    proc = start_and_interrupt(args, target, signal.SIGINT)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 1
    assert "interrupted: the batches copied so far are kept; run the same command again" in stderr
    assert "Traceback" not in stderr
    assert 0 < pg.count(target, "events_event") < 60_005
    result = migrate(*args[1:])
    assert result.returncode == 0, result.stderr
    assert pg.count(target, "events_event") == 60_005
    assert_event_indexes(target)


def assert_event_indexes(url: str) -> None:
    from events.models import Event

    names = pg.index_names(url, "events_event")
    assert {ix.name for ix in Event._meta.indexes} <= names
    assert not pg.invalid_index_names(url, "events_event")  # built on every partition
    # the (node_id, event_id) idempotency key: one unique index per day partition
    assert pg.event_partitions_without_key(url) == []
    assert "autonomy_migrate_deferred_index" not in pg.table_names(url)


def test_big_table_gets_its_indexes_back(template_store: Path, tmp_path: Path, target: str):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(template_store, data / "orchestrator.sqlite3")
    pg.fill_store(data / "orchestrator.sqlite3", rows=3, events=50_000)
    result = migrate("--sqlite-dir", str(data), "--postgres-url", target, "--batch-size", "5000")
    assert result.returncode == 0, result.stderr
    assert pg.count(target, "events_event") == 50_003
    assert_event_indexes(target)


def test_dry_run_writes_nothing(store: Path, target: str):
    db = store / "orchestrator.sqlite3"
    before = pg.file_digest(db)
    result = migrate("--sqlite-dir", str(store), "--postgres-url", target, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert pg.table_names(target) == []  # not even the schema
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    assert lines["events_event"] == ["325", "-"]
    assert lines["releases_nodeack"] == ["25", "-"]
    assert "nothing was written" in result.stdout
    assert pg.file_digest(db) == before


def test_validate_only_detects_a_deleted_target_row(store: Path, target: str):
    args = ("--sqlite-dir", str(store), "--postgres-url", target)
    assert migrate(*args).returncode == 0
    ok = migrate(*args, "--validate-only")
    assert ok.returncode == 0, ok.stderr
    assert "validation ok" in ok.stdout and "last cutover: 20" in ok.stdout

    with psycopg.connect(target) as conn:
        conn.execute("DELETE FROM releases_nodeack WHERE id = 4")
    bad = migrate(*args, "--validate-only")
    assert bad.returncode != 0
    row = next(line for line in bad.stdout.splitlines() if line.startswith("releases_nodeack"))
    assert row.split() == ["releases_nodeack", "25", "24", "MISMATCH"]
    assert "row counts differ in 1 table(s): releases_nodeack (source 25, target 24)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_validate_only_on_an_empty_target_fails(store: Path, target: str):
    result = migrate("--sqlite-dir", str(store), "--postgres-url", target, "--validate-only")
    assert result.returncode != 0
    assert "events_event (source 325, target missing)" in result.stderr
    assert pg.table_names(target) == []


def test_target_with_another_control_planes_data_is_refused(
    store: Path, template_store: Path, tmp_path: Path, target: str
):
    assert migrate("--sqlite-dir", str(store), "--postgres-url", target).returncode == 0

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(template_store, other / "orchestrator.sqlite3")
    pg.fill_store(other / "orchestrator.sqlite3", rows=25, events=400)
    import sqlite3

    with sqlite3.connect(other / "orchestrator.sqlite3") as conn:
        conn.execute("UPDATE releases_release SET channel = 'beta' WHERE id = 2")
    result = migrate("--sqlite-dir", str(other), "--postgres-url", target)
    assert result.returncode != 0
    assert "table releases_release" in result.stderr and "id=2" in result.stderr
    assert "another control plane" in result.stderr
    assert "Traceback" not in result.stderr
    # nothing merged: the 100 extra events of the other store were not copied
    assert pg.count(target, "events_event") == 325
    assert pg.count(target, "orchestrator_site_hacutoverat") == 1


def test_missing_postgres_url_is_a_clear_error(store: Path):
    result = migrate("--sqlite-dir", str(store))
    assert result.returncode != 0
    assert "no PostgreSQL target: pass --postgres-url" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_store_is_a_clear_error(tmp_path: Path):
    result = migrate(
        "--sqlite-dir",
        str(tmp_path / "nowhere"),
        "--postgres-url",
        "postgresql://postgres@127.0.0.1:5432/unused",
    )
    assert result.returncode != 0
    assert f"no SQLite store at {tmp_path / 'nowhere' / 'orchestrator.sqlite3'}" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_unreachable_postgres_is_a_clear_error(store: Path):
    from tests.liveserver import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = migrate("--sqlite-dir", str(store), "--postgres-url", url)
    assert result.returncode != 0
    assert "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_size_must_be_positive():
    with pytest.raises(CommandError, match="must be a positive integer"):
        call_command(
            "migrate_to_pg",
            "--batch-size",
            "0",
            "--postgres-url",
            "postgresql://x/y",
            stdout=StringIO(),
        )
    result = migrate("--batch-size", "-5", "--postgres-url", "postgresql://x/y")
    assert result.returncode != 0
    assert (
        "autonomy-orchestrator migrate: error: argument --batch-size: must be a positive "
        "integer, not '-5'" in result.stderr
    )


def test_progress_on_a_terminal_is_one_updating_line(store: Path, target: str):
    import pty

    primary, secondary = pty.openpty()
    env = {**child_env(), "AUTONOMY_POSTGRES_URL": ""}
    proc = subprocess.Popen(
        [
            str(BIN),
            "migrate",
            "--sqlite-dir",
            str(store),
            "--postgres-url",
            target,
            "--batch-size",
            BATCH,
        ],
        stdout=secondary,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(primary)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert "\r\x1b[2Kevents_event: 325/325 rows" in out  # rewritten in place
    assert "copying events_event" not in out  # no log lines on a terminal
    assert "done: " in out


def test_store_with_an_older_schema_is_refused(template_store: Path, tmp_path: Path, target: str):
    import sqlite3

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(template_store, data / "orchestrator.sqlite3")
    with sqlite3.connect(data / "orchestrator.sqlite3") as conn:
        conn.execute("DELETE FROM django_migrations WHERE app = 'rollouts'")
    result = migrate("--sqlite-dir", str(data), "--postgres-url", target)
    assert result.returncode != 0
    assert "has an older schema" in result.stderr and "start `serve` on it once" in result.stderr
    assert pg.table_names(target) == []


@pytest.mark.parametrize("live", [False, True], ids=["closed-store", "store-with-wal"])
def test_the_source_alias_cannot_write(store: Path, live: bool):
    """Even a bug in the copy cannot change the source: its alias is a read-only SQLite open."""
    import sqlite3
    import sys

    from events.models import Event

    db = store / "orchestrator.sqlite3"
    holder = None
    if live:  # another connection holds the WAL open, as a running serve does
        holder = sqlite3.connect(db)
        holder.execute("SELECT COUNT(*) FROM events_event").fetchone()
        holder.execute("PRAGMA journal_mode").fetchone()
        assert (store / "orchestrator.sqlite3-wal").exists()
    before = pg.file_digest(db)
    code = (
        "from pathlib import Path\n"
        "from django.db import connections\n"
        "from orchestrator_site import pgmigrate\n"
        f"pgmigrate.open_source(Path({str(db)!r}))\n"
        "cursor = connections[pgmigrate.SOURCE].cursor()\n"
        "cursor.execute('DELETE FROM events_event')\n"
    )
    result = subprocess.run(
        [sys.executable, str(pg.REPO / "manage.py"), "shell", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**child_env(), "AUTONOMY_DATA_DIR": str(store)},
    )
    if holder is not None:
        holder.close()
    assert result.returncode != 0
    assert "attempt to write a readonly database" in result.stderr
    assert pg.file_digest(db) == before
    assert len(pg.rows_of(Event, sqlite=db)) == 325


def test_ctrl_c_inside_a_driver_call_is_still_reported_as_an_interrupt(monkeypatch, tmp_path):
    """Ctrl-C can land inside psycopg (in a COPY): the rollback that follows fails on the
    half-done call ("can't change 'autocommit' now"), but what happened is the interrupt, and
    the user must read the interrupt's line (a re-run finishes), not a database error."""
    from django.db import DatabaseError

    from orchestrator_site import pgmigrate

    def interrupted_in_copy(_source):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise DatabaseError(
                "can't change 'autocommit' now: connection in transaction"
            ) from None

    monkeypatch.setattr(pgmigrate, "open_source", interrupted_in_copy)
    args = ["--sqlite-dir", str(tmp_path), "--postgres-url", "postgresql://x/y"]
    with pytest.raises(CommandError, match=r"^interrupted: the batches copied so far are kept"):
        call_command("migrate_to_pg", *args, stdout=StringIO())

    def plain_failure(_source):
        raise DatabaseError("disk full")

    monkeypatch.setattr(pgmigrate, "open_source", plain_failure)
    with pytest.raises(CommandError, match=r"^database error: disk full$"):
        call_command("migrate_to_pg", *args, stdout=StringIO())

"""Events retention (events/retention.py): the window is measured by arrival time, its
boundaries, small batches, the event_threshold windows of rollouts that are not over, and the
events writer running the batches. Database tests: SQLite and, in .ci/run's second pass,
PostgreSQL. The end-to-end test (a real store file that stops growing) is at the bottom."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta

import pytest
import requests
from django.db import connection
from django.utils import timezone

from events.models import Event
from events.retention import events_prune
from events.writer import EventWriter
from rollouts.models import Phase, RolloutPlan
from tests.factories import EventFactory, ReleaseFactory, RolloutPlanFactory
from tests.liveserver import ServeProcess

HOUR = 3600.0
# On PostgreSQL retention drops whole days and readers hide what is out of the window: the same
# rules are tested there in tests/test_events_partitions.py.
row_by_row = pytest.mark.skipif(
    connection.vendor == "postgresql",
    reason="SQLite deletes row by row; PostgreSQL drops days (tests/test_events_partitions.py)",
)


def prune(**kwargs):
    """A prune round run right here (the test's transaction), not on the writer thread."""
    return events_prune(run=lambda task: task(), pause=0, **kwargs)


def remaining() -> set[str]:
    return set(Event.objects.values_list("event_id", flat=True))


@row_by_row
@pytest.mark.django_db
def test_an_event_received_just_inside_the_window_stays_and_just_outside_goes():
    now = timezone.now()
    cutoff = now - timedelta(seconds=HOUR)
    EventFactory(event_id="inside", received_at=cutoff + timedelta(seconds=1))
    EventFactory(event_id="at-the-edge", received_at=cutoff)
    EventFactory(event_id="outside", received_at=cutoff - timedelta(seconds=1))
    EventFactory(event_id="long-gone", received_at=now - timedelta(days=40))
    result = prune(retention_seconds=HOUR, now=now)
    assert result.deleted == 2
    assert remaining() == {"inside", "at-the-edge"}


@row_by_row
@pytest.mark.django_db
def test_the_window_is_the_arrival_time_never_the_events_own_timestamp():
    now = timezone.now()
    EventFactory(event_id="old-clock", timestamp="1999-01-01T00:00:00Z", received_at=now)
    EventFactory(
        event_id="future-clock",
        timestamp="2099-01-01T00:00:00Z",
        received_at=now - timedelta(days=2),
    )
    prune(retention_seconds=86400, now=now)
    assert remaining() == {"old-clock"}


@pytest.mark.django_db
def test_zero_keeps_everything():
    EventFactory(received_at=timezone.now() - timedelta(days=3650))
    assert prune(retention_seconds=0).deleted == 0
    assert Event.objects.count() == 1


@row_by_row
@pytest.mark.django_db
def test_pruning_goes_in_small_batches_and_keeps_the_fleet_view(api):
    old = timezone.now() - timedelta(days=2)
    EventFactory.create_batch(25, received_at=old, node_id="node-old")
    EventFactory(event_id="new", node_id="node-new")
    one = prune(retention_seconds=HOUR, rows=10, max_batches=1)
    assert one.deleted == 10 and Event.objects.count() == 16
    rest = prune(retention_seconds=HOUR, rows=10)
    assert rest.deleted == 15 and remaining() == {"new"}
    # the node whose events are gone is still in the fleet, last seen when it last reported
    nodes = {n["node_id"]: n for n in api.get("/v1/fleet").json()["nodes"]}
    assert nodes["node-old"]["node_status"] == "stale"
    assert nodes["node-old"]["last_seen"] is not None


@pytest.fixture
def signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


def _plan(gates, plan_id):
    return RolloutPlanFactory(
        plan_id=plan_id,
        release=ReleaseFactory(),
        stages=[
            {"stage_id": "s1", "percent": 10, "gates": gates},
            {"stage_id": "s2", "percent": 100},
        ],
    )


@row_by_row
@pytest.mark.django_db
def test_an_event_threshold_window_of_a_running_rollout_is_kept(signing_key_in_tmp):
    EventFactory(event_id="before-the-stage", received_at=timezone.now() - timedelta(hours=2))
    _plan([{"kind": "time_soak", "seconds": 60}], "p-soak")  # reads no events: holds nothing
    plan = _plan([{"kind": "event_threshold", "event_type": "app.crash", "max_ratio": 0.5}], "p-ev")
    EventFactory(event_id="in-the-window", event_type="app.crash", received_at=timezone.now())
    tomorrow = timezone.now() + timedelta(days=1)

    held = prune(retention_seconds=HOUR, now=tomorrow)
    assert held.held_back_by_gate
    assert remaining() == {"in-the-window"}  # older than the retention, but the gate reads it

    # a halted plan may be resumed: its window is still kept
    RolloutPlan.objects.filter(pk=plan.pk).update(phase=Phase.HALTED, version=plan.version + 1)
    assert prune(retention_seconds=HOUR, now=tomorrow).deleted == 0

    # once the plan is over, nothing holds the event any more
    RolloutPlan.objects.filter(pk=plan.pk).update(phase=Phase.CANCELLED, version=plan.version + 2)
    done = prune(retention_seconds=HOUR, now=tomorrow)
    assert not done.held_back_by_gate and remaining() == set()


def test_the_writer_runs_tasks_between_batches_and_returns_their_result():
    writer = EventWriter()
    assert writer.run(lambda: 6 * 7).result(timeout=10) == 42

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        writer.run(fails).result(timeout=10)
    order: list[int] = []
    futures = [writer.run(lambda i=i: order.append(i)) for i in range(5)]
    for future in futures:
        future.result(timeout=10)
    assert order == [0, 1, 2, 3, 4]


# --- end to end ----------------------------------------------------------------------------


def _store_bytes(data_dir) -> int:
    return sum(
        path.stat().st_size
        for path in data_dir.glob("orchestrator.sqlite3*")
        if not path.name.endswith("-shm")
    )


@row_by_row
@pytest.mark.django_db
def test_delete_batches_are_sized_to_hold_the_writer_briefly(monkeypatch):
    """In a large store a row costs more to delete: the batches shrink until each holds the
    writer about BATCH_SECONDS (ingest waits for at most about one), and grow again where rows
    are cheap; every expired event still goes."""
    from events import retention

    now = [0.0]
    expired = [60_000]
    sizes: list[int] = []
    cost = [0.0002]  # seconds a row, on the fake clock: 1,000 rows take 200 ms

    def delete_batch(*, cutoff, rows):
        sizes.append(rows)
        gone = min(rows, expired[0])
        expired[0] -= gone
        now[0] += cost[0] * gone
        return gone

    def sleep(seconds):
        now[0] += seconds

    monkeypatch.setattr(retention, "delete_batch", delete_batch)
    monkeypatch.setattr(retention, "vacuum_round", lambda **kwargs: 0)
    result = retention.events_prune(
        retention_seconds=HOUR, run=lambda task: task(), clock=lambda: now[0], sleep=sleep
    )
    assert result.deleted == 60_000 and expired[0] == 0
    assert sizes[0] == retention.BATCH_ROWS
    assert max(sizes[4:]) * cost[0] <= 2 * retention.BATCH_SECONDS  # settled near the target

    expired[0], cost[0] = 60_000, 0.000001  # cheap rows: batches grow to the largest
    sizes.clear()
    retention.events_prune(
        retention_seconds=HOUR, run=lambda task: task(), clock=lambda: now[0], sleep=sleep
    )
    assert max(sizes) == retention.BATCH_MAX_ROWS


def test_vacuum_steps_stay_short_and_take_a_small_share_of_the_writer(monkeypatch):
    """After a large prune every page given back costs ~5 ms (SQLite moves a live page from the
    end of the file into a free one): a fixed 512-page step held ingest for 3 s. The steps
    shrink until each holds the writer about VACUUM_STEP_SECONDS, the pauses keep the vacuum
    at VACUUM_SHARE of the time, and a round stops after VACUUM_ROUND_SECONDS, leaving the
    rest for the next round."""
    from events import retention

    now = [0.0]
    free = [200_000]
    steps: list[float] = []
    slept: list[float] = []

    def vacuum_step(pages):
        before = free[0]
        took = 0.005 * min(pages, before)  # 5 ms a page, on the fake clock
        now[0] += took
        steps.append(took)
        free[0] -= min(pages, before)
        return before

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(retention, "vacuum_step", vacuum_step)
    returned = retention.vacuum_round(run=lambda task: task(), clock=lambda: now[0], sleep=sleep)
    assert returned == 200_000 - free[0] > 0
    assert free[0] > 0  # the rest is for the next rounds
    assert max(steps) <= 0.005 * retention.VACUUM_FIRST_PAGES  # never longer than the first
    settled = steps[5:]
    assert max(settled) <= 2 * retention.VACUUM_STEP_SECONDS
    assert sum(steps) <= retention.VACUUM_SHARE * 1.05 * now[0]
    assert now[0] <= retention.VACUUM_ROUND_SECONDS + max(steps) + max(slept)

    # a cheap store (pages at the end of the file already free): steps grow to the largest
    now[0], free[0] = 0.0, 100_000
    steps.clear()
    monkeypatch.setattr(
        retention,
        "vacuum_step",
        lambda pages: (free.__setitem__(0, free[0] - min(pages, free[0])), free[0] + pages)[1],
    )
    retention.vacuum_round(run=lambda task: task(), clock=lambda: now[0], sleep=sleep)
    assert free[0] < 100_000 - retention.VACUUM_MAX_PAGES


def _stored_events(store) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as db:
        return int(db.execute("SELECT COUNT(*) FROM events_event").fetchone()[0])


@pytest.mark.e2e
def test_a_store_with_a_short_retention_stops_growing(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    store = data / "orchestrator.sqlite3"
    # A store made before incremental auto-vacuum: serve converts it once (one VACUUM).
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE made_before (x)")
    assert sqlite3.connect(store).execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    pad = "x" * 300
    sizes = []
    with ServeProcess(data, "--events-retention", "1s") as srv, requests.Session() as http:
        for cycle in range(4):
            for batch in range(20):
                events = [
                    {
                        "event_id": f"c{cycle}-b{batch}-{i}",
                        "event_type": "app.heartbeat",
                        "node_id": f"node-{i % 50}",
                        "timestamp": "2026-04-07T10:00:00Z",
                        "pad": pad,
                    }
                    for i in range(100)
                ]
                answer = http.post(srv.url("/v1/events"), json={"events": events}, timeout=10)
                assert answer.json()["inserted"] == 100
            deadline = time.monotonic() + 60
            # gone from the store (readers stop showing them a little earlier, at 1 s)
            while _stored_events(store):
                assert time.monotonic() < deadline, srv.logs()
                time.sleep(0.3)
            sizes.append(_store_bytes(data))
        fleet = http.get(srv.url("/v1/fleet?summary=true"), timeout=10).json()
        assert fleet["total"] == 50  # the nodes outlive their events
    assert "incremental auto-vacuum" in srv.logs()
    assert sqlite3.connect(store).execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    # 8,000 events of ~0.5 KB went in (~1.2 MB stored a cycle); what the store occupies did not
    # grow with them once it reached its working size: the WAL file keeps the largest size its
    # log reached (up to core.walcheckpoint.JOURNAL_SIZE_LIMIT_BYTES; it is reused in place, not
    # cut back at each start-over), which it may reach in the second cycle.
    assert max(sizes[2:]) <= sizes[1] * 1.1, sizes


@pytest.mark.e2e
def test_on_postgresql_events_out_of_the_window_are_not_shown_and_days_are_made_ahead(tmp_path):
    from events.partitions import DAYS_AHEAD, day_name
    from tests.pg import event_partitions_without_key, require_postgres, table_names, temp_database

    require_postgres()
    with temp_database() as url:
        args = ("--postgres-url", url, "--events-retention", "1s")
        with ServeProcess(tmp_path / "data", *args) as srv, requests.Session() as http:
            events = [
                {
                    "event_id": f"pg-{i}",
                    "event_type": "app.heartbeat",
                    "node_id": f"node-{i % 3}",
                    "timestamp": "2026-04-07T10:00:00Z",
                }
                for i in range(30)
            ]
            answer = http.post(srv.url("/v1/events"), json={"events": events}, timeout=10)
            assert answer.json()["inserted"] == 30
            deadline = time.monotonic() + 30
            while http.get(srv.url("/v1/events?limit=1"), timeout=10).json()["count"]:
                assert time.monotonic() < deadline, srv.logs()
                time.sleep(0.3)
            # the nodes stay in the fleet view, seen when their events arrived
            fleet = http.get(srv.url("/v1/fleet"), timeout=10).json()
            assert [n["node_id"] for n in fleet["nodes"]] == ["node-0", "node-1", "node-2"]
            assert all(n["last_seen"] for n in fleet["nodes"])
        # the days ahead have their partitions, each with the idempotency key
        last = timezone.now().date() + timedelta(days=DAYS_AHEAD)
        assert day_name(last) in table_names(url)
        assert event_partitions_without_key(url) == []


@pytest.mark.e2e
def test_a_new_store_has_incremental_auto_vacuum_from_its_first_start(tmp_path):
    # Found: the connection writes the file's header (WAL) before `PRAGMA auto_vacuum` could
    # take hold, so every new store was "converted" (with a warning) on its first start.
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        pass
    store = data / "orchestrator.sqlite3"
    assert sqlite3.connect(store).execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert "converted the SQLite store" not in srv.logs()

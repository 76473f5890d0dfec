"""Events by day of arrival: on PostgreSQL the events table is partitioned by day and retention
drops whole days (events/partitions.py); on both stores no event out of the window is shown.

The PostgreSQL tests run in the PostgreSQL run of the suite (AUTONOMY_TEST_DATABASE=postgres);
the SQLite run skips them with that reason and runs the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from events import partitions
from events.models import Event
from events.retention import configure_visibility, events_prune
from events.services import events_store
from events.validation import validate_events
from rollouts.fleet import node_detail
from tests.factories import EventFactory, ReleaseFactory, RolloutPlanFactory

HOUR = 3600.0
DAY = 86400.0
ON_POSTGRES = os.environ.get("AUTONOMY_TEST_DATABASE") == "postgres"
postgres_only = pytest.mark.skipif(
    not ON_POSTGRES, reason="PostgreSQL layout: only in the PostgreSQL run (AUTONOMY_TEST_DATABASE)"
)


@pytest.fixture
def window() -> Iterator[None]:
    """serve's `--events-retention 1h` for the readers of this process."""
    configure_visibility(HOUR)
    yield
    configure_visibility(0)


def store(*keys: tuple[str, str], at: datetime, monkeypatch: pytest.MonkeyPatch) -> int:
    """Ingest events (node_id, event_id) as if they arrived at `at`; how many were stored."""
    monkeypatch.setattr("events.services.timezone.now", lambda: at)
    rows = validate_events(
        [
            {
                "event_id": e,
                "event_type": "app.heartbeat",
                "node_id": n,
                "timestamp": "2026-11-30T10:00:00Z",
            }
            for n, e in keys
        ]
    )
    stored = events_store(batches=[rows])[0].inserted
    monkeypatch.undo()
    return stored


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def names() -> list[str]:
    with connection.cursor() as cursor:
        return [p.name for p in partitions.partitions(cursor)]


# --- both stores: what readers see ---------------------------------------------------------


@pytest.mark.django_db
def test_no_event_out_of_the_window_is_shown_even_before_it_is_gone(api, window):
    now = timezone.now()
    cutoff = now - timedelta(seconds=HOUR)
    EventFactory(event_id="inside", node_id="n1", received_at=cutoff + timedelta(seconds=2))
    EventFactory(event_id="outside", node_id="n1", received_at=cutoff - timedelta(seconds=2))
    EventFactory(event_id="long-gone", node_id="n1", received_at=now - timedelta(days=40))
    # the window is the arrival time, never the event's own timestamp
    EventFactory(event_id="old-clock", node_id="n1", timestamp="1999-01-01T00:00:00Z")
    EventFactory(
        event_id="future-clock",
        node_id="n1",
        timestamp="2099-01-01T00:00:00Z",
        received_at=now - timedelta(days=2),
    )
    shown = [e["event_id"] for e in api.get("/v1/events?node_id=n1").json()["events"]]
    assert shown == ["old-clock", "inside"]
    assert [e["event_id"] for e in api.get("/v1/events").json()["events"]] == shown
    assert [e.event_id for e in node_detail(node_id="n1")["events"]] == shown
    # still stored: retention removes them in its own time (a day at a time on PostgreSQL)
    assert Event.objects.count() == 5


@pytest.mark.django_db
def test_the_admin_never_lists_an_event_out_of_the_window(client, django_user_model, window):
    EventFactory(event_id="kept-event", received_at=timezone.now() - timedelta(minutes=5))
    EventFactory(event_id="expired-event", received_at=timezone.now() - timedelta(hours=2))
    client.force_login(django_user_model.objects.create_superuser("ops", "o@example.com", "pw-1"))
    page = client.get("/admin/events/event/").content.decode()
    assert "kept-event" in page and "expired-event" not in page


@pytest.mark.django_db
def test_without_retention_every_stored_event_is_shown(api):
    EventFactory(event_id="ancient", received_at=timezone.now() - timedelta(days=3650))
    assert api.get("/v1/events").json()["count"] == 1


# --- PostgreSQL: the layout ----------------------------------------------------------------


@postgres_only
@pytest.mark.django_db
def test_the_events_table_is_partitioned_by_day_with_days_made_ahead():
    with connection.cursor() as cursor:
        assert partitions.is_partitioned(cursor)
        found = partitions.partitions(cursor)
    today = datetime.now(UTC).date()
    covered = [p for p in found if p.ends is not None]
    # today and the DAYS_AHEAD days after it each fall in a partition
    for offset in range(partitions.DAYS_AHEAD + 1):
        moment = midnight(today + timedelta(days=offset)) + timedelta(hours=12)
        assert any(p.ends > moment for p in covered), (offset, found)
    assert partitions.ensure_partitions() == []  # nothing missing: nothing made twice


@postgres_only
@pytest.mark.django_db
def test_a_key_is_stored_once_across_days(monkeypatch):
    today = midnight(datetime.now(UTC).date())
    ahead = today + timedelta(days=2, hours=3)  # another partition than today's
    assert (
        store(("n1", "e1"), ("n1", "e2"), at=today + timedelta(hours=1), monkeypatch=monkeypatch)
        == 2
    )
    # resent two days later: another partition, the same key, not stored again
    assert store(("n1", "e1"), ("n2", "e1"), at=ahead, monkeypatch=monkeypatch) == 1
    assert store(("n2", "e1"), ("n1", "e2"), at=ahead, monkeypatch=monkeypatch) == 0
    stored = sorted(Event.objects.values_list("node_id", "event_id"))
    assert stored == [("n1", "e1"), ("n1", "e2"), ("n2", "e1")]


@postgres_only
@pytest.mark.django_db
def test_an_event_whose_day_has_no_partition_yet_makes_it(monkeypatch):
    later = datetime.now(UTC) + timedelta(days=partitions.DAYS_AHEAD + 20)
    assert partitions.day_name(later.date()) not in names()
    assert store(("n1", "far"), at=later, monkeypatch=monkeypatch) == 1
    assert partitions.day_name(later.date()) in names()
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT event_id FROM "{partitions.day_name(later.date())}"')
        assert cursor.fetchall() == [("far",)]


# --- PostgreSQL: retention drops days ----------------------------------------------------------


@pytest.fixture
def days_of_our_own() -> Iterator[date]:
    """Six day partitions 100 days ahead, alone under the events table, for a test outside a
    transaction (DETACH … CONCURRENTLY cannot run in one): the partitions the test database has
    (all ending before those days, so a prune would take them too) are set aside and put back
    after, with their bounds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [partitions.TABLE],
        )
        aside = cursor.fetchall()
        for name, _bound in aside:
            cursor.execute(f'ALTER TABLE "{partitions.TABLE}" DETACH PARTITION "{name}"')
    base = datetime.now(UTC).date() + timedelta(days=100)
    made = [partitions.day_name(base + timedelta(days=n)) for n in range(6)]
    for n in range(6):
        assert partitions.create_day(base + timedelta(days=n))
    try:
        yield base
    finally:
        with connection.cursor() as cursor:
            for name in made:
                cursor.execute(f'DROP TABLE IF EXISTS "{name}"')
            for name, bound in aside:
                cursor.execute(
                    f'ALTER TABLE "{partitions.TABLE}" ATTACH PARTITION "{name}" {bound}'
                )


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_retention_drops_the_days_wholly_out_of_the_window_and_keeps_the_rest(
    api, days_of_our_own, monkeypatch
):
    base = midnight(days_of_our_own)
    for day in range(5):
        EventFactory(
            event_id=f"day{day}-early",
            node_id="n1",
            received_at=base + timedelta(days=day, hours=1),
        )
        EventFactory(
            event_id=f"day{day}-late",
            node_id="n1",
            received_at=base + timedelta(days=day, hours=23),
        )
    now = base + timedelta(days=4, hours=12)  # the window (2 days) starts on day 2 at 12:00
    result = events_prune(retention_seconds=2 * DAY, now=now)
    assert result.cutoff == now - timedelta(days=2)
    assert result.dropped == (
        partitions.day_name(days_of_our_own),
        partitions.day_name(days_of_our_own + timedelta(days=1)),
    )
    assert result.deleted == 0  # no row deleted one by one
    stored = set(Event.objects.values_list("event_id", flat=True))
    # day 2 straddles the cutoff: kept whole until all of it is out of the window
    assert stored == {
        "day2-early",
        "day2-late",
        "day3-early",
        "day3-late",
        "day4-early",
        "day4-late",
    }
    # ... but readers never see its early event, which is out of the window
    configure_visibility(2 * DAY)
    try:
        monkeypatch.setattr("events.retention.timezone.now", lambda: now)
        shown = {e["event_id"] for e in api.get("/v1/events?node_id=n1").json()["events"]}
    finally:
        configure_visibility(0)
    assert shown == {"day2-late", "day3-early", "day3-late", "day4-early", "day4-late"}
    # the next round finds nothing more to drop
    assert events_prune(retention_seconds=2 * DAY, now=now).dropped == ()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_detach_cut_short_is_finished_by_the_next_round(days_of_our_own):
    """A detach interrupted between its two transactions (here: a statement timeout while an
    older transaction still reads the table; in life, a crash) leaves the partition "detach
    pending"; the next round finishes it and drops it."""
    import psycopg

    first = partitions.day_name(days_of_our_own)
    settings_dict = connection.settings_dict
    reader = psycopg.connect(
        host=settings_dict["HOST"] or "127.0.0.1",
        port=settings_dict["PORT"] or 5432,
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
    )
    try:
        reader.execute("SELECT count(*) FROM events_event")  # an open transaction on the table
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = '300ms'")
            with pytest.raises(Exception, match="statement timeout"):
                cursor.execute(f'ALTER TABLE events_event DETACH PARTITION "{first}" CONCURRENTLY')
            cursor.execute("SET statement_timeout = 0")
    finally:
        reader.close()
    with connection.cursor() as cursor:
        pending = [p for p in partitions.partitions(cursor) if p.detaching]
    assert [p.name for p in pending] == [first]
    cutoff = midnight(days_of_our_own + timedelta(days=1))
    assert partitions.drop_expired(cutoff=cutoff) == [first]
    assert first not in names()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_running_event_threshold_gate_holds_back_its_days(days_of_our_own, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    base = midnight(days_of_our_own)
    EventFactory(event_id="old", received_at=base + timedelta(hours=1))
    RolloutPlanFactory(
        plan_id="p-ev",
        release=ReleaseFactory(),
        stages=[
            {
                "stage_id": "s1",
                "percent": 10,
                "gates": [{"kind": "event_threshold", "event_type": "app.crash", "max_ratio": 0.5}],
            },
            {"stage_id": "s2", "percent": 100},
        ],
    )
    result = events_prune(retention_seconds=HOUR, now=base + timedelta(days=5))
    # the gate reads events from its stage's start (now): every later day stays
    assert result.held_back_by_gate and result.dropped == ()
    assert set(Event.objects.values_list("event_id", flat=True)) == {"old"}


# --- PostgreSQL: the conversion keeps every row ------------------------------------------------


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_conversion_keeps_every_stored_event_and_its_key(monkeypatch):
    now = timezone.now()
    call_command("migrate", "events", "0004", verbosity=0)
    try:
        with connection.cursor() as cursor:
            assert not partitions.is_partitioned(cursor)
            for n, received in enumerate(
                [now - timedelta(days=3), now, now + timedelta(days=6)]  # a clock ahead, too
            ):
                cursor.execute(
                    "INSERT INTO events_event (event_id, event_type, node_id, timestamp, "
                    "payload, received_at) VALUES (%s, 't', 'n1', 'ts', '{}', %s)",
                    [f"old-{n}", received],
                )
            cursor.execute("SELECT MAX(id) FROM events_event")
            largest = cursor.fetchone()[0]
    finally:
        call_command("migrate", "events", verbosity=0)
    with connection.cursor() as cursor:
        assert partitions.is_partitioned(cursor)
        legacy = next(p for p in partitions.partitions(cursor) if p.name == partitions.LEGACY)
    # the old table holds everything up to the midnight after its newest row
    assert legacy.ends == midnight((now + timedelta(days=7)).date())
    assert sorted(Event.objects.values_list("event_id", flat=True)) == ["old-0", "old-1", "old-2"]
    # a stored key is still refused, new events get later ids and land in a day's partition
    later = midnight((now + timedelta(days=8)).date()) + timedelta(hours=1)
    assert store(("n1", "old-1"), ("n1", "new"), at=later, monkeypatch=monkeypatch) == 1
    assert Event.objects.get(event_id="new").id > largest
    assert partitions.day_name(later.date()) in names()
    # and back: one plain table, every row, ids still counting up
    call_command("migrate", "events", "0004", verbosity=0)
    try:
        with connection.cursor() as cursor:
            assert not partitions.is_partitioned(cursor)
        assert Event.objects.count() == 4
        newest = EventFactory(event_id="after")
        assert newest.id > Event.objects.get(event_id="new").id
    finally:
        call_command("migrate", "events", verbosity=0)

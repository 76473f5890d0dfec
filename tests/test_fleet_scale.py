"""What makes a 50,000-node fleet hold on one small machine (docs/performance.md, "A 50,000-node
fleet"), checked for correctness: the ack writer (group commit), the in-process ack book's
incremental gate counts (equal to a full recount), and the cached rollout-aware poll answer
(invalidated by acks, new releases and plan changes).

The caches and the writer work only outside a transaction on the SQLite store, so the
behaviour a node sees is checked against the real `serve` (tests/liveserver.py), and the
counts in transactional tests.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from releases import services as release_services
from releases.ackbook import ack_book
from releases.services import AckWrite, acks_committed, node_acks_store
from rollouts import services as rollout_services
from rollouts.cohort import bucket, snapshot_of
from rollouts.gates import stage_ack_counts, stage_ack_counts_recount
from rollouts.models import RolloutPlan
from tests.liveserver import ServeProcess, call

# --- against the real server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with ServeProcess(tmp_path_factory.mktemp("fleet") / "data") as server:
        yield server


def publish(srv, release_id, channel):
    status, _, body = call(
        srv, "POST", "/v1/releases", {"release_id": release_id, "channel": channel}
    )
    assert status == 201, body


def ack(srv, node, release_id, status):
    return call(srv, "POST", f"/v1/nodes/{node}/ack", {"release_id": release_id, "status": status})


def poll(srv, channel, node):
    status, _, body = call(srv, "GET", f"/v1/releases/latest?channel={channel}&node_id={node}")
    return body.get("release_id") if status == 200 else status


def plan(srv, plan_id, release_id, percent):
    spec = {
        "plan_id": plan_id,
        "release_id": release_id,
        "stages": [{"stage_id": "s1", "percent": percent}],
    }
    status, _, body = call(srv, "POST", "/v1/rollouts", spec)
    assert status == 201, body


def nodes_by_bucket(plan_id, count=400):
    """(a node inside a 50 % bucket, a node outside it) for `plan_id`."""
    names = [f"n-{i:04d}" for i in range(count)]
    inside = next(n for n in names if bucket(plan_id, n) < 50)
    outside = next(n for n in names if bucket(plan_id, n) >= 50)
    return inside, outside


@pytest.mark.e2e
def test_concurrent_acks_from_many_clients_all_land(srv):
    publish(srv, "conc-1", "conc")
    nodes = [f"c-{i:03d}" for i in range(60)]

    def one_node(node):
        first = ack(srv, node, "conc-1", "pending")[0]
        second = ack(srv, node, "conc-1", "active")[0]
        return first, second

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(one_node, nodes))
    assert answers == [(201, 200)] * len(nodes)
    status, _, body = call(srv, "GET", "/v1/releases/conc-1/acks")
    assert status == 200 and body["count"] == len(nodes)
    assert {a["node_id"]: a["status"] for a in body["acks"]} == dict.fromkeys(nodes, "active")


@pytest.mark.e2e
def test_ack_errors_are_unchanged(srv):
    publish(srv, "err-1", "errs")
    assert ack(srv, "n1", "ghost", "active")[::2] == (
        404,
        {"error": "release 'ghost' not found", "release_id": "ghost"},
    )
    status, _, body = ack(srv, "n1", "err-1", "activated")
    assert status == 400 and body["field"] == "status"
    # a bad ack among good ones fails alone
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(
                lambda n: ack(srv, f"e-{n}", "ghost" if n % 3 == 0 else "err-1", "active")[0],
                range(24),
            )
        )
    assert answers == [404 if n % 3 == 0 else 201 for n in range(24)]
    assert call(srv, "GET", "/v1/releases/err-1/acks")[2]["count"] == 16


@pytest.mark.e2e
def test_poll_answer_follows_acks_releases_and_plan_changes(srv):
    """The poll of a node is answered from this process's caches once warm; every change that
    decides it is seen by the very next poll."""
    publish(srv, "roll-1", "roll")
    publish(srv, "roll-2", "roll")
    plan(srv, "plan-roll-2", "roll-2", 50)
    inside, outside = nodes_by_bucket("plan-roll-2")
    for _ in range(3):  # warm, then cached
        assert poll(srv, "roll", inside) == "roll-2"
        assert poll(srv, "roll", outside) == "roll-1"

    # read-your-writes: acked `active`, the node gets the new release at once and keeps it
    assert ack(srv, outside, "roll-2", "pending")[0] == 201
    assert poll(srv, "roll", outside) == "roll-1"
    assert ack(srv, outside, "roll-2", "active")[0] == 200
    assert poll(srv, "roll", outside) == "roll-2"
    assert poll(srv, "roll", outside) == "roll-2"

    # halted with no promoted stage: nobody new by bucket; the active node keeps it
    status, _, body = call(srv, "POST", "/v1/rollouts/plan-roll-2/halt", {"reason": "test"})
    assert status == 200, body
    assert poll(srv, "roll", inside) == "roll-1"
    assert poll(srv, "roll", outside) == "roll-2"
    status, _, body = call(srv, "POST", "/v1/rollouts/plan-roll-2/recover", {"strategy": "retry"})
    assert status == 200, body
    assert poll(srv, "roll", inside) == "roll-2"

    # cancelled: nobody new (the active node stays)
    assert call(srv, "POST", "/v1/rollouts/plan-roll-2/cancel", {"reason": "test"})[0] == 200
    assert poll(srv, "roll", inside) == "roll-1"
    assert poll(srv, "roll", outside) == "roll-2"

    # a new release without a plan: everyone at once
    publish(srv, "roll-3", "roll")
    assert poll(srv, "roll", inside) == "roll-3"
    assert poll(srv, "roll", outside) == "roll-3"

    # a plan for the newest release: the next poll already follows it
    publish(srv, "roll-4", "roll")
    assert poll(srv, "roll", inside) == "roll-4"
    plan(srv, "plan-roll-4", "roll-4", 50)
    inside4, outside4 = nodes_by_bucket("plan-roll-4")
    assert poll(srv, "roll", inside4) == "roll-4"
    assert poll(srv, "roll", outside4) == "roll-3"


# --- in process: the ack book's counts equal a full recount -----------------------------------


@pytest.mark.django_db(transaction=True)
def test_incremental_gate_counts_equal_a_full_recount(django_assert_num_queries):
    """On SQLite from the ack book; on PostgreSQL (several processes may write acks) the book
    is never used and every evaluation recounts."""
    on_sqlite = connection.vendor == "sqlite"
    ack_book.invalidate()
    ack_book.loads = 0
    release_services.release_publish(release_id="gc-1", channel="gc")
    release_services.release_publish(release_id="gc-2", channel="gc")
    spec = (
        b'{"plan_id": "gc-plan", "release_id": "gc-2", "stages": ['
        b'{"stage_id": "a", "percent": 5, "nodes": ["n-0001", "n-0002"]},'
        b'{"stage_id": "b", "percent": 30, "gates": [{"kind": "manual"}]},'
        b'{"stage_id": "c", "percent": 100}]}'
    )
    rollout_services.rollout_publish(raw_spec=spec, operator="test")
    snap = snapshot_of(RolloutPlan.objects.get(plan_id="gc-plan"))
    rng = random.Random(7)
    statuses = ["pending", "acknowledged", "active", "failed", "rejected"]

    def write_some(count):
        """`count` acks through the writer's own two steps (store, then tell the book)."""
        writes = [
            AckWrite(
                node_id=f"n-{rng.randrange(300):04d}",
                release_id=rng.choice(["gc-2", "gc-2", "gc-2", "gc-1"]),
                values={
                    "status": rng.choice(statuses),
                    "lock_fingerprint": None,
                    "message": None,
                    "acked_at": now(),
                    "updated_at": now(),
                },
            )
            for _ in range(count)
        ]
        acks_committed(node_acks_store(writes=writes))

    def assert_equal():
        for stage in snap.stages:
            incremental = stage_ack_counts(snap, stage)
            full = stage_ack_counts_recount(snap, stage)
            assert dict(incremental.by_status) == {k: v for k, v in full.by_status.items() if v}
            assert sorted(incremental.active_nodes) == sorted(full.active_nodes)
            assert incremental.total == full.total > 0

    write_some(200)
    assert_equal()  # loads the book and counts each stage once
    loads = ack_book.loads
    assert loads == (1 if on_sqlite else 0)
    for _ in range(5):
        write_some(80)  # moves the counts: no reload, no rescan
        assert_equal()
    assert ack_book.loads == loads
    with django_assert_num_queries(0 if on_sqlite else 1):
        stage_ack_counts(snap, snap.stages[1])
    if not on_sqlite:
        return

    # a write that bypasses the writer (the admin, the ORM) makes the book forget and reload
    from releases.models import NodeAck

    changed = NodeAck.objects.filter(status="failed").first()
    changed.status = "active"
    changed.save()
    assert_equal()
    assert ack_book.loads == loads + 1
    NodeAck.objects.filter(status="pending").first().delete()
    assert_equal()
    assert ack_book.loads == loads + 2
    ack_book.invalidate()


def now():
    from django.utils import timezone

    return timezone.now()


@pytest.mark.django_db(transaction=True)
def test_a_warm_node_poll_needs_no_database(django_assert_num_queries):
    """On SQLite; on PostgreSQL (other processes may change plans and acks) every node poll
    reads the database."""
    on_sqlite = connection.vendor == "sqlite"
    from releases.fast import cached_latest_answer, latest_release_answer

    ack_book.invalidate()
    release_services.release_publish(release_id="w-1", channel="w")
    release_services.release_publish(release_id="w-2", channel="w")
    rollout_services.rollout_publish(
        raw_spec=b'{"plan_id": "w-plan", "release_id": "w-2", '
        b'"stages": [{"stage_id": "s", "percent": 50}]}',
        operator="test",
    )
    inside, outside = nodes_by_bucket("w-plan")
    for node, expected in ((inside, b'"w-2"'), (outside, b'"w-1"')):
        query = {"channel": "w", "node_id": node}
        assert cached_latest_answer(query) is None  # cold
        first = latest_release_answer(query)
        assert expected in first[1]
        if not on_sqlite:
            assert cached_latest_answer(query) is None
            # the latest release, the plan head, and outside the bucket the node's active ack
            with django_assert_num_queries(2 if node == inside else 3):
                assert latest_release_answer(query) == first
            continue
        with django_assert_num_queries(0):
            assert cached_latest_answer(query) == first
            assert latest_release_answer(query) == first


def test_slow_evaluation_passes_are_spaced_out_within_the_contract():
    """A burst of acks pokes the evaluator on every commit; when a pass is slow (PostgreSQL
    recounts the acks) the pause after it grows, but a stage is still checked every 2 s."""
    from rollouts.evaluator import INTERVAL_SECONDS, spacing_after

    assert spacing_after(0.001) == 0.25
    assert spacing_after(0.2) == pytest.approx(0.8)
    assert spacing_after(3.0) == INTERVAL_SECONDS == 2.0


# --- the ack writer's group failures -----------------------------------------------------------


def _writes(*release_ids):
    from releases.services import ack_write

    return [
        ack_write(node_id=f"n{i}", release_id=r, status="active") for i, r in enumerate(release_ids)
    ]


def test_a_refused_value_fails_only_its_own_ack(monkeypatch):
    """A group the database refuses as a whole (PostgreSQL refuses NUL in text) is stored again
    one ack per transaction: the bad ack gets its error, the others are stored."""
    from django.db import DataError

    from releases import writer
    from releases.services import Outcome

    calls = []

    def store(*, writes):
        calls.append([w.release_id for w in writes])
        if any("\x00" in w.release_id for w in writes):
            raise DataError("A string literal cannot contain NUL (0x00) characters.")
        return [Outcome(w, created=True) for w in writes]

    monkeypatch.setattr(writer, "node_acks_store", store)
    monkeypatch.setattr(writer, "acks_committed", lambda results: None)
    monkeypatch.setattr(writer, "reset_broken_connection", lambda exc: False)  # no connection
    ack_writer = writer.AckWriter()
    futures = [ack_writer.queue(w) for w in _writes("r1", "r\x00", "r3")]
    ack_writer.write_group()
    assert calls == [["r1", "r\x00", "r3"], ["r1"], ["r\x00"], ["r3"]]
    assert futures[0].result().obj.release_id == "r1"
    assert futures[2].result().obj.release_id == "r3"
    with pytest.raises(DataError):
        futures[1].result()


def test_a_busy_store_fails_the_group_at_once(monkeypatch):
    """Busy (or full, or unavailable): every ack of the group gets the error after one try, not
    one busy timeout per ack."""
    from django.db import OperationalError

    from releases import writer

    calls = []

    def store(*, writes):
        calls.append(len(writes))
        raise OperationalError("database is locked")

    monkeypatch.setattr(writer, "node_acks_store", store)
    monkeypatch.setattr(writer, "reset_broken_connection", lambda exc: False)  # no connection
    ack_writer = writer.AckWriter()
    futures = [ack_writer.queue(w) for w in _writes("r1", "r2", "r3")]
    ack_writer.write_group()
    assert calls == [3]
    for future in futures:
        with pytest.raises(OperationalError):
            future.result()


# --- acks riding the events writer (serve on SQLite) -------------------------------------------


def test_acks_ride_the_events_writer_and_every_one_is_answered(monkeypatch):
    """Ridden on the events writer (what `serve` does on SQLite), acks are stored by that one
    thread, in groups of at most GROUP_MAX_ACKS, each group right after an events group or on a
    wake of its own when no event came; every ack and every event batch is answered, and the
    ack writer starts no thread of its own."""
    import threading

    from events import writer as events_writer
    from events.services import IngestResult
    from releases import writer
    from releases.services import Outcome

    stored: list[tuple[str, str, int]] = []

    def store_events(batches):
        stored.append(("events", threading.current_thread().name, sum(map(len, batches))))
        return [IngestResult(received=len(rows), inserted=len(rows)) for rows in batches]

    def store_acks(*, writes):
        stored.append(("acks", threading.current_thread().name, len(writes)))
        return [Outcome(w, created=True) for w in writes]

    monkeypatch.setattr(events_writer, "store_with_retries", store_events)
    monkeypatch.setattr(writer, "node_acks_store", store_acks)
    monkeypatch.setattr(writer, "acks_committed", lambda results: None)
    carrier = events_writer.EventWriter()
    ack_writer = writer.AckWriter()
    ack_writer.ride_on(carrier.carry)

    acks = [ack_writer.submit(w) for w in _writes(*(f"r{i}" for i in range(1234)))]
    assert [f.result(timeout=10).obj.release_id for f in acks] == [f"r{i}" for i in range(1234)]
    batches = []
    for n in range(20):  # events and acks interleaved
        batches.append(carrier.submit([("e", f"n{n}")] * 3))
        acks.append(ack_writer.submit(_writes(f"late{n}")[0]))
    assert [f.result(timeout=10).inserted for f in batches] == [3] * 20
    assert all(f.result(timeout=10).obj for f in acks)

    assert ack_writer._thread is None
    assert {name for _, name, _ in stored} == {"events-writer"}
    ack_groups = [n for kind, _, n in stored if kind == "acks"]
    assert sum(ack_groups) == 1234 + 20
    assert max(ack_groups) <= writer.GROUP_MAX_ACKS
    assert sum(n for kind, _, n in stored if kind == "events") == 60


def test_a_failing_ack_group_on_the_events_writer_fails_only_its_acks(monkeypatch):
    """A busy store while acks ride the events writer: the acks get the error, the events
    writer keeps running and the next ack and event batch are stored."""
    from django.db import OperationalError

    from events import writer as events_writer
    from events.services import IngestResult
    from releases import writer
    from releases.services import Outcome

    busy = [True]

    def store_acks(*, writes):
        if busy[0]:
            raise OperationalError("database is locked")
        return [Outcome(w, created=True) for w in writes]

    monkeypatch.setattr(
        events_writer,
        "store_with_retries",
        lambda batches: [IngestResult(received=len(b), inserted=len(b)) for b in batches],
    )
    monkeypatch.setattr(writer, "node_acks_store", store_acks)
    monkeypatch.setattr(writer, "acks_committed", lambda results: None)
    monkeypatch.setattr(writer, "reset_broken_connection", lambda exc: False)
    carrier = events_writer.EventWriter()
    ack_writer = writer.AckWriter()
    ack_writer.ride_on(carrier.carry)
    with pytest.raises(OperationalError):
        ack_writer.submit(_writes("r1")[0]).result(timeout=10)
    busy[0] = False
    assert ack_writer.submit(_writes("r2")[0]).result(timeout=10).obj.release_id == "r2"
    assert carrier.submit([("e", "n")]).result(timeout=10).inserted == 1


def _riding_pair():
    from events import writer as events_writer
    from releases import writer

    carrier = events_writer.EventWriter()
    ack_writer = writer.AckWriter()
    ack_writer.ride_on(carrier.carry)
    return carrier, ack_writer


def _event_rows(node_id, *event_ids):
    from events.validation import validate_events

    return validate_events(
        [
            {
                "event_id": e,
                "node_id": node_id,
                "event_type": "hb",
                "timestamp": "2026-11-30T00:00:00Z",
            }
            for e in event_ids
        ]
    )


@pytest.mark.django_db(transaction=True)
def test_events_and_riding_acks_are_stored_by_the_real_stores():
    """Real stores: event batches and the acks riding with them are stored in the events
    writer's turns, each answered with its own outcome, an unknown release's ack with its 404
    while the others of its group are stored."""
    from events.models import Event
    from releases.models import NodeAck
    from releases.services import ack_write

    release_services.release_publish(release_id="ride-1", channel="ride")
    carrier, ack_writer = _riding_pair()
    try:
        events = [carrier.submit(_event_rows(f"rn{n}", f"e{n}a", f"e{n}b")) for n in range(5)]
        acks = [
            ack_writer.submit(ack_write(node_id=f"rn{n}", release_id="ride-1", status="active"))
            for n in range(5)
        ]
        unknown = ack_writer.submit(ack_write(node_id="rn9", release_id="nope", status="active"))
        assert [f.result(timeout=10).inserted for f in events] == [2] * 5
        assert all(f.result(timeout=10).created for f in acks)
        with pytest.raises(Exception, match="release 'nope' not found"):
            unknown.result(timeout=10)
    finally:
        carrier.run(lambda: connection.close()).result(timeout=10)
    assert Event.objects.filter(node_id__startswith="rn").count() == 10
    assert NodeAck.objects.filter(release__release_id="ride-1").count() == 5


# --- in process: the fleet view's rows a group of acks writes equal a rebuild -----------------


@pytest.mark.django_db(transaction=True)
def test_acks_keep_the_fleet_rows_a_rebuild_would_choose():
    """Groups of acks (repeated keys, two channels, an older release acked after a newer one,
    an unknown release among them) move `GET /v1/fleet`'s tables row by row; the result is what
    `fleet_acks_refresh` chooses when it rebuilds them from every stored ack."""
    from datetime import UTC, datetime, timedelta

    from releases.models import FleetNode, FleetNodeAck

    for release_id, channel in (("a-1", "a"), ("a-2", "a"), ("b-1", "b"), ("b-2", "b")):
        release_services.release_publish(release_id=release_id, channel=channel)
    rng = random.Random(11)
    start = datetime(2026, 11, 30, tzinfo=UTC)
    tick = 0
    acked: set[tuple[str, str]] = set()

    def group(count):
        nonlocal tick
        writes = []
        for _ in range(count):
            tick += 1
            at = start + timedelta(seconds=tick // 3)  # some acks share their updated_at
            writes.append(
                AckWrite(
                    node_id=f"n-{rng.randrange(40):03d}",
                    release_id=rng.choice(["a-1", "a-2", "b-1", "b-2", "b-2", "missing"]),
                    values={
                        "status": rng.choice(["pending", "active", "failed"]),
                        "lock_fingerprint": None,
                        "message": None,
                        "acked_at": at,
                        "updated_at": at,
                    },
                )
            )
        results = node_acks_store(writes=writes)
        assert sum(isinstance(r, Exception) for r in results) == sum(
            w.release_id == "missing" for w in writes
        )
        # created: the first ack of its (node, release) ever, also within one group (201)
        expected = []
        for write in writes:
            if write.release_id != "missing":
                expected.append((write.node_id, write.release_id) not in acked)
                acked.add((write.node_id, write.release_id))
        assert [r.created for r in results if not isinstance(r, Exception)] == expected

    def fleet_rows():
        nodes = sorted(FleetNode.objects.values_list("node_id", "last_seen", "last_heard"))
        acks = sorted(
            FleetNodeAck.objects.values_list(
                "node_id", "channel", "release_id", "status", "sequence", "updated_at", "ack_pk"
            )
        )
        return nodes, acks

    for size in (1, 30, 60, 5, 120):
        group(size)
    # a clock that stepped back: another release of a row's channel acked with an older time
    # than the row's ack does not take the row (a rebuild chooses by time too)
    row = FleetNodeAck.objects.select_related("release").order_by("node_id", "channel").first()
    other = {"a-1": "a-2", "a-2": "a-1", "b-1": "b-2", "b-2": "b-1"}[row.release.release_id]
    earlier = row.updated_at - timedelta(hours=1)
    values = {"lock_fingerprint": None, "message": None, "acked_at": earlier}
    node_acks_store(
        writes=[
            AckWrite(row.node_id, other, {**values, "status": "rejected", "updated_at": earlier})
        ]
    )
    assert FleetNodeAck.objects.get(pk=row.pk).release_id == row.release_id
    kept = fleet_rows()
    assert len(kept[0]) == 40 and len(kept[1]) > 40
    FleetNodeAck.objects.all().delete()
    FleetNode.objects.all().delete()
    release_services.fleet_acks_refresh(node_ids=None)
    assert fleet_rows() == kept

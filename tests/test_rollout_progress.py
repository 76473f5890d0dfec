"""Where a rollout stands, node by node (issue 15): the node counts of `GET …/status` and the plan
detail, and `GET /v1/rollouts/{plan_id}/nodes` paging through the nodes behind each count."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from releases.models import NodeAck
from rollouts import clock, progress
from rollouts.cohort import bucket
from rollouts.metrics import stage_node_family
from tests.factories import EventFactory, NodeAckFactory, ReleaseFactory, RolloutPlanFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
CANARY = ["n-a", "n-b", "n-c", "n-d"]
OTHERS = ["n-e", "n-f", "n-g", "n-h"]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


@pytest.fixture
def plan(fake_clock):
    """canary lists n-a..n-d (0.01 %: nobody by bucket), `all` takes everyone. n-a acked the
    release active, n-b failed, n-c pending, n-d nothing; n-e..n-h only sent events; n-z acked
    another release."""
    assert all(bucket("p1", node) >= 0.01 for node in CANARY + OTHERS + ["n-z"])
    release = ReleaseFactory(release_id="rel-new")
    plan = RolloutPlanFactory(
        plan_id="p1",
        release=release,
        stages=[
            {"stage_id": "canary", "percent": 0.01, "nodes": CANARY},
            {"stage_id": "all", "percent": 100},
        ],
    )
    for node, status in (("n-a", "active"), ("n-b", "failed"), ("n-c", "pending")):
        NodeAckFactory(node_id=node, release=release, status=status)
    for node in ["n-d", *OTHERS]:
        EventFactory(node_id=node)
    NodeAckFactory(node_id="n-z", release=ReleaseFactory(release_id="rel-old"), status="active")
    fake_clock.now = T0 + timedelta(minutes=11)  # past the default 10m: n-d is silent
    return plan


def counts(**nonzero: int) -> dict[str, int]:
    return {key: nonzero.get(key, 0) for key in progress.COUNT_KEYS}


def test_status_counts_each_stage_and_the_plan(api, plan):
    body = api.get("/v1/rollouts/p1/status").json()
    canary, everyone = body["stages"]
    assert canary["nodes"] == counts(targeted=4, active=1, failed=1, pending=1, silent=1)
    # `all` is cumulative: the canary's nodes, and the five others still waiting for it to open.
    assert everyone["nodes"] == counts(
        targeted=9, active=1, failed=1, pending=1, silent=1, waiting=5
    )
    assert body["nodes"] == canary["nodes"]  # the plan's: its current stage's
    assert body["known_nodes"] == 9
    assert body["silent_after_seconds"] == 600
    detail = api.get("/v1/rollouts/p1").json()
    assert detail["status"]["nodes"] == body["nodes"]
    assert detail["status"]["stages"][1]["nodes"] == everyone["nodes"]
    assert detail["phase"] == "published" and detail["spec"]["stages"][0]["stage_id"] == "canary"


def test_silent_after_is_configurable_and_a_young_stage_has_no_silent_node(
    api, plan, settings, fake_clock
):
    fake_clock.now = T0 + timedelta(minutes=5)
    assert api.get("/v1/rollouts/p1/status").json()["nodes"]["silent"] == 0
    settings.ROLLOUT_SILENT_AFTER_SECONDS = 60
    body = api.get("/v1/rollouts/p1/status").json()
    assert body["nodes"]["silent"] == 1 and body["silent_after_seconds"] == 60


def test_promotion_moves_the_plan_counts_to_the_next_stage(api, plan):
    response = api.post("/v1/rollouts/p1/promote", {}, format="json")
    assert response.status_code == 200, response.content
    # The answer of an action carries the counts too; the new stage's own nodes just opened.
    assert response.json()["nodes"] == counts(
        targeted=9, active=1, failed=1, pending=1, silent=1, waiting=5
    )


def test_a_node_acking_active_outside_the_cohort_counts_as_targeted(api, plan):
    NodeAckFactory(node_id="n-e", release=plan.release, status="active")
    body = api.get("/v1/rollouts/p1/status").json()
    assert body["nodes"]["targeted"] == 5 and body["nodes"]["active"] == 2


def test_nodes_lists_the_nodes_behind_a_count(api, plan):
    failed = api.get("/v1/rollouts/p1/nodes?state=failed").json()
    assert failed["stage_id"] == "canary" and failed["state"] == "failed"
    assert failed["total"] == 1 and failed["next_cursor"] is None
    assert failed["nodes_at"] == "2026-11-27T10:11:00Z"
    (row,) = failed["nodes"]
    assert row["node_id"] == "n-b" and row["state"] == "failed" and row["ack_status"] == "failed"
    assert row["acked_at"].endswith("Z") and row["entry_stage_id"] == "canary"
    assert row["last_seen"] is None  # known by its ack only
    silent = api.get("/v1/rollouts/p1/nodes?state=silent").json()
    assert [n["node_id"] for n in silent["nodes"]] == ["n-d"]
    assert silent["nodes"][0]["ack_status"] is None and silent["nodes"][0]["last_seen"]


def test_nodes_pages_with_a_cursor(api, plan):
    seen, cursor, pages = [], None, 0
    while True:
        query = "stage_id=all&limit=4" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(f"/v1/rollouts/p1/nodes?{query}").json()
        assert page["total"] == 9 and page["count"] <= 4
        seen += [n["node_id"] for n in page["nodes"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(CANARY + OTHERS + ["n-z"])
    waiting = api.get("/v1/rollouts/p1/nodes?stage_id=all&state=waiting").json()
    assert {n["entry_stage_id"] for n in waiting["nodes"]} == {"all"}
    assert waiting["total"] == 5


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        ("/v1/rollouts/nope/nodes", 404, "no rollout plan"),
        ("/v1/rollouts/p1/nodes?stage_id=nope", 404, "no stage"),
        ("/v1/rollouts/p1/nodes?state=asleep", 400, "state"),
        ("/v1/rollouts/p1/nodes?limit=0", 400, "limit"),
        ("/v1/rollouts/p1/nodes?limit=x", 400, "limit"),
        ("/v1/rollouts/p1/nodes?cursor=", 400, "cursor"),
    ],
)
def test_nodes_refuses_what_it_cannot_answer(api, plan, path, code, words):
    response = api.get(path)
    assert response.status_code == code, response.content
    assert words in response.json()["error"]


def test_the_gauge_gives_live_plans_stage_counts(plan):
    samples = {
        (s.labels["stage_id"], s.labels["state"]): s.value
        for s in stage_node_family().samples
        if s.labels["plan_id"] == "p1"
    }
    assert samples[("canary", "targeted")] == 4 and samples[("canary", "silent")] == 1
    assert samples[("all", "targeted")] == 9 and samples[("all", "failed")] == 1
    plan.phase = "cancelled"
    plan.save(update_fields=["phase"])
    assert not [s for s in stage_node_family().samples if s.labels["plan_id"] == "p1"]


def test_a_slow_recount_for_new_acks_runs_behind_the_readers(plan, monkeypatch):
    """A large fleet (a build slower than BACKGROUND_BUILD_SECONDS): a status read after new acks
    answers at once with the counts it had, while a thread recounts; the next read has them. A
    plan's change still recounts in the reader's request."""
    gate = threading.Event()
    builds: list[str] = []
    counted: list[progress.PlanProgress] = []
    real = progress._build

    def slow_build(*args):
        """The real count first; later ones (the recount's thread has no view of this test's
        transaction) a copy of it, as a new object."""
        builds.append(threading.current_thread().name)
        if len(builds) == 1:
            counted.append(real(*args))
            return counted[0]
        if threading.current_thread().name == "rollout-progress":
            assert gate.wait(10)
        return dataclasses.replace(counted[0], version=args[0].version)

    monkeypatch.setattr(progress, "_build", slow_build)
    monkeypatch.setattr(progress, "_cacheable", lambda: True)
    monkeypatch.setattr(progress, "REBUILD_COST_FACTOR", 0.0)  # every new ack is worth a recount
    fingerprint = [(1, None)]
    monkeypatch.setattr(progress, "_ack_fingerprint", lambda pk: fingerprint[0])
    progress.clear_cache()
    first = progress.plan_progress(plan)
    progress._build_seconds[plan.pk] = progress.BACKGROUND_BUILD_SECONDS  # as if it were slow
    fingerprint[0] = (2, None)  # new acks
    assert progress.plan_progress(plan) is first  # not waiting for the recount
    assert builds[1] == "rollout-progress"
    assert progress.plan_progress(plan) is first  # one recount at a time
    gate.set()
    for _ in range(100):
        if progress._cache[plan.pk][2] is not first:
            break
        time.sleep(0.05)
    recounted = progress.plan_progress(plan)
    assert recounted is not first and len(builds) == 2
    # An operator's action that leaves every node where it was (same stages, same silent
    # stages): the new version and current stage at once, from the last count, no recount.
    progress._build_seconds[plan.pk] = progress.BACKGROUND_BUILD_SECONDS  # still a large fleet
    plan.version += 1
    plan.current_stage_id = "all"
    plan.save()
    changed = progress.plan_progress(plan)
    assert changed.version == plan.version and len(builds) == 2
    assert changed.current_position == 1 and changed.plan_counts == recounted.stage_counts[1]
    assert changed.stage_counts == recounted.stage_counts
    assert progress.plan_progress(plan) is changed
    # A change that moves nodes (the `all` stage opened 11 minutes ago: its unacked nodes are
    # silent now) recounts in the reader's request.
    plan.stages.filter(stage_id="all").update(opened_at=T0)
    plan.version += 1
    plan.save()
    moved = progress.plan_progress(plan)
    assert moved.version == plan.version and builds[2] == threading.current_thread().name


def test_a_large_fleets_counts_are_recounted_before_a_reader_finds_them_old(plan, monkeypatch):
    """Under `serve --workers` an operator's reads land on either worker, and a worker may go
    longer than the TTL without one: the warmer recounts a large fleet's plan that was read
    lately before its counts grow too old, so the next read answers from the cache instead of
    recounting in its request (~0.3 s at 50,000 nodes), a finished plan too (its nodes still
    ack; found at 50,000 nodes: a dashboard's read 20 s after the plan completed counted the
    fleet in its request, 269 ms). Plans not read lately and small fleets are left alone."""
    builds: list[str] = []
    real = progress._build
    monkeypatch.setattr(progress, "_build", lambda *a: builds.append("b") or real(*a))
    monkeypatch.setattr(progress, "_cacheable", lambda: True)
    monkeypatch.setattr(progress, "start_warmer", lambda: None)  # this test runs the passes
    progress.clear_cache()
    first = progress.plan_progress(plan)
    assert progress._warm_once() == []  # a small fleet: its reader recounts cheaply
    progress._build_seconds[plan.pk] = progress.BACKGROUND_BUILD_SECONDS  # as if 50,000 nodes
    assert progress._warm_once() == []  # young counts: nothing due

    key, built_at, counted = progress._cache[plan.pk]
    progress._cache[plan.pk] = (key, built_at - 9.0, counted)  # 9 s later, no read meanwhile
    NodeAck.objects.filter(node_id="n-c").update(status="active", updated_at=T0)
    assert progress._warm_once() == [plan.pk] and len(builds) == 2
    warmed = progress._cache[plan.pk][2]
    assert warmed is not first and warmed.plan_counts["active"] == 2
    progress._build_seconds[plan.pk] = progress.BACKGROUND_BUILD_SECONDS
    assert progress.plan_progress(plan) is warmed and len(builds) == 2  # no recount in the read

    # not read for KEEP_WARM_SECONDS: forgotten, never recounted again
    progress._read_at[plan.pk] -= progress.KEEP_WARM_SECONDS + 1
    key, built_at, counted = progress._cache[plan.pk]
    progress._cache[plan.pk] = (key, built_at - 9.0, counted)
    assert progress._warm_once() == [] and plan.pk not in progress._read_at
    # a finished plan read lately: its nodes still ack, its counts are kept warm all the same
    plan.phase = "completed"
    plan.version += 1
    plan.save(update_fields=["phase", "version"])
    done = progress.plan_progress(plan)
    key, built_at, counted = progress._cache[plan.pk]
    progress._cache[plan.pk] = (key, built_at - 9.0, counted)
    NodeAck.objects.filter(node_id="n-c").update(status="failed", updated_at=T0)
    assert progress._warm_once() == [plan.pk]
    assert progress._cache[plan.pk][2].plan_counts["failed"] == done.plan_counts["failed"] + 1
    # ... until it is not read for KEEP_WARM_SECONDS
    progress._read_at[plan.pk] -= progress.KEEP_WARM_SECONDS + 1
    key, built_at, counted = progress._cache[plan.pk]
    progress._cache[plan.pk] = (key, built_at - 9.0, counted)
    assert progress._warm_once() == [] and plan.pk not in progress._read_at
    # a /metrics scrape takes counts up to 30 s old: it alone keeps nothing warm
    progress.clear_cache()
    progress.plan_progress(plan, max_age=30.0)
    assert plan.pk not in progress._read_at
    progress.clear_cache()


def test_a_large_fleets_live_plans_are_counted_before_their_first_read(plan, monkeypatch):
    """A plan just published (or a worker just started): on a fleet of LARGE_FLEET_NODES or
    more the warmer counts each live plan this process has no count of, so the first status
    read answers from it; a smaller fleet's first read counts (cheaply) in the request, and a
    finished plan is not counted."""
    builds: list[str] = []
    real = progress._build
    monkeypatch.setattr(progress, "_build", lambda *a: builds.append("b") or real(*a))
    monkeypatch.setattr(progress, "_cacheable", lambda: True)
    monkeypatch.setattr(progress, "start_warmer", lambda: None)
    progress.clear_cache()
    monkeypatch.setattr(progress, "LARGE_FLEET_NODES", 10)  # the fleet has 9 known nodes
    assert progress._warm_once() == [] and builds == []
    monkeypatch.setattr(progress, "LARGE_FLEET_NODES", 9)
    assert progress._warm_once() == [plan.pk] and builds == ["b"]
    first = progress.plan_progress(plan)
    assert builds == ["b"] and first.plan_counts == counts(
        targeted=4, pending=1, active=1, failed=1, silent=1
    )
    assert progress._warm_once() == []  # counted already
    progress.clear_cache()
    plan.phase = "completed"
    plan.save(update_fields=["phase"])
    assert progress._warm_once() == []
    progress.clear_cache()


def test_the_warmer_makes_the_full_count_of_a_minute_before_a_reader_would(plan, monkeypatch):
    """Moved counts trust the ack book, so a large fleet is counted in full at least every
    FULL_COUNT_SECONDS; the warmer makes that count shortly before it falls due, for every live
    plan of a large fleet, read or not, so a read after a quiet minute moves acks (cheap)
    instead of counting the fleet in its request."""
    full: list[int] = []
    real = progress.compute
    monkeypatch.setattr(progress, "compute", lambda *a, **k: full.append(1) or real(*a, **k))
    monkeypatch.setattr(progress, "_cacheable", lambda: True)
    monkeypatch.setattr(progress, "start_warmer", lambda: None)
    monkeypatch.setattr(progress, "LARGE_FLEET_NODES", 9)  # the fleet has 9 known nodes
    # as if the ack book could always move the acks of the last count
    monkeypatch.setattr(progress, "_update", lambda plan_pk, previous, *rest: previous)
    progress.clear_cache()
    progress.plan_progress(plan, max_age=30.0)  # counted (a scrape: not a read to keep warm)
    assert full == [1] and progress._warm_once() == []
    progress._full_at[plan.pk] -= progress.FULL_COUNT_SECONDS - 1  # due within the next tick
    assert progress._warm_once() == [plan.pk] and full == [1, 1]
    assert progress._warm_once() == []  # the next one a minute later
    progress.clear_cache()


def test_a_fleet_of_many_nodes_is_large_however_quick_its_last_count(plan, monkeypatch):
    """A count's time varies with the machine's load (45 ms or 325 ms at 30,000 nodes in one
    run): a plan that counted LARGE_FLEET_NODES known nodes is a large fleet's, so its readers
    never count in the request because one count happened to be quick."""
    monkeypatch.setattr(progress, "_cacheable", lambda: True)
    monkeypatch.setattr(progress, "start_warmer", lambda: None)
    progress.clear_cache()
    progress.plan_progress(plan)
    progress._build_seconds[plan.pk] = 0.001
    assert not progress._large(plan.pk)
    monkeypatch.setattr(progress, "LARGE_FLEET_NODES", 9)  # the fleet has 9 known nodes
    assert progress._large(plan.pk)
    progress.clear_cache()


def test_a_slow_count_starts_the_warmer(plan, monkeypatch):
    started = threading.Event()
    monkeypatch.setattr(progress, "_warm_forever", started.set)
    monkeypatch.setattr(progress, "_warmer", None)
    monkeypatch.setattr(progress, "_cacheable", lambda: True)
    monkeypatch.setattr(progress, "BACKGROUND_BUILD_SECONDS", 1e9)
    progress.clear_cache()
    progress.plan_progress(plan)
    assert not started.wait(0.2)  # a quick count: no thread
    monkeypatch.setattr(progress, "BACKGROUND_BUILD_SECONDS", 0.0)
    progress.plan_progress(plan, max_age=0)
    assert started.wait(5)
    progress.clear_cache()


def test_counts_are_cached_until_the_plan_or_its_acks_change(plan, monkeypatch):
    builds = []
    real = progress._build
    monkeypatch.setattr(progress, "_build", lambda *a: builds.append(1) or real(*a))
    progress.clear_cache()
    with monkeypatch.context() as outside_a_transaction:
        # As if outside the test's transaction (only for this cache: the plan snapshots' cache
        # must not keep this test's rows).
        outside_a_transaction.setattr(progress, "_cacheable", lambda: True)
        first = progress.plan_progress(plan)
        assert progress.plan_progress(plan) is first and len(builds) == 1
        NodeAck.objects.filter(node_id="n-c").update(
            status="active", updated_at=T0 + timedelta(minutes=12)
        )
        # within REBUILD_COST_FACTOR x the last build's time an ack alone does not recount
        # (a large fleet's counts lag its acks by a little, so counting stays cheap) ...
        outside_a_transaction.setattr(progress, "REBUILD_COST_FACTOR", 1e9)
        assert progress.plan_progress(plan) is first and len(builds) == 1
        # ... after it, the changed acks do
        outside_a_transaction.setattr(progress, "REBUILD_COST_FACTOR", 0.0)
        after_ack = progress.plan_progress(plan)
        assert len(builds) == 2 and after_ack.plan_counts["active"] == 2
        assert progress.plan_progress(plan, max_age=0) is not after_ack  # the TTL
    progress.clear_cache()


@pytest.mark.django_db(transaction=True)
def test_a_recount_reads_acks_from_the_ack_book_and_sees_nodes_join(plan, monkeypatch):
    """SQLite outside a transaction (as `serve` reads): a recount takes the release's acks from
    the in-process ack book instead of reading every ack row, and the fleet's node list from a
    copy kept while the fleet table is unchanged; an ack stored by the writer and a node that
    joins both show in the next recount, and an ack written around the writer (the book cannot
    know it) is read from the database instead of being missed."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from releases.services import ack_write, acks_committed, node_acks_store

    if connection.vendor != "sqlite":
        pytest.skip("the ack book and the node-list copy serve the SQLite store only")
    monkeypatch.setattr(progress, "REBUILD_COST_FACTOR", 0.0)  # every change is worth a recount
    monkeypatch.setattr(progress, "BACKGROUND_BUILD_SECONDS", 1e9)  # recount in the request
    progress.clear_cache()
    first = progress.plan_progress(plan)
    assert (first.known, first.stage_counts[-1]["targeted"]) == (9, 9)
    assert first.plan_counts == counts(targeted=4, pending=1, active=1, failed=1, silent=1)

    # the ack writer's two steps: store, then tell the book
    acks_committed(
        node_acks_store(writes=[ack_write(node_id="n-d", release_id="rel-new", status="active")])
    )
    EventFactory(node_id="n-new")  # joins the fleet (stage `all` takes everyone)
    with CaptureQueriesContext(connection) as queries:
        second = progress.plan_progress(plan)
    assert (second.known, second.stage_counts[-1]["targeted"]) == (10, 10)
    assert second.plan_counts == counts(targeted=4, pending=1, active=2, failed=1)
    ack_rows = [q["sql"] for q in queries if '"status" FROM "releases_nodeack"' in q["sql"]]
    assert ack_rows == []  # the acks came from the book

    # acks alone (no node joined, no stage turned silent): the last count with those acks
    # moved, not a pass over the fleet; the same counts as a full count
    full_counts = []
    real_compute = progress.compute
    monkeypatch.setattr(
        progress, "compute", lambda *a, **k: full_counts.append(1) or real_compute(*a, **k)
    )
    acks_committed(
        node_acks_store(
            writes=[
                ack_write(node_id="n-c", release_id="rel-new", status="failed"),
                ack_write(node_id="n-new", release_id="rel-new", status="pending"),
            ]
        )
    )
    moved = progress.plan_progress(plan)
    assert full_counts == []
    assert moved.plan_counts == counts(targeted=4, active=2, failed=2)
    assert moved.stage_counts[-1] == counts(targeted=10, active=2, failed=2, pending=1, waiting=5)
    # acks committed after the reader counted the store's (the book holds more): still moved
    from rollouts.cohort import snapshot_of

    snap = snapshot_of(plan)
    acks_committed(
        node_acks_store(writes=[ack_write(node_id="n-f", release_id="rel-new", status="active")])
    )
    ahead = progress._update(plan.pk, moved, snap, moved.silent_after, 5)  # the book holds 6
    # (an `active` ack counts in every stage: n-f joins the canary's counts too)
    assert ahead is not None and ahead.plan_counts == counts(targeted=5, active=3, failed=2)
    assert ahead.stage_counts[-1]["active"] == 3 and full_counts == []
    # ... but at least every FULL_COUNT_SECONDS the fleet is counted in full
    progress._full_at[plan.pk] -= progress.FULL_COUNT_SECONDS
    assert progress._update(plan.pk, ahead, snap, ahead.silent_after, 6) is None
    progress.clear_cache()
    recounted = progress.plan_progress(plan)
    assert full_counts == [1] and recounted.stage_counts == ahead.stage_counts
    assert (recounted.node_ids, recounted.states) == (ahead.node_ids, ahead.states)

    # an ack inserted around the writer: the book's count no longer matches the store's
    NodeAck.objects.bulk_create(
        [NodeAck(node_id="n-e", release=plan.release, status="failed", acked_at=T0, updated_at=T0)]
    )
    third = progress.plan_progress(plan)
    assert third.stage_counts[-1]["failed"] == 3 and full_counts == [1, 1]
    # a book that forgot the release (acks changed around the writer) cannot tell what moved
    from releases.ackbook import ack_book
    from rollouts.cohort import snapshot_of

    ack_book.invalidate()
    assert ack_book.changes(plan.release.pk, progress._watch_key(snapshot_of(plan))) is None
    progress.clear_cache()


def test_moving_acks_counts_what_a_full_count_counts(fake_clock):
    """`_updated` (the last count with the changed acks moved) equals `compute` over the same
    nodes with the new acks, through rounds of random acks: nodes taken in only by an `active`
    ack and dropped again, listed nodes, unknown nodes, silent and waiting nodes."""
    import random

    from rollouts.cohort import snapshot_of

    release = ReleaseFactory(release_id="rel-moved")
    listed = [f"m-{n:03d}" for n in range(0, 400, 37)]
    plan = RolloutPlanFactory(
        plan_id="p-moved",
        release=release,
        stages=[
            {"stage_id": "canary", "percent": 5, "nodes": listed},
            {"stage_id": "half", "percent": 40},
        ],
    )
    snap = snapshot_of(plan)
    known = sorted(f"m-{n:03d}" for n in range(400))
    rng = random.Random(13)
    now, silent_after = T0 + timedelta(minutes=11), 600.0
    acks = {node: rng.choice(progress.ACK_STATES) for node in rng.sample(known, 150)}
    counted = progress.compute(snap, known=known, acks=acks, now=now, silent_after=silent_after)
    assert 0 < counted.stage_counts[-1]["targeted"] < len(known)
    for _ in range(30):
        changed = {
            rng.choice(known): rng.choice(progress.ACK_STATES) for _ in range(rng.randint(0, 25))
        }
        # nodes not known to the fleet (yet), e.g. acking `active`: not counted
        changed[rng.choice(["m-unknown", "zz-unknown"])] = rng.choice(progress.ACK_STATES)
        acks.update(changed)
        moved = progress._updated(counted, snap, changed, now=now, silent_after=silent_after)
        full = progress.compute(snap, known=known, acks=acks, now=now, silent_after=silent_after)
        assert moved.stage_counts == full.stage_counts
        assert (moved.node_ids, moved.entries, moved.states) == (
            full.node_ids,
            full.entries,
            full.states,
        )
        counted = moved

"""The in-process cache of each channel's latest release (SQLite): a poll costs no query once
cached, and a publish is visible to the very next poll."""

from __future__ import annotations

import orjson
import pytest
from django.db import connection

from releases import services
from releases.fast import cached_latest_answer, latest_release_answer
from releases.selectors import latest_cache
from tests.factories import ReleaseFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def empty_cache():
    latest_cache.invalidate()
    yield
    latest_cache.invalidate()


sqlite_only = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="the cache is for the SQLite store (one process)"
)


@pytest.mark.skipif(connection.vendor == "sqlite", reason="PostgreSQL behaviour")
def test_postgresql_polls_always_query(django_assert_num_queries):
    """Several processes may serve one PostgreSQL database: no process may trust a cache."""
    services.release_publish(release_id="r1")
    for _ in range(2):
        with django_assert_num_queries(1):
            assert release_id(latest_release_answer({})) == "r1"
        assert cached_latest_answer({}) is None
    ReleaseFactory(release_id="r2", sequence=2)
    assert release_id(latest_release_answer({})) == "r2"


def release_id(answer):
    return orjson.loads(answer[1]).get("release_id")


@sqlite_only
def test_cached_poll_costs_no_query_and_publish_is_seen_at_once(django_assert_num_queries):
    services.release_publish(release_id="r1")
    with django_assert_num_queries(1):
        assert release_id(latest_release_answer({})) == "r1"
    with django_assert_num_queries(0):
        assert release_id(latest_release_answer({"channel": "stable"})) == "r1"
    services.release_publish(release_id="r2")
    assert release_id(latest_release_answer({})) == "r2"


@sqlite_only
def test_an_empty_channel_is_cached_until_its_first_publish(django_assert_num_queries):
    assert latest_release_answer({"channel": "dev"})[0] == 404
    with django_assert_num_queries(0):
        assert latest_release_answer({"channel": "dev"})[0] == 404
    services.release_publish(release_id="d1", channel="dev")
    assert latest_release_answer({"channel": "dev"})[0] == 200


@sqlite_only
def test_any_release_write_invalidates(django_assert_num_queries):
    ReleaseFactory(release_id="a", sequence=1)
    assert release_id(latest_release_answer({})) == "a"
    ReleaseFactory(release_id="b", sequence=2)  # not through the service: the signal clears it
    assert release_id(latest_release_answer({})) == "b"


@sqlite_only
def test_a_read_that_raced_with_a_publish_is_not_cached():
    ReleaseFactory(release_id="old", sequence=1)
    generation = latest_cache.generation()
    stale = latest_cache.get("stable")
    assert stale is None
    latest_cache.invalidate()  # a publish committed while the read was running
    latest_cache.put("stable", generation, (None, b"stale"))
    assert latest_cache.get("stable") is None
    assert release_id(latest_release_answer({})) == "old"


@sqlite_only
def test_cached_answer_for_the_event_loop_never_queries(django_assert_num_queries):
    services.release_publish(release_id="r1")
    with django_assert_num_queries(0):
        assert cached_latest_answer({}) is None  # not cached yet: use a database thread
        assert cached_latest_answer({"channel": ""})[0] == 400
    assert latest_release_answer({})[0] == 200  # fills the cache
    assert latest_release_answer({"channel": "none"})[0] == 404
    with django_assert_num_queries(0):
        assert cached_latest_answer({}) == latest_release_answer({})
        assert cached_latest_answer({"channel": "none"}) == latest_release_answer(
            {"channel": "none"}
        )
        assert cached_latest_answer({"node_id": "n1"}) is None  # rollout rules read the DB
    services.release_publish(release_id="r2")
    assert cached_latest_answer({}) is None
    assert release_id(latest_release_answer({})) == "r2"
    assert release_id(cached_latest_answer({})) == "r2"

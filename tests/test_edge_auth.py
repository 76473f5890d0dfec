"""The edge's token cache: a known token costs a dict lookup, not a database read, and a
resolved token is re-read once its time is up (so a revocation takes effect)."""

from __future__ import annotations

import asyncio

from core import dbthreads
from core.auth import Kind, Principal, Role
from core.edge import TokenCache


def test_a_token_is_resolved_once_per_ttl_and_again_after(monkeypatch):
    async def direct(fn, *args):
        return fn(*args)

    monkeypatch.setattr(dbthreads, "run_read", direct)
    answers = {"aot_a": Principal(Kind.TOKEN, "ci", Role.OPERATOR)}
    calls: list[str] = []

    def resolve(token):
        calls.append(token)
        return answers.get(token)

    clock = [100.0]
    monkeypatch.setattr("core.edge.time.monotonic", lambda: clock[0])
    cache = TokenCache(resolve, ttl=2.0)

    async def ask(token):
        return await cache.principal(token)

    assert asyncio.run(ask("aot_a")).name == "ci"
    assert asyncio.run(ask("aot_a")).name == "ci"
    assert asyncio.run(ask("aot_bad")) is None
    assert asyncio.run(ask("aot_bad")) is None
    assert calls == ["aot_a", "aot_bad"]  # hits, bad ones too, cost no read
    del answers["aot_a"]  # revoked
    clock[0] += 2.5
    assert asyncio.run(ask("aot_a")) is None
    assert calls == ["aot_a", "aot_bad", "aot_a"]


def test_the_cache_stays_bounded(monkeypatch):
    async def direct(fn, *args):
        return fn(*args)

    monkeypatch.setattr(dbthreads, "run_read", direct)
    cache = TokenCache(lambda token: None, ttl=60.0, max_entries=10)
    for i in range(25):
        asyncio.run(cache.principal(f"aot_{i}"))
    assert len(cache._entries) <= 10


def _direct(monkeypatch):
    async def direct(fn, *args):
        return fn(*args)

    monkeypatch.setattr(dbthreads, "run_read", direct)


def test_a_cached_token_is_refused_the_moment_it_expires(monkeypatch):
    _direct(monkeypatch)
    wall = [1_000.0]
    monkeypatch.setattr("core.edge.time.time", lambda: wall[0])
    token = Principal(Kind.TOKEN, "ci", Role.OPERATOR, expires_at=1_010.0)
    cache = TokenCache(lambda _: token, ttl=600.0)
    assert asyncio.run(cache.principal("aot_a")) == token
    wall[0] = 1_010.0  # still inside the cache's 600 s
    assert asyncio.run(cache.principal("aot_a")) is None


def test_a_revocation_signal_drops_the_cache_on_the_next_request(monkeypatch, tmp_path):
    from core.revocation import RevocationWatch, bump_stamp, stamp_path

    _direct(monkeypatch)
    answers = {"aot_a": Principal(Kind.TOKEN, "ci", Role.OPERATOR)}
    watch = RevocationWatch(stamp_path(tmp_path))
    cache = TokenCache(answers.get, ttl=600.0, revocations=watch)
    assert asyncio.run(cache.principal("aot_a")) is not None
    del answers["aot_a"]
    assert asyncio.run(cache.principal("aot_a")) is not None  # no signal: the cache holds
    bump_stamp(tmp_path)  # another process revoked (same data dir)
    assert asyncio.run(cache.principal("aot_a")) is None
    assert stamp_path(tmp_path).stat().st_mode & 0o777 == 0o600
    answers["aot_a"] = Principal(Kind.TOKEN, "ci", Role.OPERATOR)
    bump_stamp(tmp_path)
    bump_stamp(tmp_path)  # two revocations within one clock tick are still a change
    assert asyncio.run(cache.principal("aot_a")) is not None
    del answers["aot_a"]
    watch.notified()  # PostgreSQL NOTIFY from another host
    assert asyncio.run(cache.principal("aot_a")) is None

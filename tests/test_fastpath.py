"""The ASGI fast path in process: routing, fall-through to Django, body limit, error answers that
match the Django path, and request observation. Database behaviour over real HTTP is in
tests/test_events_e2e.py."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import Future
from typing import Any

import pytest
from django.db import OperationalError

from core import dberrors, observability
from core.edge import Guard
from core.fastpath import FastPath
from orchestrator_site.urls import FAST_ROUTES


class FakeDjango:
    """Stands in for the Django ASGI app: records what fell through."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"django"})


def call(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: list[bytes] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    parts = chunks if chunks is not None else [body]
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers if headers is not None else [(b"host", b"127.0.0.1")],
        "client": ["127.0.0.1", 40000],
    }

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def app() -> FastPath:
    return FastPath(FakeDjango(), FAST_ROUTES)


def batch(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


GOOD = {"event_id": "e", "event_type": "t", "node_id": "n", "timestamp": "2026-04-07T10:00:00Z"}


def test_health_is_answered_without_django(app):
    status, headers, body = call(app, "GET", "/v1/health")
    assert (status, body) == (200, b'{"status":"ok"}')
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == b"15"
    assert app.app.calls == []


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("DELETE", "/v1/events", None),
        ("HEAD", "/v1/health", None),
        ("GET", "/v1/fleet", None),
        ("GET", "/v1/events/", None),
        ("GET", "/v1/events", [(b"accept", b"text/html,application/xhtml+xml,*/*;q=0.8")]),
        ("POST", "/v1/events", [(b"accept", b"text/html")]),
    ],
)
def test_everything_else_falls_through_to_django(app, method, path, headers):
    status, _, body = call(app, method, path, headers=headers)
    assert (status, body) == (299, b"django")
    assert app.app.calls == [(method, path)]


def test_release_latest_answers_from_the_cache_on_the_loop_else_on_a_db_thread(app, monkeypatch):
    import releases.fast

    on_thread = []

    def answer(query: dict[str, str]) -> tuple[int, bytes, list]:
        on_thread.append(query)
        return 404, b'{"error":"no release in channel beta"}', []

    monkeypatch.setattr(releases.fast, "latest_signed_answer", answer)
    monkeypatch.setattr("core.dbthreads.call_with_reconnect", lambda fn, *a: fn(*a))
    monkeypatch.setattr(releases.fast, "cached_latest_answer", lambda query: None)
    status, _, body = call(app, "GET", "/v1/releases/latest", query=b"channel=beta&node_id=n%201")
    assert (status, body) == (404, b'{"error":"no release in channel beta"}')
    assert on_thread == [{"channel": "beta", "node_id": "n 1"}]

    monkeypatch.setattr(
        releases.fast, "cached_latest_answer", lambda query: (200, b'{"release_id":"r1"}')
    )
    status, _, body = call(app, "GET", "/v1/releases/latest", query=b"channel=beta")
    assert (status, body) == (200, b'{"release_id":"r1"}')
    assert len(on_thread) == 1  # the cached answer needed no database thread
    assert app.app.calls == []  # and Django never saw either request


def test_disallowed_host_is_refused_by_the_edge_on_both_paths(settings):
    settings.ALLOWED_HOSTS = ["orchestrator.example"]
    django = FakeDjango()
    app = FastPath(Guard(django), FAST_ROUTES)
    for method, path in [("GET", "/v1/health"), ("GET", "/v1/fleet")]:  # fast, Django
        status, headers, body = call(app, method, path, headers=[(b"host", b"evil.example")])
        assert (status, json.loads(body)) == (400, {"error": "bad request"})
        assert headers[b"content-type"] == b"application/json"
    assert django.calls == []
    allowed = [(b"host", b"orchestrator.example:8888")]
    assert call(app, "GET", "/v1/health", headers=allowed)[0] == 200
    assert call(app, "GET", "/v1/fleet", headers=allowed)[0] == 299
    assert django.calls == [("GET", "/v1/fleet")]


def test_body_over_the_limit_is_413_by_length_and_while_receiving(app, settings):
    settings.MAX_REQUEST_BODY_BYTES = 1000
    declared = [(b"content-length", b"5000")]
    status, headers, body = call(app, "POST", "/v1/events", b"x" * 5000, headers=declared)
    assert status == 413
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {
        "error": "request body is larger than the limit of 1000 bytes",
        "limit": 1000,
    }
    status, _, body = call(app, "POST", "/v1/events", chunks=[b"x" * 600, b"x" * 600])
    assert status == 413
    assert json.loads(body)["limit"] == 1000


def test_validation_errors_match_the_django_path(app, api, db):
    bodies = [
        batch(GOOD, {**GOOD, "event_id": "f", "timestamp": "2026-04-07T10:00:00"}),
        batch({**GOOD, "node_id": ""}),
        b'{"events": 5}',
        b"[]",
    ]
    for raw in bodies:
        fast_status, _, fast_body = call(app, "POST", "/v1/events", raw)
        django = api.post("/v1/events", data=raw, content_type="application/json")
        assert fast_status == django.status_code == 400
        assert json.loads(fast_body) == django.json()
    for query in ["limit=0", "limit=abc", "before=x"]:
        fast_status, _, fast_body = call(app, "GET", "/v1/events", query=query.encode())
        django = api.get("/v1/events?" + query)
        assert fast_status == django.status_code == 400
        assert json.loads(fast_body) == django.json()


def test_malformed_json_is_400(app):
    status, _, body = call(app, "POST", "/v1/events", b'{"events": [')
    assert status == 400
    assert json.loads(body)["error"].startswith("malformed JSON body")


def _failing_submit(exc: BaseException):
    def submit(rows):
        future: Future = Future()
        future.set_exception(exc)
        return future

    return submit


def test_writer_locked_past_busy_timeout_is_503_with_retry_after(app, monkeypatch):
    monkeypatch.setattr(
        "events.writer.submit", _failing_submit(OperationalError("database is locked"))
    )
    status, headers, body = call(app, "POST", "/v1/events", batch(GOOD))
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert "busy" in json.loads(body)["error"]


def test_disk_full_is_507(app, monkeypatch):
    exc = OperationalError("database or disk is full")
    exc.__cause__ = sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr("events.writer.submit", _failing_submit(exc))
    status, _, body = call(app, "POST", "/v1/events", batch(GOOD))
    assert status == 507
    assert "full" in json.loads(body)["error"]


class _CorruptConnection:
    def execute(self, *args: Any) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")


def test_corruption_on_a_read_ends_the_process(app, monkeypatch):
    died: list[BaseException] = []

    def die(exc: BaseException) -> None:
        died.append(exc)
        raise SystemExit(70)

    monkeypatch.setattr(dberrors, "die_corrupt", die)
    monkeypatch.setattr("core.dbthreads.inline_sqlite", lambda: _CorruptConnection())
    with pytest.raises(SystemExit):
        call(app, "GET", "/v1/events", query=b"node_id=n")
    assert "malformed" in str(died[0])


def test_unexpected_errors_are_json_never_html(app, monkeypatch):
    monkeypatch.setattr("events.writer.submit", _failing_submit(RuntimeError("bug")))
    status, headers, body = call(app, "POST", "/v1/events", batch(GOOD))
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"error": "internal error; the server log has the details"}
    assert status not in (200, 503, 507)


def test_every_answer_is_observed_with_the_route_template(app, monkeypatch):
    seen: list[tuple[str, str, int]] = []
    monkeypatch.setattr(
        observability, "_request_hooks", [lambda m, r, s, d: seen.append((m, r, s))]
    )
    call(app, "GET", "/v1/health")
    call(app, "GET", "/v1/events", query=b"limit=0")
    call(app, "DELETE", "/v1/events")  # Django's middleware observes what falls through
    assert seen == [("GET", "/v1/health", 200), ("GET", "/v1/events", 400)]

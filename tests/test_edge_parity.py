"""Both request paths answer every fast route alike: the same good and bad requests go to the
fast path (`core.fastpath` with the URLconf's `FAST_ROUTES`) and to Django/DRF behind the same edge
(`core.edge.Guard` around Django's ASGI handler, as in orchestrator_site/asgi.py), and status, body
bytes and headers must be identical.

Headers are compared as a sorted list with lower-cased names (HTTP field names are
case-insensitive and the order of different fields carries no meaning); nothing else is ignored.
Both paths sit behind `core.requestid.with_request_id` as in asgi.py, and every request carries
the same `X-Request-ID` (`REQUEST_ID`), so the echoed id is compared too.
`Date` and `Server` do not appear at the ASGI level: the HTTP engine (`core.http1`, or daphne on
TLS) adds them to both paths alike.
The one documented difference is not exercised: the fast path accepts any `Content-Type` on
`POST /v1/events`, the DRF path wants JSON (docs/events.md), so every body here is sent as JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.db import OperationalError, connection
from django.urls import resolve

from core.edge import Guard
from core.fastpath import FastPath
from core.observability import route_template
from core.requestid import with_request_id
from events.models import Event
from events.services import events_store
from orchestrator_site.urls import FAST_ROUTES
from releases import services as release_services
from releases.models import NodeAck
from releases.services import node_acks_store

pytestmark = pytest.mark.django_db(transaction=True)

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
REQUEST_ID = b"parity-0123456789"


class Recorder:
    """Stands between the fast path and Django: records which requests fell through."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


def call(
    app: Any,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    body: bytes = b"",
    chunks: list[bytes] | None = None,
    host: bytes = b"127.0.0.1",
    length: bool = True,
    request_id: bytes | None = REQUEST_ID,
) -> Answer:
    parts = chunks if chunks is not None else [body]
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    headers = [(b"host", host), (b"accept", b"application/json")]
    if request_id is not None:
        headers.append((b"x-request-id", request_id))
    if method == "POST":
        headers.append((b"content-type", b"application/json"))
        if length:
            headers.append((b"content-length", str(sum(map(len, parts))).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ["127.0.0.1", 40000],
        "server": ["127.0.0.1", 8888],
    }
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await asyncio.Event().wait()  # the client stays connected until it has its answer
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(run())
    start = sent[0]
    headers_out = sorted((name.lower(), value) for name, value in start["headers"])
    return start["status"], headers_out, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture(autouse=True)
def short_lived_db_threads(monkeypatch):
    """The fast path's database threads (the events writer, the reader pool) keep their
    connections for the life of the process; here each call runs on a thread of its own that
    closes its connection, so PostgreSQL can drop the test database afterwards. The functions run
    there are the real ones (`events_store`, the selectors)."""

    def on_a_thread(fn: Callable[[], Any]) -> Future:
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                connection.close()

        threading.Thread(target=run).start()
        return future

    def submit(rows: list[Any]) -> Future:
        return on_a_thread(lambda: events_store(batches=[rows])[0])

    async def run_read(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(on_a_thread(lambda: fn(*args)))

    def submit_ack(write: Any) -> Future:
        def store() -> Any:
            result = node_acks_store(writes=[write])[0]
            if isinstance(result, Exception):
                raise result
            return result

        return on_a_thread(store)

    monkeypatch.setattr("events.writer.submit", submit)
    monkeypatch.setattr("releases.writer.submit", submit_ack)
    monkeypatch.setattr("core.dbthreads.run_read", run_read)


@pytest.fixture
def paths() -> tuple[Any, Recorder]:
    """(the fast path with Django behind it, the Django path alone)."""
    django = Recorder(with_request_id(Guard(ASGIHandler())))  # passes through behind the fast path
    return with_request_id(FastPath(django, FAST_ROUTES)), django


def _no_events() -> None:
    Event.objects.all().delete()


def _some_events() -> None:
    if Event.objects.filter(event_id__startswith="seed-").count() == 5:
        return  # the same rows (and ids, which the page cursor shows) for both paths
    _no_events()
    fast = FastPath(Guard(ASGIHandler()), FAST_ROUTES)
    events = [
        {
            "event_id": f"seed-{i}",
            "event_type": "boot" if i % 2 else "health",
            "node_id": f"node-{i % 3}",
            "timestamp": "2026-04-07T10:00:00Z",
            "payload": {"line_sep": "a\u2028b", "big": 2**62, "ratio": 0.1, "n": i},
        }
        for i in range(5)
    ]
    status, _, _ = call(fast, "POST", "/v1/events", body=json.dumps({"events": events}).encode())
    assert status == 200


def _a_release() -> None:
    release_services.release_publish(release_id="r-1", channel="stable", metadata={"k": "\u00e9"})


def _a_release_no_acks() -> None:
    if not release_services.Release.objects.filter(release_id="r-1").exists():
        _a_release()
    NodeAck.objects.all().delete()


def _a_release_one_ack() -> None:
    _a_release_no_acks()
    release_services.node_acks_store(
        writes=[release_services.ack_write(node_id="n1", release_id="r-1", status="pending")]
    )


FROZEN = datetime(2026, 4, 7, 10, 0, 0, 123456, tzinfo=UTC)


def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ack's answer carries `updated_at` (now): the same now on both paths."""
    monkeypatch.setattr("releases.services.timezone.now", lambda: FROZEN)


def _ack_store_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    _frozen_clock(monkeypatch)

    def locked() -> Any:
        raise OperationalError("database is locked")

    monkeypatch.setattr("releases.services._ack_statements", locked)


def _a_release_with_plan() -> None:
    """Two releases and a rollout plan of the newer: the signed answer names the plan."""
    from rollouts.models import RolloutPlan
    from rollouts.services import rollout_publish

    release_services.release_publish(release_id="r-0", channel="stable")
    _a_release()
    if not RolloutPlan.objects.filter(plan_id="plan-parity").exists():
        rollout_publish(
            raw_spec=b'{"plan_id": "plan-parity", "release_id": "r-1", "stages": '
            b'[{"stage_id": "all", "percent": 50}]}'
        )


def _rollouts_store_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    def locked(plan: Any) -> Any:
        raise OperationalError("database is locked")

    monkeypatch.setattr("rollouts.selectors.plan_status", locked)


def _busy(monkeypatch: pytest.MonkeyPatch) -> None:
    def locked() -> str:
        raise OperationalError("database is locked")

    monkeypatch.setattr("events.services._insert_sql", locked)


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    def full() -> str:
        raise OperationalError("database or disk is full")

    monkeypatch.setattr("events.services._insert_sql", full)


def _release_store_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    def locked(**kwargs: Any) -> Any:
        raise OperationalError("database is locked")

    monkeypatch.setattr("releases.fast.release_latest_decision", locked)


def _unexpected(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(**kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("releases.fast.release_latest_decision", bug)


GOOD_EVENT = {
    "event_id": "e-1",
    "event_type": "boot",
    "node_id": "node-1",
    "timestamp": "2026-04-07T10:00:00.123456789+02:00",
    "release_id": None,
    "payload": {"line_sep": "x\u2028y", "big": 2**62, "float": 1.5e-7, "text": "caf\u00e9"},
}


def _batch(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


EVENTS, LATEST = "/v1/events", "/v1/releases/latest"
STATUS = "/v1/rollouts/plan-parity/status"
OUT_OF_RANGE = (
    b'{"events": [{"event_id": "e", "event_type": "t", "node_id": "n",'
    b' "timestamp": "2026-04-07T10:00:00Z", "x": 1e400}]}'
)


def post(body: bytes = b"", **kwargs: Any) -> dict[str, Any]:
    return dict(method="POST", path=EVENTS, body=body, **kwargs)


def get(path: str, query: bytes = b"", **kwargs: Any) -> dict[str, Any]:
    return dict(method="GET", path=path, query=query, **kwargs)


def event(**changes: Any) -> bytes:
    return _batch({**GOOD_EVENT, **changes})


ACK = "/v1/nodes/n1/ack"


def ack(body: Any, path: str = ACK) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return dict(method="POST", path=path, body=raw)


GOOD_ACK = {"release_id": "r-1", "status": "active"}
FULL_ACK = {
    **GOOD_ACK,
    "lock_fingerprint": "",
    "message": "caf\u00e9 x\u2028y",
    "acked_at": "2026-04-07T12:00:00.5+02:00",
}


# (id, request, state set up before each path's request, failure injected into both)
CASES: list[tuple[str, dict[str, Any], Callable[[], None] | None, Any]] = [
    ("health", get("/v1/health"), None, None),
    ("ingest-good", post(_batch(GOOD_EVENT)), _no_events, None),
    ("ingest-dedup", post(_batch(GOOD_EVENT, GOOD_EVENT)), _no_events, None),
    ("ingest-leap-second", post(event(timestamp="2016-12-31T23:59:60Z")), _no_events, None),
    ("ingest-empty-body", post(b""), None, None),
    ("ingest-bad-json", post(b'{"events": ['), None, None),
    ("ingest-nan", post(b'{"events": [{"x": NaN}]}'), None, None),
    ("ingest-not-an-object", post(b"[]"), None, None),
    ("ingest-events-not-a-list", post(b'{"events": 5}'), None, None),
    ("ingest-missing-field", post(event(node_id=None)), None, None),
    ("ingest-nul", post(event(node_id="n\u0000")), None, None),
    ("ingest-bad-timestamp", post(event(timestamp="2026-04-07T10:00:00")), None, None),
    ("ingest-number-out-of-range", post(OUT_OF_RANGE), None, None),
    ("ingest-oversize-declared", post(b"x" * 3000), None, None),
    ("ingest-oversize-chunked", post(chunks=[b"x" * 600] * 5, length=False), None, None),
    ("ingest-busy", post(_batch(GOOD_EVENT)), _no_events, _busy),
    ("ingest-disk-full", post(_batch(GOOD_EVENT)), _no_events, _disk_full),
    ("list-good", get(EVENTS), _some_events, None),
    ("list-filtered-page", get(EVENTS, b"node_id=node-1&limit=1"), _some_events, None),
    ("list-limit-zero", get(EVENTS, b"limit=0"), None, None),
    ("list-limit-empty", get(EVENTS, b"limit="), None, None),
    ("list-limit-text", get(EVENTS, b"limit=abc"), None, None),
    ("list-bad-cursor", get(EVENTS, b"before=x"), None, None),
    ("latest-good", get(LATEST, b"channel=stable"), _a_release, None),
    ("latest-good-node", get(LATEST, b"channel=stable&node_id=n1"), _a_release, None),
    (
        "latest-good-node-plan",
        get(LATEST, b"channel=stable&node_id=n1"),
        _a_release_with_plan,
        None,
    ),
    ("latest-unknown-channel", get(LATEST, b"channel=nope"), None, None),
    ("latest-empty-channel", get(LATEST, b"channel="), None, None),
    ("latest-long-node-id", get(LATEST, b"node_id=" + b"n" * 257), None, None),
    ("latest-busy", get(LATEST, b"node_id=n1"), _a_release, _release_store_busy),
    ("latest-unexpected-error", get(LATEST, b"node_id=n1"), None, _unexpected),
    ("ack-good", ack(GOOD_ACK), _a_release_no_acks, _frozen_clock),
    ("ack-update", ack(GOOD_ACK), _a_release_one_ack, _frozen_clock),
    ("ack-every-field", ack(FULL_ACK), _a_release_no_acks, _frozen_clock),
    ("ack-null-optionals", ack({**GOOD_ACK, "message": None}), _a_release_no_acks, _frozen_clock),
    ("ack-unknown-release", ack({**GOOD_ACK, "release_id": "ghost"}), None, _frozen_clock),
    ("ack-busy", ack(GOOD_ACK), _a_release_no_acks, _ack_store_busy),
    ("ack-bad-status", ack({**GOOD_ACK, "status": "activated"}), None, None),
    ("ack-missing-release", ack({"status": "active"}), None, None),
    ("ack-blank-release", ack({**GOOD_ACK, "release_id": ""}), None, None),
    ("ack-number-release", ack({**GOOD_ACK, "release_id": 7}), None, None),
    ("ack-nul-message", ack({**GOOD_ACK, "message": "a\u0000b"}), None, None),
    ("ack-naive-time", ack({**GOOD_ACK, "acked_at": "2026-04-07T10:00:00"}), None, None),
    ("ack-unknown-field", ack({**GOOD_ACK, "x": 1}), _a_release_no_acks, _frozen_clock),
    ("ack-bad-json", ack(b'{"release_id": '), None, None),
    ("ack-not-an-object", ack(b"[]"), None, None),
    ("ack-long-node-id", ack(GOOD_ACK, "/v1/nodes/" + "n" * 257 + "/ack"), None, None),
    ("status-good", get(STATUS), _a_release_with_plan, None),
    ("status-unknown-plan", get("/v1/rollouts/ghost/status"), None, None),
    ("status-long-plan-id", get("/v1/rollouts/" + "p" * 300 + "/status"), None, None),
    ("status-busy", get(STATUS), _a_release_with_plan, _rollouts_store_busy),
    ("wrong-method", dict(method="DELETE", path=EVENTS), None, None),
    ("wrong-method-status", dict(method="POST", path=STATUS), _a_release_with_plan, None),
    ("wrong-method-health", dict(method="PUT", path="/v1/health"), None, None),
    ("disallowed-host", get("/v1/health", host=b"evil.example"), None, None),
]


# Ack bodies the fast path leaves to the DRF view (anything but a plain valid ack).
DELEGATED = {
    "ack-bad-status",
    "ack-missing-release",
    "ack-blank-release",
    "ack-number-release",
    "ack-nul-message",
    "ack-naive-time",
    "ack-unknown-field",
    "ack-bad-json",
    "ack-not-an-object",
    "ack-long-node-id",
}


@pytest.mark.parametrize(
    ("case_id", "request_args", "state", "failure"), CASES, ids=[c[0] for c in CASES]
)
def test_both_paths_answer_alike(
    paths, settings, monkeypatch, case_id, request_args, state, failure
):
    settings.MAX_REQUEST_BODY_BYTES = 2000
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    fast, django = paths
    if failure is not None:
        failure(monkeypatch)
    if state is not None:
        state()
    fast_answer = call(fast, **request_args)
    fell_through = django.calls
    if state is not None:
        state()
    django_answer = call(django, **request_args)
    assert fast_answer == django_answer
    assert (b"x-request-id", REQUEST_ID) in fast_answer[1]
    # The fast route was answered by the fast path itself (a method it does not route goes to
    # Django, and so does an ack body that is not a plain valid ack: DRF answers it).
    answered_by_fast = _is_fast(request_args["method"], request_args["path"])
    answered_by_fast = answered_by_fast and case_id not in DELEGATED
    assert fell_through == (0 if answered_by_fast else 1)


def _routes(method: str, path: str) -> list[Any]:
    return [
        route
        for route in FAST_ROUTES
        if method == route.method
        and (path == route.path if route.pattern is None else route.pattern.fullmatch(path))
    ]


def _is_fast(method: str, path: str) -> bool:
    return bool(_routes(method, path))


def test_the_cases_cover_every_fast_route():
    covered = {(args["method"], args["path"]) for _, args, _, _ in CASES}
    for route in FAST_ROUTES:
        assert any(route in _routes(method, path) for method, path in covered), route.path


def test_a_plain_ack_is_answered_by_the_fast_path(paths, settings):
    fast, django = paths
    _a_release_no_acks()
    status, headers, body = call(fast, **ack(GOOD_ACK))
    assert django.calls == 0
    assert status == 201
    assert json.loads(body)["status"] == "active" and json.loads(body)["node_id"] == "n1"
    assert (b"allow", b"POST, OPTIONS") in headers
    status, _, _ = call(fast, **ack({**GOOD_ACK, "x": 1}))  # DRF ignores the unknown field
    assert (status, django.calls) == (200, 1)


def test_good_answers_are_the_contract_s(paths, settings):
    """The parity above is not parity of two wrong answers: spot-check the bodies."""
    fast, _ = paths
    _no_events()
    status, headers, body = call(fast, "POST", "/v1/events", body=_batch(GOOD_EVENT))
    assert (status, body) == (200, b'{"received":1,"inserted":1,"deduped":0}')
    assert (b"allow", b"GET, POST, HEAD, OPTIONS") in headers
    status, _, body = call(fast, "GET", "/v1/events")
    assert status == 200
    assert json.loads(body)["events"][0]["payload"]["big"] == 2**62
    assert "\u2028".encode() in body  # stored and answered as sent, on both paths
    settings.MAX_REQUEST_BODY_BYTES = 100
    fresh = FastPath(Guard(ASGIHandler()), FAST_ROUTES)  # reads the new limit
    status, headers, body = call(fresh, **post(chunks=[b"x" * 60] * 3, length=False))
    assert status == 413
    assert json.loads(body) == {
        "error": "request body is larger than the limit of 100 bytes",
        "limit": 100,
    }


def test_good_poll_answers_carry_the_signed_desired_state(paths):
    """The parity above includes the three headers; here: they are there (docs/trust.md)."""
    fast, _ = paths
    _a_release()
    for query in (b"channel=stable", b"channel=stable&node_id=n1"):
        status, headers, _ = call(fast, "GET", LATEST, query=query)
        assert status == 200
        names = {name for name, _ in headers}
        assert {
            b"x-autonomy-desired-state",
            b"x-autonomy-desired-state-signature",
            b"x-autonomy-key-id",
        } <= names
    status, headers, _ = call(fast, "GET", LATEST, query=b"channel=nope")
    assert status == 404
    assert b"x-autonomy-desired-state" not in {name for name, _ in headers}


def test_fast_route_table_matches_the_urlconf(paths):
    """Every fast route is a route of the URLconf whose DRF view answers the same method."""
    assert FAST_ROUTES
    for route in FAST_ROUTES:
        match = resolve(route.path)
        assert route_template(match.route) == route.path
        assert hasattr(match.func.view_class, route.method.lower())
        # The same Allow as DRF sends on that route (HEAD wherever GET is).
        status, headers, _ = call(paths[1], "OPTIONS", route.path)
        assert status == 200
        assert (b"allow", route.allow) in headers


def test_a_request_id_is_generated_when_missing_or_unusable(paths):
    """No id, or one that is too long or has unsafe characters: each answer gets a fresh one,
    on both paths; a good id is echoed as sent."""
    for app in paths:
        for sent in (None, b"x" * 129, b"a b", b"id\r\nX-Evil: 1", "\u00e9".encode()):
            ids = []
            for _ in range(2):
                _status, headers, _ = call(app, "GET", "/v1/health", request_id=sent)
                [echoed] = [value for name, value in headers if name == b"x-request-id"]
                assert echoed != sent and 1 <= len(echoed) <= 128
                ids.append(echoed)
            assert ids[0] != ids[1]
        good = b"0f8fad5b-d9cb-469f-a165-70867728950e"
        _status, headers, _ = call(app, "GET", "/v1/health", request_id=good)
        assert (b"x-request-id", good) in headers


def test_the_rollout_status_is_answered_by_the_fast_path(paths, monkeypatch):
    """The operator's status read: the plan's status from the fast path, its 404 and its 503."""
    fast, django = paths
    _a_release_with_plan()
    status, headers, body = call(fast, "GET", STATUS)
    assert (status, django.calls) == (200, 0)
    answer = json.loads(body)
    assert (answer["plan_id"], answer["phase"]) == ("plan-parity", "published")
    assert [stage["stage_id"] for stage in answer["stages"]] == ["all"]
    assert (b"allow", b"GET, HEAD, OPTIONS") in headers
    status, _, body = call(fast, "GET", "/v1/rollouts/ghost/status")
    assert status == 404
    assert json.loads(body) == {"error": "no rollout plan 'ghost'", "plan_id": "ghost"}
    _rollouts_store_busy(monkeypatch)
    status, headers, _ = call(fast, "GET", STATUS)
    assert status == 503
    assert b"retry-after" in {name for name, _ in headers}
    assert django.calls == 0

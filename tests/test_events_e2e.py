"""End to end against the real `autonomy-orchestrator serve`: ingest and query over HTTP (the fast
path), concurrent clients, the browsable API, restart on the same data dir."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.liveserver import ServeProcess

pytestmark = pytest.mark.e2e

TIMEOUT = 10


def ev(event_id: str, node: str = "node-a", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": "app.heartbeat",
        "node_id": node,
        "timestamp": "2026-04-07T10:00:00+02:00",
        **extra,
    }


def test_ingest_query_restart_and_find_the_data(tmp_path):
    data = tmp_path / "data"
    odd = ev("e-1", extra={"k": [1, 2.5, None]}, big=-(2**63), text="ünï")
    with ServeProcess(data) as srv, requests.Session() as http:
        url = srv.url("/v1/events")
        first = http.post(
            url, json={"events": [odd, ev("e-2", "node-b"), ev("e-1")]}, timeout=TIMEOUT
        )
        assert first.status_code == 200
        assert first.headers["Content-Type"] == "application/json"
        assert first.json() == {"received": 3, "inserted": 2, "deduped": 1}
        again = http.post(url, json={"events": [ev("e-2", "node-b"), ev("e-3")]}, timeout=TIMEOUT)
        assert again.json() == {"received": 2, "inserted": 1, "deduped": 1}

        bad = http.post(
            url, json={"events": [ev("e-9"), {**ev("e-8"), "timestamp": "x"}]}, timeout=TIMEOUT
        )
        assert bad.status_code == 400
        assert (bad.json()["index"], bad.json()["field"]) == (1, "timestamp")

        listed = http.get(url, timeout=TIMEOUT).json()
        assert [e["event_id"] for e in listed["events"]] == ["e-3", "e-2", "e-1"]
        assert listed["events"][2] == odd
        only_a = http.get(url, params={"node_id": "node-a", "limit": 1}, timeout=TIMEOUT).json()
        assert [e["event_id"] for e in only_a["events"]] == ["e-3"]
        older = http.get(
            url, params={"node_id": "node-a", "before": only_a["next_before"]}, timeout=TIMEOUT
        ).json()
        assert [e["event_id"] for e in older["events"]] == ["e-1"]
        assert http.get(url, params={"limit": "0"}, timeout=TIMEOUT).status_code == 400

        # a browser gets the browsable API from Django, with the same data
        html = http.get(url, headers={"Accept": "text/html"}, timeout=TIMEOUT)
        assert html.status_code == 200
        assert html.headers["Content-Type"].startswith("text/html")
        assert "e-3" in html.text
        wrong = http.delete(url, timeout=TIMEOUT)
        assert wrong.status_code == 405
        assert "POST" in wrong.headers["Allow"]
        assert http.get(srv.url("/v1/nope"), timeout=TIMEOUT).json()["error"]
        # the fast path's requests reach the access log like Django's
        assert srv.stop() == 0
        assert "POST /v1/events 200" in srv.logs()
        assert "GET /v1/events 400" in srv.logs()

    with ServeProcess(data) as srv:
        listed = requests.get(srv.url("/v1/events"), timeout=TIMEOUT).json()
        assert [e["event_id"] for e in listed["events"]] == ["e-3", "e-2", "e-1"]
        assert listed["events"][2] == odd
        dup = requests.post(srv.url("/v1/events"), json={"events": [ev("e-1")]}, timeout=TIMEOUT)
        assert dup.json() == {"received": 1, "inserted": 0, "deduped": 1}


def test_concurrent_clients_lose_nothing_and_count_every_duplicate_once(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        url = srv.url("/v1/events")

        def send(client: int) -> dict[str, int]:
            # every client sends 5 batches; events (node_id, event_id) overlap between
            # neighbouring clients
            totals = {"received": 0, "inserted": 0, "deduped": 0}
            with requests.Session() as http:
                for b in range(5):
                    ids = [f"c{(client + k % 2) % 8}-b{b}-{k // 2}" for k in range(100)]
                    body = {"events": [ev(i, "node-" + i.split("-")[0]) for i in ids]}
                    response = http.post(url, json=body, timeout=TIMEOUT)
                    assert response.status_code == 200, response.text
                    for key, value in response.json().items():
                        totals[key] += value
            return totals

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(send, range(8)))
        inserted = sum(r["inserted"] for r in results)
        deduped = sum(r["deduped"] for r in results)
        assert sum(r["received"] for r in results) == 8 * 5 * 100
        distinct = {f"c{c}-b{b}-{k}" for c in range(8) for b in range(5) for k in range(50)}
        assert inserted == len(distinct)
        assert deduped == 8 * 5 * 100 - len(distinct)
        everything = requests.get(url, params={"limit": 1000}, timeout=TIMEOUT).json()
        seen = []
        page = everything
        while True:
            seen += [e["event_id"] for e in page["events"]]
            if page["next_before"] is None:
                break
            page = requests.get(
                url, params={"limit": 1000, "before": page["next_before"]}, timeout=TIMEOUT
            ).json()
        assert sorted(seen) == sorted(distinct)


def test_body_limit_on_both_paths(tmp_path):
    env = {"AUTONOMY_MAX_BODY_BYTES": "2000"}
    with ServeProcess(tmp_path / "data", env=env) as srv:
        big = {"events": [ev(f"e-{i}", pad="x" * 100) for i in range(30)]}
        fast = requests.post(srv.url("/v1/events"), json=big, timeout=TIMEOUT)
        django = requests.post(
            srv.url("/v1/events"), json=big, headers={"Accept": "text/html"}, timeout=TIMEOUT
        )
        for response in (fast, django):
            assert response.status_code == 413
            assert response.headers["Content-Type"] == "application/json"
            assert response.json()["limit"] == 2000
        assert requests.get(srv.url("/v1/events"), timeout=TIMEOUT).json()["count"] == 0


def _squat(srv: ServeProcess, http: requests.Session) -> None:
    """node-a posts node-b's next event id first; node-b's real crash report must still be
    stored (the key is (node_id, event_id), API.md §6), and node-b's retry is a dedup."""
    url = srv.url("/v1/events")
    squat = http.post(url, json={"events": [ev("node-b-000042", "node-a")]}, timeout=TIMEOUT)
    assert squat.json() == {"received": 1, "inserted": 1, "deduped": 0}
    crash = {**ev("node-b-000042", "node-b"), "event_type": "app.crash"}
    real = http.post(url, json={"events": [crash]}, timeout=TIMEOUT)
    assert real.status_code == 200, real.text
    assert real.json() == {"received": 1, "inserted": 1, "deduped": 0}
    retry = http.post(url, json={"events": [crash, crash]}, timeout=TIMEOUT)
    assert retry.json() == {"received": 2, "inserted": 0, "deduped": 2}
    mine = http.get(url, params={"node_id": "node-b"}, timeout=TIMEOUT).json()["events"]
    assert mine == [crash]
    theirs = http.get(url, params={"node_id": "node-a"}, timeout=TIMEOUT).json()["events"]
    assert [e["event_type"] for e in theirs] == ["app.heartbeat"]


def test_an_event_id_squatted_by_another_node_does_not_hide_the_real_event(tmp_path):
    with ServeProcess(tmp_path / "data") as srv, requests.Session() as http:
        _squat(srv, http)


@pytest.mark.postgres
def test_an_event_id_squatted_by_another_node_does_not_hide_the_real_event_on_postgresql(
    tmp_path,
):
    from tests.pg import require_postgres, temp_database

    require_postgres()
    with (
        temp_database() as url,
        ServeProcess(tmp_path / "data", "--postgres-url", url) as srv,
        requests.Session() as http,
    ):
        _squat(srv, http)


@pytest.mark.postgres
def test_ingest_and_list_on_postgresql(tmp_path):
    from tests.pg import require_postgres, temp_database

    require_postgres()
    with temp_database() as url:
        args = ("--postgres-url", url)
        with ServeProcess(tmp_path / "data", *args) as srv, requests.Session() as http:
            events_url = srv.url("/v1/events")
            body = {"events": [ev("p-1", big=-(2**63)), ev("p-2"), ev("p-1"), ev("p-3", "node-b")]}
            first = http.post(events_url, json=body, timeout=TIMEOUT)
            assert first.status_code == 200, first.text
            assert first.json() == {"received": 4, "inserted": 3, "deduped": 1}
            again = http.post(events_url, json={"events": [ev("p-2"), ev("p-4")]}, timeout=TIMEOUT)
            assert again.json() == {"received": 2, "inserted": 1, "deduped": 1}
            page = http.get(
                events_url, params={"node_id": "node-a", "limit": 2}, timeout=TIMEOUT
            ).json()
            assert [e["event_id"] for e in page["events"]] == ["p-4", "p-2"]
            rest = http.get(
                events_url,
                params={"node_id": "node-a", "before": page["next_before"]},
                timeout=TIMEOUT,
            ).json()
            assert rest["events"] == [ev("p-1", big=-(2**63))]
        # Another replica (its own data dir, the same keys: API.md §7) reads the same events.
        second = tmp_path / "data2"
        second.mkdir(mode=0o700)
        for key in ("rollout-signing.key", "django-secret.key"):
            shutil.copy2(tmp_path / "data" / key, second / key)
        with ServeProcess(second, *args) as srv:
            listed = requests.get(srv.url("/v1/events"), timeout=TIMEOUT).json()
            assert listed["count"] == 4

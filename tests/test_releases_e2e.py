"""End to end against the real `autonomy-orchestrator serve`: releases, acks, fleet, admin
static files, createsuperuser; parallel publishes on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import POSTGRES_URL
from tests.liveserver import ServeProcess, cli

pytestmark = pytest.mark.e2e

TIMEOUT = 10


def test_publish_ack_and_fleet_over_http(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        publish_ack_and_fleet(srv)


def publish_ack_and_fleet(srv: ServeProcess) -> None:
    with requests.Session() as http:

        def post(path, body):
            return http.post(srv.url(path), json=body, timeout=TIMEOUT)

        def get(path, **params):
            return http.get(srv.url(path), params=params, timeout=TIMEOUT)

        assert get("/v1/releases/latest").status_code == 404
        first = post("/v1/releases", {"release_id": "rel-001", "policy_ref": "p:1"})
        assert first.status_code == 201, first.text
        assert first.json()["sequence"] == 1
        assert get("/v1/releases/latest").json()["release_id"] == "rel-001"
        second = post("/v1/releases", {"release_id": "rel-002", "policy_ref": "p:2"})
        assert second.status_code == 201
        assert second.json()["sequence"] == 2
        # the poll path sees the new release at once (no stale in-process cache)
        latest = get("/v1/releases/latest", channel="stable")
        assert latest.status_code == 200
        assert latest.headers["Content-Type"] == "application/json"
        assert latest.json() == second.json()
        assert get("/v1/releases/latest", node_id="node-a").json()["release_id"] == "rel-002"
        same, changed = {"release_id": "rel-002", "policy_ref": "p:2"}, {"release_id": "rel-002"}
        assert post("/v1/releases", same).status_code == 200
        assert post("/v1/releases", changed).status_code == 409

        # two nodes send heartbeats; node-c only acks
        events = [
            {
                "event_id": f"e-{node}",
                "event_type": "app.heartbeat",
                "node_id": node,
                "timestamp": "2026-11-27T10:00:00Z",
            }
            for node in ("node-a", "node-b")
        ]
        assert post("/v1/events", {"events": events}).status_code == 200

        acks = [
            ("node-a", "rel-001", "active"),
            ("node-b", "rel-001", "active"),
            ("node-a", "rel-002", "pending"),
            ("node-b", "rel-002", "failed"),
            ("node-c", "rel-002", "acknowledged"),
        ]
        for node, release, status in acks:
            response = post(f"/v1/nodes/{node}/ack", {"release_id": release, "status": status})
            assert response.status_code == 201, response.text
        again = post("/v1/nodes/node-a/ack", {"release_id": "rel-002", "status": "active"})
        assert again.status_code == 200
        assert (
            post("/v1/nodes/node-a/ack", {"release_id": "nope", "status": "active"}).status_code
            == 404
        )

        one = get("/v1/releases/rel-001/acks").json()
        assert one["count"] == 2
        assert {a["node_id"]: a["status"] for a in one["acks"]} == {
            "node-a": "active",
            "node-b": "active",
        }
        two = get("/v1/releases/rel-002/acks").json()
        assert {a["node_id"]: a["status"] for a in two["acks"]} == {
            "node-a": "active",
            "node-b": "failed",
            "node-c": "acknowledged",
        }
        mine = get("/v1/nodes/node-a/acks").json()
        assert [a["release_id"] for a in mine["acks"]] == ["rel-002", "rel-001"]

        fleet = get("/v1/fleet", stale_threshold="300")
        assert fleet.status_code == 200
        body = fleet.json()
        assert (body["total"], body["up"], body["stale"], body["unknown"]) == (3, 2, 0, 1)
        assert body["latest_release"]["release_id"] == "rel-002"
        nodes = {n["node_id"]: n for n in body["nodes"]}
        assert (
            nodes["node-a"]["node_status"],
            nodes["node-a"]["release_id"],
            nodes["node-a"]["ack_status"],
            nodes["node-a"]["sequence"],
        ) == ("up", "rel-002", "active", 2)
        assert nodes["node-b"]["ack_status"] == "failed"
        assert (nodes["node-c"]["node_status"], nodes["node-c"]["last_seen"]) == ("unknown", None)
        assert get("/v1/fleet", stale_threshold="0").status_code == 400

        # a browser gets DRF's browsable API, also on the fast path's route
        for path in ("/v1/releases/latest", "/v1/fleet", "/v1/releases/rel-002/acks"):
            page = http.get(srv.url(path), headers={"Accept": "text/html"}, timeout=TIMEOUT)
            assert page.status_code == 200, path
            assert page.headers["Content-Type"].startswith("text/html"), path
            assert "rel-002" in page.text, path


def _parallel_publishes(srv: ServeProcess, count: int) -> list[int]:
    def publish(index: int) -> requests.Response:
        return requests.post(
            srv.url("/v1/releases"),
            json={"release_id": f"par-{index:03d}", "channel": "edge"},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(publish, range(count)))
    assert [r.status_code for r in responses] == [201] * count, [r.text for r in responses]
    return sorted(r.json()["sequence"] for r in responses)


def _parallel_first_acks(srv: ServeProcess, count: int) -> None:
    """`count` simultaneous first acks of one (node, release): one 201, the rest 200, one ack."""

    def ack(index: int) -> requests.Response:
        return requests.post(
            srv.url("/v1/nodes/racer/ack"),
            json={"release_id": "par-000", "status": "active", "message": f"try {index}"},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = sorted(r.status_code for r in pool.map(ack, range(count)))
    assert codes == [200] * (count - 1) + [201]
    acks = requests.get(srv.url("/v1/releases/par-000/acks"), timeout=TIMEOUT).json()
    assert acks["count"] == 1


def test_parallel_publishes_get_distinct_consecutive_sequences(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        assert _parallel_publishes(srv, 40) == list(range(1, 41))
        _parallel_first_acks(srv, 16)
        listed = requests.get(
            srv.url("/v1/releases"), params={"channel": "edge", "limit": 1}, timeout=TIMEOUT
        ).json()
        assert listed["releases"][0]["sequence"] == 40


@pytest.fixture
def pg_database_url():
    psycopg = pytest.importorskip("psycopg")
    name = f"orch_rel_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_releases_acks_fleet_and_parallel_publishes_on_postgresql(tmp_path, pg_database_url):
    with ServeProcess(tmp_path / "data", "--postgres-url", pg_database_url) as srv:
        publish_ack_and_fleet(srv)
        assert _parallel_publishes(srv, 40) == list(range(1, 41))
        _parallel_first_acks(srv, 16)


def test_serve_serves_the_admin_static_files(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        css = requests.get(srv.url("/static/admin/css/base.css"), timeout=TIMEOUT)
        assert css.status_code == 200
        assert css.headers["Content-Type"].startswith("text/css")
        assert b"body" in css.content
        login = requests.get(srv.url("/admin/login/"), timeout=TIMEOUT)
        assert login.status_code == 200
        assert "/static/admin/css/" in login.text


def test_createsuperuser_then_log_in_to_the_admin(tmp_path):
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        result = cli(
            "createsuperuser",
            "--data-dir",
            str(data),
            "--noinput",
            "--username",
            "ops",
            "--email",
            "ops@example.com",
            env={"DJANGO_SUPERUSER_PASSWORD": "a-long-enough-secret-42"},
        )
        assert result.returncode == 0, result.stderr
        assert "Superuser created successfully" in result.stdout
        with requests.Session() as http:
            page = http.get(srv.url("/admin/login/"), timeout=TIMEOUT)
            token = http.cookies["csrftoken"]
            logged_in = http.post(
                srv.url("/admin/login/?next=/admin/releases/release/"),
                data={
                    "username": "ops",
                    "password": "a-long-enough-secret-42",
                    "csrfmiddlewaretoken": token,
                    "next": "/admin/releases/release/",
                },
                headers={"Referer": page.url},
                timeout=TIMEOUT,
            )
            assert logged_in.status_code == 200
            assert logged_in.url.endswith("/admin/releases/release/")
            assert "Select release to view" in logged_in.text

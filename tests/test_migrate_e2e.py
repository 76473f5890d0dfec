"""End to end: a store filled through a real `serve`, migrated, then served from PostgreSQL.

The data is written over HTTP (events, releases, acks, a rollout plan and a transition), the
server is stopped, `autonomy-orchestrator migrate` copies the store, and a `serve --postgres-url`
must answer every read exactly as the SQLite server did, and keep accepting writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests import pg
from tests.liveserver import ServeProcess, cli

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

EVENTS: list[dict[str, Any]] = [
    {
        "event_id": f"evt-{i:03d}",
        "event_type": "app.crash" if i % 7 == 0 else "app.heartbeat",
        "node_id": f"node-{i % 5}",
        "timestamp": "2026-11-27T10:00:00+02:00",
        "release_id": "rel-001",
        "extra": {"i": i, "ünïcode": "✓", "nested": [1, 2.5, None]},
    }
    for i in range(120)
]
SPEC = {
    "plan_id": "plan-e2e",
    "release_id": "rel-002",
    "description": "two stages, bytes kept as sent",
    "stages": [
        {"stage_id": "canary", "percent": 20, "nodes": ["node-1"], "gates": [{"kind": "manual"}]},
        {"stage_id": "all", "percent": 100},
    ],
    "created_by": "alice",
}
# Sent with unusual spacing and key order: the stored spec must be these bytes exactly.
SPEC_BODY = (
    '{"stages": [{"stage_id":"canary","percent":20,"nodes":["node-1"],'
    '"gates":[{"kind":"manual"}]},  {"stage_id":"all","percent":100}],'
    '  "plan_id":"plan-e2e","release_id":"rel-002",'
    '"description":"two stages, bytes kept as sent","created_by":"alice"}'
)
OPERATOR = {"X-Autonomy-Operator": "bob"}


def populate(srv: ServeProcess) -> None:
    r = requests.post(srv.url("/v1/events"), json={"events": EVENTS[:70]}, timeout=10)
    assert r.status_code == 200, r.text
    r = requests.post(srv.url("/v1/events"), json={"events": EVENTS[70:]}, timeout=10)
    assert r.status_code == 200, r.text
    for n, rel in enumerate(("rel-001", "rel-002"), start=1):
        r = requests.post(
            srv.url("/v1/releases"),
            json={"release_id": rel, "metadata": {"n": n}, "artifact_ref": f"oci://x/{rel}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
    for node in range(5):
        for rel, status in (("rel-001", "active"), ("rel-002", "pending")):
            r = requests.post(
                srv.url(f"/v1/nodes/node-{node}/ack"),
                json={"release_id": rel, "status": status, "message": f"n{node}"},
                timeout=10,
            )
            assert r.status_code == 201, r.text
    r = requests.post(
        srv.url("/v1/rollouts"),
        data=SPEC_BODY.encode(),
        timeout=10,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text
    r = requests.post(
        srv.url("/v1/rollouts/plan-e2e/pause"),
        json={"reason": "before cutover"},
        headers=OPERATOR,
        timeout=10,
    )
    assert r.status_code == 200, r.text


READS = [
    "/v1/events?limit=1000",
    "/v1/events?node_id=node-3&limit=7",
    "/v1/events?event_type=app.crash",
    "/v1/releases/latest",
    "/v1/releases/latest?node_id=node-1",
    "/v1/releases/rel-001/acks",
    "/v1/nodes/node-2/acks",
    "/v1/rollouts",
    "/v1/rollouts/plan-e2e",
    "/v1/rollouts/plan-e2e/spec",
    "/v1/rollouts/plan-e2e/status",
    "/v1/rollouts/plan-e2e/stages/canary/gates",
    "/v1/signing-key",
]


def read_all(srv: ServeProcess) -> dict[str, tuple[int, Any]]:
    answers: dict[str, tuple[int, Any]] = {}
    for path in READS:
        r = requests.get(srv.url(path), timeout=10)
        body = r.text if path == "/v1/signing-key" else r.json()
        answers[path] = (r.status_code, body)
    fleet = requests.get(srv.url("/v1/fleet?stale_threshold=100000000"), timeout=10).json()
    fleet.pop("generated_at")
    answers["/v1/fleet"] = (200, fleet)
    return answers


def test_store_served_from_postgresql_after_migrate(tmp_path: Path):
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        populate(srv)
        before = read_all(srv)
    assert before["/v1/events?limit=1000"][1]["count"] == 120
    spec = before["/v1/rollouts/plan-e2e/spec"][1]
    db = data / "orchestrator.sqlite3"
    digest = pg.file_digest(db)

    with pg.temp_database() as url:
        result = cli(
            "migrate",
            "--sqlite-dir",
            str(data),
            "--postgres-url",
            url,
            env={"AUTONOMY_POSTGRES_URL": ""},
            timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert pg.file_digest(db) == digest
        with psycopg.connect(url) as conn:
            stored = pg.scalar(
                conn, "SELECT spec FROM rollouts_rolloutplan WHERE plan_id = 'plan-e2e'"
            )
        assert bytes(stored) == SPEC_BODY.encode()

        # the same data dir (for the signing key), the store now in PostgreSQL
        with ServeProcess(data, "--postgres-url", url) as srv:
            assert "data store: PostgreSQL" in srv.logs()
            after = read_all(srv)
            for path in [*READS, "/v1/fleet"]:
                assert after[path] == before[path], path
            # the events keep their order: newest first is the same sequence
            ids = [e["event_id"] for e in after["/v1/events?limit=1000"][1]["events"]]
            assert ids == [e["event_id"] for e in reversed(EVENTS)]
            assert after["/v1/events?limit=1000"][1]["events"][0] == EVENTS[-1]
            assert after["/v1/rollouts/plan-e2e/spec"][1]["digest"] == spec["digest"]
            # writes keep working: sequences continue after the copied rows
            r = requests.post(srv.url("/v1/releases"), json={"release_id": "rel-003"}, timeout=10)
            assert r.status_code == 201, r.text
            assert r.json()["sequence"] == 3
            r = requests.post(
                srv.url("/v1/events"),
                json={
                    "events": [
                        {
                            "event_id": "evt-new",
                            "event_type": "t",
                            "node_id": "node-9",
                            "timestamp": "2026-11-27T11:00:00Z",
                        }
                    ]
                },
                timeout=10,
            )
            assert r.json() == {"received": 1, "inserted": 1, "deduped": 0}
            r = requests.post(srv.url("/v1/events"), json={"events": EVENTS[:3]}, timeout=10)
            assert r.json() == {"received": 3, "inserted": 0, "deduped": 3}
            newest = requests.get(srv.url("/v1/events?limit=1"), timeout=10).json()
            assert newest["events"][0]["event_id"] == "evt-new"
            r = requests.post(
                srv.url("/v1/rollouts/plan-e2e/resume"), json={}, headers=OPERATOR, timeout=10
            )
            assert r.status_code == 200, r.text
            status = requests.get(srv.url("/v1/rollouts/plan-e2e/status"), timeout=10).json()
            assert [h["action"] for h in status["history"]][-2:] == ["pause", "resume"]
        with psycopg.connect(url) as conn:
            assert pg.scalar(conn, "SELECT count(*) FROM events_event") == 121
        assert pg.file_digest(db) == digest  # the PostgreSQL server never touched SQLite

    # rollback: the untouched SQLite store serves the pre-cutover data again
    with ServeProcess(data) as srv:
        assert read_all(srv) == before


def test_migrate_while_serve_still_writes_to_the_store(tmp_path: Path):
    """A live store (WAL with -wal/-shm files) is read as one consistent snapshot."""
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        r = requests.post(srv.url("/v1/events"), json={"events": EVENTS}, timeout=10)
        assert r.status_code == 200
        r = requests.post(srv.url("/v1/releases"), json={"release_id": "rel-001"}, timeout=10)
        assert r.status_code == 201
        assert (data / "orchestrator.sqlite3-wal").exists()
        with pg.temp_database() as url:
            args = ("migrate", "--sqlite-dir", str(data), "--postgres-url", url)
            result = cli(*args, env={"AUTONOMY_POSTGRES_URL": ""}, timeout=180)
            assert result.returncode == 0, result.stdout + result.stderr
            assert pg.count(url, "events_event") == 120
            # the live server keeps working on its store meanwhile, and a re-run catches up
            more = [dict(e, event_id=e["event_id"] + "-late") for e in EVENTS[:10]]
            r = requests.post(srv.url("/v1/events"), json={"events": more}, timeout=10)
            assert r.json()["inserted"] == 10
            result = cli(*args, env={"AUTONOMY_POSTGRES_URL": ""}, timeout=180)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "(10 inserted, 120 already present)" in result.stdout
            assert pg.count(url, "events_event") == 130

"""Webhooks from the real `autonomy-orchestrator serve` to a real receiver on 127.0.0.1
(docs/operating.md "Webhooks"): a halt arrives signed, once; a dead endpoint does not hold up a
live one; a failing one is retried with growing delays; a restart in the middle loses nothing and
sends nothing twice; two replicas on one PostgreSQL database deliver each event once, also after
the leader dies; the `webhook` command manages endpoints."""

from __future__ import annotations

import signal
import sqlite3
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.liveserver import ServeProcess, call, cli, free_port, share_keys, wait_until
from tests.pg import temp_database
from tests.webhooks import Receiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_e2e-secret-0123456789abcdef"
# Short backoff (200 ms doubling to 1 s); a dead endpoint holds a request for 30 s.
ENV = {"AUTONOMY_TEST_WEBHOOK_RETRY": "200ms,1s,20", "AUTONOMY_TEST_WEBHOOK_TIMEOUT": "30s"}
_OWN_STORE = {"AUTONOMY_TEST_DATABASE": "", "AUTONOMY_POSTGRES_URL": ""}


def webhook(*args: str) -> str:
    done = cli("webhook", *args, env=_OWN_STORE)
    assert done.returncode == 0, done.stderr
    return done.stdout


def halt_a_plan(srv: ServeProcess, n: int) -> None:
    """Publish plan-N (of a new release rel-N) and halt it: one rollout.halted event."""
    status, _, body = call(srv, "POST", "/v1/releases", {"release_id": f"rel-{n}"})
    assert status == 201, body
    stages = [{"stage_id": "s1", "percent": 10}]
    spec = {"plan_id": f"plan-{n}", "release_id": f"rel-{n}", "stages": stages}
    status, _, body = call(srv, "POST", "/v1/rollouts", spec)
    assert status == 201, body
    status, _, body = call(srv, "POST", f"/v1/rollouts/plan-{n}/halt", {"reason": f"halt {n}"})
    assert status == 200, body


def sqlite_rows(data: Path, query: str) -> list[tuple]:
    with sqlite3.connect(data / "orchestrator.sqlite3") as conn:
        return conn.execute(query).fetchall()


def insert_endpoint(data: Path, url: str, events: str) -> None:
    """Another endpoint, straight into a store the command made (one command run less)."""
    with sqlite3.connect(data / "orchestrator.sqlite3") as conn:
        conn.execute(
            "INSERT INTO notifications_webhookendpoint (url, secret, events, enabled, "
            "description, created_at, created_by, updated_at) VALUES (?, ?, ?, 1, '', "
            "'2026-11-29 00:00:00', 'test', '2026-11-29 00:00:00')",
            (url, SECRET, events),
        )


def test_halts_arrive_signed_once_past_a_dead_endpoint_and_a_failing_one_is_retried(tmp_path):
    data = tmp_path / "data"
    with Receiver() as rx:
        live = webhook("add", rx.url("/ok"), "--events", "rollout.halted", "--data-dir", str(data))
        live_secret = live.splitlines()[-1]
        insert_endpoint(data, rx.url("/hang"), '["*"]')  # dead: holds a request for 30 s
        insert_endpoint(data, rx.url("/fail2"), '["rollout.halted"]')
        metrics = ("--metrics-addr", f"127.0.0.1:{free_port()}")
        with ServeProcess(data, *metrics, env=ENV) as srv:
            halt_a_plan(srv, 1)
            wait_until(lambda: rx.hanging, timeout=15, what="the dead endpoint to be called")
            [first] = rx.wait_for(1, "/ok")
            # The dead endpoint still holds the first event: a dispatcher that sent in turn
            # would wait 30 s on it before the live endpoint got the second.
            halt_a_plan(srv, 2)
            got = rx.wait_for(2, "/ok")
            assert len(rx.hanging) == 1

            assert [r.json()["data"]["plan_id"] for r in got] == ["plan-1", "plan-2"]
            for request in got:
                assert request.verified(live_secret)
                assert not request.verified(SECRET)
                body = request.json()
                assert body["type"] == "rollout.halted"
                assert request.headers["X-Autonomy-Event-Id"] == body["id"]
                assert request.headers["X-Autonomy-Event"] == "rollout.halted"
            assert first.json()["data"]["reason"] == "halt 1"

            # The failing endpoint: two 500s, then delivered; the waits grew.
            flaky = rx.wait_for(2, "/fail2")
            assert {r.json()["id"] for r in flaky} == {r.json()["id"] for r in got}
            assert all(r.verified(SECRET) for r in flaky)
            assert {r.headers["X-Autonomy-Delivery-Attempt"] for r in flaky} == {"3"}
            assert rx.tries("/fail2") == 6
            time.sleep(1.0)  # room for a duplicate to show up
            assert len(rx.received("/ok")) == 2 and len(rx.received("/fail2")) == 2
            log = sqlite_rows(
                data,
                "SELECT a.number, a.outcome, a.status_code, a.retry_in_ms "
                "FROM notifications_webhookattempt a "
                "JOIN notifications_webhookdelivery d ON d.id = a.delivery_id "
                "JOIN notifications_webhookendpoint e ON e.id = d.endpoint_id "
                f"WHERE e.url = '{rx.url('/fail2')}' AND d.event_id = "
                "(SELECT MIN(event_id) FROM notifications_webhookdelivery) ORDER BY a.number",
            )
            assert [row[:3] for row in log] == [
                (1, "retrying", 500),
                (2, "retrying", 500),
                (3, "delivered", 200),
            ]
            assert log[0][3] < log[1][3]  # 160-200 ms, then 320-400 ms

            text = urllib.request.urlopen(srv.url("/metrics"), timeout=5).read().decode()
            samples = dict(
                line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("cp_webhook")
            )
            assert float(samples['cp_webhook_deliveries_total{outcome="delivered"}']) == 4
            assert float(samples['cp_webhook_deliveries_total{outcome="retrying"}']) == 4
            assert float(samples["cp_webhook_outbox_pending"]) == 2  # the dead endpoint's
            listing = webhook("list", "--data-dir", str(data))
            assert live_secret not in listing and SECRET not in listing
            assert "/hang" in listing


def test_a_restart_in_the_middle_delivers_exactly_once(tmp_path):
    data = tmp_path / "data"
    port = free_port()  # the receiver is down at first: nothing listens here
    url = f"http://127.0.0.1:{port}/ok"
    webhook("add", url, "--events", "rollout.halted", "--secret", SECRET, "--data-dir", str(data))
    name = ("--node-name", "hooks-1")  # the same replica again: it frees what it held
    srv = ServeProcess(data, *name, env=ENV).start()
    try:
        halt_a_plan(srv, 1)
        wait_until(
            lambda: sqlite_rows(data, "SELECT COUNT(*) FROM notifications_webhookattempt")[0][0],
            timeout=15,
            what="a failed attempt",
        )
    finally:
        srv.stop(signal.SIGKILL)
    assert sqlite_rows(data, "SELECT state FROM notifications_webhookdelivery") == [("pending",)]

    with Receiver(port) as rx, ServeProcess(data, *name, env=ENV):
        [got] = rx.wait_for(1)
        assert got.verified(SECRET) and got.json()["data"]["plan_id"] == "plan-1"
        time.sleep(1.0)  # room for a duplicate to show up
        assert len(rx.received()) == 1
    [(state, attempts)] = sqlite_rows(
        data, "SELECT state, attempts FROM notifications_webhookdelivery"
    )
    assert state == "delivered" and attempts >= 2


def test_webhook_command_adds_lists_tests_and_removes_with_audit_records(tmp_path):
    data = str(tmp_path / "data")
    with Receiver() as rx:
        added = webhook("add", rx.url("/ok"), "--events", "rollout.halted,rollout.stuck",
                        "--data-dir", data)  # fmt: skip
        secret = added.splitlines()[-1]
        assert secret.startswith("whsec_") and len(secret) > 40
        assert "added webhook endpoint 1" in added
        listing = webhook("list", "--data-dir", data)
        assert rx.url("/ok") in listing and "rollout.halted,rollout.stuck" in listing
        assert secret not in listing
        tested = webhook("test", "1", "--data-dir", data)
        assert "delivered a webhook.test event" in tested and "HTTP 200" in tested
        [got] = rx.received()
        assert got.verified(secret) and got.json()["type"] == "webhook.test"
    failed = cli("webhook", "test", "1", "--data-dir", data, env=_OWN_STORE)  # receiver gone
    assert failed.returncode == 1 and "not delivered to" in failed.stderr
    assert "removed webhook endpoint 1" in webhook("remove", rx.url("/ok"), "--data-dir", data)
    audit = sqlite_rows(
        tmp_path / "data", "SELECT event_name, detail FROM access_auditrecord ORDER BY id"
    )
    assert [name for name, _ in audit] == ["webhook.endpoint.created", "webhook.endpoint.removed"]
    assert all(secret not in detail for _, detail in audit)


@pytest.mark.postgres
def test_two_replicas_on_postgres_deliver_each_event_once_also_after_the_leader_dies(tmp_path):
    with temp_database("test_hooks") as url, Receiver() as rx:
        store = ["--postgres-url", url]
        webhook("add", rx.url("/ok"), "--events", "rollout.halted", "--secret", SECRET, *store)

        def replica(name: str) -> ServeProcess:
            args = ("--postgres-url", url, "--node-name", name, "--db-pool-size", "4")
            return ServeProcess(tmp_path / name / "data", *args, env=ENV)

        first = replica("r1").start()
        second = replica("r2")
        share_keys(first.data_dir, second.data_dir)
        second.start()
        replicas = [first, second]
        try:
            for n in range(1, 5):
                halt_a_plan(replicas[n % 2], n)
            rx.wait_for(4)

            def leader() -> ServeProcess | None:
                for srv in replicas:
                    status, _, body = call(srv, "GET", "/v1/health/leader")
                    if status == 200 and body.get("session_lock_held"):
                        return srv
                return None

            dead = wait_until(leader, timeout=15, what="a leader")
            dead.stop(signal.SIGKILL)
            survivor = next(srv for srv in replicas if srv is not dead)
            halt_a_plan(survivor, 5)
            rx.wait_for(5, timeout=20)
            time.sleep(1.5)  # room for a duplicate to show up
            ids = [r.json()["id"] for r in rx.received()]
            assert len(ids) == 5 and len(set(ids)) == 5
            assert all(r.verified(SECRET) for r in rx.received())
            with psycopg.connect(url) as conn:
                rows = conn.execute(
                    "SELECT d.state, d.attempts, a.replica FROM notifications_webhookdelivery d "
                    "JOIN notifications_webhookattempt a ON a.delivery_id = d.id"
                ).fetchall()
            assert sorted(r[0] for r in rows) == ["delivered"] * 5
            # Each sent once, by whichever replica led at the time.
            assert {r[2] for r in rows} <= {"r1", "r2"} and all(r[1] == 1 for r in rows)
        finally:
            for srv in replicas:
                srv.stop()

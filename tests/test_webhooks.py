"""Webhook notifications in-process (docs/operating.md "Webhooks"): what is queued in the outbox
and when (in the transaction of the change, once per stage or episode), the signature, the
backoff, the delivery log, the admin pages and the command's validation. The real `serve`
delivering them is tests/test_webhooks_e2e.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.utils import timezone

from access.models import AuditRecord
from crl.services import CrlSyncConfig, CrlSyncThread, SyncResult
from notifications import dispatcher, services
from notifications.delivery import RetryPolicy
from notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from notifications.signing import signature_header, verify
from rollouts import clock, evaluator
from rollouts.services import rollout_halt, rollout_pause, rollout_promote, rollout_resume
from tests.factories import RolloutPlanFactory
from tests.webhooks import Receiver

SECRET = "whsec_test-secret-0123456789"
T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


@pytest.fixture(autouse=True)
def _fresh_memory():
    evaluator._notified.clear()
    yield
    evaluator._notified.clear()


def endpoint(url="http://127.0.0.1:9/hook", events=("rollout.halted",), enabled=True):
    created, _ = services.webhook_create(
        url=url, events=list(events), secret=SECRET, enabled=enabled
    )
    return created


def bodies(name=None):
    events = WebhookEvent.objects.order_by("id")
    if name:
        events = events.filter(name=name)
    return [json.loads(e.body) for e in events]


# --- the signature and the backoff -------------------------------------------------------------


def test_the_signature_verifies_only_with_the_secret_the_body_and_a_recent_timestamp():
    body = b'{"id":"evt_1","type":"rollout.halted"}'
    header = signature_header(SECRET, body, timestamp=1_800_000_000)
    t, v1 = header.split(",")
    assert t == "t=1800000000" and v1.startswith("v1=") and len(v1) == 3 + 64
    assert verify(SECRET, body, header, now=1_800_000_100)
    assert not verify("another-secret", body, header, now=1_800_000_100)
    assert not verify(SECRET, body + b" ", header, now=1_800_000_100)
    # A recorded delivery replayed later than the tolerance (5 min) is refused.
    assert not verify(SECRET, body, header, now=1_800_000_000 + 301)
    # The timestamp is signed: moving it forward breaks the signature.
    assert not verify(SECRET, body, header.replace("t=1800000000", "t=1800000200"))


def test_the_verification_snippet_in_the_docs_accepts_our_signature_and_nothing_else():
    import re
    import time
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "operating.md").read_text()
    section = page.split("### Verifying the signature", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "docs/operating.md", "exec"), namespace)
    docs_verify = namespace["verify"]
    body = b'{"id":"evt_1","type":"rollout.halted"}'
    header = signature_header(SECRET, body)
    assert docs_verify(SECRET, body, header)
    assert not docs_verify("wrong", body, header)
    assert not docs_verify(SECRET, body + b"x", header)
    assert not docs_verify(SECRET, body, signature_header(SECRET, body, int(time.time()) - 600))
    assert not docs_verify(SECRET, body, "garbage")


def test_retries_back_off_exponentially_up_to_the_cap():
    policy = RetryPolicy(base=30, cap=3600, attempts=16)
    lowest = [policy.delay(n, rand=0.0) for n in range(1, 10)]
    highest = [policy.delay(n, rand=1.0) for n in range(1, 10)]
    assert highest[:4] == [30, 60, 120, 240]
    assert lowest[:2] == [24, 48]  # jitter: 80-100 % of the step
    assert all(lowest[i + 1] > highest[i] for i in range(6))  # grows even with jitter
    assert max(highest) == 3600 and policy.delay(40, rand=1.0) == 3600


# --- what is queued, and when -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_halt_queues_one_event_for_each_subscribed_enabled_endpoint():
    wanted = endpoint("http://127.0.0.1:9/a", ["rollout.halted"])
    endpoint("http://127.0.0.1:9/b", ["rollout.completed"])
    endpoint("http://127.0.0.1:9/c", ["rollout.halted"], enabled=False)
    everything = endpoint("http://127.0.0.1:9/d", ["*"])
    plan = RolloutPlanFactory(plan_id="p-halt")
    rollout_halt(plan_id="p-halt", operator="alice", reason="bad canary")

    [event] = WebhookEvent.objects.all()
    assert sorted(d.endpoint_id for d in event.deliveries.all()) == [wanted.pk, everything.pk]
    body = json.loads(event.body)
    assert body["id"] == event.event_id and body["id"].startswith("evt_")
    assert body["type"] == "rollout.halted"
    assert body["data"] == {
        "plan_id": "p-halt",
        "release_id": plan.release.release_id,
        "channel": "stable",
        "phase": "halted",
        "from_phase": "published",
        "stage_id": "canary",
        "operator": "alice",
        "automatic": False,
        "reason": "bad canary",
        "at": body["data"]["at"],
    }
    assert WebhookDelivery.objects.filter(state="pending").count() == 2


@pytest.mark.django_db
def test_a_transition_that_rolls_back_queues_nothing_and_no_endpoint_means_no_row():
    endpoint()
    RolloutPlanFactory(plan_id="p-rb")
    with pytest.raises(RuntimeError), transaction.atomic():
        rollout_halt(plan_id="p-rb", operator="alice")
        raise RuntimeError("the change rolls back")
    assert WebhookEvent.objects.count() == 0 and WebhookDelivery.objects.count() == 0

    WebhookEndpoint.objects.all().delete()
    rollout_halt(plan_id="p-rb", operator="alice")
    assert WebhookEvent.objects.count() == 0


@pytest.mark.django_db
def test_completing_the_last_stage_queues_rollout_completed():
    endpoint(events=["rollout.completed", "rollout.halted"])
    RolloutPlanFactory(plan_id="p-done", stages=[{"stage_id": "only", "percent": 100}])
    rollout_promote(plan_id="p-done", operator="bob")
    [body] = bodies()
    assert body["type"] == "rollout.completed"
    assert body["data"]["plan_id"] == "p-done" and body["data"]["phase"] == "completed"
    assert "reason" not in body["data"]


@pytest.mark.django_db
def test_a_stage_waiting_only_for_approval_is_announced_once_per_opening():
    endpoint(events=["rollout.awaiting_approval"])
    RolloutPlanFactory(
        plan_id="p-gate",
        stages=[
            {"stage_id": "canary", "percent": 10, "gates": [{"kind": "manual"}]},
            {"stage_id": "all", "percent": 100},
        ],
    )
    evaluator.evaluate_plan(plan_id="p-gate")
    evaluator.evaluate_plan(plan_id="p-gate")
    evaluator._notified.clear()  # a restarted process: the outbox remembers
    evaluator.evaluate_plan(plan_id="p-gate")
    [body] = bodies()
    assert body["type"] == "rollout.awaiting_approval"
    assert body["data"]["stage_id"] == "canary"
    assert body["data"]["approve"] == "/v1/rollouts/p-gate/stages/canary/gates/approve"

    # Halted and resumed: the stage opens again and waits again -> announced again.
    rollout_halt(plan_id="p-gate", operator="alice")
    rollout_resume(plan_id="p-gate", operator="alice")
    evaluator.evaluate_plan(plan_id="p-gate")
    assert len(bodies("rollout.awaiting_approval")) == 2


@pytest.mark.django_db
def test_a_stage_with_other_unmet_gates_is_not_awaiting_approval():
    endpoint(events=["rollout.awaiting_approval"])
    RolloutPlanFactory(
        plan_id="p-soak",
        stages=[
            {
                "stage_id": "canary",
                "percent": 10,
                "gates": [{"kind": "manual"}, {"kind": "time_soak", "seconds": 3600}],
            },
            {"stage_id": "all", "percent": 100},
        ],
    )
    evaluator.evaluate_plan(plan_id="p-soak")
    assert bodies() == []


@pytest.mark.django_db
def test_a_stuck_plan_is_announced_once_per_episode(monkeypatch):
    endpoint(events=["rollout.stuck"])
    now = {"t": T0}
    monkeypatch.setattr(clock, "now", lambda: now["t"])
    RolloutPlanFactory(plan_id="p-stuck")
    now["t"] = T0 + timedelta(minutes=30)
    assert evaluator.notify_stuck_plans(threshold_seconds=3600) == 0
    now["t"] = T0 + timedelta(hours=2)
    assert evaluator.notify_stuck_plans(threshold_seconds=3600) == 1
    evaluator._notified.clear()
    assert evaluator.notify_stuck_plans(threshold_seconds=3600) == 1
    [body] = bodies()
    assert body["type"] == "rollout.stuck"
    assert body["data"]["plan_id"] == "p-stuck" and body["data"]["threshold_seconds"] == 3600
    assert body["data"]["stuck_since"] == "2026-11-27T10:00:00Z"

    # Progress ends the episode; stuck again later is a new one.
    rollout_pause(plan_id="p-stuck", operator="alice")
    rollout_resume(plan_id="p-stuck", operator="alice")
    now["t"] = T0 + timedelta(hours=4)
    evaluator.notify_stuck_plans(threshold_seconds=3600)
    assert len(bodies("rollout.stuck")) == 2


@pytest.mark.django_db
def test_crl_sync_failure_is_announced_once_per_failing_episode():
    endpoint(events=["cert.crl.sync_failed"])
    thread = CrlSyncThread(
        config=CrlSyncConfig(urls=("https://peer:8443/v1/crl",)),
        store=SimpleNamespace(path="/etc/aorch/crl.pem"),
    )
    failed = SyncResult(
        reason="no CRL returned by at least 1 sources (best agreement: 0 of 1)",
        failures={"https://peer:8443/v1/crl": "request failed: refused"},
        failed=True,
    )
    for result in (failed, failed, SyncResult(reason="already current"), failed):
        thread.announce(result)
    found = bodies("cert.crl.sync_failed")
    assert len(found) == 2
    assert found[0]["data"]["failures"] == {"https://peer:8443/v1/crl": "request failed: refused"}
    assert found[0]["data"]["sources"] == ["https://peer:8443/v1/crl"]


@pytest.mark.django_db
def test_the_tamper_check_announces_a_tampered_plan_once_per_tampered_content():
    endpoint(events=["rollout.plan.tampered"])
    found = {
        "plan_id": "p1",
        "digest": "sha256:aa",
        "reason": "the stored spec no longer matches its signed digest",
        "phase": "active",
        "halted": True,
    }
    assert services.plan_tampered_emit(**found, actual_digest="sha256:bb") is not None
    assert services.plan_tampered_emit(**found, actual_digest="sha256:bb") is None
    assert services.plan_tampered_emit(**found, actual_digest="sha256:cc") is not None
    first = bodies("rollout.plan.tampered")[0]["data"]
    assert first["actual_digest"] == "sha256:bb" and first["halted"] is True
    with pytest.raises(ValueError):
        services.event_emit(name="rollout.exploded", data={})


@pytest.mark.django_db
def test_an_automatic_halt_by_a_failure_gate_says_so():
    from tests.factories import NodeAckFactory

    endpoint()
    plan = RolloutPlanFactory(
        plan_id="p-auto",
        stages=[
            {
                "stage_id": "canary",
                "percent": 100,
                "gates": [{"kind": "ack_failure", "max_ratio": 0.5}],
            },
            {"stage_id": "all", "percent": 100},
        ],
    )
    for node in ("n1", "n2"):
        NodeAckFactory(node_id=node, release=plan.release, status="failed")
    evaluator.evaluate_open_stages()
    [body] = bodies("rollout.halted")
    assert body["data"]["automatic"] is True and body["data"]["operator"] == "evaluator"
    assert "ack_failure gate tripped" in body["data"]["reason"]


# --- delivery ----------------------------------------------------------------------------------


def _queue_halt(url: str) -> WebhookDelivery:
    endpoint(url)
    services.event_emit(name="rollout.halted", data={"plan_id": "p1"})
    return WebhookDelivery.objects.get()


def _due_now(delivery: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


@pytest.mark.django_db(transaction=True)
def test_failed_attempts_are_logged_and_retried_with_growing_delays_until_delivered():
    with Receiver() as rx:
        queued = _queue_halt(rx.url("/fail2"))
        sender = dispatcher.Dispatcher(replica="r1", policy=RetryPolicy(10, 100, 5), timeout=5)
        outcomes = []
        for _ in range(3):
            _due_now(queued)  # skip the wait instead of sleeping through it
            outcomes.append(sender.deliver(queued.pk, lease=None))
        assert outcomes == ["retrying", "retrying", "delivered"]
        assert rx.tries("/fail2") == 3
        [got] = rx.received()
        assert got.verified(SECRET)
        assert got.headers["X-Autonomy-Event-Id"] == got.json()["id"]
        assert got.headers["X-Autonomy-Delivery-Attempt"] == "3"
    log = list(WebhookAttempt.objects.order_by("number"))
    assert [(a.number, a.outcome, a.status_code) for a in log] == [
        (1, "retrying", 500),
        (2, "retrying", 500),
        (3, "delivered", 200),
    ]
    assert 8_000 <= log[0].retry_in_ms <= 10_000 < 16_000 <= log[1].retry_in_ms <= 20_000
    assert log[0].error == "HTTP 500" and log[2].replica == "r1"
    delivered = WebhookDelivery.objects.get()
    assert delivered.state == "delivered" and delivered.attempts == 3
    # Delivered: nothing is due any more.
    assert sender.deliver(queued.pk, lease=None) is None


@pytest.mark.django_db(transaction=True)
def test_a_dead_endpoint_is_given_up_after_the_last_attempt():
    from tests.liveserver import free_port

    queued = _queue_halt(f"http://127.0.0.1:{free_port()}/nobody-listens")
    sender = dispatcher.Dispatcher(policy=RetryPolicy(1, 1, 2), timeout=2)
    _due_now(queued)
    assert sender.deliver(queued.pk, lease=None) == "retrying"
    _due_now(queued)
    assert sender.deliver(queued.pk, lease=None) == "gave_up"
    failed = WebhookDelivery.objects.get()
    assert failed.state == "failed" and failed.last_status is None
    assert "request failed" in failed.last_error


@pytest.mark.django_db
def test_a_claimed_delivery_is_not_sent_twice_until_its_holder_starts_again():
    queued = _queue_halt("http://127.0.0.1:9/hook")
    first = services.delivery_claim(delivery_id=queued.pk, hold_seconds=30, lease=None, holder="r1")
    assert first is not None and first.attempt == 1 and first.secret == SECRET
    assert services.delivery_claim(delivery_id=queued.pk, hold_seconds=30, lease=None) is None
    # r1 died holding it; another replica name starting frees nothing, r1 starting again does.
    assert services.delivery_release_claims(holder="r2") == 0
    assert services.delivery_release_claims(holder="r1") == 1
    assert services.delivery_claim(delivery_id=queued.pk, hold_seconds=30, lease=None)


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout():
    from notifications.delivery import send

    with Receiver() as rx:
        # Each byte comes well within the socket timeout; the whole answer would take 5 s.
        result = send(
            url=rx.url("/trickle"),
            secret=SECRET,
            body="{}",
            event_id="evt_1",
            event_name="webhook.test",
            attempt=1,
            timeout=0.5,
        )
    assert not result.ok and result.error == "no answer within 0.5s"


# --- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["ftp://example.com/hook", "--events", "rollout.halted"], "not an http:// or https://"),
        (["https:///no-host", "--events", "rollout.halted"], "with a host"),
        (["https://example.com/h#frag", "--events", "rollout.halted"], "#fragment"),
        (["https://example.com/hook", "--events", "rollout.exploded"], "unknown event"),
        (["https://example.com/hook", "--events", " , "], "no events given"),
        (["https://example.com/hook", "--events", "*,rollout.halted"], "cannot be combined"),
        (["https://example.com/hook", "--events", "rollout.halted", "--secret", ""], "empty"),
        (["https://example.com/hook", "--events", "rollout.halted", "--secret", "a b"], "white"),
    ],
)
def test_webhook_add_says_what_is_wrong_before_touching_the_store(args, words, tmp_path):
    with pytest.raises(CommandError) as raised:
        call_command("webhook", "add", *args, "--data-dir", str(tmp_path), stdout=StringIO())
    assert words in str(raised.value)
    assert not (tmp_path / "orchestrator.sqlite3").exists()


@pytest.mark.django_db
def test_webhook_remove_and_test_name_an_unknown_endpoint(tmp_path):
    for action in ("remove", "test"):
        with pytest.raises(CommandError, match="no webhook endpoint '42'"):
            call_command("webhook", action, "42", stdout=StringIO())


# --- the admin ---------------------------------------------------------------------------------


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-123456789")
    client.force_login(user)
    return client


ADD = "/admin/notifications/webhookendpoint/add/"


@pytest.mark.django_db
def test_admin_adds_an_endpoint_shows_its_generated_secret_once_and_audits(staff):
    page = staff.post(
        ADD,
        {
            "url": "https://hooks.example.com/aorch",
            "events": ["rollout.halted", "rollout.stuck"],
            "enabled": "on",
            "new_secret": "",
            "description": "on-call",
        },
    )
    assert page.status_code == 200, page.content[:2000]
    html = page.content.decode()
    added = WebhookEndpoint.objects.get()
    assert added.secret.startswith("whsec_") and added.secret in html
    assert "no-store" in page["Cache-Control"]
    assert added.events == ["rollout.halted", "rollout.stuck"]

    change = staff.get(f"/admin/notifications/webhookendpoint/{added.pk}/change/")
    assert change.status_code == 200 and added.secret not in change.content.decode()
    listing = staff.get("/admin/notifications/webhookendpoint/").content.decode()
    assert "hooks.example.com" in listing and added.secret not in listing

    # Changing it without a new secret keeps the secret.
    staff.post(
        f"/admin/notifications/webhookendpoint/{added.pk}/change/",
        {"url": added.url, "events": ["rollout.halted"], "new_secret": "", "description": ""},
    )
    added.refresh_from_db()
    assert added.secret.startswith("whsec_") and added.enabled is False
    staff.post(f"/admin/notifications/webhookendpoint/{added.pk}/delete/", {"post": "yes"})
    assert WebhookEndpoint.objects.count() == 0
    audit = list(AuditRecord.objects.order_by("id").values_list("event_name", "principal"))
    assert audit == [
        ("webhook.endpoint.created", "ops"),
        ("webhook.endpoint.updated", "ops"),
        ("webhook.endpoint.removed", "ops"),
    ]
    assert not any(added.secret in json.dumps(r.detail) for r in AuditRecord.objects.all())


@pytest.mark.django_db
def test_admin_refuses_a_bad_url_and_a_duplicate(staff):
    endpoint("https://hooks.example.com/aorch")
    for url, words in (
        ("ftp://hooks.example.com/x", "not an http:// or https://"),
        ("https://hooks.example.com/aorch", "already exists"),
    ):
        page = staff.post(ADD, {"url": url, "events": ["rollout.halted"], "enabled": "on"})
        assert page.status_code == 200 and words in page.content.decode()
    assert WebhookEndpoint.objects.count() == 1


@pytest.mark.django_db
def test_the_delivery_log_is_read_only_and_shows_each_attempt(staff):
    queued = _queue_halt("http://127.0.0.1:9/hook")
    WebhookAttempt.objects.create(
        delivery=queued,
        number=1,
        at=timezone.now(),
        outcome="retrying",
        status_code=503,
        error="HTTP 503",
        duration_ms=12,
        retry_in_ms=30_000,
    )
    assert staff.get("/admin/notifications/webhookdelivery/add/").status_code == 403
    listing = staff.get("/admin/notifications/webhookdelivery/").content.decode()
    assert "rollout.halted" in listing and queued.event.event_id in listing
    detail = staff.get(f"/admin/notifications/webhookdelivery/{queued.pk}/change/")
    html = detail.content.decode()
    assert "HTTP 503" in html and "30000" in html and SECRET not in html
    deleting = staff.post(f"/admin/notifications/webhookdelivery/{queued.pk}/delete/")
    assert deleting.status_code == 403
    assert WebhookDelivery.objects.count() == 1

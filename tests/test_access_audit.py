"""The audit log (API.md §6): append-only in code, in the admin and in the database (SQLite and
PostgreSQL triggers), denials aggregated so a flood cannot slow the server, `GET /v1/audit`
filters and cursor, `audit export`."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from access.models import AppendOnlyError, AuditRecord
from access.services import Denial, DenialRecorder, audit_write
from core.auth import ANONYMOUS, Kind, Principal, Role
from tests import pg
from tests.liveserver import cli as _cli

# The console script chooses its own store (--data-dir / --postgres-url), never the test run's.
_OWN_STORE = {"AUTONOMY_TEST_DATABASE": "", "AUTONOMY_POSTGRES_URL": ""}


def cli(*args: str):
    return _cli(*args, env=_OWN_STORE)


CAROL = Principal(Kind.TOKEN, "carol", Role.OPERATOR)
ROOT = Principal(Kind.CERT, "root", Role.ADMIN)


def _write(event_name="rollout.plan.paused", principal=CAROL, **kwargs):
    return audit_write(
        event_name=event_name,
        outcome=kwargs.pop("outcome", "success"),
        principal=principal,
        route=kwargs.pop("route", "/v1/rollouts/{plan_id}/pause"),
        target=kwargs.pop("target", "plan-1"),
        detail=kwargs.pop("detail", {}),
        source_ip=kwargs.pop("source_ip", "127.0.0.1"),
        **kwargs,
    )


# --- append-only -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_no_update_or_delete_path_in_code():
    record = _write()
    record.target = "plan-2"
    with pytest.raises(AppendOnlyError):
        record.save()
    with pytest.raises(AppendOnlyError):
        record.delete()
    with pytest.raises(AppendOnlyError):
        AuditRecord.objects.filter(pk=record.pk).update(target="x")
    with pytest.raises(AppendOnlyError):
        AuditRecord.objects.all().delete()
    assert AuditRecord.objects.get().target == "plan-1"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "statement",
    ["UPDATE access_auditrecord SET principal = 'mallory'", "DELETE FROM access_auditrecord"],
)
def test_the_store_refuses_update_and_delete(statement):
    """Runs on the test store of this run: SQLite, or PostgreSQL under AUTONOMY_TEST_DATABASE."""
    _write()
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    assert AuditRecord.objects.get().principal == "carol"


@pytest.mark.postgres
def test_postgresql_store_refuses_update_and_delete(tmp_path):
    """A PostgreSQL store prepared by the CLI itself (token create migrates it)."""
    with pg.temp_database("test_audit") as url:
        done = cli(
            "token",
            "create",
            "--name",
            "ops",
            "--role",
            "operator",
            "--postgres-url",
            url,
            "--data-dir",
            str(tmp_path / "data"),
        )
        assert done.returncode == 0, done.stderr
        with psycopg.connect(url) as conn:
            assert pg.scalar(conn, "SELECT count(*) FROM access_auditrecord") == 1
            for statement in (
                "UPDATE access_auditrecord SET principal = 'mallory'",
                "DELETE FROM access_auditrecord",
            ):
                with pytest.raises(
                    psycopg.errors.IntegrityConstraintViolation, match="append-only"
                ):
                    conn.execute(statement)
                conn.rollback()
            assert pg.scalar(conn, "SELECT principal FROM access_auditrecord").startswith("cli:")


@pytest.mark.django_db
def test_admin_page_is_read_only_even_for_superusers(client):
    record = _write()
    admin = User.objects.create_superuser("admin", "a@example.test", "a-long-pass-phrase-1")
    client.force_login(admin)
    listing = client.get("/admin/access/auditrecord/")
    assert listing.status_code == 200
    assert b"rollout.plan.paused" in listing.content
    assert client.get("/admin/access/auditrecord/add/").status_code == 403
    detail = client.get(f"/admin/access/auditrecord/{record.pk}/change/")
    assert detail.status_code == 200  # a view-only page
    assert b'name="_save"' not in detail.content
    assert (
        client.post(f"/admin/access/auditrecord/{record.pk}/change/", {"target": "x"}).status_code
        == 403
    )
    assert (
        client.post(f"/admin/access/auditrecord/{record.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert AuditRecord.objects.get().target == "plan-1"


# --- denials -----------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _denial(principal=ANONYMOUS, route="/v1/releases", reason="no_credential", ip="10.0.0.9"):
    return Denial(
        principal=principal, route=route, reason=reason, status=401, source_ip=ip, method="POST"
    )


@pytest.mark.django_db
def test_a_denial_flood_becomes_one_record_and_one_summary_per_window():
    clock = Clock()
    recorder = DenialRecorder(window_seconds=60, clock=clock)
    for _ in range(500):
        recorder.record(_denial())
    assert recorder.drain() == 1  # the first one, at once
    first = AuditRecord.objects.get()
    assert (first.event_name, first.outcome, first.source_ip) == (
        "auth.access.denied",
        "denied",
        "10.0.0.9",
    )
    assert first.detail["count"] == 1 and first.detail["status"] == 401
    assert recorder.drain() == 0  # nothing new inside the window
    clock.now += 61
    assert recorder.drain() == 1  # the window ended: one summary of the other 499
    summary = AuditRecord.objects.order_by("-id").first()
    assert summary.detail["count"] == 499 and summary.detail["summary"] is True
    assert summary.route == "/v1/releases" and summary.principal == "anonymous"
    # a new window starts with an immediate record again
    recorder.record(_denial())
    assert recorder.drain() == 1
    assert AuditRecord.objects.count() == 3


@pytest.mark.django_db
def test_denials_are_kept_apart_by_who_route_and_reason():
    recorder = DenialRecorder(window_seconds=60, clock=Clock())
    node = Principal(Kind.CERT, "node-a", Role.NODE, node_id="node-a")
    recorder.record(_denial())
    recorder.record(_denial(ip="10.0.0.10"))
    recorder.record(_denial(route="/v1/rollouts"))
    recorder.record(_denial(principal=node, reason="node_scope"))
    recorder.record(_denial(principal=node, reason="node_scope"))
    assert recorder.drain(force=True) == 5  # four first records + one summary (node-a's second)
    rows = list(AuditRecord.objects.order_by("id"))
    assert {(r.principal, r.source_ip, r.route) for r in rows[:4]} == {
        ("anonymous", "10.0.0.9", "/v1/releases"),
        ("anonymous", "10.0.0.10", "/v1/releases"),
        ("anonymous", "10.0.0.9", "/v1/rollouts"),
        ("node-a", "10.0.0.9", "/v1/releases"),
    }
    assert rows[3].role == "node" and rows[3].detail["node_id"] == "node-a"
    assert rows[4].detail["count"] == 1 and rows[4].principal == "node-a"


@pytest.mark.django_db
def test_too_many_distinct_sources_fold_into_an_overflow_record():
    recorder = DenialRecorder(window_seconds=60, max_keys=3, clock=Clock())
    for n in range(100):
        recorder.record(_denial(ip=f"10.0.1.{n}"))
    assert recorder.drain(force=True) == 5  # 3 tracked sources + overflow's first + its summary
    overflow = AuditRecord.objects.order_by("-id").first()
    assert overflow.detail["overflow"] is True and overflow.detail["count"] == 96


def test_recording_does_no_io():
    """The request path only counts: a writer that would fail is not called by record()."""

    def writer(batch):
        raise AssertionError("record() must not write")

    recorder = DenialRecorder(window_seconds=60, clock=Clock(), writer=writer)
    for _ in range(10_000):
        recorder.record(_denial())
    written = []
    recorder.writer = written.extend
    assert recorder.drain(force=True) == 2
    assert [e["detail"]["count"] for e in written] == [1, 9_999]


# --- GET /v1/audit -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_audit_api_newest_first_with_filters_and_cursor(api):
    _write(event_name="release.published", target="r1")
    for n in range(5):
        _write(target=f"plan-{n}")
    _write(event_name="rollout.plan.halted", principal=ROOT, target="plan-9")

    page = api.get("/v1/audit").json()
    assert page["count"] == 7
    assert [r["target"] for r in page["records"]][:2] == ["plan-9", "plan-4"]
    assert page["records"][0] | {"at": None, "id": None} == {
        "id": None,
        "at": None,
        "event_name": "rollout.plan.halted",
        "category": "rollout",
        "outcome": "success",
        "principal": "root",
        "principal_kind": "cert",
        "role": "admin",
        "source_ip": "127.0.0.1",
        "route": "/v1/rollouts/{plan_id}/pause",
        "target": "plan-9",
        "detail": {},
    }

    assert [r["target"] for r in api.get("/v1/audit?principal=root").json()["records"]] == [
        "plan-9"
    ]
    only = api.get("/v1/audit?event_name=release.published").json()["records"]
    assert [r["target"] for r in only] == ["r1"]

    first = api.get("/v1/audit?limit=3").json()
    assert [r["target"] for r in first["records"]] == ["plan-9", "plan-4", "plan-3"]
    second = api.get(f"/v1/audit?limit=3&before={first['next_before']}").json()
    assert [r["target"] for r in second["records"]] == ["plan-2", "plan-1", "plan-0"]
    third = api.get(f"/v1/audit?limit=3&before={second['next_before']}").json()
    assert [r["target"] for r in third["records"]] == ["r1"]
    assert third["next_before"] is None


@pytest.mark.django_db
def test_audit_api_since(api):
    _write(target="old", at=timezone.now() - timedelta(days=2))
    _write(target="new")
    assert [r["target"] for r in api.get("/v1/audit?since=24h").json()["records"]] == ["new"]
    since = (timezone.now() - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert api.get(f"/v1/audit?since={since}").json()["count"] == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("before=x", "before"),
    ],
)
def test_audit_api_bad_parameters_name_the_field(api, query, field):
    response = api.get(f"/v1/audit?{query}")
    assert response.status_code == 400
    assert response.json()["field"] == field


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("principal", "status"),
    [
        (ANONYMOUS, 401),
        (CAROL, 403),
        (Principal(Kind.CERT, "node-a", Role.NODE, node_id="node-a"), 403),
        (ROOT, 200),
    ],
)
def test_audit_api_is_admin_only_once_the_edge_names_the_principal(principal, status):
    """The view judges `request.principal` (set by the HTTP edge in phase 2)."""
    from rest_framework.test import APIRequestFactory

    from access.api.views import AuditView

    request = APIRequestFactory().get("/v1/audit")
    request.principal = principal
    response = AuditView.as_view()(request)
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"] == "Bearer"
    if status == 403:
        assert json.loads(response.content)["required_role"] == "admin"


# --- audit export (the real CLI) ---------------------------------------------------------------


@pytest.mark.e2e
def test_audit_export_json_lines(tmp_path):
    data = str(tmp_path / "data")
    for name in ("a", "b"):
        assert (
            cli(
                "token", "create", "--name", name, "--role", "viewer", "--data-dir", data
            ).returncode
            == 0
        )
    assert cli("token", "revoke", "a", "--data-dir", data).returncode == 0
    done = cli("audit", "export", "--since", "1h", "--data-dir", data)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["event_name"], x["target"]) for x in lines] == [
        ("auth.token.created", "a"),
        ("auth.token.created", "b"),
        ("auth.token.revoked", "a"),
    ]
    future = cli("audit", "export", "--since", "2999-01-01T00:00:00Z", "--data-dir", data)
    assert future.returncode == 0 and future.stdout == ""
    bad = cli("audit", "export", "--since", "last week", "--data-dir", data)
    assert bad.returncode != 0
    assert len(bad.stderr.strip().splitlines()) == 1 and "--since" in bad.stderr


def test_a_key_whose_window_ended_reports_and_restarts_on_its_next_denial():
    clock = Clock()
    written = []
    recorder = DenialRecorder(window_seconds=60, clock=clock, writer=written.extend)
    for _ in range(3):
        recorder.record(_denial())
    clock.now += 60
    recorder.record(_denial())  # no drain in between: the summary is queued by this denial
    recorder.drain()
    assert [(e["detail"]["count"], e["detail"].get("summary", False)) for e in written] == [
        (1, False),
        (2, True),
        (1, False),
    ]


@pytest.mark.django_db
def test_a_rolled_back_change_leaves_no_record_and_no_log_line(
    caplog, django_capture_on_commit_callbacks
):
    """audit_write joins the change's transaction: both commit or neither."""
    caplog.set_level("INFO", logger="orchestrator.audit")
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        _write(target="plan-rolled-back")
        raise RuntimeError("the change failed after the record was written")
    assert not AuditRecord.objects.filter(target="plan-rolled-back").exists()
    assert not [r for r in caplog.records if r.name == "orchestrator.audit"]
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        _write(target="plan-kept")
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "orchestrator.audit"]
    assert line["target"] == "plan-kept" and line["principal"] == "carol"


@pytest.mark.e2e
@pytest.mark.postgres
def test_migrate_copies_tokens_and_audit_records_and_reruns(tmp_path):
    """`migrate` carries tokens and the audit log to PostgreSQL; a re-run (insert-or-skip) does
    not trip the append-only triggers."""
    data = str(tmp_path / "data")
    assert (
        cli("token", "create", "--name", "ops", "--role", "operator", "--data-dir", data).returncode
        == 0
    )
    assert cli("token", "revoke", "ops", "--data-dir", data).returncode == 0
    with pg.temp_database("test_audit_mig") as url:
        for _ in range(2):
            done = cli("migrate", "--sqlite-dir", data, "--postgres-url", url)
            assert done.returncode == 0, done.stderr
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT event_name, target FROM access_auditrecord ORDER BY id"
            ).fetchall()
            assert rows == [("auth.token.created", "ops"), ("auth.token.revoked", "ops")]
            assert (
                pg.scalar(conn, "SELECT count(*) FROM access_apitoken WHERE revoked_at IS NOT NULL")
                == 1
            )


@pytest.mark.django_db
def test_a_flood_of_revoked_certificate_handshakes_is_one_record_and_a_summary():
    """cert.revocation.rejected goes through the same rate limit as HTTP denials."""
    clock = Clock()
    recorder = DenialRecorder(window_seconds=60, clock=clock)
    cert = Principal(Kind.CERT, "CN=node-a", rejected="certificate revoked")
    for _ in range(200):
        recorder.record(
            Denial(
                principal=cert,
                route=None,
                reason="certificate_revoked",
                status=0,
                source_ip="127.0.0.1",
                target="serial=1f",
                event_name="cert.revocation.rejected",
            )
        )
    assert recorder.drain(force=True) == 2
    first, summary = AuditRecord.objects.order_by("id")
    assert first.event_name == summary.event_name == "cert.revocation.rejected"
    assert first.category == "cert" and first.outcome == "denied" and first.target == "serial=1f"
    assert summary.detail["count"] == 199 and summary.detail["summary"] is True


@pytest.mark.django_db
def test_a_refusal_that_repeats_a_nul_character_is_still_audited(api):
    """A plan whose invalid field's name holds a NUL character: the 400 names the field, and
    the audit record of the refusal is written with the NUL as the text `\\u0000` (PostgreSQL
    stores no NUL in text or JSON; found by the schema fuzzer)."""
    body = b'{"plan_id": "p", "d\\u0000x": [99999999999999999999999]}'
    response = api.post("/v1/rollouts", body, content_type="application/json")
    assert response.status_code == 400
    [record] = AuditRecord.objects.filter(event_name="rollout.plan.created", outcome="failure")
    assert record.detail["status"] == 400
    assert "d\\u0000x" in record.detail["error"] and "\x00" not in record.detail["error"]

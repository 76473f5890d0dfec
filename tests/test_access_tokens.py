"""Bearer tokens (API.md §6): created with a secret shown once, stored only as a hash, refused
once revoked or expired, last use recorded without writing on every request."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from access.models import ApiToken, AuditRecord
from access.selectors import any_token_exists, token_list
from access.services import (
    TokenError,
    parse_since,
    parse_span,
    token_create,
    token_resolve,
    token_revoke,
)
from core.auth import Kind, Role

pytestmark = pytest.mark.django_db


def test_create_and_resolve():
    _, secret = token_create(name="ci-bot", role="operator")
    principal = token_resolve(secret)
    assert principal is not None
    assert (principal.kind, principal.name, principal.role) == (Kind.TOKEN, "ci-bot", Role.OPERATOR)
    # only the hash is stored
    stored = ApiToken.objects.get(name="ci-bot")
    assert secret not in {stored.public_id, stored.secret_hash, stored.name}
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert len(secret) > 40


def test_node_token_carries_its_node():
    _, secret = token_create(name="node-a", role="node", node_id="node-a")
    principal = token_resolve(secret)
    assert (principal.role, principal.node_id) == (Role.NODE, "node-a")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x", "role": "root"}, "unknown role 'root'"),
        ({"name": "x", "role": "node"}, "needs --node-id"),
        ({"name": "x", "role": "viewer", "node_id": "n"}, "only for --role node"),
        ({"name": "x y", "role": "viewer"}, "bad token name"),
        ({"name": "x", "role": "viewer", "expires": "soon"}, "not a duration"),
    ],
)
def test_bad_input_is_one_readable_line(kwargs, message):
    with pytest.raises(TokenError, match=message):
        token_create(**kwargs)
    assert not ApiToken.objects.exists()


def test_duplicate_name_is_refused():
    token_create(name="dash", role="viewer")
    with pytest.raises(TokenError, match="already exists"):
        token_create(name="dash", role="admin")
    assert ApiToken.objects.get(name="dash").role == "viewer"


@pytest.mark.parametrize(
    "presented",
    ["", "nonsense", "aot_", "aot_000000000000_x", "Bearer aot_x_y"],
)
def test_unknown_tokens_are_refused(presented):
    token_create(name="real", role="admin")
    assert token_resolve(presented) is None


def test_a_tampered_secret_with_a_real_id_is_refused():
    _, secret = token_create(name="real", role="admin")
    assert token_resolve(secret[:-2] + ("AA" if not secret.endswith("AA") else "BB")) is None


def test_revoked_token_is_refused_on_its_next_request():
    _, secret = token_create(name="old", role="operator")
    assert token_resolve(secret) is not None
    token_revoke(name="old")
    assert token_resolve(secret) is None
    with pytest.raises(TokenError, match="already revoked"):
        token_revoke(name="old")
    with pytest.raises(TokenError, match="no token named"):
        token_revoke(name="never-made")


def test_expired_token_is_refused():
    token, secret = token_create(name="short", role="viewer", expires="1h")
    assert token.expires_at - token.created_at == timedelta(hours=1)
    assert token_resolve(secret) is not None
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert token_resolve(secret) is None
    assert not any_token_exists()  # auto mode counts only usable tokens


def test_last_used_is_written_at_most_once_a_minute():
    token, secret = token_create(name="busy", role="viewer")
    assert token.last_used_at is None
    token_resolve(secret)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    token_resolve(secret)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first  # not rewritten
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    token_resolve(secret)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first - timedelta(minutes=2)


def test_create_and_revoke_are_audited_and_logged(caplog, django_capture_on_commit_callbacks):
    caplog.set_level(logging.INFO, logger="orchestrator.audit")
    with django_capture_on_commit_callbacks(execute=True):
        token_create(name="ops", role="operator", expires="90d")
        token_revoke(name="ops")
    records = list(AuditRecord.objects.order_by("id"))
    assert [r.event_name for r in records] == ["auth.token.created", "auth.token.revoked"]
    assert all(r.target == "ops" and r.outcome == "success" for r in records)
    assert all(r.principal_kind == "system" and r.principal.startswith("cli:") for r in records)
    assert records[0].detail["role"] == "operator"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "orchestrator.audit"]
    assert [line["event_name"] for line in lines] == ["auth.token.created", "auth.token.revoked"]
    assert lines[0]["target"] == "ops"


def test_list_never_shows_secrets():
    _, secret = token_create(name="a", role="admin")
    token_create(name="b", role="node", node_id="node-b")
    rows = list(token_list().values())
    assert [r["name"] for r in rows] == ["a", "b"]
    assert secret not in json.dumps(rows, default=str)


@pytest.mark.parametrize(
    ("text", "span"),
    [("90d", timedelta(days=90)), ("2w", timedelta(weeks=2)), ("1h30m", timedelta(minutes=90))],
)
def test_spans(text, span):
    assert parse_span(text) == span


def test_since_takes_durations_and_rfc3339():
    now = timezone.now()
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("2026-04-07T10:00:00Z").isoformat() == "2026-04-07T10:00:00+00:00"
    assert parse_since("2026-04-07T12:00:00+02:00").isoformat() == "2026-04-07T10:00:00+00:00"
    with pytest.raises(TokenError):
        parse_since("2026-04-07T10:00:00")  # no offset
    with pytest.raises(TokenError):
        parse_since("yesterday")

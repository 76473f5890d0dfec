"""`autonomy-orchestrator token create|list|revoke` through the real console script."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from tests.liveserver import cli as _cli

# The console script chooses its own store (--data-dir / --postgres-url), never the test run's.
_OWN_STORE = {"AUTONOMY_TEST_DATABASE": "", "AUTONOMY_POSTGRES_URL": ""}


def cli(*args: str):
    return _cli(*args, env=_OWN_STORE)


pytestmark = pytest.mark.e2e


@pytest.fixture
def data(tmp_path):
    return str(tmp_path / "data")


def _rows(data, query):
    with sqlite3.connect(f"{data}/orchestrator.sqlite3") as conn:
        return conn.execute(query).fetchall()


def test_create_prints_the_token_once_alone_on_the_last_line(data):
    done = cli(
        "token",
        "create",
        "--name",
        "node-a",
        "--role",
        "node",
        "--node-id",
        "node-a",
        "--expires",
        "90d",
        "--data-dir",
        data,
    )
    assert done.returncode == 0, done.stderr
    secret = done.stdout.splitlines()[-1]
    assert secret.startswith("aot_") and " " not in secret and len(secret) > 40
    # stored only as its SHA-256
    [(stored_hash, node_id, role)] = _rows(
        data, "SELECT secret_hash, node_id, role FROM access_apitoken"
    )
    assert stored_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert (node_id, role) == ("node-a", "node")
    # never shown again
    listing = cli("token", "list", "--data-dir", data)
    assert listing.returncode == 0
    # (the random part may itself hold "_": split once after the prefix and the id)
    assert secret not in listing.stdout and secret.split("_", 2)[2] not in listing.stdout


def test_list_shows_names_roles_and_times(data):
    cli("token", "create", "--name", "dash", "--role", "viewer", "--data-dir", data)
    cli(
        "token",
        "create",
        "--name",
        "ops",
        "--role",
        "operator",
        "--expires",
        "2w",
        "--data-dir",
        data,
    )
    listing = cli("token", "list", "--data-dir", data).stdout.splitlines()
    assert listing[0].split()[:2] == ["NAME", "ROLE"]
    dash = listing[1].split()
    assert dash[:3] == ["dash", "viewer", "-"] and dash[4] == "never"  # no expiry
    ops = listing[2].split()
    assert ops[:2] == ["ops", "operator"] and ops[4] != "never"


def test_revoke(data):
    cli("token", "create", "--name", "ops", "--role", "operator", "--data-dir", data)
    done = cli("token", "revoke", "ops", "--data-dir", data)
    assert done.returncode == 0 and "revoked token 'ops'" in done.stdout
    [(revoked_at,)] = _rows(data, "SELECT revoked_at FROM access_apitoken")
    assert revoked_at is not None
    events = _rows(
        data, "SELECT event_name, target, principal_kind FROM access_auditrecord ORDER BY id"
    )
    assert events == [
        ("auth.token.created", "ops", "system"),
        ("auth.token.revoked", "ops", "system"),
    ]
    again = cli("token", "revoke", "ops", "--data-dir", data)
    assert again.returncode != 0 and "already revoked" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--name", "x", "--role", "superuser"), "unknown role 'superuser'"),
        (("--name", "x", "--role", "node"), "needs --node-id"),
        (("--name", "x", "--role", "admin", "--expires", "forever"), "not a duration"),
    ],
)
def test_bad_input_is_one_line(data, args, message):
    done = cli("token", "create", *args, "--data-dir", data)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_duplicate_name_is_one_line(data):
    assert (
        cli("token", "create", "--name", "ops", "--role", "admin", "--data-dir", data).returncode
        == 0
    )
    done = cli("token", "create", "--name", "ops", "--role", "viewer", "--data-dir", data)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["CommandError: a token named 'ops' already exists"]


def test_the_commands_are_listed():
    usage = cli("--help").stdout
    assert "token" in usage and "audit" in usage

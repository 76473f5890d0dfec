"""Shared fixtures. API tests use DRF's APIClient; end-to-end tests use tests.liveserver."""

from __future__ import annotations

import os

import pytest
from rest_framework.test import APIClient

from tests.pki import pki  # noqa: F401 - session fixture: the throw-away test PKI

# Tests that need PostgreSQL read this URL; CI=true turns a missing server into a failure.
POSTGRES_URL = os.environ.get(
    "AUTONOMY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def data_dir(tmp_path):
    """A fresh data dir path for a `serve` subprocess (serve creates it)."""
    return tmp_path / "data"


@pytest.fixture(scope="session")
def _session_key_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("signing")


@pytest.fixture(autouse=True)
def _signing_key_in_tmp(settings, _session_key_dir):
    """Every 200 of `GET /v1/releases/latest` is signed (docs/trust.md): the keyring of tests
    that set no data dir of their own lives in a session temp dir, never in the user's state
    dir. A test's own `settings.DATA_DIR` fixture runs after this one and wins."""
    settings.DATA_DIR = _session_key_dir


@pytest.fixture(autouse=True)
def _audit_records_flushable(request):
    """Transactional tests on SQLite: state changes now write audit records, which the
    append-only trigger keeps Django's flush from deleting. After such a test (and before its
    flush) the records are removed with the trigger lifted for that one statement. Production
    stores keep the trigger; PostgreSQL's flush is a TRUNCATE, which it does not block."""
    marker = request.node.get_closest_marker("django_db")
    transactional = bool(
        marker and (marker.kwargs.get("transaction") or marker.args[:1] == (True,))
    )
    if not transactional and not {"transactional_db", "live_server"} & set(request.fixturenames):
        yield
        return
    request.getfixturevalue("_django_db_helper")
    yield
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.vendor != "sqlite":
            continue
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT sql FROM sqlite_master WHERE type='trigger' "
                "AND name='access_auditrecord_no_delete'"
            )
            row = cursor.fetchone()
            if row is None:
                continue
            cursor.execute("DROP TRIGGER access_auditrecord_no_delete")
            cursor.execute("DELETE FROM access_auditrecord")
            cursor.execute(row[0])

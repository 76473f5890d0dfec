"""The API test suite also runs on PostgreSQL (.ci/run's second pytest run).

With AUTONOMY_TEST_DATABASE=postgres, settings point `default` at a per-process test database on
AUTONOMY_TEST_POSTGRES_URL's server; this proves that run really is on PostgreSQL.
"""

from __future__ import annotations

import os

import pytest
from django.db import connection

ON_POSTGRES = os.environ.get("AUTONOMY_TEST_DATABASE") == "postgres"


@pytest.mark.skipif(not ON_POSTGRES, reason="only in the PostgreSQL run (AUTONOMY_TEST_DATABASE)")
@pytest.mark.django_db
def test_the_api_suite_runs_on_postgresql(api):
    assert connection.vendor == "postgresql"
    assert connection.settings_dict["NAME"] == f"test_orch_{os.getpid()}"
    # a write and a read through the API land in that database
    created = api.post("/v1/releases", {"release_id": "rel-pg-1", "channel": "pg"}, format="json")
    assert created.status_code == 201, created.content
    latest = api.get("/v1/releases/latest", {"channel": "pg"})
    assert latest.status_code == 200
    assert latest.json()["release_id"] == "rel-pg-1"
    with connection.cursor() as cur:
        cur.execute("SELECT current_database()")
        assert cur.fetchone()[0] == f"test_orch_{os.getpid()}"

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

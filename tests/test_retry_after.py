"""Every 503 carries `Retry-After`, also when a service gives up on a busy store itself."""

from __future__ import annotations

import pytest

import releases.fast
from core.errors import ApiError
from core.fastpath import FastPath
from orchestrator_site.urls import FAST_ROUTES
from releases import services
from tests.test_fastpath import FakeDjango, call


@pytest.mark.django_db
def test_a_service_503_on_the_django_path_has_retry_after(api, monkeypatch):
    def busy(**_kwargs):
        raise ApiError(503, "too many concurrent publishes to this channel; retry shortly")

    monkeypatch.setattr(services, "release_publish", busy)
    response = api.post("/v1/releases", {"release_id": "rel-1"}, format="json")
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json()["error"].startswith("too many concurrent publishes")


def test_a_service_503_on_the_fast_path_has_retry_after(monkeypatch):
    def busy(query):
        raise ApiError(503, "the database is busy; retry shortly")

    monkeypatch.setattr(releases.fast, "cached_latest_decision", busy)
    status, headers, body = call(FastPath(FakeDjango(), FAST_ROUTES), "GET", "/v1/releases/latest")
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert b'"error"' in body

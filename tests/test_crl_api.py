"""`GET /v1/crl` through Django's URLconf (in-process); the e2e tests cover it under mTLS."""

from __future__ import annotations

import shutil

import pytest
from django.apps import apps
from django.test import Client

from crl.store import CrlStore


@pytest.fixture
def crl_store(tmp_path, pki):
    path = tmp_path / "crl.pem"
    shutil.copy(pki.crl_empty, path)
    store = CrlStore(str(path), [pki.ca_cert])
    apps.get_app_config("crl").use_store(store)  # what `serve` does
    yield store
    apps.get_app_config("crl").use_store(None)


def test_crl_404_when_none_is_configured():
    response = Client().get("/v1/crl")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "no CRL is configured" in response.json()["error"]


def test_crl_serves_the_file_bytes_and_follows_updates(crl_store, pki):
    response = Client().get("/v1/crl")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pkix-crl"
    assert response.content == pki.crl_empty.read_bytes()

    shutil.copy(pki.crl_revoking_a, crl_store.path)  # served at once, before any handshake
    assert Client().get("/v1/crl").content == pki.crl_revoking_a.read_bytes()

    crl_store.path.write_text("garbage")  # the enforced (last good) CRL is what is served
    assert Client().get("/v1/crl").content == pki.crl_revoking_a.read_bytes()


def test_crl_other_methods_get_a_json_405(crl_store):
    response = Client().post("/v1/crl", data=b"x", content_type="application/pkix-crl")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert "not allowed" in response.json()["error"]
    assert Client().head("/v1/crl").status_code == 200

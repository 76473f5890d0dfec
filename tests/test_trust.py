"""Signed desired state, the keyring, offline release signatures and tamper detection
(docs/trust.md), through DRF's APIClient. Each signature is checked with `cryptography` exactly
as the wire contract says: verify the decoded header bytes, then parse them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from releases import desired_state
from rollouts import signing

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def keyring(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    settings.SIGNING_KEY_FILE = ""
    desired_state.forget()
    yield tmp_path / "data" / signing.KEY_FILENAME
    desired_state.forget()


def pinned_keys(api: Any) -> dict[str, Ed25519PublicKey]:
    """key_id -> public key, as a node pins them from `GET /v1/signing-keys`."""
    answer = api.get("/v1/signing-keys")
    assert answer.status_code == 200, answer.content
    keys = {}
    for entry in answer.json()["keys"]:
        public = serialization.load_pem_public_key(entry["public_key"].encode())
        assert isinstance(public, Ed25519PublicKey)
        keys[entry["key_id"]] = public
    return keys


def verified_statement(response: Any, keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    raw = base64.b64decode(response["X-Autonomy-Desired-State"])
    signature = base64.b64decode(response["X-Autonomy-Desired-State-Signature"])
    key_id = response["X-Autonomy-Key-Id"]
    keys[key_id].verify(signature, raw)  # raises InvalidSignature
    statement = json.loads(raw)
    assert statement["key_id"] == key_id
    return statement


def publish(api: Any, **fields: Any) -> Any:
    body = {"channel": "stable", "artifact_ref": "oci://r/app:1", "lock_fingerprint": "sha256:ab"}
    body.update(fields)
    return api.post("/v1/releases", body, format="json")


def test_every_poll_answer_carries_a_verifiable_statement(api):
    assert publish(api, release_id="r1").status_code == 201
    keys = pinned_keys(api)
    for query, node_id in (("channel=stable", None), ("channel=stable&node_id=n1", "n1")):
        answer = api.get(f"/v1/releases/latest?{query}")
        assert answer.status_code == 200
        body = answer.json()
        statement = verified_statement(answer, keys)
        assert statement["type"] == "autonomy.desired-state/v1"
        assert statement["node_id"] == node_id
        assert statement["channel"] == "stable"
        for field in ("release_id", "sequence", "artifact_ref", "lock_fingerprint"):
            assert statement[field] == body[field]
        assert statement["plan_id"] is None and statement["spec_digest"] is None
        issued = datetime.fromisoformat(statement["issued_at"].replace("Z", "+00:00"))
        expires = datetime.fromisoformat(statement["expires_at"].replace("Z", "+00:00"))
        assert (expires - issued).total_seconds() == 300  # the default validity, 5m
        assert abs((datetime.now(UTC) - issued).total_seconds()) < 600
    # no release for this channel: 404, nothing signed
    missing = api.get("/v1/releases/latest?channel=none")
    assert missing.status_code == 404
    assert "X-Autonomy-Desired-State" not in missing


def test_the_validity_follows_the_setting(api, settings):
    settings.DESIRED_STATE_TTL_SECONDS = 45.0
    publish(api, release_id="r1")
    statement = verified_statement(api.get("/v1/releases/latest"), pinned_keys(api))
    issued = datetime.fromisoformat(statement["issued_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(statement["expires_at"].replace("Z", "+00:00"))
    assert (expires - issued).total_seconds() == 45

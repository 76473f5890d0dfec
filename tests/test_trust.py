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


def test_a_repeated_poll_reuses_its_signature_until_a_quarter_of_the_validity_passed(
    api, monkeypatch
):
    """The per-node signature cache keeps only the signature and the second it was issued; the
    statement rebuilt from them must be the very bytes that were signed, and a node must never
    get an answer with less than 3/4 of its validity left."""
    publish(api, release_id="r1")
    keys = pinned_keys(api)
    clock = [1_900_000_000.0]
    monkeypatch.setattr(desired_state.time, "time", lambda: clock[0])

    def answer(node: str) -> tuple[dict[str, Any], str]:
        got = api.get(f"/v1/releases/latest?channel=stable&node_id={node}")
        assert got.status_code == 200
        return verified_statement(got, keys), got["X-Autonomy-Desired-State-Signature"]

    first, signature = answer("n1")
    assert first["issued_at"] == "2030-03-17T17:46:40Z"
    assert first["expires_at"] == "2030-03-17T17:51:40Z"  # 300 s
    clock[0] += 74  # within a quarter of 300 s: the same statement and signature
    assert answer("n1") == (first, signature)
    other, other_signature = answer("n2")  # another node: its own statement
    assert other["node_id"] == "n2" and other_signature != signature
    clock[0] += 1  # 75 s: signed again, valid for 300 s from now
    again, new_signature = answer("n1")
    assert again["issued_at"] == "2030-03-17T17:47:55Z" and new_signature != signature
    # a new release: a new statement at once
    publish(api, release_id="r2")
    latest, _ = answer("n1")
    assert latest["release_id"] == "r2" and latest["issued_at"] == "2030-03-17T17:47:55Z"
    assert latest != again


def test_the_signature_cache_is_bounded(api, monkeypatch):
    publish(api, release_id="r1")
    keys = pinned_keys(api)
    monkeypatch.setattr(desired_state, "MAX_CACHED", 3)
    for node in ("a", "b", "c", "d", "e", "a"):
        got = api.get(f"/v1/releases/latest?channel=stable&node_id={node}")
        assert verified_statement(got, keys)["node_id"] == node
        assert desired_state._cached <= 3
        assert sum(len(nodes) for nodes in desired_state._cache.values()) == desired_state._cached


# --- the keyring --------------------------------------------------------------------------------


def publish_plan(api: Any, plan_id: str, release_id: str, stages: list[dict] | None = None) -> Any:
    spec = {
        "plan_id": plan_id,
        "release_id": release_id,
        "stages": stages
        or [
            {"stage_id": "canary", "percent": 0.01, "nodes": ["n-canary"]},
            {"stage_id": "all", "percent": 100, "gates": [{"kind": "manual"}]},
        ],
    }
    answer = api.post("/v1/rollouts", json.dumps(spec), content_type="application/json")
    assert answer.status_code == 201, answer.content
    return answer.json()


def test_rotate_keeps_old_signatures_verifiable_and_new_answers_use_the_new_key(api, keyring):
    from access.models import AuditRecord
    from rollouts.services import signing_key_rotate

    publish(api, release_id="r1")
    plan = publish_plan(api, "plan-old", "r1")
    old_id = plan["signature"]["key_id"]
    assert api.get("/v1/releases/latest")["X-Autonomy-Key-Id"] == old_id

    ring = signing_key_rotate(path=keyring)
    new_id = ring.active.key_id
    assert new_id != old_id

    listed = api.get("/v1/signing-keys").json()["keys"]
    assert [(k["key_id"], k["status"]) for k in listed] == [(new_id, "active"), (old_id, "retired")]
    assert all(k["since"].endswith("Z") for k in listed)
    keys = pinned_keys(api)
    # the old plan's signature still verifies with the (now retired) key it names
    keys[old_id].verify(base64.b64decode(plan["signature"]["value"]), plan["digest"].encode())
    # new answers and new plans use the new key; /v1/signing-key is the active one
    answer = api.get("/v1/releases/latest?node_id=n-canary")
    assert answer["X-Autonomy-Key-Id"] == new_id
    assert verified_statement(answer, keys)["key_id"] == new_id
    assert api.get("/v1/signing-key")["X-Autonomy-Key-Id"] == new_id
    publish(api, release_id="r2")
    assert publish_plan(api, "plan-new", "r2")["signature"]["key_id"] == new_id
    record = AuditRecord.objects.get(event_name="signing_key.rotated")
    assert record.target == new_id
    assert record.detail["retired_key_id"] == old_id
    assert keyring.stat().st_mode & 0o777 == 0o600


def test_a_plan_decided_answer_names_the_plan_and_its_digest(api):
    publish(api, release_id="r1")
    publish(api, release_id="r2")
    plan = publish_plan(api, "plan-1", "r2")
    keys = pinned_keys(api)
    inside = verified_statement(api.get("/v1/releases/latest?node_id=n-canary"), keys)
    outside = verified_statement(api.get("/v1/releases/latest?node_id=n-other"), keys)
    assert (inside["release_id"], outside["release_id"]) == ("r2", "r1")
    for statement in (inside, outside):
        assert statement["plan_id"] == "plan-1"  # the plan's API id
        assert statement["spec_digest"] == plan["digest"]
    plain = verified_statement(api.get("/v1/releases/latest"), keys)
    assert plain["plan_id"] is None and plain["node_id"] is None


# --- offline release signatures -----------------------------------------------------------------


@pytest.fixture
def release_key(settings):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from releases import release_signing

    private = Ed25519PrivateKey.generate()
    settings.RELEASE_TRUST_KEYS = {
        release_signing.key_id(private.public_key()): private.public_key()
    }
    return private


def signed_release(private: Any, **fields: Any) -> dict[str, Any]:
    from releases import release_signing

    release = {
        "release_id": "r1",
        "channel": "stable",
        "artifact_ref": "oci://r/app:1",
        "lock_fingerprint": "sha256:ab",
        "metadata": {"n": 1, "s": "é"},
        **fields,
    }
    return {**release, "release_signature": release_signing.sign(release, private)}


def test_trusted_release_keys_refuse_unsigned_bad_and_mismatching_releases(api, release_key):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from access.models import AuditRecord

    good = signed_release(release_key)
    unsigned = {k: v for k, v in good.items() if k != "release_signature"}
    other_key = signed_release(Ed25519PrivateKey.generate())
    bad_signature = {**good, "release_signature": {**good["release_signature"]}}
    bad_signature["release_signature"]["signature"] = other_key["release_signature"]["signature"]
    mismatching = {**good, "artifact_ref": "oci://evil/app:1"}
    cases = {
        "unsigned": (unsigned, "only releases signed by a trusted release key"),
        "untrusted key": (other_key, "not a trusted release key"),
        "bad signature": (bad_signature, "does not verify"),
        "mismatch": (mismatching, "made for a different release: artifact_ref differ"),
    }
    for name, (body, message) in cases.items():
        answer = api.post("/v1/releases", body, format="json")
        assert answer.status_code == 400, name
        assert answer.json()["field"] == "release_signature"
        assert message in answer.json()["error"], (name, answer.json())
    refusals = AuditRecord.objects.filter(event_name="release.published", outcome="failure")
    assert refusals.count() == len(cases)
    assert api.get("/v1/releases").json()["count"] == 0

    accepted = api.post("/v1/releases", good, format="json")
    assert accepted.status_code == 201, accepted.content
    assert accepted.json()["release_signature"] == good["release_signature"]
    latest = api.get("/v1/releases/latest")
    assert latest.json()["release_signature"] == good["release_signature"]
    assert api.get("/v1/releases/r1").json()["release_signature"] == good["release_signature"]
    statement = verified_statement(latest, pinned_keys(api))
    assert statement["release_signature"] == {
        "key_id": good["release_signature"]["key_id"],
        "signature": good["release_signature"]["signature"],
    }
    # a node that pins the release key verifies the artifact itself, over the signed bytes
    served = latest.json()["release_signature"]
    signed = base64.b64decode(served["signed"])
    release_key.public_key().verify(base64.b64decode(served["signature"]), signed)
    assert json.loads(signed)["artifact_ref"] == latest.json()["artifact_ref"]


def test_without_trusted_keys_a_posted_signature_is_kept_when_it_fits(api):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    assert publish(api, release_id="plain").json()["release_signature"] is None
    mismatching = {**signed_release(key), "channel": "beta"}
    assert api.post("/v1/releases", mismatching, format="json").status_code == 400
    assert api.post("/v1/releases", signed_release(key), format="json").status_code == 201


def test_release_sign_works_offline_and_its_output_is_accepted(api, release_key, tmp_path):
    from cryptography.hazmat.primitives import serialization

    from tests.liveserver import cli

    pem = release_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "release.key").write_bytes(pem)
    release = {"release_id": "r9", "artifact_ref": "oci://r/app:9", "metadata": {"k": [1, 2.5]}}
    (tmp_path / "release.json").write_text(json.dumps(release))
    # no data dir, no database: an empty HOME and a data dir that does not exist
    env = {"HOME": str(tmp_path / "home"), "AUTONOMY_DATA_DIR": str(tmp_path / "nowhere")}
    result = cli(
        "release",
        "sign",
        "--key",
        str(tmp_path / "release.key"),
        str(tmp_path / "release.json"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "nowhere").exists()
    signed = json.loads(result.stdout)
    assert api.post("/v1/releases", signed, format="json").status_code == 201
    again = cli(
        "release", "sign", "--key", str(tmp_path / "release.key"), "-",
        "-o", str(tmp_path / "signed.json"), env=env, input=json.dumps(release),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    written = json.loads((tmp_path / "signed.json").read_text())
    assert written["release_signature"]["signed"] == signed["release_signature"]["signed"]
    bad = cli("release", "sign", "--key", str(tmp_path / "release.json"), "-", env=env)
    assert bad.returncode != 0 and "not an unencrypted PEM Ed25519 private key" in bad.stderr


# --- tamper detection ---------------------------------------------------------------------------


def test_a_plan_whose_stored_spec_was_altered_halts_and_its_stages_are_not_served(api):
    from django.utils import timezone

    from access.models import AuditRecord
    from notifications.models import WebhookEndpoint, WebhookEvent
    from rollouts.metrics import PLAN_TAMPERED
    from rollouts.models import RolloutPlan

    WebhookEndpoint.objects.create(
        url="http://127.0.0.1:9/hook",
        secret="s3cret",
        events=["rollout.plan.tampered"],
        created_at=timezone.now(),
        updated_at=timezone.now(),
    )
    publish(api, release_id="r1")
    publish(api, release_id="r2")
    plan = publish_plan(api, "plan-t", "r2")
    before = PLAN_TAMPERED._value.get()
    # drop the manual gate, 100 % at once, a new listed node: the spec row rewritten in place
    altered = json.dumps(
        {
            "plan_id": "plan-t",
            "release_id": "r2",
            "stages": [{"stage_id": "canary", "percent": 100, "nodes": ["n-intruder"]}],
        }
    ).encode()
    RolloutPlan.objects.filter(plan_id="plan-t").update(spec=altered)

    answer = api.get("/v1/releases/latest?node_id=n-intruder")
    assert answer.json()["release_id"] == "r1"  # not the tampered stage's node list
    assert api.get("/v1/releases/latest?node_id=n-other").json()["release_id"] == "r1"
    status = api.get("/v1/rollouts/plan-t").json()
    assert status["phase"] == "halted"
    assert status["status"]["history"][-1]["action"] == "halt"
    assert "no longer matches its signed digest" in status["status"]["history"][-1]["reason"]
    assert PLAN_TAMPERED._value.get() == before + 1
    record = AuditRecord.objects.get(event_name="rollout.plan.tampered")
    assert record.target == "plan-t" and record.detail["digest"] == plan["digest"]
    # the rollout.plan.tampered webhook is in the outbox, once
    (event,) = WebhookEvent.objects.filter(name="rollout.plan.tampered")
    data = json.loads(event.body)["data"]
    assert (data["plan_id"], data["digest"], data["halted"]) == ("plan-t", plan["digest"], True)
    resumed = api.post("/v1/rollouts/plan-t/resume", {}, format="json")
    assert resumed.status_code == 409
    assert "no longer matches its signed digest" in resumed.json()["error"]


def test_stage_rows_altered_in_the_store_halt_the_plan_too(api):
    from rollouts.models import StageStatus

    publish(api, release_id="r1")
    publish(api, release_id="r2")
    publish_plan(api, "plan-rows", "r2")
    # the spec is intact, but the canary row now says 100 %: everyone would get r2
    StageStatus.objects.filter(plan__plan_id="plan-rows", stage_id="canary").update(percent=100)
    assert api.get("/v1/releases/latest?node_id=n-other").json()["release_id"] == "r1"
    detail = api.get("/v1/rollouts/plan-rows").json()
    assert detail["phase"] == "halted"
    assert "stage rows no longer match the signed spec" in detail["status"]["history"][-1]["reason"]

"""Signed desired state against the real server (tests/liveserver.py): what a node sees on the
wire verifies with the keys it pins, a rotation made with the CLI while the server runs is used
within a second, `--release-trust-key` refuses unsigned releases, and a plan whose spec row was
rewritten in the database behind the server's back halts instead of being served."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from releases import release_signing
from tests.liveserver import ServeProcess, cli, free_port, run_serve_expect_exit, wait_until

pytestmark = pytest.mark.e2e

LATEST = "/v1/releases/latest"


def pinned(srv: ServeProcess) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for entry in requests.get(srv.url("/v1/signing-keys"), timeout=10).json()["keys"]:
        public = serialization.load_pem_public_key(entry["public_key"].encode())
        assert isinstance(public, Ed25519PublicKey)
        keys[entry["key_id"]] = public
    return keys


def verify(answer: requests.Response, keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    """What a node does: verify the exact header bytes with the pinned key it names, then parse
    them and compare with the body."""
    raw = base64.b64decode(answer.headers["X-Autonomy-Desired-State"])
    signature = base64.b64decode(answer.headers["X-Autonomy-Desired-State-Signature"])
    keys[answer.headers["X-Autonomy-Key-Id"]].verify(signature, raw)
    statement = json.loads(raw)
    body = answer.json()
    for field in ("release_id", "sequence", "artifact_ref", "lock_fingerprint"):
        assert statement[field] == body[field], field
    assert statement["key_id"] == answer.headers["X-Autonomy-Key-Id"]
    return statement


def poll(srv: ServeProcess, node_id: str) -> requests.Response:
    return requests.get(srv.url(LATEST), params={"node_id": node_id}, timeout=10)


def post(srv: ServeProcess, path: str, body: Any) -> requests.Response:
    return requests.post(srv.url(path), json=body, timeout=10)


def release(private: Ed25519PrivateKey, release_id: str, **fields: Any) -> dict[str, Any]:
    body = {"release_id": release_id, "artifact_ref": f"oci://r/app:{release_id}", **fields}
    return {**body, "release_signature": release_signing.sign(body, private)}


def test_signed_desired_state_end_to_end(tmp_path: Path) -> None:
    release_key = Ed25519PrivateKey.generate()
    trust_file = tmp_path / "release-trust.pem"
    trust_file.write_bytes(
        release_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    data_dir = tmp_path / "data"
    metrics_port = free_port()
    with ServeProcess(
        data_dir,
        "--release-trust-key",
        str(trust_file),
        "--desired-state-ttl",
        "30s",
        "--metrics-addr",
        f"127.0.0.1:{metrics_port}",
    ) as srv:
        # --release-trust-key: unsigned and mismatching releases are refused, signed accepted
        unsigned = post(srv, "/v1/releases", {"release_id": "r0", "artifact_ref": "oci://x"})
        assert unsigned.status_code == 400
        assert "release sign" in unsigned.json()["error"]
        forged = {**release(release_key, "r0"), "artifact_ref": "oci://evil"}
        assert post(srv, "/v1/releases", forged).status_code == 400
        assert post(srv, "/v1/releases", release(release_key, "r1")).status_code == 201
        assert post(srv, "/v1/releases", release(release_key, "r2")).status_code == 201

        keys = pinned(srv)
        first_key = next(iter(keys))
        statement = verify(poll(srv, "n-any"), keys)
        assert (statement["node_id"], statement["channel"]) == ("n-any", "stable")
        assert statement["release_signature"]["key_id"] == release_signing.key_id(
            release_key.public_key()
        )
        issued, expires = statement["issued_at"], statement["expires_at"]
        assert issued.endswith("Z") and expires.endswith("Z") and expires > issued

        spec = {
            "plan_id": "plan-e2e",
            "release_id": "r2",
            "stages": [
                {"stage_id": "canary", "percent": 0.01, "nodes": ["n-canary"]},
                {"stage_id": "all", "percent": 100, "gates": [{"kind": "manual"}]},
            ],
        }
        plan = post(srv, "/v1/rollouts", spec).json()
        inside = verify(poll(srv, "n-canary"), keys)
        assert inside["release_id"] == "r2"
        assert inside["spec_digest"] == plan["digest"]
        assert verify(poll(srv, "n-intruder"), keys)["release_id"] == "r1"

        # rotate with the CLI while the server runs: new answers name the new key
        rotated = cli("signing-key", "rotate", "--data-dir", str(data_dir), "--key-id")
        assert rotated.returncode == 0, rotated.stderr
        new_key = rotated.stdout.strip()
        assert new_key != first_key
        wait_until(
            lambda: poll(srv, "n-canary").headers["X-Autonomy-Key-Id"] == new_key, what="new key"
        )
        keys = pinned(srv)
        assert set(keys) == {first_key, new_key}
        listed = cli("signing-key", "--all", "--key-id", "--data-dir", str(data_dir))
        assert listed.stdout.split() == [new_key, first_key]  # what a node pins, active first
        verify(poll(srv, "n-canary"), keys)
        keys[first_key].verify(
            base64.b64decode(plan["signature"]["value"]), plan["digest"].encode()
        )

        # rewrite the plan's spec row behind the server's back: manual gate gone, 100 %, and a
        # node of the attacker's listed
        altered = json.dumps(
            {
                "plan_id": "plan-e2e",
                "release_id": "r2",
                "stages": [
                    {"stage_id": "canary", "percent": 100, "nodes": ["n-intruder"]},
                    {"stage_id": "all", "percent": 100},
                ],
            }
        ).encode()
        with sqlite3.connect(data_dir / "orchestrator.sqlite3", timeout=10) as db:
            db.execute(
                "UPDATE rollouts_rolloutplan SET spec = ? WHERE plan_id = ?", (altered, "plan-e2e")
            )
        wait_until(
            lambda: (
                requests.get(srv.url("/v1/rollouts/plan-e2e"), timeout=10).json()["phase"]
                == "halted"
            ),
            what="the tampered plan to halt",
        )
        assert verify(poll(srv, "n-intruder"), keys)["release_id"] == "r1"
        detail = requests.get(srv.url("/v1/rollouts/plan-e2e"), timeout=10).json()
        assert "no longer matches its signed digest" in detail["status"]["history"][-1]["reason"]
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert "cp_rollout_plan_tampered_total 1.0" in metrics

    with sqlite3.connect(data_dir / "orchestrator.sqlite3") as db:
        events = dict(
            db.execute(
                "SELECT event_name, COUNT(*) FROM access_auditrecord WHERE event_name IN "
                "('rollout.plan.tampered', 'signing_key.rotated') GROUP BY event_name"
            ).fetchall()
        )
        refused = db.execute(
            "SELECT COUNT(*) FROM access_auditrecord WHERE event_name = 'release.published' "
            "AND outcome = 'failure'"
        ).fetchone()[0]
    assert events == {"rollout.plan.tampered": 1, "signing_key.rotated": 1}
    assert refused == 2


def test_serve_refuses_to_mint_a_key_when_signed_plans_exist(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ServeProcess(data_dir) as srv:
        assert post(srv, "/v1/releases", {"release_id": "r1"}).status_code == 201
        spec = {"release_id": "r1", "stages": [{"stage_id": "all", "percent": 100}]}
        assert post(srv, "/v1/rollouts", spec).status_code == 201
    (data_dir / "rollout-signing.key").rename(tmp_path / "saved.key")
    refused = run_serve_expect_exit(data_dir)
    assert refused.returncode != 0
    assert "refusing to start: no signing key at" in refused.stderr
    assert "1 rollout plans were signed by key" in refused.stderr
    assert not (data_dir / "rollout-signing.key").exists()
    # the kept key, named explicitly, serves again
    with ServeProcess(data_dir, "--signing-key-file", str(tmp_path / "saved.key")) as srv:
        assert requests.get(srv.url("/v1/signing-keys"), timeout=10).status_code == 200


def test_bad_trust_flags_are_one_line_errors(tmp_path: Path) -> None:
    not_a_key = tmp_path / "nope.pem"
    not_a_key.write_text("hello")
    cases = [
        (("--desired-state-ttl", "5"), "--desired-state-ttl '5' is not a duration"),
        (("--desired-state-ttl", "1s"), "--desired-state-ttl must be between 10s and 168h"),
        (("--release-trust-key", str(not_a_key)), "holds no PEM public key"),
        (("--release-trust-key", str(tmp_path / "missing.pem")), "cannot read it"),
        (("--signing-key-file", str(tmp_path / "missing.key")), "no such file"),
    ]
    for args, message in cases:
        result = run_serve_expect_exit(tmp_path / "data", *args)
        assert result.returncode != 0, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_key_left_in_the_old_default_location_is_used_and_said(tmp_path: Path) -> None:
    """The default data dir is the state dir; a key only the old default (the cache dir) holds is
    used, with one log line, instead of minting a new one nodes do not pin."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    old_dir = tmp_path / "cache" / "autonomyops" / "orchestrator"
    created = cli("signing-key", "--create", "--key-id", "--data-dir", str(old_dir), env=env)
    assert created.returncode == 0, created.stderr
    state_dir = tmp_path / "state" / "autonomyops" / "orchestrator"
    with ServeProcess(state_dir, env=env) as srv:
        served = requests.get(srv.url("/v1/signing-key"), timeout=10)
        assert served.headers["X-Autonomy-Key-Id"] == created.stdout.strip()
    assert not (state_dir / "rollout-signing.key").exists()
    assert "the default location of earlier versions" in srv.logs()

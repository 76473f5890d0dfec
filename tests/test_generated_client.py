"""A client generated from the served OpenAPI document drives a node's flow, as a user would.

`openapi-python-client` generates a Python client from `GET /v1/openapi.json` of a live
`autonomy-orchestrator serve` (into a temporary directory, failing on any generator warning, so
no operation or answer is dropped), and the test imports it and runs one node flow through it
in strict mode (`raise_on_unexpected_status=True`: an answer the document does not declare
raises): publish a release and a plan, poll `releases/latest`, ack, post events, fetch the
signed spec and the signing key, and verify the Ed25519 signature over the digest exactly as
docs/rollouts.md tells a node to.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from tests.liveserver import ServeProcess

pytestmark = pytest.mark.e2e

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "orchestrator_client"


def generate_client(base_url: str, into: Path) -> None:
    """What a user runs: generate from the served document (the generator formats its output
    with ruff, found next to this interpreter)."""
    document = into / "openapi.json"
    with urllib.request.urlopen(base_url + "/v1/openapi.json", timeout=10) as response:
        document.write_bytes(response.read())
    config = into / "config.yaml"
    config.write_text(f"package_name_override: {PACKAGE}\n")
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(document),
            "--meta",
            "none",
            "--config",
            str(config),
            "--output-path",
            str(into / PACKAGE),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=into,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Nothing of the document was skipped (the generator names what it drops).
    assert "will not be generated" not in result.stdout + result.stderr
    assert "Unsupported content_type" not in result.stdout + result.stderr


def _import(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.fixture
def generated(tmp_path: Path, data_dir: Path):
    with ServeProcess(data_dir) as server:
        generate_client(server.base_url, tmp_path)
        sys.path.insert(0, str(tmp_path))
        try:
            yield server
        finally:
            sys.path.remove(str(tmp_path))
            for module in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
                del sys.modules[module]


def test_a_generated_client_completes_the_node_flow_and_verifies_the_signature(
    generated: ServeProcess,
) -> None:
    client = _import("client").Client(base_url=generated.base_url, raise_on_unexpected_status=True)
    models = _import("models")
    api = "api."

    # The operator publishes a release and a one-stage plan that includes node-a.
    publish = _import(api + "releases.releases_publish")
    release = publish.sync(
        client=client,
        body=models.ReleasePublishRequest(release_id="rel-004", artifact_ref="web:4.0.0"),
    )
    assert isinstance(release, models.Release) and release.sequence == 1
    plan_body = models.PlanSpecRequest.from_dict(
        {
            "plan_id": "plan-web",
            "release_id": "rel-004",
            "stages": [
                {
                    "stage_id": "canary",
                    "percent": 50,
                    "nodes": ["node-a"],
                    "gates": [{"kind": "ack_success", "min_ratio": 0.5}],
                }
            ],
        }
    )
    plan = _import(api + "rollouts.rollouts_publish").sync_detailed(client=client, body=plan_body)
    assert plan.status_code == 201 and isinstance(plan.parsed, models.PlanDetail)

    # The node polls which release it should run, ...
    latest = _import(api + "releases.releases_latest").sync(client=client, node_id="node-a")
    assert isinstance(latest, models.Release) and latest.release_id == "rel-004"

    # ... acknowledges it, ...
    ack = _import(api + "acks.nodes_ack").sync_detailed(
        "node-a",
        client=client,
        body=models.NodeAckRequest(release_id="rel-004", status=models.AckStatusEnum.ACTIVE),
    )
    assert ack.status_code == 201 and ack.parsed.status == models.AckStatusEnum.ACTIVE

    # ... reports telemetry (keys beyond the declared ones are kept), ...
    event = models.EventRequest.from_dict(
        {
            "event_id": "evt-1",
            "event_type": "app.heartbeat",
            "node_id": "node-a",
            "timestamp": "2026-04-07T10:00:00Z",
            "release_id": "rel-004",
            "uptime_s": 12,
        }
    )
    ingest = _import(api + "events.events_ingest")
    result = ingest.sync(client=client, body=models.EventBatchRequest(events=[event]))
    assert (result.received, result.inserted, result.deduped) == (1, 1, 0)
    page = _import(api + "events.events_list").sync(client=client, node_id="node-a")
    assert page.events[0].additional_properties["uptime_s"] == 12

    # ... and verifies the plan it will follow: the public key (PEM) and the signed spec.
    key_answer = _import(api + "rollouts.signing_key").sync_detailed(client=client)
    assert key_answer.status_code == 200
    public = load_pem_public_key(key_answer.parsed.payload.read())
    assert isinstance(public, Ed25519PublicKey)
    raw_key = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = hashlib.sha256(raw_key).hexdigest()[:16]
    assert key_answer.headers["X-Autonomy-Key-Id"] == key_id

    spec_api = _import(api + "rollouts.rollouts_spec")
    raw = spec_api.sync_detailed("plan-web", client=client, raw=True)
    spec_bytes, digest = raw.content, raw.headers["X-Autonomy-Digest"]
    signature = base64.b64decode(raw.headers["X-Autonomy-Signature"])
    assert digest == "sha256:" + hashlib.sha256(spec_bytes).hexdigest()
    public.verify(signature, digest.encode())  # raises InvalidSignature when tampered
    assert raw.headers["X-Autonomy-Key-Id"] == key_id

    # The envelope carries the same digest and signature, typed by the generated models.
    envelope = spec_api.sync("plan-web", client=client)
    assert isinstance(envelope, models.SignedSpec)
    assert envelope.digest == digest
    assert (envelope.signature.alg.value, envelope.signature.key_id) == ("Ed25519", key_id)
    public.verify(base64.b64decode(envelope.signature.value), envelope.digest.encode())
    assert envelope.spec.to_dict() == plan_body.to_dict()

    # The CRL route is typed too: without --tls-crl-file it is the declared 404 error body.
    crl: Any = _import(api + "tls.crl").sync(client=client)
    assert isinstance(crl, models.Error) and "CRL" in crl.error

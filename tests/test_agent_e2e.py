"""The reference agent against the real `autonomy-orchestrator serve` (tests/liveserver.py):
signed desired state verified end to end, refusals on real answers (tampered, expired, replayed
older, rotated-away key, unsigned release under a release trust key), acks and events counted
on the server, and a restart plus a 60 s outage with no event lost (the agent runs as a
subprocess through the CLI there). Needs the server side of docs/trust.md (branch trust14)."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from autonomy_agent import (
    Agent,
    AgentConfig,
    Client,
    Expired,
    Mismatch,
    Rollback,
    UnknownKey,
    UnsignedRelease,
)
from tests.fakeplane import TamperingProxy, key_id, write_public
from tests.liveserver import BIN, ServeProcess, child_env, cli, wait_until

pytestmark = pytest.mark.e2e

NODE = "edge-1"
RECORD = 'env | grep ^AUTONOMY_ | sort > "$MARKER"; echo "applied $AUTONOMY_RELEASE_ID"'


def request(
    srv: ServeProcess,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(srv.url(path), data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            raw = resp.read()
            return resp.status, dict(resp.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, dict(err.headers), json.loads(raw) if raw else None


def publish(srv: ServeProcess, release: dict[str, Any], token: str | None = None) -> None:
    status, _, body = request(srv, "POST", "/v1/releases", release, token)
    assert status in (200, 201), body


def pin_server_keys(srv: ServeProcess, path: Path, token: str | None = None) -> Path:
    """Write the server's desired-state public keys to PATH (a node gets them out of band; here
    the test is the trusted channel)."""
    status, _, body = request(srv, "GET", "/v1/signing-keys", token=token)
    assert status == 200, body
    path.write_text("".join(k["public_key"] for k in body["keys"]))
    return path


def raw_poll(srv: ServeProcess, node_id: str = NODE) -> tuple[dict[str, str], dict[str, Any]]:
    query = urllib.parse.urlencode({"channel": "stable", "node_id": node_id})
    status, headers, body = request(srv, "GET", f"/v1/releases/latest?{query}")
    assert status == 200, body
    return headers, body


def release(release_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "release_id": release_id,
        "channel": "stable",
        "artifact_ref": f"oci://registry/app:{release_id}",
        "lock_fingerprint": f"sha256:lock-{release_id}",
        "metadata": {"built_by": "ci"},
        **fields,
    }


def make_agent(
    tmp_path: Path, srv: ServeProcess, trust: list[Path], state: str = "state", **client: Any
) -> Agent:
    marker = tmp_path / "applied.env"
    return Agent(
        Client(srv.base_url, NODE, trust_keys=trust, retries=0, **client),
        AgentConfig(
            apply_command=f'MARKER="{marker}"; {RECORD}',
            state_dir=tmp_path / state,
            interval=1.0,
            max_backoff=2.0,
        ),
    )


def applied(tmp_path: Path) -> dict[str, str]:
    marker = tmp_path / "applied.env"
    if not marker.exists():
        return {}
    return dict(line.split("=", 1) for line in marker.read_text().splitlines())


def test_verified_end_to_end_and_every_forgery_refused(tmp_path):
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        publish(srv, release("r1"))
        old_keys = pin_server_keys(srv, tmp_path / "trust-old.pem")
        agent = make_agent(tmp_path, srv, [old_keys])
        assert [k["status"] for k in agent.client.signing_keys()] == ["active"]
        agent.cycle()
        assert agent.last_error is None
        env = applied(tmp_path)
        assert (env["AUTONOMY_RELEASE_ID"], env["AUTONOMY_SEQUENCE"]) == ("r1", "1")
        assert env["AUTONOMY_ARTIFACT_REF"] == "oci://registry/app:r1"

        # The acks and the events landed on the server.
        _, _, acks = request(srv, "GET", "/v1/releases/r1/acks")
        assert [(a["node_id"], a["status"], a["message"]) for a in acks["acks"]] == [
            (NODE, "active", "applied r1")
        ]
        _, _, events = request(srv, "GET", f"/v1/events?node_id={NODE}")
        kinds = sorted(e["event_type"] for e in events["events"])
        assert kinds == ["agent.apply", "agent.heartbeat"]

        # A man in the middle changes the artifact of a real answer: the agent runs nothing.
        with TamperingProxy(srv.base_url) as proxy:
            mitm = make_agent(tmp_path, srv, [old_keys], state="mitm-state")
            mitm.client = Client(proxy.url, NODE, trust_keys=[old_keys], retries=0)
            publish(srv, release("r1b"))

            def swap(body: dict[str, Any], headers: dict[str, str]) -> None:
                body["artifact_ref"] = "oci://evil/app:r1b"

            proxy.answer_hook = swap
            mitm.cycle()
            assert isinstance(mitm.last_error, Mismatch)
            assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r1"
            _, _, refused = request(
                srv, "GET", f"/v1/events?node_id={NODE}&event_type=agent.refused"
            )
            assert [e["reason"] for e in refused["events"]] == ["mismatch"]

        # Real answers, altered on the way or replayed: refused.
        headers, body = raw_poll(srv)
        with pytest.raises(Mismatch):
            agent.client.verify(headers, {**body, "artifact_ref": "oci://evil/app:r1"})
        with pytest.raises(Mismatch):  # another node's answer
            agent.client.verify(*raw_poll(srv, "edge-2"))
        statement = json.loads(base64.b64decode(headers["X-Autonomy-Desired-State"]))
        expires = agent.client.verify(headers, body).expires_at
        with pytest.raises(Expired):
            agent.client.verify(headers, body, now=expires + timedelta(minutes=2))
        assert statement["key_id"] == headers["X-Autonomy-Key-Id"]

        publish(srv, release("r2"))
        agent.cycle()
        assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r2"
        with pytest.raises(Rollback):  # the r1 answer replayed after r2 was accepted
            agent.client.verify(headers, body, min_sequence=agent.state.min_sequence("stable"))

        # An unsigned release, for a node that pins an offline release key: refused.
        offline = write_public(tmp_path / "offline.pem", Ed25519PrivateKey.generate())
        strict = Client(srv.base_url, NODE, trust_keys=[old_keys], release_trust_keys=[offline])
        with pytest.raises(UnsignedRelease):
            strict.poll("stable")

        # Rotation (the running server picks the new key up): a node pinning only the old key
        # refuses, a node told about the new key keeps working.
        rotated = cli("signing-key", "rotate", "--data-dir", str(data))
        assert rotated.returncode == 0, rotated.stderr
        old_key_id = headers["X-Autonomy-Key-Id"]
        wait_until(
            lambda: raw_poll(srv)[0]["X-Autonomy-Key-Id"] != old_key_id, timeout=30, what="rotation"
        )
        publish(srv, release("r3"))
        agent.cycle()
        assert isinstance(agent.last_error, UnknownKey)
        assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r2"
        all_keys = pin_server_keys(srv, tmp_path / "trust-all.pem")
        agent.close()
        agent = make_agent(tmp_path, srv, [all_keys])
        agent.cycle()
        assert agent.last_error is None
        assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r3"
        _, _, listed = request(srv, "GET", "/v1/signing-keys")
        statuses = {k["key_id"]: k["status"] for k in listed["keys"]}
        assert statuses[old_key_id] == "retired"


def test_only_offline_signed_releases_run_under_a_release_trust_key(tmp_path):
    offline = Ed25519PrivateKey.generate()
    private_pem = tmp_path / "offline.key"
    private_pem.write_bytes(
        offline.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(private_pem, 0o600)
    offline_pub = write_public(tmp_path / "offline.pem", offline)
    with ServeProcess(tmp_path / "data", "--release-trust-key", str(offline_pub)) as srv:
        status, _, body = request(srv, "POST", "/v1/releases", release("r1"))
        assert status == 400, body  # unsigned: the server refuses it

        unsigned = tmp_path / "release.json"
        unsigned.write_text(json.dumps(release("r1")))
        signed = cli("release", "sign", "--key", str(private_pem), str(unsigned))
        assert signed.returncode == 0, signed.stderr
        publish(srv, json.loads(signed.stdout))

        trust = pin_server_keys(srv, tmp_path / "trust.pem")
        agent = make_agent(tmp_path, srv, [trust], release_trust_keys=[offline_pub])
        agent.cycle()
        assert agent.last_error is None
        env = applied(tmp_path)
        assert env["AUTONOMY_RELEASE_ID"] == "r1"
        assert env["AUTONOMY_RELEASE_KEY_ID"] == key_id(offline)


def _server_events(srv: ServeProcess, token: str) -> list[dict[str, Any]]:
    status, _, body = request(srv, "GET", f"/v1/events?node_id={NODE}&limit=1000", token=token)
    assert status == 200, body
    return list(body["events"])


def _spooled(state: Path) -> int:
    return len(list((state / "spool").glob("*.json")))


def test_the_agent_cli_survives_a_restart_and_a_60s_outage_losing_no_event(tmp_path):
    data = tmp_path / "data"
    tokens = {}
    for name, role, node in (("edge", "node", NODE), ("ops", "admin", None)):
        args = ["token", "create", "--name", name, "--role", role, "--data-dir", str(data)]
        made = cli(*args, *(["--node-id", node] if node else []))
        assert made.returncode == 0, made.stderr
        tokens[name] = made.stdout.strip().splitlines()[-1]
    token_file = tmp_path / "node.token"
    token_file.write_text(tokens["edge"] + "\n")
    os.chmod(token_file, 0o600)
    admin = tokens["ops"]
    state = tmp_path / "state"
    agent_log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed in finally
    srv = ServeProcess(data).start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        publish(srv, release("r1"), admin)
        trust = pin_server_keys(srv, tmp_path / "trust.pem", admin)
        marker = tmp_path / "applied.env"
        command = [
            str(BIN),
            "agent",
            "--server",
            srv.base_url,
            "--node-id",
            NODE,
            "--token-file",
            str(token_file),
            "--trust-key",
            str(trust),
            "--state-dir",
            str(state),
            "--interval",
            "1s",
            "--max-backoff",
            "2s",
            "--apply-command",
            f'MARKER="{marker}"; {RECORD}',
        ]
        agent = subprocess.Popen(
            command,
            stdout=agent_log,
            stderr=agent_log,
            env=child_env(),
        )

        def acked() -> bool:
            _, _, acks = request(srv, "GET", "/v1/releases/r1/acks", token=admin)
            return [a["status"] for a in acks["acks"]] == ["active"]

        wait_until(acked, timeout=30, what="the agent's active ack")

        # A quick restart, then a 60 s outage.
        for outage in (0.0, 60.0):
            srv.stop()
            time.sleep(outage)
            if outage:
                assert _spooled(state) > 0  # what the agent made meanwhile waits on disk
            srv.start()
            seen = len(_server_events(srv, admin))
            wait_until(
                lambda seen=seen: len(_server_events(srv, admin)) > seen and _spooled(state) == 0,
                timeout=30,
                what="the spool to drain after the server came back",
            )

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        totals = json.loads((state / "state.json").read_text())
        assert totals["events_dropped"] == 0
        events = _server_events(srv, admin)
        assert len(events) == totals["events_spooled"]  # every event made arrived, once
        assert len({e["event_id"] for e in events}) == len(events)
        assert applied(tmp_path)["AUTONOMY_RELEASE_ID"] == "r1"
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        srv.stop()
        agent_log.close()


def test_the_agent_over_mtls_with_a_node_certificate(tmp_path, pki):
    data = tmp_path / "data"
    made = cli("token", "create", "--name", "ops", "--role", "admin", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    admin = made.stdout.strip().splitlines()[-1]
    tls = ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)]
    tls += ["--tls-ca-file", str(pki.ca)]
    with ServeProcess(data, *tls, scheme="https", ssl_context=pki.context("node-b")) as srv:
        status, _, body = request(
            srv, "POST", "/v1/releases", release("r1"), admin, pki.context("node-b")
        )
        assert status == 201, body
        status, _, keys = request(
            srv, "GET", "/v1/signing-keys", None, admin, pki.context("node-b")
        )
        assert status == 200, keys
        (tmp_path / "trust.pem").write_text("".join(k["public_key"] for k in keys["keys"]))
        cert, key = pki.client("node-a")
        client = Client(
            srv.base_url,
            "node-a",
            cert=str(cert),
            key=str(key),
            ca=str(pki.ca),
            trust_keys=[tmp_path / "trust.pem"],
        )
        with client:
            state = client.poll("stable")
            assert (state.release_id, state.node_id) == ("r1", "node-a")
            assert client.ack("r1", "active", "ok")["node_id"] == "node-a"
            sent = client.send_events([client.event("agent.heartbeat")])
            assert sent == {"received": 1, "inserted": 1, "deduped": 0}

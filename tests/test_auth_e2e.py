"""Who may do what, against the real server (API.md §6): every route of the policy table for
every role over HTTP with tokens, client certificates under mTLS, node scope, `--auth auto`, open
loopback mode, and the audit log naming the real principal."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
import requests

from core.policy import POLICY
from tests.liveserver import BIN, ServeProcess, child_env, cli, free_port
from tests.pki import make_leaf

pytestmark = pytest.mark.e2e

ROLES = ("node", "viewer", "operator", "admin")
RELEASE = {"release_id": "r1", "channel": "stable", "artifact_ref": "oci://example/app:1"}
PLAN = {
    "plan_id": "p1",
    "release_id": "r1",
    "stages": [{"stage_id": "s1", "percent": 100, "gates": [{"kind": "manual"}]}],
}


def wait_for(predicate, *, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def make_token(data_dir, name, role, node_id=None):
    args = ["token", "create", "--name", name, "--role", role, "--data-dir", str(data_dir)]
    if node_id:
        args += ["--node-id", node_id]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One enforced server (tokens exist) with a release and a plan, and a token per role."""
    data_dir = tmp_path_factory.mktemp("auth") / "data"
    tokens = {role: make_token(data_dir, f"{role}-token", role) for role in ROLES if role != "node"}
    tokens["node"] = make_token(data_dir, "node-a-token", "node", "node-a")
    metrics_port = free_port()
    srv = ServeProcess(data_dir, "--metrics-addr", f"127.0.0.1:{metrics_port}")
    with srv:
        admin = bearer(tokens["admin"])
        assert (
            requests.post(srv.url("/v1/releases"), json=RELEASE, headers=admin).status_code == 201
        )
        response = requests.post(srv.url("/v1/rollouts"), json=PLAN, headers=admin)
        assert response.status_code == 201, response.text
        yield srv, tokens


def concrete(route: str) -> str:
    return (
        route.replace("{release_id}", "r1")
        .replace("{node_id}", "node-a")
        .replace("{plan_id}", "p1")
        .replace("{stage_id}", "s1")
    )


def request_for(method: str, route: str) -> tuple[str, dict]:
    """A representative request of a policy-table route (a node's own business for node-scoped
    routes, so the node role is allowed exactly where its scope allows)."""
    path = concrete(route)
    kwargs: dict = {}
    if route == "/v1/releases/latest":
        kwargs["params"] = {"channel": "stable"}
    if method == "POST":
        if route == "/v1/events":
            body: dict[str, Any] = {
                "events": [
                    {
                        "node_id": "node-a",
                        "event_id": f"e-{time.monotonic_ns()}",
                        "event_type": "heartbeat",
                        "timestamp": "2026-01-01T00:00:00Z",
                    }
                ]
            }
        elif route == "/v1/releases":
            body = {**RELEASE, "release_id": f"r-{time.monotonic_ns()}"}
        elif route == "/v1/rollouts":
            body = {**PLAN, "plan_id": f"p-{time.monotonic_ns()}"}
        elif route.endswith("/ack"):
            body = {"release_id": "r1", "status": "applied"}
        elif route.endswith("/recover"):
            body = {"strategy": "retry"}
        else:
            body = {}
        kwargs["json"] = body
    return path, kwargs


def allowed_for(role: str | None, method: str, route: str) -> bool:
    """Expected from API.md §6, written out (not computed by core.auth)."""
    rule = POLICY[(method, route)]
    if rule.role is None:
        return True
    if role is None:
        return False
    if role == "node":
        return rule.node is not None
    order = {"viewer": 2, "operator": 3, "admin": 4}
    return order[role] >= int(rule.role)


CASES = sorted(POLICY)


@pytest.mark.parametrize("role", [*ROLES, None], ids=[*ROLES, "anonymous"])
def test_each_role_reaches_exactly_its_routes(server, role):
    srv, tokens = server
    headers = bearer(tokens[role]) if role else {}
    wrong = []
    for method, route in CASES:
        path, kwargs = request_for(method, route)
        response = requests.request(method, srv.url(path), headers=headers, timeout=10, **kwargs)
        expected = allowed_for(role, method, route)
        denied = response.status_code in (401, 403)
        if expected == denied:
            wrong.append((method, route, response.status_code, response.text[:120]))
            continue
        if denied:
            want = 401 if role is None else 403
            body = response.json()
            if response.status_code != want or "error" not in body:
                wrong.append((method, route, response.status_code, body))
            elif want == 401 and response.headers.get("WWW-Authenticate") != "Bearer":
                wrong.append((method, route, "no WWW-Authenticate", response.headers))
            elif want == 403 and body.get("required_role") != rule_role(method, route):
                wrong.append((method, route, "required_role", body))
    assert wrong == []


def rule_role(method, route):
    return POLICY[(method, route)].role.label


def test_a_bad_or_revoked_token_is_401(server, tmp_path):
    srv, _ = server
    response = requests.get(srv.url("/v1/releases"), headers=bearer("aot_nope_nope"))
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    response = requests.get(srv.url("/v1/releases"), headers={"Authorization": "Basic eDp5"})
    assert response.status_code == 401


# The edge would trust a cached token for 10 minutes: only the revocation signal can refuse it.
LONG_CACHE = {"AUTONOMY_TOKEN_CACHE_TTL": "600"}


def test_revoked_token_is_refused_on_its_next_request(tmp_path):
    """SQLite: `token revoke` in another process; the very next request is 401 (the stamp file
    in the shared data dir), although the edge's cache would trust the token for 10 minutes."""
    data_dir = tmp_path / "data"
    keep = make_token(data_dir, "keeper", "viewer")
    token = make_token(data_dir, "short-lived", "viewer")
    with ServeProcess(data_dir, "--auth", "required", env=LONG_CACHE) as srv:
        assert requests.get(srv.url("/v1/releases"), headers=bearer(token)).status_code == 200
        assert cli("token", "revoke", "short-lived", "--data-dir", str(data_dir)).returncode == 0
        refused = requests.get(srv.url("/v1/releases"), headers=bearer(token))
        assert refused.status_code == 401, refused.text
        assert requests.get(srv.url("/v1/releases"), headers=bearer(keep)).status_code == 200
    stamp = data_dir / "token-revocations.stamp"
    assert stamp.stat().st_mode & 0o777 == 0o600


@pytest.mark.postgres
def test_revoked_token_is_refused_on_its_next_request_on_postgresql(tmp_path):
    """PostgreSQL: the revoke runs with another data dir (as on another host, no shared stamp);
    NOTIFY reaches the server, whose next request with the token is 401."""
    from tests.pg import require_postgres, temp_database

    require_postgres()
    with temp_database() as url:
        store = ("--postgres-url", url, "--data-dir", str(tmp_path / "cli"))
        created = cli("token", "create", "--name", "short-lived", "--role", "viewer", *store)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip().splitlines()[-1]
        args = ("--postgres-url", url, "--auth", "required")
        with ServeProcess(tmp_path / "data", *args, env=LONG_CACHE) as srv:
            assert requests.get(srv.url("/v1/releases"), headers=bearer(token)).status_code == 200
            assert cli("token", "revoke", "short-lived", *store).returncode == 0
            refused = requests.get(srv.url("/v1/releases"), headers=bearer(token))
            assert refused.status_code == 401, refused.text


def test_an_expired_token_is_refused_on_its_first_request_after_expiry(tmp_path):
    """Expiry is checked on every use of the cached token, not when the cache entry ends (the
    cache here would keep it 10 minutes)."""
    data_dir = tmp_path / "data"
    make_token(data_dir, "keeper", "viewer")
    with ServeProcess(data_dir, "--auth", "required", env=LONG_CACHE) as srv:
        result = cli(
            "token", "create", "--name", "brief", "--role", "viewer", "--expires", "20s",
            "--data-dir", str(data_dir),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip().splitlines()[-1]
        first = requests.get(srv.url("/v1/releases"), headers=bearer(token))
        assert first.status_code == 200, first.text  # usable before it expires
        wait_for(
            lambda: requests.get(srv.url("/v1/releases"), headers=bearer(token)).status_code == 401,
            timeout=40,
            what="the expired token refused",
        )


def test_node_scope(server):
    srv, tokens = server
    node = bearer(tokens["node"])
    latest = srv.url("/v1/releases/latest")
    own = requests.get(latest, params={"channel": "stable", "node_id": "node-a"}, headers=node)
    assumed = requests.get(latest, params={"channel": "stable"}, headers=node)
    other = requests.get(latest, params={"channel": "stable", "node_id": "node-b"}, headers=node)
    assert own.status_code == 200 and assumed.status_code == 200
    assert assumed.json() == own.json()  # its own node_id is assumed
    assert other.status_code == 403 and other.json()["required_role"] == "viewer"
    ack = {"release_id": "r1", "status": "applied"}
    assert requests.post(srv.url("/v1/nodes/node-b/ack"), json=ack, headers=node).status_code == 403
    assert requests.get(srv.url("/v1/nodes/node-b/acks"), headers=node).status_code == 403
    assert requests.get(srv.url("/v1/nodes/node-a/acks"), headers=node).status_code == 200
    events = {
        "events": [
            {
                "node_id": "node-a",
                "event_id": "x1",
                "event_type": "crash",
                "timestamp": "2026-01-01T00:00:00Z",
            },
            {
                "node_id": "node-b",
                "event_id": "x2",
                "event_type": "crash",
                "timestamp": "2026-01-01T00:00:00Z",
            },
        ]
    }
    response = requests.post(srv.url("/v1/events"), json=events, headers=node)
    assert response.status_code == 403
    assert response.json()["index"] == 1
    # Nothing of the refused batch was stored.
    viewer = bearer(tokens["viewer"])
    stored = requests.get(srv.url("/v1/events"), params={"node_id": "node-a"}, headers=viewer)
    assert "x1" not in {e["event_id"] for e in stored.json()["events"]}


def test_actor_is_the_principal_and_the_audit_log_names_it(server):
    srv, tokens = server
    operator = {**bearer(tokens["operator"]), "X-Autonomy-Operator": "evaluator"}
    release = {**RELEASE, "release_id": "r-actor"}
    assert requests.post(srv.url("/v1/releases"), json=release, headers=operator).ok
    plan = {**PLAN, "plan_id": "p-actor", "release_id": "r-actor"}
    assert requests.post(srv.url("/v1/rollouts"), json=plan, headers=operator).status_code == 201
    response = requests.post(srv.url("/v1/rollouts/p-actor/pause"), json={}, headers=operator)
    assert response.status_code == 200, response.text
    entry = response.json()["history"][-1]
    assert entry["operator"] == "operator-token"
    assert entry["claimed_operator"] == "evaluator"  # a claim, never the evaluator itself
    # A denial: the viewer may not resume.
    viewer = bearer(tokens["viewer"])
    assert (
        requests.post(srv.url("/v1/rollouts/p-actor/resume"), json={}, headers=viewer).status_code
        == 403
    )
    admin = bearer(tokens["admin"])

    def records():
        return requests.get(srv.url("/v1/audit"), headers=admin).json()["records"]

    wait_for(
        lambda: any(
            r["event_name"] == "auth.access.denied" and r["principal"] == "viewer-token"
            for r in records()
        ),
        what="the denial in the audit log",
    )
    paused = next(
        r
        for r in records()
        if r["event_name"] == "rollout.plan.paused" and r["target"] == "p-actor"
    )
    assert paused["principal"] == "operator-token"
    assert paused["principal_kind"] == "token" and paused["role"] == "operator"
    assert paused["outcome"] == "success" and paused["target"] == "p-actor"
    assert paused["route"] == "/v1/rollouts/{plan_id}/pause"
    assert paused["source_ip"] == "127.0.0.1"
    assert paused["detail"]["claimed_operator"] == "evaluator"
    denied = next(
        r
        for r in records()
        if r["event_name"] == "auth.access.denied" and r["principal"] == "viewer-token"
    )
    assert denied["outcome"] == "denied" and denied["route"].startswith("/v1/")
    assert denied["detail"]["status"] == 403 and denied["detail"]["reason"] == "role"
    published = {r["target"]: r for r in records() if r["event_name"] == "release.published"}
    assert published["r1"]["principal"] == "admin-token"
    assert published["r-actor"]["principal"] == "operator-token"
    # A refused change is audited as a failure.
    again = requests.post(srv.url("/v1/rollouts/p-actor/pause"), json={}, headers=operator)
    assert again.status_code == 409
    assert any(
        r["event_name"] == "rollout.plan.paused" and r["outcome"] == "failure" for r in records()
    )


# --- mTLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls(tmp_path_factory, pki):
    """A server under mTLS and client certificates made for this session: a node with a SAN URI,
    a node with its CN only, an operator by `O=autonomy:operators`."""
    from cryptography.hazmat.primitives import serialization

    root = tmp_path_factory.mktemp("mtls-certs")
    certs = {}
    for name, cn, orgs, uris in [
        ("uri-node", "edge-box-17", ("Example Fleet",), ("urn:autonomy:node:node-17",)),
        ("cn-node", "node-c", (), ()),
        ("carol", "carol", ("autonomy:operators",), ()),
    ]:
        cert, key = make_leaf(cn, pki.ca_cert, pki.ca_key, organizations=orgs, uris=uris)
        cert_path, key_path = root / f"{name}.pem", root / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        certs[name] = (str(cert_path), str(key_path))
    tls = pki.serve_args()
    srv = ServeProcess(
        tmp_path_factory.mktemp("mtls") / "data",
        *tls,
        scheme="https",
        ssl_context=pki.context("node-a"),
    )
    with srv:
        yield srv, certs, str(pki.ca)


def test_mtls_operator_certificate_by_group(mtls):
    srv, certs, ca = mtls
    response = requests.post(
        srv.url("/v1/releases"), json=RELEASE, cert=certs["carol"], verify=ca, timeout=10
    )
    assert response.status_code == 201, response.text
    assert (
        requests.get(srv.url("/v1/audit"), cert=certs["carol"], verify=ca).json()["required_role"]
        == "admin"
    )


def test_mtls_node_certificate_with_san_uri(mtls):
    srv, certs, ca = mtls
    node = {"cert": certs["uri-node"], "verify": ca, "timeout": 10}
    latest = srv.url("/v1/releases/latest")
    assert requests.get(
        latest, params={"channel": "stable", "node_id": "node-17"}, **node
    ).status_code in (200, 404)
    other = requests.get(latest, params={"channel": "stable", "node_id": "edge-box-17"}, **node)
    assert other.status_code == 403  # the SAN URI names the node, not the CN
    assert requests.post(srv.url("/v1/releases"), json=RELEASE, **node).status_code == 403


def test_mtls_node_certificate_with_cn_only(mtls):
    srv, certs, ca = mtls
    node = {"cert": certs["cn-node"], "verify": ca, "timeout": 10}
    assert requests.get(srv.url("/v1/nodes/node-c/acks"), **node).status_code == 200
    assert requests.get(srv.url("/v1/nodes/node-a/acks"), **node).status_code == 403
    assert requests.get(srv.url("/v1/events"), **node).status_code == 403


# --- modes -------------------------------------------------------------------------------------


def test_auto_on_a_non_loopback_listener_without_tokens_refuses_to_start(tmp_path):
    port = free_port()
    result = subprocess.run(
        [str(BIN), "serve", "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert "refusing to listen on 0.0.0.0" in line
    assert "token create" in line and "--auth off" in line


def test_auto_on_a_non_loopback_listener_with_a_token_enforces(tmp_path):
    data_dir = tmp_path / "data"
    token = make_token(data_dir, "ci", "operator")
    port = free_port()
    srv = ServeProcess(data_dir, port=port)
    srv.args = lambda: [
        str(BIN),
        "serve",
        "--listen",
        f"0.0.0.0:{port}",
        "--data-dir",
        str(data_dir),
    ]
    with srv:
        assert requests.get(srv.url("/v1/releases")).status_code == 401
        assert requests.get(srv.url("/v1/releases"), headers=bearer(token)).status_code == 200
        assert requests.get(srv.url("/v1/health")).status_code == 200


def test_auth_off_warns_and_a_bad_mode_is_refused(tmp_path):
    with ServeProcess(tmp_path / "data", "--auth", "off") as srv:
        wait_for(lambda: "--auth off" in srv.logs(), what="the warning")
    result = cli("serve", "--auth", "sometimes", "--data-dir", str(tmp_path / "d2"))
    assert result.returncode != 0 and "--auth must be one of auto, required, off" in result.stderr


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    with ServeProcess(tmp_path_factory.mktemp("open") / "data") as srv:
        yield srv


def test_open_mode_quick_start_needs_no_credential(open_server):
    srv = open_server
    response = requests.post(
        srv.url("/v1/releases"), json=RELEASE, headers={"X-Autonomy-Operator": "alice"}
    )
    assert response.status_code in (200, 201)
    records = requests.get(srv.url("/v1/audit")).json()["records"]
    published = next(r for r in records if r["event_name"] == "release.published")
    assert published["principal"] == "alice"  # open loopback mode: the claim names the actor


def test_open_mode_refuses_cross_site_and_non_json_and_rebinding(open_server):
    srv = open_server
    plan = json.dumps({**PLAN, "plan_id": "evil"})
    evil = requests.post(
        srv.url("/v1/rollouts"),
        data=plan,
        headers={"Origin": "https://evil.example", "Content-Type": "application/json"},
    )
    assert evil.status_code == 403 and "Cross-site" in evil.json()["error"]
    fetch = requests.post(
        srv.url("/v1/rollouts"), data=plan, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert fetch.status_code == 403
    text = requests.post(srv.url("/v1/rollouts"), data=plan, headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    rebound = requests.get(srv.url("/v1/releases"), headers={"Host": f"evil.example:{srv.port}"})
    assert rebound.status_code == 400
    # The fast path too.
    rebound = requests.get(srv.url("/v1/events"), headers={"Host": "attacker.example"})
    assert rebound.status_code == 400
    assert requests.get(srv.url("/v1/rollouts/evil")).status_code == 404  # nothing was created

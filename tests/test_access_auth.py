"""Who may do what (API.md §6), as pure decisions: roles, node scope, certificates, modes and the
open loopback mode's request checks. The HTTP edge asks exactly these functions (phase 2 wires
them into both request paths)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from core.auth import (
    ANONYMOUS,
    Enforcement,
    Kind,
    Principal,
    Role,
    auth_mode,
    authorize,
    bearer_token,
    cert_identity,
    open_mode_refusal,
    principal_from_cert,
    principal_from_tls,
    startup_refusal,
)
from core.policy import POLICY
from tests.pki import make_leaf

NODE_A = Principal(Kind.CERT, "node-a", Role.NODE, node_id="node-a")
VIEWER = Principal(Kind.TOKEN, "dash", Role.VIEWER)
OPERATOR = Principal(Kind.TOKEN, "carol", Role.OPERATOR)
ADMIN = Principal(Kind.CERT, "root", Role.ADMIN)
BAD_TOKEN = Principal(Kind.ANONYMOUS, "anonymous", rejected="Unknown, revoked or expired token")

PRINCIPALS = {
    "anonymous": ANONYMOUS,
    "bad-token": BAD_TOKEN,
    "node-a": NODE_A,
    "viewer": VIEWER,
    "operator": OPERATOR,
    "admin": ADMIN,
}

# (who, method, route, path params, query, event node ids) -> expected status
CASES = [
    # health: nobody needs a credential, not even with a bad one
    ("anonymous", "GET", "/v1/health", {}, {}, (), 200),
    ("bad-token", "GET", "/v1/health", {}, {}, (), 200),
    ("anonymous", "HEAD", "/v1/health/read-ready", {}, {}, (), 200),
    ("anonymous", "GET", "/v1/health/write-ready", {}, {}, (), 200),
    # everything else needs one: 401
    ("anonymous", "GET", "/v1/events", {}, {}, (), 401),
    ("anonymous", "POST", "/v1/releases", {}, {}, (), 401),
    ("bad-token", "GET", "/v1/fleet", {}, {}, (), 401),
    ("anonymous", "GET", "/v1/releases/latest", {}, {"channel": "stable"}, (), 401),
    # viewer reads, never writes
    ("viewer", "GET", "/v1/events", {}, {}, (), 200),
    ("viewer", "GET", "/v1/rollouts/{plan_id}", {"plan_id": "p"}, {}, (), 200),
    ("viewer", "HEAD", "/v1/fleet", {}, {}, (), 200),
    ("viewer", "POST", "/v1/releases", {}, {}, (), 403),
    ("viewer", "POST", "/v1/rollouts/{plan_id}/pause", {"plan_id": "p"}, {}, (), 403),
    ("viewer", "GET", "/v1/audit", {}, {}, (), 403),
    # operator publishes and steers, but no audit log
    ("operator", "POST", "/v1/releases", {}, {}, (), 200),
    ("operator", "POST", "/v1/rollouts", {}, {}, (), 200),
    ("operator", "POST", "/v1/rollouts/{plan_id}/halt", {"plan_id": "p"}, {}, (), 200),
    (
        "operator",
        "POST",
        "/v1/rollouts/{plan_id}/stages/{stage_id}/gates/approve",
        {"plan_id": "p", "stage_id": "s"},
        {},
        (),
        200,
    ),
    ("operator", "GET", "/v1/audit", {}, {}, (), 403),
    # admin: everything, also routes the table does not know
    ("admin", "GET", "/v1/audit", {}, {}, (), 200),
    ("admin", "POST", "/v1/something-new", {}, {}, (), 200),
    ("operator", "POST", "/v1/something-new", {}, {}, (), 403),
    ("operator", "DELETE", "/v1/releases", {}, {}, (), 403),
    # node scope: its own business only
    ("node-a", "GET", "/v1/releases/latest", {}, {"node_id": "node-a"}, (), 200),
    ("node-a", "GET", "/v1/releases/latest", {}, {"channel": "stable"}, (), 200),
    ("node-a", "GET", "/v1/releases/latest", {}, {"node_id": "node-b"}, (), 403),
    ("node-a", "POST", "/v1/nodes/{node_id}/ack", {"node_id": "node-a"}, {}, (), 200),
    ("node-a", "POST", "/v1/nodes/{node_id}/ack", {"node_id": "node-b"}, {}, (), 403),
    ("node-a", "GET", "/v1/nodes/{node_id}/acks", {"node_id": "node-a"}, {}, (), 200),
    ("node-a", "GET", "/v1/nodes/{node_id}/acks", {"node_id": "node-b"}, {}, (), 403),
    ("node-a", "POST", "/v1/events", {}, {}, ("node-a", "node-a"), 200),
    ("node-a", "POST", "/v1/events", {}, {}, ("node-a", "node-b"), 403),
    ("node-a", "GET", "/v1/signing-key", {}, {}, (), 200),
    ("node-a", "GET", "/v1/rollouts/{plan_id}/spec", {"plan_id": "p"}, {}, (), 200),
    ("node-a", "GET", "/v1/crl", {}, {}, (), 200),
    ("node-a", "GET", "/v1/events", {}, {}, (), 403),
    ("node-a", "GET", "/v1/fleet", {}, {}, (), 403),
    ("node-a", "POST", "/v1/releases", {}, {}, (), 403),
    ("node-a", "POST", "/v1/rollouts/{plan_id}/pause", {"plan_id": "p"}, {}, (), 403),
    ("node-a", "GET", "/v1/rollouts/{plan_id}/status", {"plan_id": "p"}, {}, (), 403),
    ("node-a", "GET", "/v1/audit", {}, {}, (), 403),
    # operators may ack and send events for any node; viewers may not
    ("operator", "POST", "/v1/nodes/{node_id}/ack", {"node_id": "node-b"}, {}, (), 200),
    ("viewer", "POST", "/v1/events", {}, {}, ("node-b",), 403),
]


@pytest.mark.parametrize(
    ("who", "method", "route", "path_params", "query", "node_ids", "status"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[6]}" for c in CASES],
)
def test_decision(who, method, route, path_params, query, node_ids, status):
    decision = authorize(
        PRINCIPALS[who],
        method,
        route,
        path_params=path_params,
        query=query,
        body_node_ids=node_ids,
    )
    assert decision.status == status, decision
    if status == 401:
        assert decision.headers() == {"WWW-Authenticate": "Bearer"}
        assert decision.body()["error"]
    elif status == 403:
        body = decision.body()
        assert body["error"]
        assert body["required_role"] in ("viewer", "operator", "admin")
        assert decision.headers() == {}


def test_403_names_the_role_the_route_needs():
    decision = authorize(VIEWER, "POST", "/v1/rollouts", path_params={}, query={})
    assert decision.body()["required_role"] == "operator"
    decision = authorize(OPERATOR, "GET", "/v1/audit", path_params={}, query={})
    assert decision.body()["required_role"] == "admin"


def test_a_rejected_token_says_why():
    decision = authorize(BAD_TOKEN, "GET", "/v1/events", path_params={}, query={})
    assert "revoked or expired" in decision.body()["error"]


def test_node_without_node_id_gets_its_own_assumed():
    decision = authorize(NODE_A, "GET", "/v1/releases/latest", query={"channel": "stable"})
    assert decision.allowed
    assert decision.assumed_node_id == "node-a"
    # anyone else: no substitution
    assert authorize(VIEWER, "GET", "/v1/releases/latest", query={}).assumed_node_id is None


def test_node_sending_another_nodes_event_gets_403_naming_the_index():
    decision = authorize(
        NODE_A, "POST", "/v1/events", body_node_ids=["node-a", "node-a", "node-b", "node-a"]
    )
    assert decision.status == 403
    assert decision.body()["index"] == 2
    assert "node-a" in decision.body()["error"]


def test_route_missing_from_the_table_is_admin_only():
    assert ("GET", "/v1/not-in-table") not in POLICY
    assert authorize(ADMIN, "GET", "/v1/not-in-table").allowed
    assert authorize(OPERATOR, "GET", "/v1/not-in-table").body()["required_role"] == "admin"
    assert authorize(NODE_A, "GET", None).status == 403
    assert authorize(ANONYMOUS, "GET", None).status == 401


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("Bearer aot_abc_def", "aot_abc_def"),
        ("bearer   aot_abc_def ", "aot_abc_def"),
        ("Basic dXNlcjpwdw==", ""),
        ("Bearer", ""),
        ("Bearer a b", ""),
    ],
)
def test_bearer_header(header, token):
    assert bearer_token(header) == token


# --- certificates ------------------------------------------------------------------------------


def _pem_chain(cert):
    return [cert.public_bytes(serialization.Encoding.PEM).decode()]


def test_node_certificate_with_san_uri(pki):
    cert, _ = make_leaf("edge-box-17", pki.ca_cert, pki.ca_key, uris=("urn:autonomy:node:node-17",))
    principal = principal_from_tls({"client_cert_chain": _pem_chain(cert)})
    assert principal.role is Role.NODE
    assert principal.node_id == "node-17"  # the SAN URI wins over the CN
    assert principal.name == "edge-box-17"
    assert principal.kind is Kind.CERT
    # and what the scope hook stores per connection gives the same answer
    assert principal_from_tls({"client_cert_chain": ["unused"], **cert_identity(cert)}) == principal


def test_node_certificate_with_cn_only(pki):
    cert, _ = make_leaf("node-a", pki.ca_cert, pki.ca_key)
    principal = principal_from_tls({"client_cert_chain": _pem_chain(cert)})
    assert (principal.role, principal.node_id, principal.name) == (Role.NODE, "node-a", "node-a")


def test_operator_certificate(pki):
    cert, _ = make_leaf("carol", pki.ca_cert, pki.ca_key, organizations=("autonomy:operators",))
    principal = principal_from_tls({"client_cert_chain": _pem_chain(cert)})
    assert (principal.role, principal.name, principal.node_id) == (Role.OPERATOR, "carol", None)
    assert authorize(principal, "POST", "/v1/rollouts/{plan_id}/halt").allowed
    assert authorize(principal, "GET", "/v1/audit").status == 403


def test_highest_group_wins(pki):
    cert, _ = make_leaf(
        "root",
        pki.ca_cert,
        pki.ca_key,
        organizations=("autonomy:viewers", "autonomy:admins", "autonomy:operators"),
    )
    assert principal_from_tls({"client_cert_chain": _pem_chain(cert)}).role is Role.ADMIN


def test_unrelated_organization_is_a_node():
    principal = principal_from_cert(cn="node-x", organizations=["ACME corp"], uris=[])
    assert principal.role is Role.NODE and principal.node_id == "node-x"


def test_no_client_certificate_is_no_principal():
    assert principal_from_tls(None) is None
    assert principal_from_tls({"client_cert_chain": []}) is None


# --- modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "listen", "ca", "token", "expected"),
    [
        ("auto", ["127.0.0.1:8888"], False, False, Enforcement.OPEN),
        ("auto", ["[::1]:8888"], False, False, Enforcement.OPEN),
        ("auto", ["localhost:8888"], False, False, Enforcement.OPEN),
        ("auto", ["127.0.0.1:8888"], True, False, Enforcement.ENFORCED),
        ("auto", ["127.0.0.1:8888"], False, True, Enforcement.ENFORCED),
        ("auto", ["0.0.0.0:8888"], False, True, Enforcement.ENFORCED),
        ("auto", ["127.0.0.1:8888", "10.0.0.5:9100"], False, True, Enforcement.ENFORCED),
        ("required", ["127.0.0.1:8888"], False, False, Enforcement.ENFORCED),
        ("off", ["0.0.0.0:8888"], False, False, Enforcement.OFF),
    ],
)
def test_mode(mode, listen, ca, token, expected):
    assert auth_mode(mode, listen_addresses=listen, tls_ca_set=ca, any_token=token) is expected


def test_exposed_listener_without_credentials_refuses_to_start():
    line = startup_refusal(
        "auto", listen_addresses=["0.0.0.0:8888"], tls_ca_set=False, any_token=False
    )
    assert line is not None and "\n" not in line
    assert "token create" in line and "--auth off" in line and "0.0.0.0:8888" in line
    assert (
        startup_refusal("auto", listen_addresses=["0.0.0.0:8888"], tls_ca_set=False, any_token=True)
        is None
    )
    assert (
        startup_refusal("auto", listen_addresses=["0.0.0.0:8888"], tls_ca_set=True, any_token=False)
        is None
    )
    assert (
        startup_refusal("off", listen_addresses=["0.0.0.0:8888"], tls_ca_set=False, any_token=False)
        is None
    )
    assert (
        startup_refusal("auto", listen_addresses=["127.0.0.1:1"], tls_ca_set=False, any_token=False)
        is None
    )


def _open(**overrides):
    request = {
        "method": "POST",
        "peer_host": "127.0.0.1",
        "host_header": "127.0.0.1:8888",
        "content_type": "application/json",
        "body_length": 10,
    }
    request.update(overrides)
    return open_mode_refusal(**request)


def test_open_mode_serves_the_local_cli():
    assert _open() is None
    assert _open(host_header="localhost:8888", peer_host="::1") is None
    assert _open(method="GET", content_type=None, body_length=0) is None
    assert _open(content_type=None, body_length=0) is None  # POST …/pause with no body
    assert _open(content_type="application/json; charset=utf-8") is None
    # the docs page and the browsable API: same origin
    assert _open(origin="http://127.0.0.1:8888", sec_fetch_site="same-origin") is None


@pytest.mark.parametrize(
    ("overrides", "status", "reason"),
    [
        ({"peer_host": "192.168.1.20"}, 403, "open_mode_peer"),
        ({"host_header": "evil.example:8888"}, 400, "open_mode_host"),  # DNS rebinding
        ({"host_header": None}, 400, "open_mode_host"),
        ({"origin": "https://evil.example"}, 403, "cross_site"),
        ({"origin": "null"}, 403, "cross_site"),
        ({"origin": "http://127.0.0.1:3000"}, 403, "cross_site"),  # another local site
        ({"sec_fetch_site": "cross-site"}, 403, "cross_site"),
        ({"sec_fetch_site": "same-site"}, 403, "cross_site"),
        ({"content_type": "text/plain"}, 415, "not_json"),
        ({"content_type": "application/x-www-form-urlencoded"}, 415, "not_json"),
        ({"content_type": None, "body_length": 5}, 415, "not_json"),
    ],
)
def test_open_mode_refuses(overrides, status, reason):
    refusal = _open(**overrides)
    assert refusal is not None
    assert (refusal.status, refusal.reason) == (status, reason)
    assert refusal.body()["error"]


def test_open_mode_lets_the_admin_forms_through_to_their_csrf_check():
    assert _open(content_type="application/x-www-form-urlencoded", json_only=False) is None

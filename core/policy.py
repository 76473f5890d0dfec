"""The one route → role table (API.md §6): every path+method of the served OpenAPI document.

Keyed by (method, route template as in the OpenAPI document). A route without an entry is
admin-only (`core.auth.lookup`); HEAD falls back to GET. tests/test_access_policy.py fails when a
path+method of `/v1/openapi.json` has no entry here.

It lives in core (not in an app) because the HTTP edge is in core and core imports no app.
`/admin/` and `/static/` are not in it: the Django admin checks its own staff login and session.
"""

from __future__ import annotations

from core.auth import NodeScope, Role, Rule

PUBLIC = Rule(None)
VIEWER = Rule(Role.VIEWER)
OPERATOR = Rule(Role.OPERATOR)
ADMIN = Rule(Role.ADMIN)

# Paths the Django admin guards itself (session login); the bearer/cert decision skips them.
SELF_GUARDED_PREFIXES = ("/admin/", "/static/")

POLICY: dict[tuple[str, str], Rule] = {
    # health and readiness (§7): no credential
    ("GET", "/v1/health"): PUBLIC,
    ("GET", "/v1/health/read-ready"): PUBLIC,
    ("HEAD", "/v1/health/read-ready"): PUBLIC,
    ("GET", "/v1/health/write-ready"): PUBLIC,
    ("HEAD", "/v1/health/write-ready"): PUBLIC,
    ("GET", "/v1/health/leader"): PUBLIC,
    ("HEAD", "/v1/health/leader"): PUBLIC,
    ("GET", "/v1/ha/status"): VIEWER,
    # the API description: anyone who may read the API
    ("GET", "/v1/openapi.json"): VIEWER,
    ("GET", "/v1/docs"): VIEWER,
    # events
    ("POST", "/v1/events"): Rule(Role.OPERATOR, NodeScope.BODY),
    ("GET", "/v1/events"): VIEWER,
    # releases and acks
    ("POST", "/v1/releases"): OPERATOR,
    ("GET", "/v1/releases"): VIEWER,
    ("GET", "/v1/releases/latest"): Rule(Role.VIEWER, NodeScope.QUERY),
    ("GET", "/v1/releases/{release_id}"): VIEWER,
    ("GET", "/v1/releases/{release_id}/acks"): VIEWER,
    ("POST", "/v1/nodes/{node_id}/ack"): Rule(Role.OPERATOR, NodeScope.PATH),
    ("GET", "/v1/nodes/{node_id}/acks"): Rule(Role.VIEWER, NodeScope.PATH),
    ("GET", "/v1/fleet"): VIEWER,
    # rollouts
    ("POST", "/v1/rollouts"): OPERATOR,
    ("GET", "/v1/rollouts"): VIEWER,
    ("GET", "/v1/rollouts/stuck"): VIEWER,
    ("GET", "/v1/rollouts/{plan_id}"): VIEWER,
    ("GET", "/v1/rollouts/{plan_id}/spec"): Rule(Role.VIEWER, NodeScope.ANY),
    ("GET", "/v1/rollouts/{plan_id}/status"): VIEWER,
    ("POST", "/v1/rollouts/{plan_id}/pause"): OPERATOR,
    ("POST", "/v1/rollouts/{plan_id}/resume"): OPERATOR,
    ("POST", "/v1/rollouts/{plan_id}/promote"): OPERATOR,
    ("POST", "/v1/rollouts/{plan_id}/halt"): OPERATOR,
    ("POST", "/v1/rollouts/{plan_id}/cancel"): OPERATOR,
    ("POST", "/v1/rollouts/{plan_id}/recover"): OPERATOR,
    ("GET", "/v1/rollouts/{plan_id}/stages/{stage_id}/gates"): VIEWER,
    ("POST", "/v1/rollouts/{plan_id}/stages/{stage_id}/gates/approve"): OPERATOR,
    ("GET", "/v1/signing-key"): Rule(Role.VIEWER, NodeScope.ANY),
    ("GET", "/v1/signing-keys"): Rule(Role.VIEWER, NodeScope.ANY),
    # certificates
    ("GET", "/v1/crl"): Rule(Role.VIEWER, NodeScope.ANY),
    # operations
    ("GET", "/metrics"): VIEWER,
    ("GET", "/v1/audit"): ADMIN,
}

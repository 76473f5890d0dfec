"""The route → role table (core.policy) covers every path+method of the served OpenAPI document:
a new route without an entry would silently be admin-only, so this test makes its author decide."""

from __future__ import annotations

import pytest

from core.auth import Role
from core.policy import POLICY, PUBLIC

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture
def served_operations(api):
    response = api.get("/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


@pytest.mark.django_db
def test_every_served_route_has_an_entry(served_operations):
    missing = sorted(op for op in served_operations if op not in POLICY)
    assert not missing, f"routes without an entry in core/policy.py POLICY: {missing}"


@pytest.mark.django_db
def test_the_audit_log_is_served_and_admin_only(served_operations):
    assert ("GET", "/v1/audit") in served_operations
    assert POLICY[("GET", "/v1/audit")].role is Role.ADMIN


def test_only_health_needs_no_credential():
    public = sorted(route for (_, route), rule in POLICY.items() if rule == PUBLIC)
    assert set(public) == {
        "/v1/health",
        "/v1/health/read-ready",
        "/v1/health/write-ready",
        "/v1/health/leader",
    }


def test_every_change_needs_at_least_an_operator_or_is_node_scoped():
    for (method, route), rule in POLICY.items():
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            assert rule.role is not None and rule.role >= Role.OPERATOR, (method, route)

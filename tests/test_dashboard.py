"""The shipped Grafana dashboard and alert rules match the product (docs/operating.md):

* `promtool check rules` accepts docs/prometheus/alerts.yml, and the dashboard's queries too
  (put into a throw-away rules file: PromQL syntax checked by Prometheus' own parser);
* a real server with some state (releases, a running plan awaiting approval, acks, events, a 4xx,
  TLS with a CRL) exposes every metric name that the dashboard's and the rules' expressions use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.liveserver import ServeProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "autonomy-orchestrator.json"
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"

# Metric names the dashboard and the rules may use before the server exposes them (a feature
# still being built). Empty: every name is served. The test fails for any name listed here that
# the server exposes, so the list cannot go stale.
NOT_YET_PROVIDED: frozenset[str] = frozenset()

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(board["panels"])
    exprs.extend(a["expr"] for a in board["annotations"]["list"] if a.get("expr"))
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        found = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query or "")
        if found:
            exprs.append(found.group(1))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def promtool() -> str | None:
    path = shutil.which("promtool")
    if path is None and os.environ.get("CI"):
        pytest.fail("promtool (Debian package prometheus) is required in CI")
    return path


def test_the_names_are_read_from_the_files():
    """The extraction itself: names, not functions, keywords, labels or Grafana variables."""
    assert metric_names(
        'histogram_quantile(0.95, sum by (le, route) (rate(cp_x_bucket{job=~"$job"}'
        "[$__rate_interval]))) and on (job) cp_y == 1 - time() < 24 * 3600"
    ) == {"cp_x_bucket", "cp_y"}
    dashboard, alerts = set(), set()
    for expr in dashboard_exprs():
        dashboard |= metric_names(expr)
    for expr in alert_exprs():
        alerts |= metric_names(expr)
    assert {"cp_rollout_plans", "cp_fleet_nodes", "cp_release_nodes"} <= dashboard
    assert {"cp_rollout_evaluator_lag_seconds", "cp_crl_next_update_timestamp_seconds"} <= alerts
    # Every allowed absence is really used (the list stays the small, explicit one it is).
    assert not NOT_YET_PROVIDED - (dashboard | alerts)


def test_promtool_accepts_the_rules_and_the_dashboard_queries(tmp_path):
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    check = subprocess.run(
        [tool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The dashboard's queries, with Grafana's variables filled in, as recording rules.
    queries = [
        expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$channel", ".*")
        for expr in dashboard_exprs()
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _exposed_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.mark.e2e
def test_every_metric_of_the_dashboard_and_the_rules_is_exposed(tmp_path, pki):
    metrics_port = free_port()
    crl = tmp_path / "crl.pem"
    shutil.copy(pki.crl_empty, crl)
    ctx = pki.context("node-b")
    args = [
        *pki.serve_args(crl=crl),
        "--auth",
        "off",
        "--metrics-addr",
        f"127.0.0.1:{metrics_port}",
    ]
    with ServeProcess(tmp_path / "data", *args, scheme="https", ssl_context=ctx) as srv:

        def call(method: str, path: str, body: Any = None) -> int:
            request = urllib.request.Request(
                srv.url(path),
                data=None if body is None else json.dumps(body).encode(),
                method=method,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10, context=ctx) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as err:
                return int(err.code)

        for release_id in ("rel-1", "rel-2"):
            assert call("POST", "/v1/releases", {"release_id": release_id}) == 201
        spec = {
            "plan_id": "plan-dash",
            "release_id": "rel-2",
            "stages": [
                {"stage_id": "canary", "percent": 50, "gates": [{"kind": "manual"}]},
                {"stage_id": "all", "percent": 100},
            ],
        }
        assert call("POST", "/v1/rollouts", spec) == 201
        assert call("POST", "/v1/nodes/n1/ack", {"release_id": "rel-2", "status": "active"}) in (
            200,
            201,
        )
        event = {"event_id": "e1", "event_type": "boot", "node_id": "n1",
                 "timestamp": "2026-11-27T10:00:00Z"}  # fmt: skip
        assert call("POST", "/v1/events", {"events": [event]}) == 200
        assert call("GET", "/v1/rollouts/no-such-plan") == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()

    exposed = _exposed_names(text)
    used = set()
    for expr in dashboard_exprs() + alert_exprs():
        used |= metric_names(expr)
    missing = used - exposed - NOT_YET_PROVIDED
    assert not missing, f"used by the dashboard or the rules but not exposed: {sorted(missing)}"
    stale = NOT_YET_PROVIDED & exposed
    assert not stale, f"exposed now: remove {sorted(stale)} from NOT_YET_PROVIDED"
    # The state shows in the numbers the board draws.
    assert 'cp_rollout_plans{phase="published"} 1.0' in text
    assert "cp_rollout_pending_approvals 1.0" in text
    assert 'cp_release_nodes{ack_status="active",channel="stable",release_id="rel-2"} 1.0' in text
    assert 'cp_fleet_nodes{status="up"} 1.0' in text


@pytest.mark.e2e
@pytest.mark.postgres
def test_store_fleet_and_adoption_families_on_postgres(tmp_path):
    """The same families from PostgreSQL: the store size is pg_database_size(), the adoption
    query's window function and the fleet's loose index scans run there too."""
    from tests.pg import require_postgres, temp_database

    require_postgres()
    metrics_port = free_port()
    with (
        temp_database("test_dash") as url,
        ServeProcess(
            tmp_path / "data", "--postgres-url", url, "--metrics-addr", f"127.0.0.1:{metrics_port}"
        ) as srv,
    ):
        for release_id in ("rel-1", "rel-2"):
            request = urllib.request.Request(
                srv.url("/v1/releases"),
                data=json.dumps({"release_id": release_id}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert resp.status == 201
        ack = urllib.request.Request(
            srv.url("/v1/nodes/n1/ack"),
            data=json.dumps({"release_id": "rel-1", "status": "failed"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(ack, timeout=10) as resp:
            assert resp.status in (200, 201)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    size = [line for line in text.splitlines() if line.startswith("cp_store_size_bytes ")]
    assert len(size) == 1 and float(size[0].split()[1]) > 1_000_000  # a migrated database
    assert 'cp_release_nodes{ack_status="failed",channel="stable",release_id="rel-1"} 1.0' in text
    assert 'cp_fleet_nodes{status="unknown"} 1.0' in text

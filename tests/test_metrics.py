"""Prometheus metrics: where `/metrics` is served, what it holds, and that promtool accepts it."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from core import metrics
from events.metrics import EVENTS_INGESTED, record_ingest
from rollouts.metrics import RolloutCollector
from tests.liveserver import ServeProcess, free_port
from tests.pki import get
from tests.promtool import assert_promtool_accepts

PHASES = ("published", "active", "paused", "halted", "completed", "cancelled", "rolled_back")


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.e2e
def test_metrics_404_everywhere_without_the_flag(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        status, body = get(srv.url("/metrics"))
        assert status == 404
        assert b'"error"' in body


@pytest.mark.e2e
def test_metrics_on_both_listeners_bounded_labels_and_promtool(tmp_path):
    metrics_port = free_port()
    with ServeProcess(tmp_path / "data", "--metrics-addr", f"127.0.0.1:{metrics_port}") as srv:
        side = f"http://127.0.0.1:{metrics_port}"
        assert get(srv.url("/v1/health"))[0] == 200
        assert get(srv.url("/v1/secret-node-17/raw"))[0] == 404
        event = {"event_id": "e-1", "event_type": "boot", "node_id": "node-secret-9",
                 "timestamp": "2026-11-27T07:00:00Z"}  # fmt: skip
        ingest = urllib.request.Request(
            srv.url("/v1/events"), data=json.dumps({"events": [event, event]}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(ingest, timeout=10) as resp:
            assert json.loads(resp.read()) == {"received": 2, "inserted": 1, "deduped": 1}
        # The metrics listener serves only GET /metrics.
        assert get(side + "/v1/health")[0] == 404
        request = urllib.request.Request(side + "/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 405 and info.value.headers["Allow"] == "GET, HEAD"

        status, main_body = get(srv.url("/metrics"))  # also on the main listener
        assert status == 200
        with urllib.request.urlopen(side + "/metrics", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
    assert main_body.startswith(b"# HELP")

    assert _sample(text, "cp_http_requests_total", method="GET", route="/v1/health",
                   code="200") >= 1  # fmt: skip
    assert _sample(text, "cp_http_requests_total", route="unmatched", code="404") >= 1
    assert _sample(text, "cp_http_request_duration_seconds_count", route="/v1/health") >= 1
    assert _sample(text, "cp_events_ingested_total", result="inserted") == 1
    assert _sample(text, "cp_events_ingested_total", result="deduped") == 1
    assert _sample(text, "cp_http_requests_total", route="/v1/events", code="200") == 1
    # The batch went through SQLite's one write turn: taken, and held for some time.
    assert _sample(text, "cp_store_write_turns_total") >= 1
    assert _sample(text, "cp_store_write_turn_seconds_total", phase="held") > 0
    assert _sample(text, "cp_store_write_turn_seconds_total", phase="wait") >= 0
    # ...and its writer synced the WAL after that turn, before the 200 (the COMMIT did not).
    assert _sample(text, "cp_store_wal_syncs_total") >= 1
    assert _sample(text, "cp_store_wal_sync_seconds_total") > 0
    # The gauge and, for the contract (API.md §5), the deprecated counter with the same values.
    assert "# TYPE cp_rollout_plans gauge" in text
    assert "# TYPE cp_rollout_plans_total counter" in text
    for phase in PHASES:
        gauge = _sample(text, "cp_rollout_plans", phase=phase)
        assert gauge is not None and _sample(text, "cp_rollout_plans_total", phase=phase) == gauge
    # django-prometheus's families are served (API.md §5), but not its latency histograms: one
    # request-latency histogram per route, ours (docs/metrics.md).
    assert _sample(text, "django_http_requests_total_by_method_total", method="GET") is not None
    assert "# TYPE django_http_responses_total_by_status_total counter" in text
    histograms = set(re.findall(r"^# TYPE (\S+) histogram$", text, re.MULTILINE))
    assert "cp_http_request_duration_seconds" in histograms
    assert not [h for h in histograms if h.startswith("django_") and "latency" in h], histograms
    assert not re.search(r"^django_\w*latency\w*_bucket", text, re.MULTILINE)
    # Bounded cardinality: no raw paths or ids in any label.
    assert "secret-node-17" not in text and "node-secret-9" not in text
    routes = set(re.findall(r'route="([^"]*)"', text))
    assert all(r == "unmatched" or r.startswith("/") for r in routes), routes

    assert_promtool_accepts(text)


def test_record_ingest_counts_by_result():
    before_inserted = EVENTS_INGESTED.labels(result="inserted")._value.get()
    before_deduped = EVENTS_INGESTED.labels(result="deduped")._value.get()
    record_ingest(inserted=3, deduped=2)
    record_ingest(inserted=0, deduped=1)
    assert EVENTS_INGESTED.labels(result="inserted")._value.get() == before_inserted + 3
    assert EVENTS_INGESTED.labels(result="deduped")._value.get() == before_deduped + 3


def test_rollout_phases_all_present_with_zero_defaults(monkeypatch):
    import rollouts.selectors

    monkeypatch.setattr(rollouts.selectors, "rollout_phase_counts", lambda: {"active": 4})
    monkeypatch.setattr(
        rollouts.selectors,
        "rollout_live_summary",
        lambda **_: rollouts.selectors.LiveSummary(2, 90.0, 1, 4000.0),
    )
    registry = CollectorRegistry()
    registry.register(RolloutCollector())
    text = generate_latest(registry).decode()
    assert "# TYPE cp_rollout_plans gauge" in text
    assert "# TYPE cp_rollout_plans_total counter" in text  # deprecated, same values
    assert _sample(text, "cp_rollout_plans", phase="active") == 4
    assert _sample(text, "cp_rollout_plans_total", phase="active") == 4
    for phase in PHASES:
        if phase != "active":
            assert _sample(text, "cp_rollout_plans", phase=phase) == 0, phase
            assert _sample(text, "cp_rollout_plans_total", phase=phase) == 0, phase
    assert _sample(text, "cp_rollout_pending_approvals") == 2
    assert _sample(text, "cp_rollout_pending_approval_age_seconds") == 90
    assert _sample(text, "cp_rollout_stuck_plans") == 1
    assert _sample(text, "cp_rollout_max_idle_seconds") == 4000


def test_unknown_methods_share_one_label():
    registry_before = {
        m: metrics.HTTP_REQUESTS.labels(method=m, route="/x", code="200")._value.get()
        for m in ("other",)
    }
    metrics._observe("FROBNICATE", "/x", 200, 0.01)
    metrics._observe("BREW", "/x", 200, 0.01)
    after = metrics.HTTP_REQUESTS.labels(method="other", route="/x", code="200")._value.get()
    assert after == registry_before["other"] + 2

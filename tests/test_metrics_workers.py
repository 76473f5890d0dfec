"""`/metrics` under `serve --workers N` (core.metricsmerge, docs/metrics.md#with-serve---workers-n):
the primary's exposition sums the counters and histograms of every worker. Each worker is stood
for by its own CollectorRegistry; the other workers reach the primary through snapshot files."""

from __future__ import annotations

import json
import logging
import stat
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from core import metrics, metricsmerge, workers
from tests.promtool import assert_promtool_accepts

BUCKETS = (0.01, 0.1, 1.0)


class StoreCollector:
    """Stands for the collectors that read the store at scrape time (rollout phases): a gauge
    and the deprecated counter carrying the same value. Counts how often it is read."""

    def __init__(self, plans: float) -> None:
        self.plans = plans
        self.reads = 0

    def collect(self):
        self.reads += 1
        yield GaugeMetricFamily("cp_rollout_plans", "Plans now.", value=self.plans)
        yield CounterMetricFamily("cp_rollout_plans_total", "Deprecated.", value=self.plans)


class Worker:
    """One worker's registry with the families the server has (a subset)."""

    def __init__(self, plans: float = 0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cp_http_requests_total", "Requests.", ["method", "route", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "cp_http_request_duration_seconds", "Duration.", ["method", "route"],
            buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue = Gauge("cp_events_writer_queue_depth", "Queue.", registry=self.registry)
        self.store = StoreCollector(plans)
        self.registry.register(self.store)

    def request(self, route: str, code: str, duration: float, method: str = "GET") -> None:
        self.requests.labels(method=method, route=route, code=code).inc()
        self.duration.labels(method=method, route=route).observe(duration)


def families(text: str) -> dict[str, dict]:
    """name -> {(sample name, sorted labels): value}, parsed as Prometheus would (which also
    proves the text is valid exposition)."""
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    for family in families(text).values():
        for (sample, sample_labels), v in family.items():
            if sample == name and dict(sample_labels) == labels:
                return v
    return None


@pytest.fixture
def restore_workers():
    yield
    workers.configure(index=0, count=1, directory=None)


def test_counters_and_histograms_add_up_over_the_workers(tmp_path):
    primary, second, third = Worker(), Worker(), Worker()
    primary.request("/v1/health", "200", 0.005)
    primary.request("/v1/health", "200", 0.5)
    second.request("/v1/health", "200", 0.05)
    third.request("/v1/health", "200", 0.005)
    third.request("/v1/health", "200", 5.0)
    third.request("/v1/events", "429", 0.05, method="POST")
    primary.request("/v1/events", "429", 0.05, method="POST")
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)
    metricsmerge.write_snapshot(tmp_path, 2, third.registry)

    text = metricsmerge.render(tmp_path, 0, primary.registry).decode()

    health = {"method": "GET", "route": "/v1/health"}
    assert value(text, "cp_http_requests_total", code="200", **health) == 5
    events = {"method": "POST", "route": "/v1/events"}
    assert value(text, "cp_http_requests_total", code="429", **events) == 2
    assert value(text, "cp_http_request_duration_seconds_count", **health) == 5
    assert value(text, "cp_http_request_duration_seconds_sum", **health) == pytest.approx(5.56)
    # Cumulative buckets add up: 0.005 x2 | 0.05 | 0.5 | 5.0
    assert value(text, "cp_http_request_duration_seconds_bucket", le="0.01", **health) == 2
    assert value(text, "cp_http_request_duration_seconds_bucket", le="0.1", **health) == 3
    assert value(text, "cp_http_request_duration_seconds_bucket", le="1.0", **health) == 4
    assert value(text, "cp_http_request_duration_seconds_bucket", le="+Inf", **health) == 5
    # Still one family each, with its HELP and TYPE once.
    assert text.count("# TYPE cp_http_requests_total counter\n") == 1
    assert text.count("# TYPE cp_http_request_duration_seconds histogram\n") == 1


def test_gauges_and_store_read_families_are_the_primary_s(tmp_path):
    primary, second = Worker(plans=3), Worker(plans=3)
    primary.queue.set(2)
    second.queue.set(40)
    second.request("/v1/health", "200", 0.005)

    metricsmerge.write_snapshot(tmp_path, 1, second.registry)
    # The snapshot reads no store-backed collector (every worker writes one each second).
    assert second.store.reads == 0
    text = metricsmerge.render(tmp_path, 0, primary.registry).decode()

    assert value(text, "cp_events_writer_queue_depth") == 2
    assert value(text, "cp_rollout_plans") == 3
    # The deprecated counter carries a gauge's value: not multiplied by the workers.
    assert value(text, "cp_rollout_plans_total") == 3
    assert value(text, "cp_http_requests_total", method="GET", route="/v1/health", code="200") == 1


def test_a_series_only_another_worker_has_appears(tmp_path):
    primary, second = Worker(), Worker()
    primary.request("/v1/health", "200", 0.005)
    odd = 'a "quoted" \\ route\nline'  # escaping survives the round trip
    second.request(odd, "404", 0.2)
    only_second = Counter("cp_webhook_deliveries_total", "Deliveries.", ["outcome"],
                          registry=second.registry)  # fmt: skip
    only_second.labels(outcome="delivered").inc(7)
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)

    text = metricsmerge.render(tmp_path, 0, primary.registry).decode()

    assert value(text, "cp_http_requests_total", method="GET", route=odd, code="404") == 1
    assert value(text, "cp_http_request_duration_seconds_bucket", method="GET", route=odd,
                 le="0.1") == 0  # fmt: skip
    assert value(text, "cp_http_request_duration_seconds_count", method="GET", route=odd) == 1
    assert value(text, "cp_http_requests_total", method="GET", route="/v1/health",
                 code="200") == 1  # fmt: skip
    # A family the primary does not have at all comes with its HELP and TYPE.
    assert "# HELP cp_webhook_deliveries_total Deliveries.\n" in text
    assert "# TYPE cp_webhook_deliveries_total counter\n" in text
    assert value(text, "cp_webhook_deliveries_total", outcome="delivered") == 7


def test_created_is_the_earliest_worker_s(tmp_path):
    primary, second = Worker(), Worker()
    second.request("/v1/health", "200", 0.005)
    time.sleep(0.02)
    primary.request("/v1/health", "200", 0.005)
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)
    labels = {"method": "GET", "route": "/v1/health", "code": "200"}
    theirs = value(generate_latest(second.registry).decode(), "cp_http_requests_created", **labels)
    mine = value(generate_latest(primary.registry).decode(), "cp_http_requests_created", **labels)
    assert theirs is not None and mine is not None and theirs < mine

    text = metricsmerge.render(tmp_path, 0, primary.registry).decode()

    assert value(text, "cp_http_requests_created", **labels) == theirs
    assert value(text, "cp_http_requests_total", **labels) == 2


def test_a_corrupt_snapshot_is_skipped_not_a_failed_scrape(tmp_path, caplog):
    primary, second = Worker(), Worker()
    primary.request("/v1/health", "200", 0.005)
    second.request("/v1/health", "200", 0.005)
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)
    (tmp_path / "metrics-2.json").write_text('{"format": 1, "families": [{"name": "cp_ht')
    (tmp_path / "metrics-3.json").write_text(json.dumps({"format": 1, "families": [
        {"name": "cp_http_requests", "type": "counter", "help": "x",
         "samples": [["cp_http_requests_total", {"route": 5}, 1]]}]}))  # fmt: skip
    (tmp_path / "metrics-4.json").write_bytes(b"\xff\x00")
    (tmp_path / "metrics-5.json").write_text(json.dumps({"format": 1, "families": [
        {"name": "cp_http_requests", "type": "gauge", "help": "x", "samples": []}]}))  # fmt: skip

    with caplog.at_level(logging.DEBUG, logger="orchestrator.metrics"):
        text = metricsmerge.render(tmp_path, 0, primary.registry).decode()

    # Only worker 1's good snapshot is added.
    labels = {"method": "GET", "route": "/v1/health", "code": "200"}
    assert value(text, "cp_http_requests_total", **labels) == 2
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 4, skipped
    assert all(any(f"metrics-{i}.json" in m for m in skipped) for i in (2, 3, 4, 5))


def test_the_primary_s_own_snapshot_and_other_files_are_not_added(tmp_path):
    primary = Worker()
    primary.request("/v1/health", "200", 0.005)
    metricsmerge.write_snapshot(tmp_path, 0, primary.registry)  # e.g. left by an earlier run
    (tmp_path / "shared-state.json").write_text("{}")
    (tmp_path / ".metrics-1.abc.tmp").write_text("{")

    text = metricsmerge.render(tmp_path, 0, primary.registry).decode()

    labels = {"method": "GET", "route": "/v1/health", "code": "200"}
    assert value(text, "cp_http_requests_total", **labels) == 1


def test_snapshot_file_is_0600_and_replaced_atomically(tmp_path):
    second = Worker()
    second.request("/v1/health", "200", 0.005)
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)
    second.request("/v1/health", "200", 0.005)
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)

    path = tmp_path / "metrics-1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics-1.json"]  # no temp files
    (family,) = [f for f in json.loads(path.read_text())["families"] if f["type"] == "counter"]
    assert ["cp_http_requests_total", {"method": "GET", "route": "/v1/health", "code": "200"},
            2.0] in family["samples"]  # fmt: skip
    assert "cp_events_writer_queue_depth" not in path.read_text()  # no gauges


def test_the_snapshot_thread_keeps_up_and_writes_a_final_snapshot(tmp_path):
    primary, second = Worker(), Worker()
    labels = {"method": "GET", "route": "/v1/health", "code": "200"}
    writer = metricsmerge.start_snapshots(tmp_path, 1, interval=0.05, registry=second.registry)
    try:
        assert value(metricsmerge.render(tmp_path, 0, primary.registry).decode(),
                     "cp_http_requests_total", **labels) is None  # fmt: skip
        second.request("/v1/health", "200", 0.005)
        deadline = time.monotonic() + 5
        while True:
            text = metricsmerge.render(tmp_path, 0, primary.registry).decode()
            if value(text, "cp_http_requests_total", **labels) == 1:
                break
            assert time.monotonic() < deadline, "the periodic snapshot never showed the request"
            time.sleep(0.02)
    finally:
        writer.stop()
    assert not writer._thread.is_alive()

    # A long interval: only the final snapshot of stop() can carry these.
    (tmp_path / "metrics-1.json").unlink()
    writer = metricsmerge.start_snapshots(tmp_path, 1, interval=3600, registry=second.registry)
    assert (tmp_path / "metrics-1.json").is_file()  # the first snapshot is written at start
    second.request("/v1/health", "200", 0.005)
    second.request("/v1/health", "200", 0.005)
    writer.stop()
    text = metricsmerge.render(tmp_path, 0, primary.registry).decode()
    assert value(text, "cp_http_requests_total", **labels) == 3


def test_render_with_one_worker_is_the_registry_s_exactly(tmp_path, monkeypatch, restore_workers):
    primary, second = Worker(plans=2), Worker()
    primary.request("/v1/health", "200", 0.005)
    second.request("/v1/health", "200", 0.005)
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)
    monkeypatch.setattr(metrics, "REGISTRY", primary.registry)
    labels = {"method": "GET", "route": "/v1/health", "code": "200"}

    workers.configure(index=0, count=1, directory=tmp_path)  # one worker: no directory()
    assert metrics.render() == generate_latest(primary.registry)

    workers.configure(index=0, count=2, directory=tmp_path)  # the primary of two
    assert value(metrics.render().decode(), "cp_http_requests_total", **labels) == 2

    third = Worker()
    third.request("/v1/health", "200", 0.005)
    metricsmerge.write_snapshot(tmp_path, 2, third.registry)
    workers.configure(index=0, count=3, directory=tmp_path)
    assert value(metrics.render().decode(), "cp_http_requests_total", **labels) == 3
    # Any worker merges (the main listener's /metrics may land on any of them): its own counts
    # live, the others' from their snapshots (the primary writes one as well).
    metricsmerge.write_snapshot(tmp_path, 0, primary.registry)
    monkeypatch.setattr(metrics, "REGISTRY", second.registry)
    second.request("/v1/health", "200", 0.005)  # live, not yet in its own snapshot
    workers.configure(index=1, count=3, directory=tmp_path)
    assert value(metrics.render().decode(), "cp_http_requests_total", **labels) == 4


def test_merged_exposition_passes_promtool(tmp_path):
    primary, second = Worker(plans=1), Worker()
    primary.request("/v1/health", "200", 0.005)
    second.request("/v1/health", "200", 0.005)
    second.request("/v1/only-second", "500", 2.0, method="DELETE")
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)
    text = metricsmerge.render(tmp_path, 0, primary.registry).decode()

    assert_promtool_accepts(text)


def test_snapshots_of_an_earlier_run_with_more_workers_are_not_added(
    tmp_path, monkeypatch, restore_workers
):
    primary, second, gone = Worker(), Worker(), Worker()
    for worker in (primary, second, gone):
        worker.request("/v1/health", "200", 0.005)
    metricsmerge.write_snapshot(tmp_path, 1, second.registry)
    metricsmerge.write_snapshot(tmp_path, 3, gone.registry)  # the earlier run had 4 workers
    monkeypatch.setattr(metrics, "REGISTRY", primary.registry)
    labels = {"method": "GET", "route": "/v1/health", "code": "200"}

    workers.configure(index=0, count=2, directory=tmp_path)
    assert value(metrics.render().decode(), "cp_http_requests_total", **labels) == 2

    (tmp_path / "shared-state.json").write_text("{}")
    metricsmerge.remove_snapshots(tmp_path)  # what serve calls before it forks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared-state.json"]
    assert value(metrics.render().decode(), "cp_http_requests_total", **labels) == 1

"""Logs an operator can follow (issue 15, item 5): `X-Request-ID` accepted or generated, echoed
on both request paths and on every log line of the request (the access line too); a 4xx's
reason in the access log; rollout actions logged with the principal at info, an automatic halt
at warning."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import requests

from core.logging_setup import TextFormatter
from core.requestid import REQUEST_ID, RequestIdFilter, accepted
from tests.liveserver import ServeProcess

TIMEOUT = 10


def _records(srv: ServeProcess) -> list[dict[str, Any]]:
    lines = srv.stderr_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _wait_for_records(srv: ServeProcess, predicate: Any, what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [r for r in _records(srv) if predicate(r)]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no log record {what}:\n{srv.logs()}")


@pytest.mark.e2e
def test_request_ids_principals_and_reasons_in_the_log(tmp_path):
    with ServeProcess(tmp_path / "data", "--log-format", "json") as srv:
        http = requests.Session()

        def send(method: str, path: str, rid: str | None = None, **kw: Any) -> Any:
            headers = {**kw.pop("headers", {}), **({"X-Request-ID": rid} if rid else {})}
            return http.request(method, srv.url(path), headers=headers, timeout=TIMEOUT, **kw)

        # Echoed on the fast path and on the DRF path; generated when missing.
        batch = {"events": [{"event_id": "e1", "event_type": "boot", "node_id": "n1",
                             "timestamp": "2026-11-27T10:00:00Z"}]}  # fmt: skip
        assert send("POST", "/v1/events", "req-fast-1", json=batch).headers["X-Request-ID"] == (
            "req-fast-1"
        )
        assert send("GET", "/v1/rollouts", "req-drf-1").headers["X-Request-ID"] == "req-drf-1"
        generated = send("GET", "/v1/rollouts", "bad id with spaces").headers["X-Request-ID"]
        assert generated != "bad id with spaces" and len(generated) >= 16

        # A 4xx: its reason is on the access line, with the request id.
        missing = send("GET", "/v1/rollouts/no-such-plan", "req-404")
        assert missing.status_code == 404
        reason = missing.json()["error"]

        # Operator actions, named by their principal.
        for release_id in ("rel-1", "rel-2"):
            assert send("POST", "/v1/releases", json={"release_id": release_id}).ok
        spec = {
            "plan_id": "plan-log",
            "release_id": "rel-2",
            "stages": [
                {
                    "stage_id": "canary",
                    "percent": 100,
                    "gates": [
                        {"kind": "ack_failure", "max_ratio": 0.5},
                        {"kind": "time_soak", "seconds": 3600},
                    ],
                },
            ],
        }
        operator = {"X-Autonomy-Operator": "alice"}
        assert send("POST", "/v1/rollouts", "req-publish", json=spec, headers=operator).ok
        pause = send("POST", "/v1/rollouts/plan-log/pause", "req-pause", json={}, headers=operator)
        assert pause.ok
        assert send("POST", "/v1/rollouts/plan-log/resume", json={}, headers=operator).ok
        # Two failed acks: the evaluator halts the plan by itself.
        for node in ("n1", "n2"):
            ack = {"release_id": "rel-2", "status": "failed"}
            assert send("POST", f"/v1/nodes/{node}/ack", json=ack).ok
        halts = _wait_for_records(
            srv,
            lambda r: r.get("action") == "halt" and r.get("plan_id") == "plan-log",
            "of the automatic halt",
        )

    records = _records(srv)

    def with_id(rid: str) -> list[dict[str, Any]]:
        return [r for r in records if r.get("request_id") == rid]

    fast = with_id("req-fast-1")
    assert [r["logger"] for r in fast] == ["orchestrator.access"]
    assert fast[0]["route"] == "/v1/events" and fast[0]["status"] == 200
    assert [r["route"] for r in with_id("req-drf-1")] == ["/v1/rollouts"]
    assert [r["status"] for r in with_id(generated)] == [200]

    [access] = with_id("req-404")
    assert access["status"] == 404 and access["error"] == reason
    assert f"error={reason!r}" in access["message"]

    # Every line of the request carries its id: the rollout line and the access line.
    publish = with_id("req-publish")
    assert {r["logger"] for r in publish} >= {"orchestrator.rollouts", "orchestrator.access"}
    [published] = [r for r in publish if r["logger"] == "orchestrator.rollouts"]
    assert published["level"] == "info" and published["action"] == "publish"
    assert published["principal"] == "alice" and published["trigger"] == "operator"
    assert published["message"].startswith("rollout plan-log: publish by anonymous:alice")
    [paused] = [r for r in with_id("req-pause") if r["logger"] == "orchestrator.rollouts"]
    assert paused["level"] == "info" and paused["principal"] == "alice"
    assert (paused["from_phase"], paused["to_phase"]) == ("published", "paused")

    [halt] = halts
    assert halt["level"] == "warn"
    assert halt["principal"] == "evaluator" and halt["trigger"] == "automatic"
    assert "ack_failure" in halt["reason"]
    assert halt.get("request_id") is None  # the evaluator thread serves no request


def test_text_lines_end_with_the_request_id():
    record = logging.LogRecord("orchestrator.access", logging.INFO, "", 0, "GET / 200", None, None)
    token = REQUEST_ID.set("abc-123")
    try:
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    assert TextFormatter().format(record).endswith(" info  GET / 200 request_id=abc-123")
    outside = logging.LogRecord("x", logging.INFO, "", 0, "started", None, None)
    RequestIdFilter().filter(outside)
    assert TextFormatter().format(outside).endswith(" info  started")


def test_only_bounded_safe_ids_are_accepted():
    assert accepted(b"0f8fad5b-d9cb-469f-a165-70867728950e") == (
        "0f8fad5b-d9cb-469f-a165-70867728950e"
    )
    assert accepted(b"trace:abc/def+ghi=") == "trace:abc/def+ghi="
    assert accepted(b"x" * 128) == "x" * 128
    for bad in (b"", b"x" * 129, b"a b", b"a\nb", b'a"b', "\u00e9".encode(), b"<script>"):
        assert accepted(bad) is None, bad

"""Logs cannot be forged and errors are JSON (issue 11, item 10), over the real `serve`:
control characters a client sends (in the path, ids) are escaped in the text log, and a path
the static files handler refuses (`/static/../orchestrator.sqlite3`) is a JSON 400, not daphne's
HTML 500 with a traceback."""

from __future__ import annotations

import http.client
import json
import logging
import re

import pytest

from core.logging_setup import TextFormatter
from tests.liveserver import ServeProcess

TIMEOUT = 10
RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info |warn |error) ")


def raw_get(srv: ServeProcess, path: str) -> tuple[int, str, bytes]:
    """GET with the path sent exactly as given (no client-side normalisation of `..`)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={"User-Agent": "evil\x1b[2J"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


TRAVERSALS = [
    "/static/../orchestrator.sqlite3",
    "/static/%2e%2e/orchestrator.sqlite3",
    "/static/%2E%2E/orchestrator.sqlite3",
    "/static/%2e%2e%2forchestrator.sqlite3",
    "/static/..%2forchestrator.sqlite3",
    "/static/admin/../../django-secret.key",
    "/static/admin/%2e%2e/%2e%2e/rollout-signing.key",
]


@pytest.mark.e2e
def test_path_traversal_under_static_is_a_json_400_without_a_traceback(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        for path in TRAVERSALS:
            status, content_type, body = raw_get(srv, path)
            assert (status, content_type) == (400, "application/json"), (path, body[:200])
            assert json.loads(body) == {"error": "bad request"}, path
        assert raw_get(srv, "/static/admin/css/base.css")[0] == 200  # still serves static files
        logs = srv.logs()
    assert "Traceback" not in logs and "Exception inside application" not in logs
    assert logs.count("refused GET /static/") == len(TRAVERSALS)
    assert "/static/../orchestrator.sqlite3 400" in logs  # the access log line


FORGED = "2026-01-01T00:00:00.000Z info  GET /v1/admin-password-reset 200 1.0ms"


@pytest.mark.e2e
def test_control_characters_from_a_client_cannot_forge_text_log_lines(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        forged_path = "/v1/events%0a" + FORGED.replace(" ", "%20")
        assert raw_get(srv, forged_path)[0] == 404
        assert raw_get(srv, "/v1/nodes/n%0d%0a%1b%5b31mred/acks")[0] in (200, 404)
        assert raw_get(srv, "/x%e2%80%a8y")[0] == 404  # U+2028, a line separator
        logs = srv.stderr_path.read_text()
    lines = logs.splitlines()
    assert not any(line.startswith(FORGED[:24]) for line in lines)
    assert "GET /v1/events\\n2026-01-01T00:00:00.000Z info  GET /v1/admin-password-reset" in logs
    assert "\\r\\n\\x1b[31mred/acks" in logs
    assert "/x\\u2028y 404" in logs
    assert "\x1b" not in logs and "\r" not in logs and "\u2028" not in logs
    for line in lines:  # every line is a record, or an indented continuation of one
        assert RECORD.match(line) or line.startswith("  "), line


@pytest.mark.e2e
def test_json_logs_stay_one_object_per_line_with_the_path_as_sent(tmp_path):
    with ServeProcess(tmp_path / "data", "--log-format", "json") as srv:
        assert raw_get(srv, "/v1/events%0aforged%1b")[0] == 404
        logs = srv.stderr_path.read_text()
    records = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert any(r.get("path") == "/v1/events\nforged\x1b" for r in records)


def test_a_traceback_in_the_text_log_is_indented_and_escaped():
    try:
        raise ValueError("bad id 'a\n2026-01-01T00:00:00.000Z info  forged'")
    except ValueError:
        record = logging.LogRecord(
            "orchestrator", logging.ERROR, __file__, 1, "failed for %s", ("node\n-x",), True
        )
        import sys

        record.exc_info = sys.exc_info()
    text = TextFormatter().format(record)
    first, *rest = text.split("\n")
    assert first.endswith("failed for node\\n-x")
    assert rest and all(line.startswith("  ") for line in rest)
    assert any("forged" in line and "\\n" in line for line in rest)

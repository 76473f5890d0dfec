"""Regression tests for what the schema fuzzer (tests/test_fuzz.py, docs/api.md) found.

Each test replays the request the fuzzer reported, as an ordinary API test, and asserts the
answer the contract asks for: never a 500, every error a JSON object with an `error` sentence.
"""

from __future__ import annotations

import http.client
import json

import pytest

from tests.liveserver import ServeProcess

HUGE = "21441476742226336334974100772487168"  # > 2**63: no SQL integer holds it


def _error(response) -> str:
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["limit", "offset"])
def test_rollout_list_with_a_huge_page_parameter_is_not_a_500(api, name: str) -> None:
    # Found: GET /v1/rollouts?offset=<beyond 64 bits> -> 500 (SQLite "datatype mismatch").
    response = api.get(f"/v1/rollouts?{name}={HUGE}")
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert name in _error(response)
    else:
        assert response.json()["plans"] == []


@pytest.mark.django_db
def test_stuck_plans_with_a_huge_threshold_is_not_a_500(api) -> None:
    # Found: GET /v1/rollouts/stuck?threshold_seconds=262592325398 -> 500 (datetime overflow).
    for threshold in ("262592325398", HUGE):
        response = api.get(f"/v1/rollouts/stuck?threshold_seconds={threshold}")
        assert response.status_code in (200, 400), threshold
        if response.status_code == 400:
            assert "threshold_seconds" in _error(response)
        else:
            assert response.json()["stuck_plans"] == []


BEYOND_INT64 = str(2**63)  # the first cursor no SQL integer column can compare with


@pytest.mark.django_db
def test_events_before_cursor_beyond_64_bits_is_a_400(api) -> None:
    # Found: GET /v1/events?before=9223372036854775808 -> 500 (OverflowError binding the cursor
    # to SQLite), on the fast path and on the DRF path alike.
    response = api.get(f"/v1/events?before={BEYOND_INT64}")
    assert response.status_code == 400
    assert response.json()["field"] == "before"
    assert api.get(f"/v1/events?before={2**63 - 1}").status_code == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with ServeProcess(tmp_path_factory.mktemp("regressions") / "data") as srv:
        yield srv


def _request(server: ServeProcess, method: str, path: str, body: bytes = b"", **headers: str):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


@pytest.mark.e2e
def test_events_before_cursor_beyond_64_bits_is_a_400_on_the_fast_path(server) -> None:
    status, content_type, raw = _request(server, "GET", f"/v1/events?before={BEYOND_INT64}")
    assert status == 400 and content_type.startswith("application/json")
    assert json.loads(raw)["field"] == "before"


@pytest.mark.e2e
def test_a_multipart_content_type_gets_a_json_error_not_a_bare_400(server) -> None:
    # Found: any POST with `Content-Type: multipart/form-data` and a body that is not valid
    # multipart (here: JSON) was answered by the HTTP layer itself (Twisted parses form bodies
    # before daphne hands the request over): a bare 400, no Content-Type, no body.
    for path, body in (
        ("/v1/releases", {"release_id": "rel-1"}),
        ("/v1/rollouts/plan-x/pause", {"reason": "r"}),
    ):
        status, content_type, raw = _request(
            server,
            "POST",
            path,
            json.dumps(body).encode(),
            **{"Content-Type": "multipart/form-data"},
        )
        assert status < 500, (path, status)
        assert content_type.startswith("application/json"), (path, status, content_type)
        assert isinstance(json.loads(raw)["error"], str), (path, raw)


# Found by probing the fuzzer's NUL strings against the PostgreSQL store (.ci/run's second run):
# PostgreSQL cannot store U+0000 in text or jsonb, and every such request was a 500. On SQLite
# they are stored; on PostgreSQL they are now a 400 naming the problem.
NUL_REQUESTS = [
    ("post", "/v1/releases", {"release_id": "rel-nul", "metadata": {"k": "a\u0000b"}}),
    ("post", "/v1/rollouts/plan-nul/pause", {"reason": "a\u0000b"}),
    ("post", "/v1/rollouts", {"release_id": "rel-n", "description": "a\u0000", "stages": []}),
    ("get", "/v1/fleet?channel=a%00b", None),
    ("get", "/v1/releases/latest?channel=a%00b", None),
    ("get", "/v1/releases/a%00b", None),
    ("get", "/v1/nodes/a%00b/acks", None),
    ("get", "/v1/rollouts/a%00b/status", None),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path", "body"), NUL_REQUESTS)
def test_a_nul_character_is_never_a_500(api, method: str, path: str, body) -> None:
    api.post("/v1/releases", {"release_id": "rel-n"}, format="json")
    api.post(
        "/v1/rollouts",
        {"plan_id": "plan-nul", "release_id": "rel-n", "stages": [{"stage_id": "s", "percent": 5}]},
        format="json",
    )
    response = getattr(api, method)(path, body, format="json") if body else api.get(path)
    assert response.status_code < 500, response.content
    if response.status_code >= 400:
        _error(response)


def test_postgresql_refusing_nul_maps_to_a_400() -> None:
    from django.db.utils import DataError

    from core import dberrors
    from core.middleware import db_error_response

    for message in (
        "PostgreSQL text fields cannot contain NUL (0x00) bytes",
        "unsupported Unicode escape sequence\nDETAIL:  \\u0000 cannot be converted to text.",
    ):
        exc = DataError(message)
        assert dberrors.classify(exc) == dberrors.NUL
        response = db_error_response(exc)
        assert response is not None and response.status_code == 400
        assert "NUL" in json.loads(response.content)["error"]


@pytest.mark.django_db
@pytest.mark.parametrize("acked_at", ["0001-01-01T00:00:00+04:00", "9999-12-31T23:59:59-01:00"])
def test_an_acked_at_that_leaves_the_calendar_in_utc_is_a_400(api, acked_at: str) -> None:
    # Found: POST /v1/nodes/{node_id}/ack with acked_at 0001-01-01T00:00:00+04:00 -> 500
    # (OverflowError converting it to UTC: the instant is before year 1).
    api.post("/v1/releases", {"release_id": "rel-cal"}, format="json")
    response = api.post(
        "/v1/nodes/node-a/ack",
        {"release_id": "rel-cal", "status": "active", "acked_at": acked_at},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["field"] == "acked_at"

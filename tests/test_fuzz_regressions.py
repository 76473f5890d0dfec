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


JSON = {"Content-Type": "application/json"}


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


# Found by random (not derandomized) fuzzing, issue 16: a release whose metadata held an integer
# beyond 64 bits was stored (201), then every `GET /v1/releases/latest` and `/v1/fleet` of its
# channel was a 500 (orjson cannot write it). The JSON-values rule (core/jsonvalues.py) now
# refuses it at the door, on every route that stores client JSON.
BEYOND_64_BITS = "123456789012345678901234567890"
ROUTES_STORING_JSON = [
    ("/v1/releases", '{"release_id":"big","channel":"c1","metadata":{"n":%s}}', "metadata.n"),
    ("/v1/nodes/n1/ack", '{"release_id":"rel-ok","status":"active","x":[%s]}', "x[0]"),
    (
        "/v1/rollouts",
        '{"release_id":"rel-ok","stages":[{"stage_id":"s","percent":5,"k":%s}]}',
        "stages[0].k",
    ),
    ("/v1/rollouts/plan-ok/pause", '{"reason":"r","extra":{"a":%s}}', "extra.a"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "template", "field"), ROUTES_STORING_JSON)
@pytest.mark.parametrize("number", [BEYOND_64_BITS, str(-(2**63) - 1), str(2**64), "1e400"])
def test_a_number_no_store_can_serve_back_is_a_400_naming_the_field(
    api, path: str, template: str, field: str, number: str
) -> None:
    api.post("/v1/releases", {"release_id": "rel-ok", "channel": "c0"}, format="json")
    api.post(
        "/v1/rollouts",
        {"plan_id": "plan-ok", "release_id": "rel-ok", "stages": [{"stage_id": "s", "percent": 5}]},
        format="json",
    )
    response = api.post(path, template % number, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json() == {
        "error": response.json()["error"],
        "field": field,
    }
    assert response.json()["error"].startswith(f"invalid field '{field}': ")
    assert api.get("/v1/releases/latest?channel=c1").status_code == 404
    assert api.get("/v1/fleet?channel=c0").status_code == 200


@pytest.mark.django_db
def test_a_release_stored_before_the_rule_with_a_huge_integer_is_still_served(api) -> None:
    from django.utils import timezone

    from releases.models import Release

    Release.objects.create(
        release_id="old",
        channel="c1",
        sequence=1,
        metadata={"n": int(BEYOND_64_BITS)},
        created_at=timezone.now(),
    )
    for path in ("/v1/releases/latest?channel=c1", "/v1/fleet?channel=c1", "/v1/releases/old"):
        response = api.get(path)
        assert response.status_code == 200, (path, response.content)
    latest = api.get("/v1/releases/latest?channel=c1&node_id=n1").json()
    assert latest["metadata"] == {"n": float(BEYOND_64_BITS)}  # the nearest double


@pytest.mark.django_db
def test_nesting_deeper_than_the_limit_is_a_400_and_at_the_limit_is_stored(api) -> None:
    from core.jsonvalues import MAX_DEPTH

    def nested(levels: int) -> str:  # `levels` arrays inside the metadata object (level 2)
        return "[" * levels + "]" * levels

    ok = '{"release_id":"deep","metadata":{"d":' + nested(MAX_DEPTH - 2) + "}}"
    response = api.post("/v1/releases", ok, content_type="application/json")
    assert response.status_code == 201, response.content
    too_deep = '{"release_id":"deeper","metadata":{"d":' + nested(MAX_DEPTH - 1) + "}}"
    response = api.post("/v1/releases", too_deep, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["field"].startswith("metadata.d[0]")
    assert "nest" in response.json()["error"]


@pytest.mark.e2e
def test_the_issue_16_reproduction_is_a_400_at_publish_over_http(server) -> None:
    # The reproduction from the issue, against the real server (the fast path answers
    # /v1/events and /v1/releases/latest; DRF answers the publish).
    body = b'{"release_id":"big","channel":"c1","metadata":{"n":123456789012345678901234567890}}'
    status, _, raw = _request(server, "POST", "/v1/releases", body, **JSON)
    assert status == 400, raw
    assert json.loads(raw)["field"] == "metadata.n"
    for path in ("/v1/releases/latest?channel=c1", "/v1/releases/latest?channel=c1&node_id=n1"):
        assert _request(server, "GET", path)[0] == 404
    assert _request(server, "GET", "/v1/fleet?channel=c1")[0] == 200
    event = (
        b'{"events":[{"event_id":"big","event_type":"t","node_id":"n1",'
        b'"timestamp":"2026-04-07T10:00:00Z","n":{"deep":[1e400]}}]}'
    )
    status, _, raw = _request(server, "POST", "/v1/events", event, **JSON)
    assert status == 400, raw
    assert json.loads(raw) == {
        "error": "event 0: invalid field 'n.deep[0]': numbers must be finite "
        "(at most about 1.8e308 in magnitude)",
        "index": 0,
        "field": "n.deep[0]",
    }


@pytest.mark.e2e
@pytest.mark.parametrize("status_value", [{}, [], 1, None, True])
def test_an_ack_whose_status_is_not_a_string_is_a_400_on_the_fast_path(
    server, status_value
) -> None:
    # Found: POST /v1/nodes/0/ack {"release_id": "rel-004", "status": {}} -> 500 (the fast ack
    # handler looked an unhashable value up in its set of statuses).
    body = json.dumps({"release_id": "rel-004", "status": status_value}).encode()
    status, content_type, raw = _request(server, "POST", "/v1/nodes/0/ack", body, **JSON)
    assert status == 400 and content_type.startswith("application/json")
    assert "status" in json.loads(raw)["error"]

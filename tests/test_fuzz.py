"""Property-based fuzzing of the live server against its own OpenAPI document (schemathesis).

One `autonomy-orchestrator serve` subprocess is started on loopback per store (SQLite, then
PostgreSQL) and seeded over HTTP (releases, acks, events, rollout plans), so generated ids often
name real objects.
Every operation of `/v1/openapi.json` then gets generated requests, valid and invalid
(schemathesis' positive and negative modes, plus the schema's examples and its coverage phase),
including the state-changing rollout actions. Each response must pass every check schemathesis
has (`CHECKS` below), among them:

- not be a 5xx (and leave no traceback in the server log);
- for a method the schema does not list on a path, be a 405 with `Allow`;
- match the schema: a documented status code, the documented content type, headers and body;
- refuse (4xx) what the schema calls invalid, and not refuse with a 400 what it calls valid
  (with the stated exceptions below);
- on an error status, be a JSON object with an `error` string (the contract's error body).

Examples per operation: `AUTONOMY_FUZZ_EXAMPLES` (default 20, about 40 s per store for the whole
API); a longer run is `AUTONOMY_FUZZ_EXAMPLES=500 pytest tests/test_fuzz.py`, and a hunt of N
minutes with the stateful phase is bench/fuzz_hunt.py. Every run draws new random examples from a
fresh seed, printed when the server starts and on every failure; `AUTONOMY_FUZZ_SEED=<seed>` replays
one. A failure found this way becomes a regression test in tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from schemathesis.checks import CHECKS as SCHEMATHESIS_CHECKS
from schemathesis.specs.openapi import checks as openapi_checks

from tests.liveserver import ServeProcess, free_port

pytestmark = pytest.mark.e2e

# Compatibility shim: schemathesis 4.32's pytest loader renames the running test through
# `request.node._nodeid`, an attribute pytest 9 no longer has (node ids became `NodeId`s).
# Reading gives the real node id; the renaming is dropped (subtests still carry
# "METHOD /path" as their label, so failures name their operation).
if not hasattr(pytest.Function, "_nodeid"):
    pytest.Function._nodeid = property(  # type: ignore[attr-defined]
        lambda node: node.nodeid, lambda node, value: None
    )

FUZZ_EXAMPLES = int(os.environ.get("AUTONOMY_FUZZ_EXAMPLES", "20"))
# New examples on every run; the seed makes a failing run reproducible.
FUZZ_SEED = int(os.environ.get("AUTONOMY_FUZZ_SEED") or random.SystemRandom().getrandbits(64))

# Objects the session server is seeded with; path parameters are often drawn from these. Each
# plan has a release of its own (one live plan per release), so that the generated actions find
# plans in several phases before they all end up terminal.
NODES = ["node-a", "node-b", "node-c"]
RELEASES: list[dict[str, Any]] = [
    {"release_id": "rel-003", "channel": "stable"},
    {"release_id": "rel-004", "channel": "stable", "metadata": {"notes": "fourth"}},
    {"release_id": "rel-b1", "channel": "beta"},
    *({"release_id": f"rel-p{n}", "channel": "stable"} for n in range(1, 6)),
]
PLANS: list[dict[str, Any]] = [
    {
        "plan_id": "plan-2026-11-web",
        "release_id": "rel-004",
        "stages": [
            {
                "stage_id": "canary",
                "percent": 5,
                "nodes": ["node-a"],
                "gates": [
                    {"kind": "manual"},
                    {"kind": "ack_success", "min_ratio": 0.5, "min_acks": 1},
                ],
            },
            {"stage_id": "all", "percent": 100, "gates": [{"kind": "time_soak", "seconds": 1}]},
        ],
        "created_by": "fuzz",
    },
    {
        "plan_id": "plan-beta",
        "release_id": "rel-b1",
        "stages": [{"stage_id": "canary", "percent": 50, "gates": [{"kind": "manual"}]}],
    },
    *(
        {
            "plan_id": f"plan-p{n}",
            "release_id": f"rel-p{n}",
            "stages": [
                {"stage_id": "canary", "percent": 10, "gates": [{"kind": "manual"}]},
                {"stage_id": "all", "percent": 100},
            ],
        }
        for n in range(1, 6)
    ),
]
SEEDED_PATH_VALUES: dict[str, list[str]] = {
    "release_id": [r["release_id"] for r in RELEASES],
    "node_id": NODES,
    "plan_id": [p["plan_id"] for p in PLANS],
    "stage_id": ["canary", "all"],
}


def _post(base_url: str, path: str, body: Any) -> int:
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def seed(base_url: str) -> None:
    """Objects for generated requests to find: plans published, paused and halted."""
    for release in RELEASES:
        assert _post(base_url, "/v1/releases", release) in (200, 201)
    events = [
        {
            "event_id": f"seed-{i}",
            "event_type": "app.heartbeat",
            "node_id": NODES[i % 3],
            "timestamp": "2026-04-07T10:00:00Z",
            "release_id": "rel-004",
        }
        for i in range(6)
    ]
    assert _post(base_url, "/v1/events", {"events": events}) == 200
    for node in NODES:
        assert _post(
            base_url, f"/v1/nodes/{node}/ack", {"release_id": "rel-003", "status": "active"}
        ) in (200, 201)
    for plan in PLANS:
        assert _post(base_url, "/v1/rollouts", plan) == 201, plan["plan_id"]
    assert _post(base_url, "/v1/rollouts/plan-p2/pause", {}) == 200
    assert _post(base_url, "/v1/rollouts/plan-p3/halt", {"reason": "seed"}) == 200


# The same fuzzing on both stores: PostgreSQL refuses what SQLite stores (NUL characters,
# integers beyond 64 bits), so each store finds its own crashes.
STORES = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal on every run (not only in a failure's captured output)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@pytest.fixture(scope="session", params=STORES)
def fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    # With --metrics-addr, GET /metrics is served on the main listener too (and fuzzed).
    args = ["--metrics-addr", f"127.0.0.1:{free_port()}"]
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            from tests.pg import temp_database

            args += ["--postgres-url", stack.enter_context(temp_database("test_fuzz"))]
        _say(request, f"fuzz seed ({request.param}): AUTONOMY_FUZZ_SEED={FUZZ_SEED}")
        server = stack.enter_context(ServeProcess(data_dir, *args))
        seed(server.base_url)
        yield server
        log = server.logs()
    at = log.find("Traceback")
    assert at < 0, (
        f"the server logged a traceback while fuzzed:\n{log[max(0, at - 300) : at + 3000]}"
    )


def _sometimes_seeded(context: Any, path_parameters: dict[str, Any]) -> Any:
    """Swap generated path parameters for seeded ids half of the time (a real object, so the
    actions and reads go past their 404)."""
    if not path_parameters:
        return st.just(path_parameters)
    strategies = {
        name: (
            st.one_of(st.just(value), st.sampled_from(SEEDED_PATH_VALUES[name]))
            if name in SEEDED_PATH_VALUES
            else st.just(value)
        )
        for name, value in path_parameters.items()
    }
    return st.fixed_dictionaries(strategies)


# A path parameter equal to one of these names a literal route of its own
# (`/v1/rollouts/stuck`, `/v1/releases/latest`), not the parameterised one; the schema says so
# (`not: {enum: [...]}`), and negative generation would send them on purpose.
SHADOWED = {"plan_id": "stuck", "release_id": "latest"}


def names_a_literal_route(case: Any) -> bool:
    parameters = case.path_parameters or {}
    return any(parameters.get(name) == value for name, value in SHADOWED.items())


@pytest.fixture(scope="session")
def api_schema(fuzz_server: ServeProcess):
    schema = schemathesis.openapi.from_url(fuzz_server.url("/v1/openapi.json"))
    schema.hook("flatmap_path_parameters")(_sometimes_seeded)
    return schema


def error_body_is_json_with_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """The contract: every error answer is a JSON object with an `error` sentence."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), (
        f"{response.status_code} answered with Content-Type {content_type!r}, not JSON"
    )
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} body is not JSON: {exc}") from None
    assert isinstance(body, dict), f"{response.status_code} body is not a JSON object: {body!r}"
    assert isinstance(body.get("error"), str) and body["error"], (
        f"{response.status_code} body has no `error` string: {body!r}"
    )
    return True


# Rules of a plan spec that JSON Schema cannot state, because they relate several fields or
# depend on stored data: a 400 naming one of them is the right answer to a schema-valid spec.
# (field name prefix, words of the server's message)
SPEC_RULES_BEYOND_THE_SCHEMA = (
    ("release_id", "no release"),  # the release must exist
    ("channel", "is in channel"),  # ... and be in the spec's channel
    ("stages[", "stage ids must be unique"),
    ("stages[", "must not decrease"),  # percent is cumulative
)


def _answers_a_rule_beyond_the_schema(response: Any, case: Any) -> bool:
    operation = (case.method.upper(), case.path)
    if operation not in (("POST", "/v1/rollouts"), ("POST", "/v1/releases")):
        return False
    if response.status_code != 400:
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    field, message = str(body.get("field", "")), str(body.get("error", ""))
    if operation == ("POST", "/v1/releases"):
        # An offline release signature must verify over the release's own fields
        # (docs/trust.md): cryptography, which no schema states.
        return field == "release_signature"
    return any(
        field.startswith(f) and words in message for f, words in SPEC_RULES_BEYOND_THE_SCHEMA
    )


def _carries_nul(case: Any) -> bool:
    parts = (case.path_parameters, case.query, case.headers, case.body)
    return "\\u0000" in json.dumps(parts, default=str)  # how JSON writes a NUL


def _refused_for_a_nul(response: Any) -> bool:
    """PostgreSQL cannot store NUL: any string carrying one is a 400 there, wherever it lands
    (docs/api.md, "Conventions"); SQLite stores it. A store-dependent rule the schema cannot
    state, so a schema-valid request carrying a NUL may get this 400 on PostgreSQL."""
    from core.dberrors import NUL_MESSAGE

    if response.status_code != 400:
        return False
    try:
        return json.loads(response.content).get("error") == NUL_MESSAGE
    except (ValueError, AttributeError):
        return False


# The JSON-values rule (core.jsonvalues, docs/api.md "JSON values"): an integer literal beyond
# 64 bits, a number overflowing to infinity, or nesting beyond the limit, anywhere in a body, is
# a 400 naming the field. JSON Schema cannot state it for free-form objects (it cannot tell the
# integer literal 10**24 from the float 1e24, which is allowed), so such a 400 is let through.
def _refused_by_the_json_values_rule(response: Any) -> bool:
    from core import jsonvalues

    if response.status_code != 400:
        return False
    try:
        error = json.loads(response.content).get("error", "")
    except (ValueError, AttributeError):
        return False
    return any(reason in error for reason in jsonvalues.REASONS)


def positive_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' check, except for a plan spec or a release signature refused by a rule the
    schema cannot state,
    a value beyond the JSON-values rule, and for a NUL refused by PostgreSQL."""
    if _answers_a_rule_beyond_the_schema(response, case):
        return None
    if _refused_by_the_json_values_rule(response):
        return None
    if _carries_nul(case) and _refused_for_a_nul(response):
        return None
    return openapi_checks.positive_data_acceptance(ctx, response, case)


# The rollout actions take an optional body, and read a body of only whitespace as no body
# (`rollouts/api/views.py` `_action_body`), where the schema calls it malformed JSON.
def _blank_body_on_an_action(response: Any, case: Any) -> bool:
    body = response.request.body
    if isinstance(body, str):
        body = body.encode()
    return (
        response.request.method == "POST"
        and urllib.parse.urlsplit(response.request.url).path.startswith("/v1/rollouts/")
        and body is not None
        and not body.strip()
        and response.status_code < 300
    )


def _negated_path_replaced_by_a_seeded_id(case: Any) -> bool:
    """`_sometimes_seeded` swaps generated path parameters for seeded (valid) ids, also in a case
    generated to violate the schema in its path: that case no longer does, though its metadata
    still says so."""
    from schemathesis.core.parameters import ParameterLocation

    component = case.meta.components.get(ParameterLocation.PATH) if case.meta else None
    if component is None or not component.mode.is_negative:
        return False
    parameters = case.path_parameters or {}
    return bool(parameters) and all(
        value in SEEDED_PATH_VALUES.get(name, ()) for name, value in parameters.items()
    )


def negative_data_rejection(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' check, except for the known leniency above, and for a case whose
    only violation our seeding hook replaced."""
    if _blank_body_on_an_action(response, case):
        return None
    if _negated_path_replaced_by_a_seeded_id(case):
        return None
    return openapi_checks.negative_data_rejection(ctx, response, case)


# Every check schemathesis has (importing its OpenAPI checks registers them), plus ours; two
# of them with the stated exceptions above.
ALL_SCHEMATHESIS_CHECKS = SCHEMATHESIS_CHECKS.get_all()
REPLACED: dict[Any, Any] = {
    openapi_checks.positive_data_acceptance: positive_data_acceptance,
    openapi_checks.negative_data_rejection: negative_data_rejection,
}
assert set(REPLACED) <= set(ALL_SCHEMATHESIS_CHECKS)
CHECKS = [
    *(REPLACED.get(check, check) for check in ALL_SCHEMATHESIS_CHECKS),
    error_body_is_json_with_error,
]

schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
    derandomize=False,
    database=None,
)
@hypothesis_seed(FUZZ_SEED)
def test_every_operation_conforms_to_the_schema(case: Any, fuzz_server: ServeProcess) -> None:
    if names_a_literal_route(case):
        return  # another operation of the schema; it is fuzzed there
    try:
        case.call_and_validate(base_url=fuzz_server.base_url, checks=CHECKS, timeout=30)
    except Exception as exc:
        exc.add_note(f"fuzz seed: replay with AUTONOMY_FUZZ_SEED={FUZZ_SEED}")
        raise

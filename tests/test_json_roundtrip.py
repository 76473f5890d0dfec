"""Round trips, per resource (issue 16): any body a POST accepts is served back unchanged by every
GET that shows it (detail, list, latest, fleet, the admin change page).

Hypothesis draws awkward values on purpose: integers at the 64-bit edges, floats such as 1e308,
5e-324 and -0.0, nesting up to the server's limit (core.jsonvalues.MAX_DEPTH), long strings,
characters of every Unicode plane, and NUL where the store keeps it (SQLite; PostgreSQL refuses
it with a 400, see test_fuzz_regressions.py). The same tests run on PostgreSQL in the second
pytest run of .ci/run (AUTONOMY_TEST_DATABASE=postgres).

"Unchanged" is exact (same keys in the same order, same types, -0.0 kept) everywhere except
release `metadata` on PostgreSQL: jsonb keeps a number's value, not its spelling, nor the key
order (docs/api.md "JSON values"), so there the values are compared as JSON (`jsonvalues.same`).

`AUTONOMY_ROUNDTRIP_EXAMPLES` (default 15) sets the examples per test; each run draws new ones
(hypothesis prints the failing example and how to reproduce it).
"""

from __future__ import annotations

import html
import itertools
import json
import os
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from core.jsonvalues import MAX_DEPTH, same

pytestmark = pytest.mark.django_db

ON_POSTGRES = os.environ.get("AUTONOMY_TEST_DATABASE") == "postgres"
EXAMPLES = int(os.environ.get("AUTONOMY_ROUNDTRIP_EXAMPLES", "15"))

ROUNDTRIP = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one database per test; each example its own ids
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


# --- the awkward values ----------------------------------------------------------------------

INT64_EDGES = [
    -(2**63),
    -(2**63) + 1,
    2**63 - 1,
    2**63 - 2,
    -(2**53) - 1,
    2**53 + 1,
    -(2**32),
    2**32,
    -1,
    0,
]
FLOAT_EDGES = [
    1e308,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    -0.0,
    0.0,
    2.0**63,
    -(2.0**63),
    2.0**64,
    -(2.0**64),
    1.152921504606847e18,  # jsonb spells it 1152921504606847000
    0.1,
    1e-7,
    1e16,
]
integers = st.one_of(st.sampled_from(INT64_EDGES), st.integers(-(2**63), 2**63 - 1))
floats = st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(allow_nan=False, allow_infinity=False))
# A character of any of the 17 planes (no surrogates: not UTF-8); NUL only where stored.
characters = st.integers(0, 16).flatmap(
    lambda plane: st.characters(
        codec="utf-8",
        min_codepoint=max(plane * 0x10000, 1 if ON_POSTGRES else 0),
        max_codepoint=plane * 0x10000 + 0xFFFF,
    )
)
short_text = st.text(characters, max_size=12)
long_text = st.builds(
    lambda head, char, n: head + char * n, short_text, characters, st.integers(1000, 20000)
)
text = st.one_of(short_text, short_text, long_text)
keys = st.text(characters, max_size=8)
leaves = st.one_of(st.none(), st.booleans(), integers, floats, text)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=10,
)


def deepest(levels: int) -> Any:
    value: Any = "bottom"
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


# Always run too: every edge value at once, nesting at exactly the limit, every plane.
EDGES: dict[str, Any] = {
    "ints": INT64_EDGES,
    "floats": FLOAT_EDGES,
    "planes": "".join(chr(plane * 0x10000 + 0x41) for plane in range(17)) + "\u00e9\u2028",
    "long": "\U0010fffd" * 50_000,
}


def depth(value: Any) -> int:
    """Levels of arrays/objects: 0 for a scalar, 1 for [] or {}."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def nested_values(room: int) -> st.SearchStrategy[Any]:
    """A value at most `room` levels deep, often wrapped to reach exactly `room` (the limit)."""

    def wrap(value: Any, deepest: bool, as_objects: bool) -> Any:
        assume(depth(value) <= room)
        if deepest:
            for _ in range(room - depth(value)):
                value = {"k": value} if as_objects else [value]
        return value

    return st.builds(wrap, values, st.booleans(), st.booleans())


def json_equal_strict(sent: Any, served: Any) -> bool:
    """Same keys in the same order, same types, same numbers to the bit (-0.0 stays -0.0)."""
    return orjson.dumps(sent) == orjson.dumps(served)


def post_json(api: Any, path: str, body: Any) -> Any:
    return api.post(path, data=orjson.dumps(body), content_type="application/json")


_READONLY = '<label>{}:</label>\\s*<div class="readonly">(.*?)</div>\\s*</div>'


def admin_field(page: bytes, label: str) -> str:
    """The text of a read-only field on an admin change page."""
    match = re.search(_READONLY.format(re.escape(label)), page.decode(), re.DOTALL)
    assert match is not None, f"no read-only {label!r} on the admin page"
    shown = match.group(1)
    pre = re.fullmatch(r"<pre[^>]*>(.*?)</pre>.*", shown, re.DOTALL)
    if pre is not None:
        shown = pre.group(1)
    return html.unescape(shown.replace("<br>", "\n"))


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-123456789")
    client.force_login(user)
    return client


# --- releases --------------------------------------------------------------------------------

refs = st.one_of(st.none(), st.text(characters.filter(lambda c: c != "\x00"), max_size=200))


@ROUNDTRIP
@example(metadata={**EDGES, "deep": deepest(MAX_DEPTH - 2)}, policy_ref="\u00e9", artifact_ref=None)
@given(
    metadata=st.dictionaries(keys, nested_values(MAX_DEPTH - 2), max_size=5),
    policy_ref=refs,
    artifact_ref=refs,
)
def test_a_published_release_is_served_back_unchanged(
    api, staff, metadata: dict[str, Any], policy_ref: str | None, artifact_ref: str | None
) -> None:
    from releases.models import Release

    body = {
        "release_id": new_id("rel"),
        "channel": new_id("ch"),
        "policy_ref": policy_ref,
        "artifact_ref": artifact_ref,
        "metadata": metadata,
    }
    published = post_json(api, "/v1/releases", body)
    assert published.status_code == 201, published.content
    rid, channel = body["release_id"], body["channel"]
    listed = api.get(f"/v1/releases?channel={channel}").json()["releases"]
    assert len(listed) == 1
    shown = {
        "POST answer": published.json(),
        "detail": api.get(f"/v1/releases/{rid}").json(),
        "list": listed[0],
        "latest": api.get(f"/v1/releases/latest?channel={channel}").json(),
        "latest for a node": api.get(f"/v1/releases/latest?channel={channel}&node_id=n1").json(),
        "fleet": api.get(f"/v1/fleet?channel={channel}").json()["latest_release"],
    }
    pk = Release.objects.get(release_id=rid).pk
    admin_page = staff.get(f"/admin/releases/release/{pk}/change/")
    assert admin_page.status_code == 200
    admin_metadata = admin_field(admin_page.content, "Metadata")
    if metadata == {}:
        assert admin_metadata == "-"  # the admin's "empty" mark
    else:
        shown["admin"] = {"metadata": json.loads(admin_metadata)}
    for where, release in shown.items():
        if where != "admin":
            for key in ("release_id", "channel", "policy_ref", "artifact_ref"):
                assert release[key] == body[key], (where, key)
        if ON_POSTGRES:  # jsonb: the same JSON values, spelt anew (docs/api.md)
            assert same(release["metadata"], metadata), where
        else:
            assert json_equal_strict(release["metadata"], metadata), where
    # The same body again is the same release (200), never a 409, whatever jsonb made of it.
    again = post_json(api, "/v1/releases", body)
    assert again.status_code == 200, again.content


# --- events ----------------------------------------------------------------------------------


@ROUNDTRIP
@example(extras=[{**EDGES, "x-deep": deepest(MAX_DEPTH - 3)}, {}], lock_fingerprint=None)
@given(
    extras=st.lists(
        st.dictionaries(keys.map(lambda k: "x-" + k), nested_values(MAX_DEPTH - 3), max_size=4),
        min_size=1,
        max_size=3,
    ),
    lock_fingerprint=refs,
)
def test_ingested_events_are_served_back_unchanged(
    api, staff, extras: list[dict[str, Any]], lock_fingerprint: str | None
) -> None:
    from events.models import Event

    node = new_id("node")
    events = [
        {
            "event_id": new_id("ev"),
            "event_type": "app.fuzz",
            "node_id": node,
            "timestamp": "2026-04-07T10:00:00.123456+02:00",
            "lock_fingerprint": lock_fingerprint,
            **extra,
        }
        for extra in extras
    ]
    answer = post_json(api, "/v1/events", {"events": events})
    assert answer.status_code == 200, answer.content
    assert answer.json()["inserted"] == len(events)
    served = api.get(f"/v1/events?node_id={node}").json()["events"]
    assert json_equal_strict(served, events[::-1])  # newest first
    for event in events:
        pk = Event.objects.get(event_id=event["event_id"]).pk
        page = staff.get(f"/admin/events/event/{pk}/change/")
        assert page.status_code == 200
        assert json_equal_strict(json.loads(admin_field(page.content, "Payload")), event)


# --- acks ------------------------------------------------------------------------------------


@ROUNDTRIP
@given(
    message=st.one_of(st.none(), text.filter(lambda s: "\x00" not in s and len(s) <= 65536)),
    lock_fingerprint=st.one_of(st.none(), st.text(characters, max_size=256)),
    status=st.sampled_from(["pending", "acknowledged", "active", "failed", "rejected"]),
)
def test_an_ack_is_served_back_unchanged(
    api, staff, message: str | None, lock_fingerprint: str | None, status: str
) -> None:
    from releases.models import NodeAck

    assume(lock_fingerprint is None or "\x00" not in lock_fingerprint)
    rid, node = new_id("rel"), new_id("node")
    assert post_json(api, "/v1/releases", {"release_id": rid}).status_code == 201
    body = {
        "release_id": rid,
        "status": status,
        "message": message,
        "lock_fingerprint": lock_fingerprint,
        "acked_at": "2026-04-07T10:00:00Z",
    }
    answer = post_json(api, f"/v1/nodes/{node}/ack", body)
    assert answer.status_code == 201, answer.content
    shown = {
        "POST answer": answer.json(),
        "release acks": api.get(f"/v1/releases/{rid}/acks").json()["acks"][0],
        "node acks": api.get(f"/v1/nodes/{node}/acks").json()["acks"][0],
    }
    for where, ack in shown.items():
        assert {key: ack[key] for key in body} == body, where
    pk = NodeAck.objects.get(node_id=node).pk
    page = staff.get(f"/admin/releases/nodeack/{pk}/change/")
    assert page.status_code == 200
    if message:  # the admin shows line breaks as <br> (any of \r\n, \r, \n)
        lines = message.replace("\r\n", "\n").replace("\r", "\n")
        assert admin_field(page.content, "Message") == lines


# --- rollout plans ---------------------------------------------------------------------------


@ROUNDTRIP
@example(
    labels=deepest(MAX_DEPTH - 1), notes=EDGES, description="\U0001f600" * 4096, percent=5e-324
)
@given(
    labels=nested_values(MAX_DEPTH - 1),
    notes=nested_values(MAX_DEPTH - 3),
    description=text.filter(lambda s: len(s) <= 4096),
    percent=st.one_of(st.integers(1, 100), st.floats(5e-324, 100.0)),
)
def test_a_plan_spec_is_served_back_unchanged(
    api, staff, labels: Any, notes: Any, description: str, percent: float
) -> None:
    from rollouts.models import RolloutPlan

    rid, plan_id = new_id("rel"), new_id("plan")
    assert post_json(api, "/v1/releases", {"release_id": rid}).status_code == 201
    spec = {
        "plan_id": plan_id,
        "release_id": rid,
        "description": description,
        "stages": [{"stage_id": "s1", "percent": percent, "notes": notes}],
        "labels": labels,
    }
    raw = orjson.dumps(spec)
    answer = api.post("/v1/rollouts", data=raw, content_type="application/json")
    assert answer.status_code == 201, answer.content
    envelope = api.get(f"/v1/rollouts/{plan_id}/spec").json()
    shown = {
        "POST answer": answer.json()["spec"],
        "detail": api.get(f"/v1/rollouts/{plan_id}").json()["spec"],
        "spec envelope": envelope["spec"],
    }
    for where, served in shown.items():
        assert json_equal_strict(served, spec), where
    assert api.get(f"/v1/rollouts/{plan_id}/spec?raw=true").content == raw
    listed = [
        p for p in api.get("/v1/rollouts?limit=1000").json()["plans"] if p["plan_id"] == plan_id
    ]
    assert listed[0]["description"] == description
    pk = RolloutPlan.objects.get(plan_id=plan_id).pk
    page = staff.get(f"/admin/rollouts/rolloutplan/{pk}/change/")
    assert page.status_code == 200
    assert json_equal_strict(json.loads(admin_field(page.content, "Spec")), spec)


# --- the other side of the rule: what cannot come back is refused with a 400 -----------------

beyond_int64 = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1)).map(str)
beyond_double = st.sampled_from(["1e400", "-1e400", "1.8e308", "123e999999"])


@ROUNDTRIP
@given(number=st.one_of(beyond_int64, beyond_double), route=st.sampled_from(range(4)))
def test_a_number_that_cannot_come_back_is_a_400_naming_it(api, number: str, route: int) -> None:
    rid = new_id("rel")
    assert post_json(api, "/v1/releases", {"release_id": rid}).status_code == 201
    path, template, field = [
        ("/v1/releases", '{"release_id":"%s-b","metadata":{"n":[%s]}}', "metadata.n[0]"),
        (
            "/v1/events",
            '{"events":[{"event_id":"%s","event_type":"t","node_id":"n",'
            '"timestamp":"2026-04-07T10:00:00Z","v":%s}]}',
            "v",
        ),
        ("/v1/nodes/n1/ack", '{"release_id":"%s","status":"active","x":{"y":%s}}', "x.y"),
        (
            "/v1/rollouts",
            '{"release_id":"%s","stages":[{"stage_id":"s","percent":5}],"n":%s}',
            "n",
        ),
    ][route]
    answer = api.post(path, data=template % (rid, number), content_type="application/json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["field"] == field
    assert f"invalid field '{field}'" in answer.json()["error"]
